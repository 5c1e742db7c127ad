"""captionaura.data: the AuraScenes world (determinism, truthful and varied captions) and the data loaders."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from captionaura import ImageLoadError
from captionaura.data import (COLOURS, HELDOUT_OFFSET, SCENE_KINDS, STYLES, AuraScenes, CaptionExample,
                              SceneObject, SceneSpec, User, load_coco, load_flickr8k, load_folder,
                              load_instagram, style_caption, write_video)
from captionaura.data.scenes import render_scene
from captionaura.data.users import POETIC_CLOSERS, POETIC_OPENERS, SCENE_EMOJI, SCENE_TAGS

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
    lazy = world.examples(7, 2, lazy=True)
    assert not lazy[0].is_loaded and lazy[0].captions == a.captions
    assert lazy[0].image.tobytes() == a.image.tobytes() and not lazy[0].is_loaded  # drawn, not kept


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
    with pytest.raises(ValueError, match="unknown scene kind 'moon'"):
        AuraScenes().example(0, kind="moon")


# ---------------------------------------------------------------------------------------------------------
# users: styles and non-IID preferences
# ---------------------------------------------------------------------------------------------------------
EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\u2693]")


@pytest.fixture(scope="module")
def users(world) -> list[User]:
    return world.users(n_users=len(STYLES) * 2, train_per_user=12, test_per_user=4, seed=0, posts_per_user=6)


def test_users_shapes_and_determinism(world, users):
    assert len(users) == 2 * len(STYLES) and {u.style for u in users} == set(STYLES)
    assert len({u.name for u in users}) == len(users)
    for u in users:
        assert len(u.train) == 12 and len(u.test) == 4 and len(u.posts) == 6
        assert abs(sum(u.preferences.values()) - 1) < 1e-9
    again = world.users(n_users=2, train_per_user=12, test_per_user=4, seed=0, posts_per_user=6)
    assert again[1].train[3].image.tobytes() == users[1].train[3].image.tobytes()
    assert again[1].train[3].captions == users[1].train[3].captions
    other = world.users(n_users=2, train_per_user=12, test_per_user=4, seed=1, posts_per_user=6)
    assert other[1].train[3].image.tobytes() != users[1].train[3].image.tobytes()
    # Private images are nobody else's: not another user's, not the public split's.
    seen = {e.image.tobytes() for e in world.public_split(20)}
    for u in users:
        for ex in u.train + u.test:
            assert ex.image.tobytes() not in seen
            seen.add(ex.image.tobytes())


def test_style_rules(users):
    for u in users:
        for ex in u.train:
            spec = ex.scene
            for caption in ex.captions:
                if u.style == "emoji-rich":
                    assert EMOJI.search(caption) and SCENE_EMOJI[spec.kind] in caption, caption
                elif u.style == "hashtag-heavy":
                    tags = re.findall(r"#\w+", caption)
                    assert len(tags) >= 4 and SCENE_TAGS[spec.kind][0] in tags and u.signature in tags, caption
                elif u.style == "terse-lowercase":
                    assert caption == caption.lower() and not re.search(r"[^a-z ]", caption), caption
                    assert not {"the", "a", "an"} & set(caption.split()), caption
                elif u.style == "poetic":
                    assert caption.startswith(POETIC_OPENERS[spec.time_of_day]), caption
                    assert POETIC_CLOSERS[spec.kind] in caption, caption
                else:
                    assert not EMOJI.search(caption) and "#" not in caption, caption
                # Every style keeps the facts: the main group's colour is still named.
                assert spec.objects[0].colour in caption.lower(), caption
        assert all(isinstance(p, str) and p for p in u.posts)
    # A beach is always 🌊 and #beachlife: the same content gives the same emojis and tags.
    spec = SceneSpec("beach", "sunset", "clear", (SceneObject("boat", "red", 2, "left", "large"),))
    assert style_caption("Two red boats.", spec, "emoji-rich").endswith("🌊⛵🌇")
    assert style_caption("Two red boats.", spec, "hashtag-heavy").split()[3] == "#beachlife"
    with pytest.raises(ValueError, match="unknown caption style"):
        style_caption("Two red boats.", spec, "shouting")


def test_users_are_non_iid(world):
    users = world.users(n_users=6, train_per_user=60, test_per_user=0, seed=3, posts_per_user=0)
    dists = []
    prefs = [np.array([u.preferences[k] for k in SCENE_KINDS]) for u in users]
    for i, u in enumerate(users):
        counts = np.array([sum(e.scene.kind == k for e in u.train) for k in SCENE_KINDS], float)
        dists.append(counts / counts.sum())
        # The user's images follow their own preferences, closer than anyone else's.
        own = 0.5 * np.abs(dists[-1] - prefs[i]).sum()
        assert all(own < 0.5 * np.abs(dists[-1] - p).sum() for j, p in enumerate(prefs) if j != i)
        assert np.sort(dists[-1])[-3:].sum() > 0.5  # a few kinds make most of a user's data
    # Total variation distance between users' scene distributions is large (IID users would be near 0).
    tv = [0.5 * np.abs(a - b).sum() for i, a in enumerate(dists) for b in dists[i + 1:]]
    assert np.mean(tv) > 0.5


# ---------------------------------------------------------------------------------------------------------
# videos
# ---------------------------------------------------------------------------------------------------------
def test_sunset_darkens(world):
    video = world.video("sunset", frames=24, seed=0)
    assert video.frames.shape == (24, 128, 128, 3) and video.frames.dtype == np.uint8
    assert "sun sets" in video.context and len(video.captions) == 24
    brightness = video.frames.reshape(24, -1).mean(1)
    assert (np.diff(brightness) < 0.5).all() and brightness[-1] < 0.6 * brightness[0]
    assert "night" in " ".join(video.captions[-3:]).lower() or "dark" in " ".join(video.captions[-3:]).lower() \
        or video.captions[-1] != video.captions[0]
    assert world.video("sunset", frames=24, seed=0).frames.tobytes() == video.frames.tobytes()
    assert world.video("sunset", frames=24, seed=1).frames.tobytes() != video.frames.tobytes()


def _colour_centroid(frame: np.ndarray, colour: str) -> tuple[float, float]:
    mask = np.abs(frame.astype(np.int16) - np.array(COLOURS[colour])).sum(-1) < 50
    ys, xs = np.nonzero(mask)
    return ys.mean(), xs.mean()


def test_balloon_rises_and_boat_crosses(world):
    balloon = world.video("balloon", frames=16, seed=2)
    colour = balloon.context.split()[1]
    assert colour in COLOURS and "rises" in balloon.context
    rows = [_colour_centroid(f, colour)[0] for f in balloon.frames]
    assert (np.diff(rows) < 0).all() and rows[0] - rows[-1] > 0.5 * 128
    boat = world.video("boat", frames=16, seed=2)
    colour = boat.context.split()[1]
    cols = [_colour_centroid(f, colour)[1] for f in boat.frames]
    assert (np.diff(cols) > 0).all() and cols[-1] - cols[0] > 0.6 * 128
    assert "left" in boat.captions[0] and "right" in boat.captions[-1]


def test_rain_starts(world):
    video = world.video("rain", frames=20, seed=0)
    assert "rain" in video.context
    # Rain streaks: many thin near-white-blue pixels appear only in the late frames.
    streak = np.array([190, 200, 225])
    counts = [int((np.abs(f.astype(np.int16) - streak).sum(-1) < 25).sum()) for f in video.frames]
    assert counts[0] < 5 and counts[-1] > 100 and counts[-1] > counts[len(counts) // 2]
    assert video.frames[-1].mean() < video.frames[0].mean()


def test_mp4_roundtrip(tmp_path, world):
    video = world.video("balloon", frames=12, seed=0)
    path = video.save(tmp_path / "balloon.mp4")
    assert path.is_file() and not list(tmp_path.glob(".*tmp"))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert codec in ("h264", "mpeg4")
    assert decoded.shape == video.frames.shape
    err = np.abs(decoded.astype(np.int16) - video.frames.astype(np.int16))
    assert err.mean() < 6, err.mean()
    # The balloon is where it was drawn in the decoded frames too.
    colour = video.context.split()[1]
    assert abs(_colour_centroid(decoded[-1], colour)[0] - _colour_centroid(video.frames[-1], colour)[0]) < 3
    # The fallback encoder for PyAV builds without H.264.
    write_video(tmp_path / "fallback.mp4", video.frames, video.fps, codec="mpeg4")
    with av.open(str(tmp_path / "fallback.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == video.frames.shape
    assert np.abs(decoded.astype(np.int16) - video.frames.astype(np.int16)).mean() < 8


def test_write_video_bad_input(tmp_path):
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="zero frames"):
        write_video(tmp_path / "a.mp4", frames[:0], 8)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "a.mp4", np.zeros((3, 15, 16, 3), np.uint8), 8)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", frames.astype(np.float32), 8)
    with pytest.raises(FileNotFoundError, match="folder"):
        write_video(tmp_path / "missing" / "a.mp4", frames, 8)
    with pytest.raises(ValueError, match="unknown video kind"):
        AuraScenes().video("eclipse")


# ---------------------------------------------------------------------------------------------------------
# real-data loaders, on small fixture files in the datasets' own layouts
# ---------------------------------------------------------------------------------------------------------
def _image(path: Path, seed: int, size=(24, 16)) -> np.ndarray:
    """Write a small random RGB image (format from the suffix) and return its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def test_instagram_kaggle_layout(tmp_path):
    root = tmp_path / "instagram_data"
    a = _image(root / "img" / "insta1.png", 0)
    _image(root / "img" / "insta2.jpg", 1)
    (root / "captions_csv.csv").write_text(
        "Sr No,Image File,Caption\n"
        '0,img/insta1,"Sunset vibes, all day 🌅 #goldenhour"\n'
        "1,img/insta2,Coffee first\n"
        '2,img/insta1,"a second caption\nover two lines"\n', encoding="utf-8")
    examples = load_instagram(root / "captions_csv.csv")
    assert [e.path.name for e in examples] == ["insta1.png", "insta2.jpg"]
    assert examples[0].captions == ["Sunset vibes, all day 🌅 #goldenhour", "a second caption\nover two lines"]
    assert not examples[0].is_loaded
    assert np.array_equal(examples[0].image, a) and examples[0].is_loaded
    assert examples[1].image.shape == (16, 24, 3)
    # The dataset's second part: the same columns without a header row.
    (root / "captions_csv2.csv").write_text("0,img/insta2,Beach day\n1,img/insta2,Waves\n", encoding="utf-8")
    second = load_instagram(root / "captions_csv2.csv", header=False)
    assert len(second) == 1 and second[0].captions == ["Beach day", "Waves"]


