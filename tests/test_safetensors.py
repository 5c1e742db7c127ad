"""safetensors reader/writer of the C core: round trips, parity with the reference `safetensors` package,
dtype conversion, and every malformed-file case raising a clear Python exception (never a crash)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from captionaura import _core


def raw_file(path, header, data=b"", pad=True, length=None):
    """Writes a safetensors file by hand: `header` is a dict (serialised compactly) or raw str/bytes."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    if pad:
        header += b" " * ((8 - len(header) % 8) % 8)
    n = len(header) if length is None else length
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + header + data)
    return str(path)


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


@pytest.fixture
def sample():
    rng = np.random.default_rng(0)
    return {
        "model.embed_tokens.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "half": rng.standard_normal((3, 2, 2)).astype(np.float16),
        "double": rng.standard_normal(4),
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "i32": np.array([-1, 2, 3], dtype=np.int32),
        "i16": np.array([-7], dtype=np.int16),
        "i8": np.array([-3, 4], dtype=np.int8),
        "bytes": np.arange(10, dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


# ---------------------------------------------------------------------------------------------------------
# round trips and format details


def test_round_trip_all_dtypes(tmp_path, sample):
    path = str(tmp_path / "m.safetensors")
    _core.safetensors_save(path, sample, metadata={"format": "pt", "note": "ünïcode ✓"})
    assert not os.path.exists(path + ".tmp")
    loaded = _core.safetensors_load(path)
    assert list(loaded) == list(sample)
    for name, arr in sample.items():
        got = loaded[name]
        assert got.shape == arr.shape, name
        if arr.dtype.kind == "f":
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, arr.astype(np.float32))
        else:
            assert got.dtype == arr.dtype
            np.testing.assert_array_equal(got, arr)
    assert _core.safetensors_metadata(path) == {"format": "pt", "note": "ünïcode ✓"}


def test_header_listing_and_alignment(tmp_path, sample):
    path = str(tmp_path / "m.safetensors")
    _core.safetensors_save(path, sample)
    header = _core.safetensors_header(path)
    assert [h[0] for h in header] == list(sample)
    offset = 0
    for (name, dtype, shape, begin, end), arr in zip(header, sample.values()):
        assert shape == arr.shape
        assert (begin, end) == (offset, offset + arr.nbytes), name
        offset = end
    assert dict((h[0], h[1]) for h in header)["half"] == "F16"
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    assert (8 + n) % 8 == 0  # the data buffer starts 8-byte aligned, as the reference writer pads
    text = raw[8 : 8 + n].decode()
    assert text.startswith("{") and json.loads(text)  # padding is trailing spaces
    assert len(raw) == 8 + n + offset


def test_non_contiguous_and_byteswapped_inputs(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = str(tmp_path / "m.safetensors")
    _core.safetensors_save(path, {"t": a.T, "be": a.astype(">f4"), "slice": a[:, ::2]})
    got = _core.safetensors_load(path)
    np.testing.assert_array_equal(got["t"], a.T)
    np.testing.assert_array_equal(got["be"], a)
    np.testing.assert_array_equal(got["slice"], a[:, ::2])


def test_load_selected_names(tmp_path, sample):
    path = str(tmp_path / "m.safetensors")
    _core.safetensors_save(path, sample)
    got = _core.safetensors_load(path, names=["ids", "half"])
    assert list(got) == ["ids", "half"]
    with pytest.raises(KeyError, match="nope"):
        _core.safetensors_load(path, names=["nope"])


def test_overwrite_is_atomic_and_leaves_no_tmp(tmp_path):
    path = str(tmp_path / "m.safetensors")
    _core.safetensors_save(path, {"a": np.ones(3, np.float32)})
    _core.safetensors_save(path, {"b": np.zeros(2, np.float32)})
    assert list(_core.safetensors_load(path)) == ["b"]
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_save_into_missing_directory_is_oserror(tmp_path):
    with pytest.raises(OSError):
        _core.safetensors_save(str(tmp_path / "nope" / "m.safetensors"), {"a": np.ones(1, np.float32)})


def test_bf16_via_uint16_override(tmp_path):
    x = np.array([1.0, -2.5, 3.1415927, 1e-40, np.inf, -np.inf, 65504.0, 1e38], dtype=np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncation: exactly representable values round-trip
    path = str(tmp_path / "m.safetensors")
    _core.safetensors_save(path, {"w": bits}, dtypes={"w": "BF16"})
    assert _core.safetensors_header(path)[0][1] == "BF16"
    got = _core.safetensors_load(path)["w"]
    np.testing.assert_array_equal(got.view(np.uint32), bits.astype(np.uint32) << 16)


def test_save_argument_errors(tmp_path):
    path = str(tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="'w'.*BF16"):
        _core.safetensors_save(path, {"w": np.zeros(2, np.uint16)})
    with pytest.raises(TypeError, match="'c'"):
        _core.safetensors_save(path, {"c": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError, match="'x' must be a numpy array"):
        _core.safetensors_save(path, {"x": [1.0]})
    with pytest.raises(ValueError, match="dtypes\\['w'\\]"):
        _core.safetensors_save(path, {"w": np.zeros(2, np.float32)}, dtypes={"w": "BF16"})
    with pytest.raises(ValueError, match="unknown dtype"):
        _core.safetensors_save(path, {"w": np.zeros(2, np.uint16)}, dtypes={"w": "Q4"})
    with pytest.raises(KeyError, match="other"):
        _core.safetensors_save(path, {"w": np.zeros(2, np.uint16)}, dtypes={"w": "BF16", "other": "BF16"})
    with pytest.raises(ValueError, match="__metadata__"):
        _core.safetensors_save(path, {"__metadata__": np.zeros(2, np.float32)})
    with pytest.raises(TypeError, match="metadata"):
        _core.safetensors_save(path, {"w": np.zeros(2, np.float32)}, metadata={"a": 1})
    assert not os.path.exists(path) and not os.path.exists(path + ".tmp")


# ---------------------------------------------------------------------------------------------------------
# conversion to float32


def test_f16_conversion_every_bit_pattern(tmp_path):
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    path = str(tmp_path / "h.safetensors")
    _core.safetensors_save(path, {"h": bits.view(np.float16)})
    got = _core.safetensors_load(path)["h"]
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # ±0, subnormals, inf


def test_bf16_conversion_every_bit_pattern(tmp_path):
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    path = str(tmp_path / "b.safetensors")
    _core.safetensors_save(path, {"b": bits}, dtypes={"b": "BF16"})
    got = _core.safetensors_load(path)["b"]
    np.testing.assert_array_equal(got.view(np.uint32), bits.astype(np.uint32) << 16)


def test_f64_conversion_rounds_and_overflows_to_inf(tmp_path):
    x = np.array([0.1, -1e-300, 1e300, -1e300, np.nan, 3.4028235e38, 3.4028236e38, 1.0 / 3.0])
    path = str(tmp_path / "d.safetensors")
    _core.safetensors_save(path, {"d": x})
    got = _core.safetensors_load(path)["d"]
    with np.errstate(over="ignore"):
        want = x.astype(np.float32)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------------------
# parity with the reference implementation


def test_parity_with_reference_package(tmp_path, sample):
    st_numpy = pytest.importorskip("safetensors.numpy")
    ref_path = str(tmp_path / "ref.safetensors")
    ours_path = str(tmp_path / "ours.safetensors")
    st_numpy.save_file(sample, ref_path, metadata={"format": "np"})
    ours = _core.safetensors_load(ref_path)
    assert set(ours) == set(sample)
    for name, arr in sample.items():
        want = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
        np.testing.assert_array_equal(ours[name], want)
        assert ours[name].dtype == want.dtype
    assert _core.safetensors_metadata(ref_path) == {"format": "np"}

    _core.safetensors_save(ours_path, sample, metadata={"format": "np"})
    theirs = st_numpy.load_file(ours_path)
    assert set(theirs) == set(sample)
    for name, arr in sample.items():
        assert theirs[name].dtype == arr.dtype
        np.testing.assert_array_equal(theirs[name], arr)


# ---------------------------------------------------------------------------------------------------------
# malformed files: each a clear exception naming the tensor and the file


def valid_header():
    return {"a": entry("F32", [2], 0, 8), "b": entry("F32", [3], 8, 20)}


def test_truncated_file(tmp_path):
    path = str(tmp_path / "m.safetensors")
    _core.safetensors_save(path, {"a": np.ones(4, np.float32), "last.weight": np.ones(8, np.float32)})
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:-5])
    with pytest.raises(ValueError, match=r"m\.safetensors.*'last\.weight'.*out of range.*truncated"):
        _core.safetensors_load(path)
    open(path, "wb").write(raw[:5])
    with pytest.raises(ValueError, match="too small"):
        _core.safetensors_header(path)
    open(path, "wb").write(b"")
    with pytest.raises(ValueError, match="too small"):
        _core.safetensors_header(path)


def test_header_length_beyond_file(tmp_path):
    path = raw_file(tmp_path / "m.safetensors", valid_header(), b"\0" * 20, length=10**6)
    with pytest.raises(ValueError, match=r"m\.safetensors: header length 1000000 exceeds the file size"):
        _core.safetensors_header(path)
    path = raw_file(tmp_path / "m.safetensors", valid_header(), b"\0" * 20, length=2**64 - 1)
    with pytest.raises(ValueError, match="header length"):
        _core.safetensors_header(path)


def test_header_must_start_with_brace(tmp_path):
    path = raw_file(tmp_path / "m.safetensors", " " + json.dumps(valid_header()), b"\0" * 20)
    with pytest.raises(ValueError, match="start with '{'"):
        _core.safetensors_header(path)
    path = raw_file(tmp_path / "m.safetensors", b"", b"")
    with pytest.raises(ValueError, match="start with '{'"):
        _core.safetensors_header(path)


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},}', "expected a string key"),
        ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}', "unterminated"),
        ('{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', "unexpected character"),
        ('{"a": {"dtype": "F32", "shape": [02], "data_offsets": [0, 8]}}', "leading zero"),
        ('{"a\\x": 1}', "invalid escape"),
        ('{"\\ud800": 1}', "surrogate"),
        ("{\"a\": 1} x", "trailing characters"),
        ('{"a": "\x01"}', "control character"),
        ("[" * 100 + "]" * 100, "start with"),
        ('{"a":' + "[" * 100 + "]" * 100 + "}", "nesting too deep"),
    ],
)
def test_invalid_json_header(tmp_path, text, why):
    path = raw_file(tmp_path / "m.safetensors", text, b"\0" * 8)
    with pytest.raises(ValueError, match=why):
        _core.safetensors_header(path)


