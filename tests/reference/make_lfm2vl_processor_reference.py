#!/usr/bin/env python3
"""Generate the LFM2-VL processor fixtures (image preprocessing, tokenizer, chat template, <image> expansion).

Run by hand (never by the test suite), offline, with the reference virtual environment:

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0 transformers==5.23.0 tokenizers pillow numpy jinja2
    .venv-ref/bin/pip download torchvision==0.28.0 --no-deps -d /tmp/tv
    .venv-ref/bin/pip install --no-deps /tmp/tv/torchvision-0.28.0-*.whl
    .venv-ref/bin/python tests/reference/make_lfm2vl_processor_reference.py

Why torchvision: transformers 5.23 has exactly one LFM2-VL image processor, ``Lfm2VlImageProcessor``
(models/lfm2_vl/image_processing_lfm2_vl.py), a ``TorchvisionBackend`` that imports
``torchvision.transforms.v2.functional`` at module level; there is no PIL/NumPy variant. The only torchvision
wheel for torch 2.13.0 on the package index is 0.28.0, built for CUDA: installed with ``--no-deps`` next to the
CPU torch, its compiled ops (``torchvision/_C.so``: nms, roi_align, ...) cannot load (no libtorch_cuda), which
torchvision tolerates except for two ``register_fake`` calls. `_import_torchvision` declares those two op schemas
first, so the pure-Python ``transforms.v2.functional`` imports. Nothing in the LFM2-VL path uses the compiled
ops: ``resize`` calls torch's own ``interpolate`` (on an AVX2/AVX512 CPU: the native uint8 antialiased kernel).
torchvision's image decoders (``image.so``) do not load either, so images are given to the processor as
Pillow images produced by ``transformers.image_utils.load_image`` (EXIF transpose + ``convert("RGB")``), which
is also what transformers' documented loading path returns.

Output, under ``tests/reference/fixtures/lfm2vl_processor/``:

* ``<config>/``: a checkpoint folder without weights: ``tokenizer.json`` (a tiny byte-level BPE trained here on a
  generated corpus, with LFM2's special tokens at their real ids 0..500), ``tokenizer_config.json``,
  ``chat_template.jinja`` (LFM2-VL's template verbatim), ``processor_config.json`` (nested ``image_processor``,
  the current hub layout). ``lfm2vl_450m``: no thumbnail, tolerance 2.0; ``lfm2vl_1_6b``: thumbnail,
  tolerance 1.5; ``lfm2vl_nosplit`` (synthetic: ``do_image_splitting`` off, 32..128 image tokens,
  ``use_image_special_tokens`` false in the file, which transformers 5.23 ignores, so the cases pass
  ``use_image_special_tokens=False`` at call time; a subset of the cases); ``lfm2vl_legacy_450m``: only the two config files of the older remote-code layout (flat
  ``processor_config.json`` + SigLIP2 ``preprocessor_config.json``) for config-reading tests (transformers 5.23
  cannot load that layout as an LFM2-VL processor).
* ``<config>/reference.npz``: per case ``<case>.input_ids`` / ``.attention_mask`` (int64, (B, T)),
  ``.pixel_attention_mask`` (int32), ``.spatial_shapes`` (int64), ``.pixel_shape`` (the full ``pixel_values``
  shape) and the pixel values in a lossless compact form: the valid (unpadded) patch rows of ``pixel_values``
  as u = x*127.5 + 127.5 in uint8, which is exact because mean = std = 0.5 (the script asserts
  ``(u - 127.5) / 127.5 == pixel_values`` bit for bit in float32, and that padded rows are exactly 0);
  ``.pixel_sha256`` = one SHA-256 per tile of its u rows (C-order bytes), ``.pixel_sample_rows`` /
  ``.pixel_sample_u8`` = every 61st valid row (and each tile's first and last) in full, ``.text`` (the prompt transformers tokenised, for chat cases the rendered
  template) and ``.expanded`` (the decoded input ids, for readable diffs).
* ``cases.json``: the case list (image specs for ``lfm2vl_images.ImageSpec``, prompts, messages).
* ``<config>/text_reference.json``: tokenizer encodings / decodings and chat-template renderings.
* ``versions.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lfm2vl_images import ImageSpec, make_pil, make_png_bytes  # noqa: E402

OUT = HERE / "fixtures" / "lfm2vl_processor"

# ------------------------------------------------------------------------------------------------------------
# tokenizer
# ------------------------------------------------------------------------------------------------------------
SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
NAMED = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>",
         "<|im_start|>", "<|im_end|>", "<|tool_list_start|>", "<|tool_list_end|>", "<|tool_call_start|>",
         "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>"]


def special_tokens() -> list[str]:
    """LFM2-VL's control tokens in id order 0..500 (reserved fillers between 14 and 395)."""
    toks = list(NAMED)
    toks += [f"<|reserved_{i - 10}|>" for i in range(14, 396)]
    toks.append("<image>")  # 396
    toks += [f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11)]  # 397..496
    toks += ["<|img_thumbnail|>", "<|image_start|>", "<|image_end|>", "<|image_split|>"]  # 497..500
    assert len(toks) == 501 and toks[396] == "<image>" and toks[398] == "<|img_row_1_col_2|>"
    assert toks[407] == "<|img_row_2_col_1|>" and toks[496] == "<|img_row_10_col_10|>"
    return toks


