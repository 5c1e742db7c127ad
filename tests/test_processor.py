"""LFM2-VL processor parity with transformers 5.23 (fixtures from tests/reference/make_lfm2vl_processor_reference.py).

Every expected value below comes from transformers (``reference.npz``, ``text_reference.json``), from the
checkpoint files the fixture script wrote, or from Python / the LFM2-VL spec itself; none is copied from
captionaura's output.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captionaura.image import ImageLoadError, load_image, resize_bilinear_aa
from captionaura.processor import (
    ImageProcessorConfig,
    Lfm2VlProcessor,
    Tokenizer,
    choose_grid,
    round_by_factor,
    smart_resize,
    target_ratios,
)

REF = Path(__file__).parent / "reference"
FIX = REF / "fixtures" / "lfm2vl_processor"
sys.path.insert(0, str(REF))
from lfm2vl_images import ImageSpec, make_input, make_pil, make_png_bytes  # noqa: E402

CONFIGS = ["lfm2vl_450m", "lfm2vl_1_6b"]  # real-checkpoint settings: every case
CASES = json.loads((FIX / "cases.json").read_text(encoding="utf-8"))
IMAGE_CASES = CASES["cases"] + CASES["chat_cases"]
# synthetic config (splitting off, 32..128 tokens), run by transformers with use_image_special_tokens=False
NOSPLIT = [c for c in IMAGE_CASES if c["name"] in set(CASES["nosplit_cases"])]
_PROCS: dict[str, tuple] = {}


def _load(config: str):
    if config not in _PROCS:
        folder = FIX / config
        _PROCS[config] = (Lfm2VlProcessor.from_pretrained(folder), np.load(folder / "reference.npz"))
    return _PROCS[config]


@pytest.fixture(scope="module", params=CONFIGS)
def setup(request):
    return (request.param,) + _load(request.param)


def _run_case(proc: Lfm2VlProcessor, case: dict, **kwargs):
    images = [make_input(ImageSpec(**s)) for s in case["images"]]
    if "messages" in case:
        messages = json.loads(json.dumps(case["messages"]))
        it = iter(images)
        for m in messages:
            if isinstance(m["content"], list):
                for item in m["content"]:
                    if item["type"] == "image":
                        item["image"] = next(it)
        return proc(messages=messages, add_generation_prompt=True, **kwargs)
    return proc(images=images or None, text=case["text"], padding=isinstance(case["text"], list), **kwargs)


def _check_pixels(out, ref, name: str) -> None:
    shape = tuple(int(v) for v in ref[f"{name}.pixel_shape"])
    assert out.pixel_values.shape == shape and out.pixel_values.dtype == np.float32
    assert out.pixel_attention_mask.dtype == np.int32 and out.spatial_shapes.dtype == np.int64
    np.testing.assert_array_equal(out.pixel_attention_mask, ref[f"{name}.pixel_attention_mask"])
    np.testing.assert_array_equal(out.spatial_shapes, ref[f"{name}.spatial_shapes"])
    mask = out.pixel_attention_mask == 1
    assert np.all(out.pixel_values[~mask] == 0.0), "padded patch rows must be zero"
    valid = out.pixel_values[mask]
    # transformers' values are (u - 127.5) / 127.5 for the stored uint8 u (exact, asserted by the fixture script)
    u = np.rint(valid.astype(np.float64) * 127.5 + 127.5)
    assert u.min() >= 0 and u.max() <= 255
    u8 = u.astype(np.uint8)
    recon = (u8.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    assert np.max(np.abs(recon - valid)) <= 1e-5
    rows = ref[f"{name}.pixel_sample_rows"]
    sample_ref = (ref[f"{name}.pixel_sample_u8"].astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    diff = np.max(np.abs(valid[rows] - sample_ref))
    assert diff <= 1e-5, f"sampled patch rows differ from transformers by {diff}"
    counts = out.pixel_attention_mask.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    digests = [hashlib.sha256(np.ascontiguousarray(u8[a:a + n]).tobytes()).hexdigest()
               for a, n in zip(starts, counts)]
    bad = [i for i, (d, r) in enumerate(zip(digests, ref[f"{name}.pixel_sha256"])) if d != str(r)]
    assert not bad, f"tiles {bad} differ from transformers' pixel_values"


PAIRS = [(cfg, c) for cfg in CONFIGS for c in IMAGE_CASES] + [("lfm2vl_nosplit", c) for c in NOSPLIT]


@pytest.mark.parametrize("config,case", PAIRS, ids=[f"{cfg}-{c['name']}" for cfg, c in PAIRS])
def test_matches_transformers(config, case):
    proc, ref = _load(config)
    name = case["name"]
    kwargs = {"use_image_special_tokens": False} if config == "lfm2vl_nosplit" else {}
    out = _run_case(proc, case, **kwargs)
    want = ref[f"{name}.input_ids"]
    if not np.array_equal(out.input_ids, want):
        ours = [proc.tokenizer.decode(row) for row in out.input_ids]
        raise AssertionError(f"input_ids differ\nours: {ours[0][:400]}\nref:  {str(ref[f'{name}.expanded'][0])[:400]}")
    assert out.input_ids.dtype == np.int64
    np.testing.assert_array_equal(out.attention_mask, ref[f"{name}.attention_mask"])
    if f"{name}.pixel_shape" in ref:
        _check_pixels(out, ref, name)
    else:
        assert out.pixel_values is None


@pytest.mark.parametrize("case", CASES["convert_rgb_cases"], ids=[c["name"] for c in CASES["convert_rgb_cases"]])
def test_do_convert_rgb_composites_alpha_like_transformers(setup, case):
    import dataclasses

    _, proc, ref = setup
    name = case["name"]
    cfg = dataclasses.replace(proc.image_config, do_convert_rgb=True)
    proc_rgb = Lfm2VlProcessor(cfg, proc.tokenizer, proc.chat_template)
    out = proc_rgb(images=[make_pil(ImageSpec(**s)) for s in case["images"]], text=case["text"])
    np.testing.assert_array_equal(out.input_ids, ref[f"{name}.input_ids"])
    _check_pixels(out, ref, name)
    if "A" in name.upper().split("_")[-1]:  # with alpha: compositing differs from dropping it
        plain = proc(images=[make_pil(ImageSpec(**s)) for s in case["images"]], text=case["text"])
        assert not np.array_equal(plain.pixel_values, out.pixel_values)


def test_chat_rendering_matches_transformers(setup):
    _, proc, ref = setup
    for case in CASES["chat_cases"]:
        messages = json.loads(json.dumps(case["messages"]))
        assert proc.apply_chat_template(messages, add_generation_prompt=True) == str(ref[f"{case['name']}.text"][0])


def test_pil_image_with_exif_is_transposed():
    # transformers applies EXIF orientation when it loads a file (load_image / decode_image); captionaura also
    # applies it to Pillow images handed over directly (transformers uses those as they are).
    proc = Lfm2VlProcessor.from_pretrained(FIX / "lfm2vl_450m")
    ref = np.load(FIX / "lfm2vl_450m" / "reference.npz")
    case = next(c for c in CASES["cases"] if c["name"] == "exif_rotate_90")
    pil = Image.open(io.BytesIO(make_png_bytes(ImageSpec(**case["images"][0]))))
    out = proc(images=[pil], text=case["text"])
    np.testing.assert_array_equal(out.input_ids, ref["exif_rotate_90.input_ids"])
    _check_pixels(out, ref, "exif_rotate_90")


def test_array_and_path_inputs(tmp_path):
    proc = Lfm2VlProcessor.from_pretrained(FIX / "lfm2vl_1_6b")
    ref = np.load(FIX / "lfm2vl_1_6b" / "reference.npz")
    case = next(c for c in CASES["cases"] if c["name"] == "wide_tiled_1500x400")
    spec = ImageSpec(**case["images"][0])
    arr = np.asarray(make_input(spec))
    path = tmp_path / "img.png"
    path.write_bytes(make_png_bytes(spec))
    for image in (arr, str(path), path, path.read_bytes()):
        out = proc(images=image, text=case["text"])
        np.testing.assert_array_equal(out.input_ids, ref["wide_tiled_1500x400.input_ids"])
        _check_pixels(out, ref, "wide_tiled_1500x400")


def test_save_pretrained_round_trip(tmp_path):
    small = Lfm2VlProcessor.from_pretrained(FIX / "lfm2vl_450m")
    small.save_pretrained(tmp_path / "small")
    assert Lfm2VlProcessor.from_pretrained(tmp_path / "small").image_config == small.image_config
    proc = Lfm2VlProcessor.from_pretrained(FIX / "lfm2vl_1_6b")
    proc.save_pretrained(tmp_path)
    again = Lfm2VlProcessor.from_pretrained(tmp_path)
    assert again.image_config == proc.image_config
    ref = np.load(FIX / "lfm2vl_1_6b" / "reference.npz")
    case = next(c for c in CASES["cases"] if c["name"] == "multi_three")
    out = _run_case(again, case)
    np.testing.assert_array_equal(out.input_ids, ref["multi_three.input_ids"])
    _check_pixels(out, ref, "multi_three")


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------
def _file_image_config(name: str) -> dict:
    return json.loads((FIX / name / "processor_config.json").read_text())["image_processor"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_read_from_checkpoint(name):
    cfg = ImageProcessorConfig.from_pretrained(FIX / name)
    want = _file_image_config(name)
    for key in ("use_thumbnail", "max_pixels_tolerance", "min_tiles", "max_tiles", "tile_size",
                "min_image_tokens", "max_image_tokens", "encoder_patch_size", "downsample_factor",
                "do_image_splitting", "rescale_factor", "resample", "max_num_patches"):
        assert getattr(cfg, key) == want[key], key
    assert list(cfg.image_mean) == want["image_mean"] and list(cfg.image_std) == want["image_std"]
    # transformers pads to max(max_image_tokens * f^2, (tile / p)^2) = 1024 for both checkpoints
    assert cfg.padded_num_patches == 1024 and cfg.tokens_per_tile == 256


def test_use_image_special_tokens_from_file_is_ignored_like_transformers():
    # the nosplit folder's processor_config.json says false; transformers 5.23 keeps True (checked by the
    # fixture script), and so does captionaura
    assert json.loads((FIX / "lfm2vl_nosplit" / "processor_config.json").read_text())["use_image_special_tokens"] \
        is False
    assert _load("lfm2vl_nosplit")[0].use_image_special_tokens is True
    cfg = _load("lfm2vl_nosplit")[0].image_config
    assert not cfg.do_image_splitting and cfg.padded_num_patches == 512


def test_config_checkpoint_differences():
    small = ImageProcessorConfig.from_pretrained(FIX / "lfm2vl_450m")
    large = ImageProcessorConfig.from_pretrained(FIX / "lfm2vl_1_6b")
    assert (small.use_thumbnail, small.max_pixels_tolerance) == (False, 2.0)
    assert (large.use_thumbnail, large.max_pixels_tolerance) == (True, 1.5)


def test_legacy_layout_reads_flat_processor_config():
    legacy = ImageProcessorConfig.from_pretrained(FIX / "lfm2vl_legacy_450m")
    nested = ImageProcessorConfig.from_pretrained(FIX / "lfm2vl_450m")
    for f in ("use_thumbnail", "max_pixels_tolerance", "min_tiles", "max_tiles", "tile_size", "min_image_tokens",
              "max_image_tokens", "encoder_patch_size", "downsample_factor", "image_mean", "image_std",
              "rescale_factor", "resample"):
        assert getattr(legacy, f) == getattr(nested, f), f


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="min_tiles"):
        ImageProcessorConfig(min_tiles=5, max_tiles=2)
    with pytest.raises(NotImplementedError, match="bilinear"):
        ImageProcessorConfig(resample=3)
    with pytest.raises(FileNotFoundError):
        ImageProcessorConfig.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# geometry rules (expected values from Python semantics and the LFM2-VL spec, lfm2.md §4.2)
# ---------------------------------------------------------------------------------------------------------
def test_round_by_factor_is_half_to_even():
    assert round_by_factor(400, 32) == 384  # 12.5 -> 12
    assert round_by_factor(272, 32) == 256  # 8.5 -> 8
    assert round_by_factor(48, 32) == 64  # 1.5 -> 2
    assert round_by_factor(80, 32) == 64  # 2.5 -> 2


def test_smart_resize_worked_examples():
    cfg = ImageProcessorConfig()
    assert smart_resize(256, 384, cfg) == (256, 384)
    assert smart_resize(100, 100, cfg) == (256, 256)
    assert smart_resize(480, 640, cfg) == (416, 576)
    assert smart_resize(720, 1280, cfg) == (384, 672)


def test_target_ratio_order():
    want = [(1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1), (3, 2),
            (2, 3), (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3), (9, 1), (2, 5), (5, 2),
            (10, 1), (1, 10)]
    assert target_ratios(2, 10) == want
    assert choose_grid(1024, 1024, ImageProcessorConfig()) == (2, 2)


# ---------------------------------------------------------------------------------------------------------
# tokenizer and chat template
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=CONFIGS)
def text_setup(request):
    folder = FIX / request.param
    return Tokenizer.from_pretrained(folder), json.loads((folder / "text_reference.json").read_text())


def test_tokenizer_matches_transformers(text_setup):
    tok, ref = text_setup
    for entry in ref["encode"]:
        assert tok.encode(entry["text"]) == entry["ids"], entry["text"]
        assert tok.encode(entry["text"], add_special_tokens=False) == entry["ids_no_special"], entry["text"]
        assert tok.decode(entry["ids"]) == entry["decoded"], entry["text"]
        assert tok.decode(entry["ids"], skip_special_tokens=True) == entry["decoded_skip"], entry["text"]


def test_tokenizer_round_trip(text_setup):
    tok, ref = text_setup
    for entry in ref["encode"]:
        assert tok.decode(tok.encode(entry["text"], add_special_tokens=False)) == entry["text"]


def test_special_token_ids(text_setup):
    tok, _ = text_setup
    # LFM2-VL's real ids (lfm2.md §4.7), also asserted against the tokenizer by the fixture script
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 7, 0)
    assert tok.token_to_id("<image>") == 396
    assert tok.token_to_id("<|img_row_1_col_1|>") == 397 and tok.token_to_id("<|img_row_2_col_3|>") == 409
    assert [tok.token_to_id(t) for t in ("<|img_thumbnail|>", "<|image_start|>", "<|image_end|>")] == [497, 498, 499]
    with pytest.raises(KeyError):
        tok.token_to_id("<not a token>")


def test_chat_template_matches_transformers(text_setup):
    tok, ref = text_setup
    for entry in ref["template"]:
        text = tok.apply_chat_template(entry["messages"], add_generation_prompt=entry["add_generation_prompt"])
        assert text == entry["rendered"]
        ids = tok.apply_chat_template(entry["messages"], add_generation_prompt=entry["add_generation_prompt"],
                                      tokenize=True)
        assert ids == entry["ids"]
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # no double BOS


def test_chat_template_raise_exception_and_tojson():
    tok = Tokenizer.from_pretrained(FIX / "lfm2vl_450m")
    template = "{% if messages|length == 0 %}{{ raise_exception('empty chat') }}{% endif %}{{ messages|tojson }}"
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="empty chat"):
        tok.apply_chat_template([], chat_template=template)
    # transformers' tojson: json.dumps(ensure_ascii=False), no HTML escaping
    msgs = [{"role": "user", "content": "<b>é</b>"}]
    assert tok.apply_chat_template(msgs, chat_template=template) == json.dumps(msgs, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------------
# bad input: each a clear exception
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def proc450():
    return Lfm2VlProcessor.from_pretrained(FIX / "lfm2vl_450m")


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _png_with_header_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims width x height (a decompression bomb's header)."""
    data = bytearray(_png(1, 1))
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_corrupt_bytes(proc450):
    with pytest.raises(ImageLoadError, match="cannot decode"):
        proc450(images=b"this is not an image", text="<image>")
    truncated = _png(64, 64)[:-30]
    with pytest.raises(ImageLoadError):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