def test_invalid_utf8_header(tmp_path):
    path = raw_file(tmp_path / "m.safetensors", b'{"a\xff": 1}', b"")
    with pytest.raises(ValueError, match="UTF-8"):
        _core.safetensors_header(path)


def test_overlapping_offsets(tmp_path):
    h = {"a": entry("F32", [3], 0, 12), "b": entry("F32", [3], 8, 20)}
    path = raw_file(tmp_path / "m.safetensors", h, b"\0" * 20)
    with pytest.raises(ValueError, match=r"'a' \[0, 12\) and 'b' \[8, 20\) overlap"):
        _core.safetensors_header(path)
    # Same bytes twice (aliasing) is an overlap too; empty tensors overlap nothing.
    h = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 0, 8), "e": entry("F32", [0], 4, 4)}
    with pytest.raises(ValueError, match="overlap"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 8))
    h = {"a": entry("F32", [2], 0, 8), "e": entry("F32", [0, 3], 4, 4)}
    assert len(_core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 8))) == 2


def test_out_of_range_offsets(tmp_path):
    h = {"a": entry("F32", [2], 0, 8), "far.weight": entry("F32", [2], 100, 108)}
    path = raw_file(tmp_path / "m.safetensors", h, b"\0" * 16)
    with pytest.raises(ValueError, match=r"'far\.weight'.*\[100, 108\] out of range.*16 bytes"):
        _core.safetensors_header(path)
    h = {"a": entry("F32", [2], 8, 0)}
    with pytest.raises(ValueError, match="'a'.*end before begin"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 16))
    h = {"a": entry("F32", [2], -8, 0)}
    with pytest.raises(ValueError, match="'a'.*non-negative"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 16))
    h = {"a": entry("F32", [2], 2**64, 2**64 + 8)}
    with pytest.raises(ValueError, match="'a'"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 16))