def corpus() -> list[str]:
    rng = np.random.default_rng(7)
    words = ("a the photo of cat dog sitting on red blue green table image shows person man woman child car "
             "street building tree sky cloud water boat beach mountain snow computer phone book cup coffee "
             "what is in this picture describe detail colour color caption two three many small large "
             "it's they're we've I'm don't can't won't hello world Liquid AI multimodal assistant helpful "
             "naïve café über straße 東京 日本語 emoji 🙂 numbers 12 345 6789 2026").split()
    lines = []
    for _ in range(3000):
        n = int(rng.integers(3, 14))
        s = " ".join(rng.choice(words, n))
        if rng.random() < 0.3:
            s = s.capitalize() + rng.choice([".", "?", "!", ",", ";", " :)"])
        if rng.random() < 0.1:
            s += "\n" + " ".join(rng.choice(words, 3))
        lines.append(s)
    return lines


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=1400, special_tokens=special_tokens(), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A", pair="<|startoftext|> $A <|startoftext|> $B",
        special_tokens=[("<|startoftext|>", 1)])
    for i, t in enumerate(special_tokens()):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


CHAT_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer_config() -> dict:
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for i, t in enumerate(special_tokens())}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|im_end|>",
        "extra_special_tokens": {"image_end_token": "<|image_end|>", "image_start_token": "<|image_start|>",
                                 "image_thumbnail": "<|img_thumbnail|>", "image_token": "<image>"},
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<|pad|>",
        "processor_class": "Lfm2VlProcessor",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "use_default_system_prompt": False,
    }


def image_processor_config(use_thumbnail: bool, tolerance: float, type_name: str) -> dict:
    return {
        "image_processor_type": type_name,
        "do_image_splitting": True, "downsample_factor": 2, "encoder_patch_size": 16,
        "max_image_tokens": 256, "min_image_tokens": 64, "max_num_patches": 1024,
        "max_pixels_tolerance": tolerance, "max_tiles": 10, "min_tiles": 2, "tile_size": 512,
        "use_thumbnail": use_thumbnail,
        "do_normalize": True, "do_rescale": True, "rescale_factor": 0.00392156862745098,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
        "do_pad": True, "do_resize": True,
    }


