"""Video context: frame sampling from real video files written with PyAV, scene-change dedupe, the two context
modes of ``Lfm2VlModel.caption(video=...)`` (multi-image prompt within a token budget; aggregated frame
captions), the results folder, the ``captionaura caption`` command and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import captionaura as ca
from captionaura.cli import main
from captionaura.video import VideoFrames, aggregate_captions, frame_distance, sample_frames
from captionaura.vl import VideoContextConfig

H, W = 48, 64
SETTINGS = ca.GenerationConfig(max_new_tokens=5, min_new_tokens=5, do_sample=False, eos_token_id=[])


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """Encode RGB frames as H.264 in an mp4 container with PyAV (near-lossless, so pixels survive)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ramp(n: int) -> np.ndarray:
    """n frames, each a flat grey 5 levels brighter than the one before (all distinct to dedupe)."""
    return np.stack([np.full((H, W, 3), 5 * i, np.uint8) for i in range(n)])


def scenes() -> np.ndarray:
    """3 s of a still red frame, 3 s of a still blue frame, then 2 s of a white square moving right (10 fps)."""
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = 200
    blue = np.zeros((H, W, 3), np.uint8)
    blue[..., 2] = 200
    moving = []
    for i in range(20):
        f = np.zeros((H, W, 3), np.uint8)
        x = 2 * i
        f[16:32, x: x + 16] = 255
        moving.append(f)
    return np.concatenate([np.stack([red] * 30), np.stack([blue] * 30), np.stack(moving)])


@pytest.fixture(scope="module")
def model(captioner):
    return captioner


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "scenes.mp4", scenes())


# ---- sampling ------------------------------------------------------------------------------------------
def test_sampled_timestamps_and_counts_at_the_requested_rate(tmp_path):
    frames = ramp(50)  # 5 s at 10 fps
    path = write_video(tmp_path / "ramp.mp4", frames)
    got = sample_frames(path, fps=2.0, max_frames=20, dedupe=False)
    np.testing.assert_allclose(got.timestamps, np.arange(10) * 0.5, atol=1e-9)
    assert got.frames.shape == (10, H, W, 3) and got.num_sampled == 10 and got.source == str(path)
    # the decoded pixels are the frames written at those instants (H.264 at crf 10: within a few levels)
    assert np.abs(got.frames.astype(int) - frames[::5].astype(int)).max() <= 3
    # an array at its source rate samples the same instants, exactly
    arr = sample_frames(frames, fps=2.0, max_frames=20, source_fps=10, dedupe=False)
    np.testing.assert_allclose(arr.timestamps, got.timestamps)
    np.testing.assert_array_equal(arr.frames, frames[::5])
    # more samples than max_frames: evenly spaced, first and last kept
    thin = sample_frames(frames, fps=1.0, max_frames=3, source_fps=10, dedupe=False)
    np.testing.assert_allclose(thin.timestamps, [0.0, 2.0, 4.0])
    assert thin.num_sampled == 5
    # a rate above the source's gives every frame once
    np.testing.assert_allclose(sample_frames(frames[:10], fps=25, source_fps=10, dedupe=False).timestamps,
                               np.arange(10) / 10)


def test_dedupe_drops_static_repeats_and_keeps_changes(video_file):
    got = sample_frames(video_file, fps=2.0, max_frames=20)
    # sampled at 0, 0.5, ... 7.5 s: red 0-2.5, blue 3-5.5, square 6-7.5 (moving 10 px per sample)
    assert got.num_sampled == 16
    np.testing.assert_allclose(got.timestamps, [0.0, 3.0, 6.0, 6.5, 7.0, 7.5], atol=1e-9)
    assert got.scene_change.tolist() == [True, True, True, False, False, False]
    assert got.frames[0, 0, 0, 0] > 150 and got.frames[1, 0, 0, 2] > 150
    # the threshold is what separates them: a still scene re-encoded is far below it, a moved square above
    assert frame_distance(got.frames[3], got.frames[2]) > 0.02
    everything = sample_frames(video_file, fps=2.0, max_frames=20, dedupe=False)
    assert len(everything) == 16
    assert frame_distance(everything.frames[0], everything.frames[1]) < 0.005


def test_aggregate_captions():
    assert aggregate_captions(["a red wall.", "A red wall", "a blue sky", "", "a ball moves"]) == \
        "First a red wall, then a blue sky, and finally a ball moves."
    assert aggregate_captions(["a red wall", "a blue sky"]) == "First a red wall, and finally a blue sky."
    assert aggregate_captions(["the sea  ", "The sea!"]) == "the sea."
    assert aggregate_captions(["", "  "]) == ""