def test_unknown_dtype(tmp_path):
    h = {"w.weight": entry("Q4_K", [2], 0, 8)}
    with pytest.raises(ValueError, match=r"'w\.weight': unknown dtype 'Q4_K'"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 8))
    h = {"w.weight": entry("F8_E4M3", [8], 0, 8)}
    with pytest.raises(NotImplementedError, match=r"'w\.weight': dtype F8_E4M3"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 8))


def test_shape_size_mismatch(tmp_path):
    h = {"w.weight": entry("BF16", [2, 3], 0, 8)}
    with pytest.raises(ValueError, match=r"'w\.weight'.*BF16 need 12 bytes.*hold 8"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 16))
    h = {"w": entry("F32", [2**40, 2**40], 0, 8)}
    with pytest.raises(ValueError, match="'w'"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 16))
    h = {"w": entry("F32", [1] * 9, 0, 4)}
    with pytest.raises(ValueError, match="'w'.*9 dimensions"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 16))


def test_negative_and_non_integer_dims(tmp_path):
    h = {"w": entry("F32", [-2], 0, 0)}
    with pytest.raises(ValueError, match="'w': negative dimension"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 8))
    h = {"w": entry("F32", [2.5], 0, 8)}
    with pytest.raises(ValueError, match="'w': shape"):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", h, b"\0" * 8))