CONFIGS = {
    "lfm2vl_450m": image_processor_config(False, 2.0, "Lfm2VlImageProcessorFast"),
    "lfm2vl_1_6b": image_processor_config(True, 1.5, "Lfm2VlImageProcessor"),
    # not a real checkpoint: splitting off, smaller token budget, no image special tokens
    "lfm2vl_nosplit": {**image_processor_config(True, 2.0, "Lfm2VlImageProcessor"), "do_image_splitting": False,
                       "min_image_tokens": 32, "max_image_tokens": 128, "max_num_patches": 512},
}
USE_IMAGE_SPECIAL_TOKENS = {"lfm2vl_nosplit": False}
#: the cases run for the (synthetic) nosplit config; the real-checkpoint configs run all cases
NOSPLIT_CASES = {"tiny_40x30", "square_512", "wide_1000x200", "wide_tiled_1500x400", "big_2000x1500",
                 "multi_three", "batch_two", "chat_system_two_images"}


def write_folder(name: str, tok, image_cfg: dict | None) -> Path:
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    if image_cfg is not None:
        proc = {"image_processor": image_cfg, "processor_class": "Lfm2VlProcessor",
                "use_image_special_tokens": USE_IMAGE_SPECIAL_TOKENS.get(name, True)}
        (folder / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    return folder


def write_legacy_folder() -> None:
    folder = OUT / "lfm2vl_legacy_450m"  # image-processor config files only
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "processing_lfm2_vl.Lfm2VlProcessor"},
        "do_image_splitting": True, "downsample_factor": 2, "encoder_patch_size": 16, "max_image_tokens": 256,
        "max_num_patches": 1024, "max_pixels_tolerance": 2.0, "max_tiles": 10, "min_image_tokens": 64,
        "min_tiles": 2, "processor_class": "Lfm2VlProcessor", "tile_size": 512,
        "use_image_special_tokens": True, "use_thumbnail": False}, indent=2) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "processing_lfm2_vl.Lfm2VlProcessor"}, "do_convert_rgb": None,
        "do_normalize": True, "do_rescale": True, "do_resize": False, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Siglip2ImageProcessor", "image_std": [0.5, 0.5, 0.5],
        "input_data_format": "channels_last", "max_num_patches": 1024, "patch_size": 16,
        "processor_class": "Lfm2VlProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
        "return_tensors": "pt"}, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------------------------
def S(w, h, mode="RGB", seed=0, exif=None):
    return {"width": w, "height": h, "mode": mode, "seed": seed, "exif_orientation": exif}