# ---- context modes -------------------------------------------------------------------------------------
def count(ids: np.ndarray, processor, token: str) -> int:
    return int(np.sum(np.asarray(ids) == processor.tokenizer.token_to_id(token)))


def test_frames_mode_puts_every_frame_in_one_prompt(model, video_file):
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    cfg = VideoContextConfig(fps=2.0, max_frames=20)
    context = model.video_context(video_file, "frames", SETTINGS, cfg)
    assert len(context.frames) == 6
    text = model.caption_prompt(None, context).text
    ids, features = model._caption_inputs(image, text, list(context.frames.frames))
    proc = model.processor
    assert count(ids, proc, "<|image_start|>") == 7
    # each frame's image tokens are what the processor gives that frame alone
    alone = [count(proc(images=[f], text="<image>").input_ids, proc, "<image>") for f in context.frames.frames]
    target = count(proc(images=[image], text="<image>").input_ids, proc, "<image>")
    assert count(ids, proc, "<image>") == sum(alone) + target == context.frame_tokens + target
    assert features[1].shape[0] == sum(alone) + target
    # caption() generates from exactly that prompt
    caption = model.caption(image, generation=SETTINGS, video=video_file, video_config=cfg)
    tokens = model.text.generate(ids, generation=SETTINGS, features=features)[0]
    assert caption == proc.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert caption != model.caption(image, generation=SETTINGS)  # the frames change the model's state


def test_frames_mode_respects_the_token_budget(model, video_file):
    frames = sample_frames(video_file, fps=2.0, max_frames=20)
    proc = model.processor
    per_frame = count(proc(images=[frames.frames[0]], text="<image>").input_ids, proc, "<image>")
    budget = 2 * per_frame + per_frame // 2
    context = model.video_context(frames, "frames", SETTINGS, VideoContextConfig(frame_token_budget=budget))
    assert len(context.frames) == 2 and context.frame_tokens == 2 * per_frame <= budget
    np.testing.assert_allclose(context.frames.timestamps, [0.0, 7.5])  # evenly spaced, ending at the last
    assert len(model.video_context(frames, "frames", SETTINGS,
                                   VideoContextConfig(frame_token_budget=per_frame - 1)).frames) == 0
    # large frames are shrunk to about frame_image_tokens each, never tiled
    big = VideoFrames(np.zeros((3, 900, 1200, 3), np.uint8), np.arange(3.0), np.ones(3, bool))
    context = model.video_context(big, "frames", SETTINGS, VideoContextConfig(frame_token_budget=10_000))
    alone = [count(proc(images=[f], text="<image>").input_ids, proc, "<image>") for f in context.frames.frames]
    # (smart resize rounds each side up to whole patches: 64 tokens' area at 3:4 becomes 7 x 10 tokens)
    assert len(alone) == 3 and max(alone) <= 1.25 * proc.image_config.min_image_tokens
    full = proc(images=[big.frames[0]], text="<image>").input_ids
    assert count(full, proc, "<image>") > 4 * max(alone) and count(full, proc, "<|img_row_1_col_1|>") == 1
    assert context.frame_tokens == sum(alone)


