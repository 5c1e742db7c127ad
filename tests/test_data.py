"""captionaura.data: the AuraScenes world (determinism, truthful and varied captions) and the data loaders."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from captionaura.data import COLOURS, HELDOUT_OFFSET, SCENE_KINDS, AuraScenes, CaptionExample
from captionaura.data.scenes import render_scene

COUNT_WORDS = {1: ("a", "an", "one"), 2: ("two",), 3: ("three",)}


@pytest.fixture(scope="module")
def world() -> AuraScenes:
    return AuraScenes(seed=0, image_size=128)


@pytest.fixture(scope="module")
def sample(world) -> list[CaptionExample]:
    return world.examples(0, 60)


def test_example_shape_and_determinism(world):
    a, b = world.example(7), AuraScenes(seed=0, image_size=128).example(7)
    assert a.image.shape == (128, 128, 3) and a.image.dtype == np.uint8
    assert a.image.tobytes() == b.image.tobytes() and a.captions == b.captions and a.scene == b.scene
    other = AuraScenes(seed=1, image_size=128).example(7)
    assert other.image.tobytes() != a.image.tobytes()
    assert world.example(8).image.tobytes() != a.image.tobytes()
    assert AuraScenes(seed=0, image_size=256).example(7).image.shape == (256, 256, 3)


def test_splits_are_disjoint(world):
    public, heldout = world.public_split(5), world.heldout_split(5)
    assert [e.image_id[1] for e in public] == list(range(5))
    assert [e.image_id[1] for e in heldout] == list(range(HELDOUT_OFFSET, HELDOUT_OFFSET + 5))
    public_bytes = {e.image.tobytes() for e in public}
    assert not any(e.image.tobytes() in public_bytes for e in heldout)


def test_scene_coverage(sample):
    kinds = {e.scene.kind for e in sample}
    assert len(kinds) >= 8 and kinds <= set(SCENE_KINDS)
    assert {e.scene.time_of_day for e in sample} == {"morning", "midday", "sunset", "night"}


def _words(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption.lower())


def test_captions_true_to_the_scene(sample):
    for ex in sample:
        main = ex.scene.objects[0]
        noun = main.name if main.count == 1 else main.plural
        for caption in ex.captions:
            words = _words(caption)
            # The main group is named with its colour, its noun and its count word, in that order.
            if main.name == "person":  # 'two people in red'
                i = next(i for i, w in enumerate(words) if w == noun and words[i + 1:i + 3] == ["in", main.colour])
                before = words[max(0, i - 2):i]
            else:
                i = next(i for i, w in enumerate(words) if w == noun and words[i - 1] == main.colour)
                before = words[max(0, i - 3):i - 1]
            assert any(w in COUNT_WORDS[main.count] for w in before), (caption, main)
            # Colours named are the scene's colours only; no other count word appears.
            assert {w for w in words if w in COLOURS} <= {g.colour for g in ex.scene.objects}, caption
            allowed_counts = {w for g in ex.scene.objects for w in COUNT_WORDS[g.count]}
            assert {w for w in words if w in ("one", "two", "three")} <= allowed_counts, caption
            for side in ("left", "right"):
                if side in words:
                    assert any(g.position == side for g in ex.scene.objects), caption
            if "night" in words or "stars" in words:
                assert ex.scene.time_of_day == "night", caption
            if "rain" in words or "rains" in words or "rainy" in words:
                assert ex.scene.weather == "rainy", caption
            if "fog" in words or "foggy" in words or "mist" in words:
                assert ex.scene.weather == "foggy", caption


def test_caption_variety_and_length(sample):
    vocab = set()
    for ex in sample:
        assert len(set(ex.captions)) >= 5
        for caption in ex.captions:
            assert 8 <= len(caption.split()) <= 20, caption
            vocab.update(_words(caption))
    assert len(vocab) < 400


def _isolate(spec, group, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The rendered scene, and the mask of pixels that change when ``group`` is left out of it."""
    full = render_scene(spec, 128, np.random.default_rng(index))
    rest = dataclasses.replace(spec, objects=tuple(g for g in spec.objects if g is not group))
    without = render_scene(rest, 128, np.random.default_rng(index))
    return full, np.abs(full.astype(np.int16) - without.astype(np.int16)).sum(-1) > 90


def test_pixels_show_what_captions_say(world):
    """Each object group, isolated as the pixels that change when it is left out of the scene, has the
    captioned colour, sits in the captioned third of the picture and splits into the captioned count."""
    for index in range(100, 160):
        spec = world.scene(index)
        for group in spec.objects:
            full, changed = _isolate(spec, group, index)
            rgb = np.array(COLOURS[group.colour], dtype=np.float64)
            if spec.weather == "foggy":  # the renderer veils everything with 38% light grey
                rgb = 0.62 * rgb + 0.38 * np.array([200, 202, 208])
            body = changed & (np.abs(full - rgb).sum(-1) < 60)
            assert body.sum() >= 20, (spec, group)
            cols = np.nonzero(body.any(0))[0]
            third = {"left": 0, "centre": 1, "right": 2}[group.position]
            assert third * 128 // 3 - 8 <= cols.mean() <= (third + 1) * 128 // 3 + 8, (spec, group)
            # Counting: the same objects without rain or snow streaking across them; column spans split by
            # gaps of 3+ columns, slivers (a wing tip at the edge) ignored: one span per object.
            _, changed = _isolate(dataclasses.replace(spec, weather="clear"), group, index)
            cols = np.nonzero(changed.any(0))[0]
            spans = np.split(cols, np.nonzero(np.diff(cols) > 2)[0] + 1)
            assert sum(len(span) >= 3 for span in spans) == group.count, (spec, group, cols)


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        AuraScenes(image_size=64)
    with pytest.raises(ValueError, match="empty caption list"):
        CaptionExample(image=np.zeros((4, 4, 3), np.uint8), captions=[])
