"""Client data files with an image captioner's examples: every field of `Lfm2VlModel.caption_example` back
bit for bit, read one example at a time, written atomically, and refused with errors that name the problem
(malformed files, tiles a model cannot take, a file without tiles for an image captioner)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from captionaura.federated.client_data import ClientExamples, check_client_data, load_client_data, save_client_data
from captionaura.model import Lfm2Model

MODEL = Path(__file__).parent / "reference" / "fixtures" / "lfm2" / "mixed"


@pytest.fixture(scope="module")
def examples(captioner) -> list[dict]:
    rng = np.random.default_rng(1)
    sizes = [(48, 64), (40, 40), (64, 96)]
    return [captioner.caption_example(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), f"photo {i} #aura")
            for i, (h, w) in enumerate(sizes)]


def test_caption_examples_round_trip_lazily(tmp_path, examples):
    save_client_data(tmp_path / "alice.npz", examples[:2], eval=examples[2:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.npz"]  # no temp file left behind
    client = load_client_data(tmp_path / "alice.npz")
    assert client.client_id == "alice" and isinstance(client.train, ClientExamples) and client.train.has_images
    assert (len(client.train), len(client.eval)) == (2, 1)
    for got, want in zip([*client.train, client.eval[-1]], examples):
        assert set(got) == set(want) == {"input_ids", "labels", "pixel_values", "spatial_shapes",
                                         "pixel_attention_mask"}
        for key, value in want.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape
            np.testing.assert_array_equal(got[key], value)
    with pytest.raises(IndexError):
        client.train[2]
    # compressed: the tiles' padding to the processor's patch budget costs next to nothing on disk
    raw = sum(v.nbytes for ex in examples for v in ex.values())
    assert (tmp_path / "alice.npz").stat().st_size < raw / 3


def test_a_split_opens_its_file_once_and_pickles_without_it(tmp_path, examples, monkeypatch):
    """Indexing example after example (a training epoch) opens the archive once, not once per example; a
    pickled split leaves the open file behind and reads the same examples after."""
    import pickle

    save_client_data(tmp_path / "bob.npz", examples * 4)
    client = load_client_data(tmp_path / "bob.npz")
    opened = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: opened.append(a[0]) or real_load(*a, **k))
    for _ in range(2):
        for i in range(len(client.train)):
            np.testing.assert_array_equal(client.train[i]["input_ids"], examples[i % 3]["input_ids"])
    assert len(list(client.train.read(["labels"]))) == 12
    assert opened == [tmp_path / "bob.npz"]
    copy = pickle.loads(pickle.dumps(client.train))
    np.testing.assert_array_equal(copy[5]["pixel_values"], examples[2]["pixel_values"])
    client.train.close()
    np.testing.assert_array_equal(client.train[0]["labels"], examples[0]["labels"])  # opens again


def test_saving_refuses_bad_examples_and_keeps_the_old_file(tmp_path, examples):
    path = tmp_path / "bob.npz"
    save_client_data(path, examples[:1])
    before = path.read_bytes()
    ex = examples[0]
    bad = {
        r"train example 1: unknown field\(s\) \['caption'\]": {**ex, "caption": np.array([1])},
        r"has \['pixel_values', 'pixel_attention_mask'\] but not \['spatial_shapes'\]":
            {k: v for k, v in ex.items() if k != "spatial_shapes"},
        "pixel_attention_mask has shape": {**ex, "pixel_attention_mask": ex["pixel_attention_mask"][:, :-1]},
        r"spatial_shapes has shape \(2, 2\), expected \(1, 2\)": {**ex, "spatial_shapes": np.repeat(ex["spatial_shapes"], 2, 0)},
        "labels has shape": {**ex, "labels": ex["labels"][1:]},
        "pixel_values has dtype": {**ex, "pixel_values": ex["pixel_values"].astype(np.int32)},
        "input_ids has dtype": {**ex, "input_ids": ex["input_ids"].astype(np.float32)},
    }
    for message, example in bad.items():
        with pytest.raises(ValueError, match=message):
            save_client_data(path, [examples[1], example])
    text_only = {"input_ids": ex["input_ids"], "labels": ex["labels"]}
    with pytest.raises(ValueError, match=r"some examples have images and some \(eval.0\) do not"):
        save_client_data(path, examples, eval=[text_only])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["bob.npz"]


def test_loading_refuses_malformed_files(tmp_path, examples):
    ex = examples[0]
    cases = {
        "not a readable client data file": None,
        r"unexpected array 'train\.0'": {"train.0": ex["input_ids"]},
        r"train examples \[1\] are missing": {f"train.{i}.{k}": ex[k] for i in (0, 2) for k in ("input_ids", "labels")},
        "pixel_attention_mask has shape": {**{f"train.0.{k}": v for k, v in ex.items()},
                                           "train.0.pixel_attention_mask": ex["pixel_attention_mask"][:, :9]},
        r"no labels": {"train.0.input_ids": ex["input_ids"]},
    }
    for i, (message, arrays) in enumerate(cases.items()):
        path = tmp_path / f"case-{i}.npz"
        if arrays is None:
            path.write_bytes(b"PK not a zip")
        else:
            np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message):
            load_client_data(path)
    with zipfile.ZipFile(tmp_path / "case-9.npz", "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match="unexpected member 'notes.txt'"):
        load_client_data(tmp_path / "case-9.npz")


def test_data_the_model_cannot_train_on_is_refused(tmp_path, captioner, examples):
    save_client_data(tmp_path / "images.npz", examples)
    check_client_data(captioner, load_client_data(tmp_path / "images.npz"))  # as written: fine

    text = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    save_client_data(tmp_path / "tokens.npz", text)
    with pytest.raises(ValueError, match="train example 0 has no image tiles, but the model is an image captioner"):
        check_client_data(captioner, load_client_data(tmp_path / "tokens.npz"))
    with pytest.raises(ValueError, match="has image tiles, but the model is a text-only LFM2"):
        check_client_data(Lfm2Model.from_pretrained(MODEL), load_client_data(tmp_path / "images.npz"))

    ex = examples[0]
    image = captioner.image_token_id
    one_less = np.delete(ex["input_ids"], np.flatnonzero(ex["input_ids"] == image)[0])
    bad = {
        "69 <image> tokens but its tiles give 70 image features":
            {**ex, "input_ids": one_less, "labels": np.delete(ex["labels"], 0)},
        "tiles of 192 values per patch, the model's vision tower takes 768":
            {**ex, "pixel_values": np.ascontiguousarray(ex["pixel_values"][..., :192])},
        "pixel_attention_mask marks": {**ex, "pixel_attention_mask": np.roll(ex["pixel_attention_mask"], 1) * 0},
        "not positive multiples of the model's downsample_factor 2": {**ex, "spatial_shapes": ex["spatial_shapes"] + 1},
    }
    for i, (message, example) in enumerate(bad.items()):
        save_client_data(tmp_path / f"bad-{i}.npz", [examples[1]], eval=[example])
        with pytest.raises(ValueError, match=f"client bad-{i}: eval example 0.*{message}"):
            check_client_data(captioner, load_client_data(tmp_path / f"bad-{i}.npz"))