Q = "<|startoftext|><|im_start|>user\n"
A = "<|im_end|>\n<|im_start|>assistant\n"
CASES = [
    # name, images, text (one string, or a list = a padded batch)
    {"name": "tiny_40x30", "images": [S(40, 30, seed=1)], "text": Q + "<image>What is in this image?" + A},
    {"name": "square_512", "images": [S(512, 512, seed=2)], "text": Q + "<image>Describe it." + A},
    {"name": "wide_1000x200", "images": [S(1000, 200, seed=3)], "text": Q + "<image>Caption:" + A},
    {"name": "tall_250x900", "images": [S(250, 900, seed=4)], "text": Q + "<image>" + A},
    {"name": "wide_tiled_1500x400", "images": [S(1500, 400, seed=5)], "text": Q + "<image>Wide." + A},
    {"name": "tall_tiled_400x1500", "images": [S(400, 1500, seed=6)], "text": Q + "<image>Tall." + A},
    {"name": "grid_1200x1800", "images": [S(1200, 1800, seed=7)], "text": Q + "<image>" + A},
    {"name": "big_2000x1500", "images": [S(2000, 1500, seed=8)], "text": Q + "<image>Big." + A},
    {"name": "tolerance_700x560", "images": [S(700, 560, seed=9)], "text": Q + "<image>" + A},
    {"name": "halves_80x400", "images": [S(80, 400, seed=10)], "text": Q + "<image>" + A},
    {"name": "halves_400x272", "images": [S(400, 272, seed=15)], "text": Q + "<image>" + A},
    {"name": "tie_900x720", "images": [S(900, 720, seed=16)], "text": Q + "<image>" + A},
    {"name": "tie_1250x1000", "images": [S(1250, 1000, seed=17)], "text": Q + "<image>" + A},
    {"name": "odd_333x517", "images": [S(333, 517, seed=11)], "text": Q + "<image>" + A},
    {"name": "multi_three", "images": [S(40, 30, seed=12), S(1500, 400, seed=13), S(512, 512, seed=14)],
     "text": Q + "<image>First, <image> second and <image> third." + A},
    {"name": "mode_rgba", "images": [S(64, 48, "RGBA", seed=20)], "text": Q + "<image>" + A},
    {"name": "mode_la", "images": [S(64, 48, "LA", seed=21)], "text": Q + "<image>" + A},
    {"name": "mode_l", "images": [S(64, 48, "L", seed=22)], "text": Q + "<image>" + A},
    {"name": "mode_p", "images": [S(64, 48, "P", seed=23)], "text": Q + "<image>" + A},
    {"name": "mode_cmyk", "images": [S(64, 48, "CMYK", seed=24)], "text": Q + "<image>" + A},
    {"name": "mode_i16", "images": [S(64, 48, "I;16", seed=25)], "text": Q + "<image>" + A},
    {"name": "exif_rotate_90", "images": [S(90, 40, seed=26, exif=6)], "text": Q + "<image>" + A},
    {"name": "exif_mirror_flip", "images": [S(70, 50, seed=27, exif=7)], "text": Q + "<image>" + A},
    {"name": "batch_two", "images": [S(100, 60, seed=28), S(60, 100, seed=29)],
     "text": [Q + "<image>One." + A, Q + "Two: <image> is a longer prompt with more words." + A]},
    {"name": "text_only", "images": [], "text": Q + "Hello, how are you?" + A},
]

# Run with do_convert_rgb=True and the raw Pillow image (no load_image): alpha composited onto white.
CONVERT_RGB_CASES = [
    {"name": "convert_rgb_rgba", "images": [S(64, 48, "RGBA", seed=30)], "text": Q + "<image>" + A},
    {"name": "convert_rgb_la", "images": [S(64, 48, "LA", seed=31)], "text": Q + "<image>" + A},
    {"name": "convert_rgb_cmyk", "images": [S(64, 48, "CMYK", seed=32)], "text": Q + "<image>" + A},
]

CHAT_CASES = [
    {"name": "chat_one_image", "images": [S(300, 200, seed=40)],
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]},
    {"name": "chat_system_two_images", "images": [S(640, 480, seed=41), S(1300, 500, seed=42)],
     "messages": [{"role": "system", "content": "You are a helpful multimodal assistant by Liquid AI."},
                  {"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "image"},
                                               {"type": "text", "text": " and "}, {"type": "image"}]}]},
    {"name": "chat_multi_turn", "images": [S(128, 96, seed=43)],
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
                  {"role": "assistant", "content": "A pattern of rings."},
                  {"role": "user", "content": "What colour is it?"}]},
]

TEXT_STRINGS = ["Hello world", "A photo of a cat sitting on a red table.", "  leading spaces and\ttabs\n",
                "naïve café über straße 東京 🙂", "It's what they're doing, isn't it ? I'm sure !",
                "<|im_start|>user\n<image>hi<|im_end|>", "numbers 1234567 and 2026-11-23",
                "<|image_start|><|img_row_1_col_2|><image><image><|img_thumbnail|><|image_end|>", ""]

TEMPLATE_CASES = [
    {"messages": [{"role": "user", "content": "Hi there"}], "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Hi there"}], "add_generation_prompt": False},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Caption this."},
                  {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "More detail?"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                               {"type": "text", "text": "Two images."}]}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "text only list"}]}],
     "add_generation_prompt": True},
]


# ------------------------------------------------------------------------------------------------------------
# running transformers
# ------------------------------------------------------------------------------------------------------------
def _import_torchvision():
    import torch

    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841  (kept alive for the process)
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _import_torchvision.lib = lib
    import torchvision  # noqa: F401

    return torchvision