def test_captions_mode_aggregates_frame_captions_and_writes_results(model, video_file, tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    cfg = VideoContextConfig(fps=2.0, max_frames=20)
    out = tmp_path / "results"
    caption = model.caption(image, generation=SETTINGS, video=video_file, context_mode="captions",
                            video_config=cfg, results_dir=out)
    frames = sample_frames(video_file, fps=2.0, max_frames=20)
    per_frame = [model.caption(f, generation=SETTINGS) for f in frames.frames]
    sentence = aggregate_captions(per_frame)
    assert sentence
    expected_text = f"Context from a video taken just before: {sentence}\nWrite a short caption for this image."
    assert caption == model.caption(image, prompt=expected_text, generation=SETTINGS)

    report = json.loads((out / "captions.json").read_text())
    assert report["context_mode"] == "captions" and report["video"] == str(video_file)
    assert report["captions"] == [caption] and report["prompts"] == [expected_text]
    assert report["context"] == sentence
    assert [f["caption"] for f in report["frames"]] == per_frame
    assert [f["timestamp"] for f in report["frames"]] == pytest.approx(frames.timestamps.tolist())
    assert [f["scene_change"] for f in report["frames"]] == frames.scene_change.tolist()
    for entry, frame in zip(report["frames"], frames.frames):
        np.testing.assert_array_equal(np.asarray(Image.open(out / entry["file"])), frame)
    assert sorted(p.name for p in out.rglob("*") if p.name.startswith(".")) == []  # no temp files left
    # captioning again into the same folder, without a video, leaves no frames of the earlier one
    again = model.caption(image, generation=SETTINGS, results_dir=out)
    report = json.loads((out / "captions.json").read_text())
    assert report["captions"] == [again] and report["frames"] == [] and report["context_mode"] is None
    assert report["prompts"] == ["Write a short caption for this image."]
    assert list((out / "frames").iterdir()) == []


def test_language_and_unknown_mode(model, video_file):
    image = np.zeros((H, W, 3), np.uint8)
    assert model.caption_prompt(None, language="fr").text.endswith("Write the caption in French.")
    assert model.caption_prompt(None, language="Brazilian Portuguese").text.endswith("in Brazilian Portuguese.")
    with pytest.raises(ValueError, match="context_mode"):
        model.caption(image, generation=SETTINGS, video=video_file, context_mode="audio")


# ---- bad input -----------------------------------------------------------------------------------------
def test_unreadable_and_empty_videos_are_clear_errors(tmp_path, model):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match="junk.mp4"):
        sample_frames(junk)
    with pytest.raises(ValueError, match="junk.mp4"):
        model.caption(np.zeros((H, W, 3), np.uint8), video=junk, generation=SETTINGS)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        sample_frames(tmp_path / "missing.mp4")
    for name, codec, message in (("empty.mkv", "mpeg4", "empty.mkv has no decodable frames"),
                                 ("empty.mp4", "libx264", "empty.mp4 has no video stream")):
        with av.open(str(tmp_path / name), "w") as container:  # a video stream with no frame in it
            stream = container.add_stream(codec, rate=10)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            container.start_encoding()
        with pytest.raises(ValueError, match=message):
            sample_frames(tmp_path / name)
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        samples.sample_rate = 8000
        for packet in stream.encode(samples):
            container.mux(packet)
    with pytest.raises(ValueError, match="audio.wav has no video stream"):
        sample_frames(audio)
    with pytest.raises(ValueError, match="no frames"):
        sample_frames(np.zeros((0, H, W, 3), np.uint8), source_fps=10)
    with pytest.raises(ValueError, match="source_fps"):
        sample_frames(np.zeros((4, H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        sample_frames(np.zeros((4, H, W), np.uint8), source_fps=10)
    with pytest.raises(ValueError, match="fps"):
        sample_frames(np.zeros((4, H, W, 3), np.uint8), fps=0, source_fps=10)


# ---- command line --------------------------------------------------------------------------------------
def test_cli_caption_end_to_end(model, tiny_captioner_dir, video_file, tmp_path, capsys):
    folder = tiny_captioner_dir
    image = tmp_path / "photo.png"
    pixels = np.random.default_rng(2).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    posts = tmp_path / "posts.csv"
    posts.write_text("Image File,Caption\na.jpg,sunset at the beach #sunset\nb.jpg,red walls and blue skies\n",
                     encoding="utf-8")
    out = tmp_path / "results"
    rc = main(["caption", str(image), "--model", str(folder), "--video", str(video_file), "--context-mode",
               "captions", "--fps", "2", "--style-from", str(posts), "--language", "fr", "--max-new-tokens", "5",
               "--results-dir", str(out)])
    printed = capsys.readouterr().out.strip()
    assert rc == 0
    report = json.loads((out / "captions.json").read_text())
    assert printed == report["captions"][0]
    assert "Write the caption in French." in report["prompts"][0]
    assert set(report["examples"]) == {"sunset at the beach #sunset", "red walls and blue skies"}
    # the same model weights and decoding give the same context and caption in Python
    settings = ca.GenerationConfig(max_new_tokens=5, do_sample=False,
                                   eos_token_id=model.processor.tokenizer.token_to_id("<|im_end|>"))
    frames = model.video_context(video_file, "captions", settings, VideoContextConfig(fps=2.0))
    assert report["context"] == frames.sentence
    assert printed == model.caption(pixels, prompt=report["prompts"][0], generation=settings)

    # --dtype bf16: the caption the bf16 model gives in Python
    rc = main(["caption", str(image), "--model", str(folder), "--dtype", "bf16"])
    assert rc == 0
    bf16 = ca.Lfm2VlModel.from_pretrained(folder).to_inference_dtype("bf16")
    assert capsys.readouterr().out.strip() == bf16.caption(pixels)

    rc = main(["caption", str(image), "--model", str(folder), "--video", str(tmp_path / "posts.csv")])
    assert rc == 2 and "posts.csv" in capsys.readouterr().err
    if not hasattr(ca, "load_default"):  # until the built-in model ships, --model is required
        assert main(["caption", str(image)]) == 2 and "--model" in capsys.readouterr().err