def test_zero_size_image():
    with pytest.raises(ImageLoadError, match="zero size"):
        load_image(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ImageLoadError, match="zero size"):
        load_image(Image.new("RGB", (0, 7)))


def test_decompression_bomb(proc450):
    bomb = _png_with_header_size(50_000, 50_000)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        proc450(images=bomb, text="<image>")
    with pytest.raises(ImageLoadError, match="limit"):
        load_image(_png(200, 200), max_pixels=10_000)


def test_unsupported_mode_dtype_shape(proc450):
    with pytest.raises(ImageLoadError, match="unsupported image mode"):
        load_image(Image.new("F", (8, 8)))
    with pytest.raises(ImageLoadError, match="uint8"):
        load_image(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(TypeError):
        load_image(12345)
    with pytest.raises(FileNotFoundError):
        load_image("/nonexistent/image.png")


def test_marker_count_mismatch(proc450):
    img = np.full((40, 30, 3), 128, dtype=np.uint8)
    with pytest.raises(ValueError, match="2 <image> marker"):
        proc450(images=[img], text="<image> and <image>")
    with pytest.raises(ValueError, match="1 <image> marker"):
        proc450(images=[img, img], text="only <image>")
    with pytest.raises(ValueError, match="marker"):
        proc450(text="<image> without images")
    with pytest.raises(ValueError, match="text"):
        proc450(images=[img])
    with pytest.raises(ValueError, match=r"\[1, 0\] <image> marker.*\[0, 1\] image"):
        proc450(images=[[], [img]], text=["<image>", "none"])
    with pytest.raises(ValueError, match="'image', 'path' or 'url'"):
        proc450(messages=[{"role": "user", "content": [{"type": "image"}]}])


# ---------------------------------------------------------------------------------------------------------
# resize invariants (exactness against torch is covered by the fixtures above)
# ---------------------------------------------------------------------------------------------------------
def test_resize_identity_and_constant():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_bilinear_aa(img, 37, 53), img)
    const = np.full((91, 17, 3), 200, dtype=np.uint8)
    for h, w in ((5, 300), (300, 5), (91, 17), (1, 1)):
        assert np.all(resize_bilinear_aa(const, h, w) == 200)