def test_coco_captions_json(tmp_path):
    a = _image(tmp_path / "val2017" / "000000000139.png", 2)
    _image(tmp_path / "val2017" / "000000000285.png", 3)
    data = {"info": {}, "licenses": [],
            "images": [{"id": 139, "file_name": "000000000139.png", "height": 16, "width": 24},
                       {"id": 285, "file_name": "000000000285.png", "height": 16, "width": 24}],
            "annotations": [{"id": 1, "image_id": 285, "caption": "A big bear."},
                            {"id": 2, "image_id": 139, "caption": "A living room."},
                            {"id": 3, "image_id": 139, "caption": "A room with a TV."}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(data))
    examples = load_coco(tmp_path / "captions_val2017.json", tmp_path / "val2017")
    assert [(e.path.name, e.captions) for e in examples] == [
        ("000000000139.png", ["A living room.", "A room with a TV."]), ("000000000285.png", ["A big bear."])]
    assert np.array_equal(examples[0].image, a)


def test_flickr8k_token_file(tmp_path):
    _image(tmp_path / "Flicker8k_Dataset" / "1000268201_693b08cb0e.jpg", 4)
    _image(tmp_path / "Flicker8k_Dataset" / "1001773457_577c3a7d70.jpg", 5)
    lines = [f"1000268201_693b08cb0e.jpg#{k}\tA child in a pink dress climbs stairs {k} ." for k in range(5)]
    lines += [f"1001773457_577c3a7d70.jpg#{k}\tA black dog and a spotted dog are fighting {k}" for k in range(5)]
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    examples = load_flickr8k(tmp_path / "Flickr8k.token.txt", tmp_path / "Flicker8k_Dataset")
    assert len(examples) == 2 and all(len(e.captions) == 5 for e in examples)
    assert examples[1].captions[2] == "A black dog and a spotted dog are fighting 2"
    assert examples[0].image.shape == (16, 24, 3)
    (tmp_path / "bad.txt").write_text(lines[0] + "\nno tab or hash here\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected"):
        load_flickr8k(tmp_path / "bad.txt", tmp_path / "Flicker8k_Dataset")


def test_image_folder_csv_and_jsonl(tmp_path):
    a = _image(tmp_path / "csv" / "a.png", 6)
    _image(tmp_path / "csv" / "b.png", 7)
    (tmp_path / "csv" / "captions.csv").write_text("file_name,caption\na.png,first\nb.png,second\na.png,third\n")
    examples = load_folder(tmp_path / "csv")
    assert [(e.path.name, e.captions) for e in examples] == [("a.png", ["first", "third"]), ("b.png", ["second"])]
    assert np.array_equal(examples[0].image, a)
    # Several caption columns (the Hugging Face Flickr8k metadata layout).
    (tmp_path / "csv" / "captions.csv").write_text("file_name,caption_0,caption_1\na.png,one,two\n")
    assert load_folder(tmp_path / "csv")[0].captions == ["one", "two"]
    _image(tmp_path / "jsonl" / "sub" / "c.png", 8)
    (tmp_path / "jsonl" / "captions.jsonl").write_text(
        json.dumps({"file_name": "sub/c.png", "captions": ["x y", "z"]}) + "\n\n"
        + json.dumps({"file_name": "sub/c.png", "caption": "w"}) + "\n")
    examples = load_folder(tmp_path / "jsonl")
    assert len(examples) == 1 and examples[0].captions == ["x y", "z", "w"]


# ---------------------------------------------------------------------------------------------------------
# bad input: each a clear error naming the problem
# ---------------------------------------------------------------------------------------------------------
def test_csv_missing_columns_are_named(tmp_path):
    _image(tmp_path / "img" / "insta1.jpg", 0)
    (tmp_path / "captions_csv.csv").write_text("Sr No,Image,Text\n0,img/insta1,hello\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) 'Image File', 'Caption'"):
        load_instagram(tmp_path / "captions_csv.csv")
    (tmp_path / "captions.csv").write_text("name,text\nimg/insta1.jpg,hi\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) 'file_name', 'caption'"):
        load_folder(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="missing key.*'annotations'"):
        load_coco(tmp_path / "c.json", tmp_path)


def test_folder_without_images(tmp_path):
    (tmp_path / "captions.csv").write_text("file_name,caption\na.png,hello\n")
    with pytest.raises(ValueError, match="contains no images"):
        load_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_folder(tmp_path / "nowhere")


def test_caption_file_referencing_missing_image(tmp_path):
    _image(tmp_path / "a.png", 0)
    (tmp_path / "captions.csv").write_text("file_name,caption\na.png,fine\nghost.png,boo\n")
    with pytest.raises(FileNotFoundError, match="missing image.*ghost.png"):
        load_folder(tmp_path)
    # Flickr8k's real token file names an image the archive lacks ('...jpg.1'): an error, or dropped on request.
    (tmp_path / "tokens.txt").write_text("a.png#0\tA caption\n2258277193_586949ec62.jpg.1#0\tGone\n")
    with pytest.raises(FileNotFoundError, match=r"missing image.*2258277193_586949ec62.jpg.1"):
        load_flickr8k(tmp_path / "tokens.txt", tmp_path)
    kept = load_flickr8k(tmp_path / "tokens.txt", tmp_path, skip_missing=True)
    assert [e.path.name for e in kept] == ["a.png"]
    data = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 2, "caption": "x"}]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image_id 2, not in 'images'"):
        load_coco(tmp_path / "c.json", tmp_path)


def test_unreadable_image(tmp_path):
    _image(tmp_path / "good.png", 0)
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "captions.csv").write_text("file_name,caption\ngood.png,ok\nbroken.jpg,bad\n")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        load_folder(tmp_path, verify=True)
    lazy = load_folder(tmp_path)  # without verify the error comes when the pixels are first needed
    assert lazy[0].image.shape == (16, 24, 3)
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        _ = lazy[1].image


def test_empty_caption_list(tmp_path):
    _image(tmp_path / "a.png", 0)
    _image(tmp_path / "b.png", 1)
    (tmp_path / "captions.csv").write_text('file_name,caption\na.png,hello\nb.png,""\n')
    with pytest.raises(ValueError, match="b.png has an empty caption list"):
        load_folder(tmp_path)
    assert [e.path.name for e in load_folder(tmp_path, skip_empty=True)] == ["a.png"]
    data = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "annotations": [{"image_id": 1, "caption": "x"}]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="b.png has an empty caption list"):
        load_coco(tmp_path / "c.json", tmp_path)
    with pytest.raises(ValueError, match="empty caption list"):
        CaptionExample(path=tmp_path / "a.png", captions=[])