def reference_image(spec: dict, tmp: Path):
    """What transformers gets: ``load_image`` of the PNG file (EXIF cases) or of the Pillow image."""
    from transformers.image_utils import load_image

    s = ImageSpec(**spec)
    if s.exif_orientation is not None:
        path = tmp / f"exif_{s.seed}.png"
        path.write_bytes(make_png_bytes(s))
        return load_image(str(path))
    return load_image(make_pil(s))


SAMPLE_STRIDE = 61


def tile_digest(rows_u8: np.ndarray) -> str:
    """SHA-256 of one tile's valid patch rows as C-order uint8 bytes (the tests hash theirs the same way)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(rows_u8, dtype=np.uint8).tobytes()).hexdigest()


def store(out: dict, case: str, enc, text, tok) -> None:
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    out[f"{case}.input_ids"] = ids
    out[f"{case}.attention_mask"] = np.asarray(enc["attention_mask"], dtype=np.int64)
    out[f"{case}.text"] = np.array(text if isinstance(text, list) else [text])
    out[f"{case}.expanded"] = np.array([tok.decode(row) for row in ids])
    if "pixel_values" in enc:
        pv = np.asarray(enc["pixel_values"])
        mask = np.asarray(enc["pixel_attention_mask"])
        assert pv.dtype == np.float32 and mask.dtype == np.int32, (pv.dtype, mask.dtype)
        assert np.all(pv[mask == 0] == 0.0), "padded patch rows are not zero"
        valid = pv[mask == 1]
        u = np.rint(valid.astype(np.float64) * 127.5 + 127.5)
        assert u.min() >= 0 and u.max() <= 255
        u8 = u.astype(np.uint8)
        back = (u8.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
        assert np.array_equal(back, valid), "uint8 storage would not reproduce pixel_values exactly"
        # Full values would be ~30 MB per config: keep a SHA-256 of every tile's uint8 rows (exact check) and every
        # SAMPLE_STRIDE-th valid patch row (plus each tile's first and last) in full (diagnostics).
        counts = mask.sum(axis=1)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out[f"{case}.pixel_sha256"] = np.array([tile_digest(u8[a:a + n]) for a, n in zip(starts, counts)])
        rows = sorted(set(range(0, len(u8), SAMPLE_STRIDE)) | set(starts.tolist())
                      | set((starts + counts - 1).tolist()))
        out[f"{case}.pixel_sample_rows"] = np.array(rows, dtype=np.int64)
        out[f"{case}.pixel_sample_u8"] = u8[rows]
        out[f"{case}.pixel_shape"] = np.array(pv.shape, dtype=np.int64)
        out[f"{case}.pixel_attention_mask"] = mask
        out[f"{case}.spatial_shapes"] = np.asarray(enc["spatial_shapes"])
        assert out[f"{case}.spatial_shapes"].dtype == np.int64


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tokenizers
    import torch
    import transformers

    torch.set_num_threads(1)
    tv = _import_torchvision()
    from transformers import AutoProcessor, AutoTokenizer

    OUT.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    cases_out = {"nosplit_cases": sorted(NOSPLIT_CASES), "cases": CASES, "chat_cases": CHAT_CASES, "convert_rgb_cases": CONVERT_RGB_CASES, "text_strings": TEXT_STRINGS,
                 "template_cases": TEMPLATE_CASES}
    (OUT / "cases.json").write_text(json.dumps(cases_out, indent=1, ensure_ascii=False) + "\n")
    write_legacy_folder()
    for name, cfg in CONFIGS.items():
        folder = write_folder(name, tok, cfg)
        proc = AutoProcessor.from_pretrained(str(folder))
        ip = proc.image_processor
        assert type(ip).__name__ == "Lfm2VlImageProcessor", type(ip)
        assert ip.use_thumbnail == cfg["use_thumbnail"] and ip.max_pixels_tolerance == cfg["max_pixels_tolerance"]
        # transformers 5.23 drops processor_config.json's use_image_special_tokens (not an explicit __init__
        # argument of Lfm2VlProcessor, so validate_init_kwargs discards it): the class default True stays.
        assert proc.use_image_special_tokens is True
        call_kwargs = {"use_image_special_tokens": USE_IMAGE_SPECIAL_TOKENS[name]} \
            if name in USE_IMAGE_SPECIAL_TOKENS else {}
        out: dict[str, np.ndarray] = {}
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            for case in CASES:
                if name in USE_IMAGE_SPECIAL_TOKENS and case["name"] not in NOSPLIT_CASES:
                    continue
                images = [reference_image(s, tmp) for s in case["images"]] or None
                text = case["text"]
                kwargs = {}
                if isinstance(text, list):  # a batch: images nested per prompt, padded
                    it = iter(images)
                    images = [[next(it) for _ in range(t.count("<image>"))] for t in text]
                    kwargs = {"padding": True}
                enc = proc(images=images, text=text, return_tensors="np", **kwargs, **call_kwargs)
                store(out, case["name"], enc, text, proc.tokenizer)
            for case in CHAT_CASES:
                if name in USE_IMAGE_SPECIAL_TOKENS and case["name"] not in NOSPLIT_CASES:
                    continue
                msgs = json.loads(json.dumps(case["messages"]))
                images = [reference_image(s, tmp) for s in case["images"]]
                it = iter(images)
                for m in msgs:
                    if isinstance(m["content"], list):
                        for item in m["content"]:
                            if item["type"] == "image":
                                item["image"] = next(it)
                rendered = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
                enc = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="np", **call_kwargs)
                direct = proc(images=images, text=rendered, return_tensors="np", **call_kwargs)
                assert np.array_equal(np.asarray(enc["input_ids"]), np.asarray(direct["input_ids"]))
                store(out, case["name"], enc, rendered, proc.tokenizer)
            # do_convert_rgb=True on Pillow images handed over directly: transformers composites alpha onto white
            for case in CONVERT_RGB_CASES:
                if name in USE_IMAGE_SPECIAL_TOKENS:
                    continue
                images = [make_pil(ImageSpec(**s)) for s in case["images"]]
                enc = proc(images=images, text=case["text"], return_tensors="np", do_convert_rgb=True)
                store(out, case["name"], enc, case["text"], proc.tokenizer)
        np.savez_compressed(folder / "reference.npz", **out)

        # tokenizer + chat template (the AutoTokenizer of the folder, as transformers loads it)
        htok = AutoTokenizer.from_pretrained(str(folder))
        text_ref = {"tokenizer_class": type(htok).__name__, "encode": [], "template": []}
        for s in TEXT_STRINGS:
            with_special = htok(s)["input_ids"]
            without = htok(s, add_special_tokens=False)["input_ids"]
            text_ref["encode"].append({
                "text": s, "ids": with_special, "ids_no_special": without,
                "decoded": htok.decode(with_special), "decoded_skip": htok.decode(with_special,
                                                                                  skip_special_tokens=True)})
        for tc in TEMPLATE_CASES:
            rendered = htok.apply_chat_template(tc["messages"], add_generation_prompt=tc["add_generation_prompt"],
                                                tokenize=False)
            text_ref["template"].append({**tc, "rendered": rendered,
                                         "ids": htok(rendered, add_special_tokens=False)["input_ids"]})
        (folder / "text_reference.json").write_text(json.dumps(text_ref, indent=1, ensure_ascii=False) + "\n")
        print(f"{name}: {len(out)} arrays, {(folder / 'reference.npz').stat().st_size / 1e6:.2f} MB")

    versions = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": tv.__version__,
                "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "numpy": np.__version__, "pillow": __import__("PIL").__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    (OUT / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")


if __name__ == "__main__":
    main()