def test_duplicate_names(tmp_path):
    text = '{"w": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}, "w": {"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    with pytest.raises(ValueError, match=r'duplicate key "w"'):
        _core.safetensors_header(raw_file(tmp_path / "m.safetensors", text, b"\0" * 8))


def test_malformed_entries(tmp_path):
    cases = [
        ({"w": [1, 2]}, "'w': header entry must be an object"),
        ({"w": {"shape": [1], "data_offsets": [0, 4]}}, "'w': missing or non-string \"dtype\""),
        ({"w": {"dtype": "F32", "data_offsets": [0, 4]}}, "'w': missing or non-array \"shape\""),
        ({"w": {"dtype": "F32", "shape": [1]}}, "'w': \"data_offsets\""),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, "'w': \"data_offsets\""),
        ({"__metadata__": {"k": 1}}, "__metadata__ value of 'k' must be a string"),
        ({"__metadata__": [1]}, "__metadata__ must be an object"),
    ]
    for header, why in cases:
        with pytest.raises(ValueError, match=why):
            _core.safetensors_header(raw_file(tmp_path / "m.safetensors", header, b"\0" * 8))


def test_escaped_names_and_metadata(tmp_path):
    # \uXXXX escapes and surrogate pairs decode to UTF-8; the data buffer may have trailing bytes.
    text = '{"__metadata__": {"e": "\\ud83d\\ude00 \\u00e9\\n\\"q\\""}, "na\\u00efve": {"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
    path = raw_file(tmp_path / "m.safetensors", text, b"\x01\x02\x03")
    assert _core.safetensors_metadata(path) == {"e": '😀 é\n"q"'}
    got = _core.safetensors_load(path)
    np.testing.assert_array_equal(got["naïve"], [1, 2])


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(OSError, match="nope.safetensors"):
        _core.safetensors_header(str(tmp_path / "nope.safetensors"))


def test_random_corruptions_never_crash(tmp_path, sample):
    """Byte-level mutations of a valid file: each load either succeeds or raises a Python exception."""
    path = str(tmp_path / "m.safetensors")
    _core.safetensors_save(path, sample, metadata={"format": "pt"})
    raw = bytearray(open(path, "rb").read())
    n = struct.unpack("<Q", raw[:8])[0]
    rng = np.random.default_rng(1)
    bad = str(tmp_path / "bad.safetensors")
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        mutated = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, 8 + n))  # mostly the length and header
            mutated[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            mutated = mutated[: int(rng.integers(0, len(mutated)))]
        open(bad, "wb").write(mutated)
        try:
            _core.safetensors_load(bad)
            outcomes["ok"] += 1
        except (ValueError, KeyError, NotImplementedError, OSError):
            outcomes["error"] += 1
    assert outcomes["error"] > 0


# ---------------------------------------------------------------------------------------------------------
# sharded checkpoints: model.safetensors.index.json


def test_sharded_index(tmp_path):
    index = {"metadata": {"total_size": 123},
             "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "model.layers.0.ffn_norm.weight": "model-00002-of-00002.safetensors",
                            "model.embedding_norm.weight": "model-00001-of-00002.safetensors"}}
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    assert _core.safetensors_index(str(path)) == index["weight_map"]
    for bad_file in ["../evil.safetensors", "/abs.safetensors", "sub/x.safetensors", "", ".."]:
        path.write_text(json.dumps({"weight_map": {"w": bad_file}}))
        with pytest.raises(ValueError, match="'w'.*not a plain file name"):
            _core.safetensors_index(str(path))
    path.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(KeyError, match="weight_map"):
        _core.safetensors_index(str(path))
    path.write_text(json.dumps({"weight_map": {"w": 3}}))
    with pytest.raises(ValueError, match=r"weight_map\['w'\] must be a file name string"):
        _core.safetensors_index(str(path))
    path.write_text('{"weight_map": {"w": "a", "w": "b"}}')
    with pytest.raises(ValueError, match='duplicate key "w"'):
        _core.safetensors_index(str(path))
    with pytest.raises(OSError):
        _core.safetensors_index(str(tmp_path / "missing.json"))
