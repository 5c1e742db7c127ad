"""Video context for captions: frames sampled from a video (PyAV) and turned into context for the model.

``sample_frames`` decodes a video file (anything FFmpeg reads: mp4, webm, mkv, ...) or takes an (F, H, W, 3)
uint8 array, keeps about ``fps`` frames a second, drops frames nearly identical to the last kept one and flags
scene changes. The model then sees the context in one of two ways (``Lfm2VlModel.caption(video=...)``):

* ``"frames"``: the sampled frames go as images into ONE multi-image prompt before the target image, so the
  language model's state carries the video; frames are shrunk to ``frame_image_tokens`` image tokens each and
  evenly thinned until their image tokens fit ``frame_token_budget`` (:func:`fit_frames`);
* ``"captions"``: each frame is captioned on its own and the captions are folded into one context sentence
  ("First ..., then ..., and finally ...", :func:`aggregate_captions`) that goes into the text prompt.

Frame distance (dedupe and scene changes): the mean absolute difference, in [0, 1], of 32x32 box-filtered RGB
thumbnails of two frames (:func:`frame_distance`). Frames closer than ``DEDUPE_THRESHOLD`` (0.02, i.e. 2 % of the
intensity range: above the noise of lossy encoding of a still scene, far below any visible change) to the last
kept frame are dropped; a kept frame farther than ``SCENE_CHANGE_THRESHOLD`` (0.15) from the previous kept frame
starts a new scene.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

#: frames whose thumbnail distance to the last kept frame is below this are dropped as repeats
DEDUPE_THRESHOLD = 0.02
#: a kept frame whose thumbnail distance to the previous kept frame is above this is a scene change
SCENE_CHANGE_THRESHOLD = 0.15
THUMBNAIL_SIDE = 32
#: decoding a long video keeps at most this many frames per ``max_frames`` before thinning (memory bound)
OVERSAMPLE = 4
CONTEXT_MODES = ("frames", "captions")

VideoInput = str | os.PathLike | np.ndarray


@dataclass
class VideoFrames:
    """Frames sampled from a video: ``frames`` (N, H, W, 3) uint8, their ``timestamps`` (N,) in seconds from the
    start, ``scene_change`` (N,) bool (True for the first frame and where a new scene starts), and the
    ``source`` (file name, or None for an array)."""

    frames: np.ndarray
    timestamps: np.ndarray
    scene_change: np.ndarray
    source: str | None = None
    #: how many frames were sampled at the requested rate before dedupe and thinning
    num_sampled: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def subset(self, indices: Sequence[int]) -> "VideoFrames":
        idx = np.asarray(indices, dtype=np.int64)
        return VideoFrames(self.frames[idx], self.timestamps[idx], self.scene_change[idx], self.source,
                           self.num_sampled, dict(self.metadata))


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """(32, 32, 3) float32 in [0, 1]: the box-filtered (area-averaged) frame used for frame distances."""
    small = Image.fromarray(frame).resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def thumbnail_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (:func:`thumbnail`), in [0, 1] (0: same picture)."""
    return float(np.mean(np.abs(a - b)))


def frame_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The distance of two frames: :func:`thumbnail_distance` of their thumbnails."""
    return thumbnail_distance(thumbnail(a), thumbnail(b))


def evenly_spaced(n_items: int, n_keep: int) -> np.ndarray:
    """Indices of ``n_keep`` of ``n_items`` items spread evenly, always ending at the last item (the frame
    closest to the captioned moment)."""
    if n_keep >= n_items:
        return np.arange(n_items)
    if n_keep <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.round(np.linspace(n_items - 1, 0, n_keep)).astype(np.int64)[::-1].copy()


def sample_frames(video: VideoInput, fps: float = 1.0, max_frames: int = 12, *, source_fps: float | None = None,
                  dedupe: bool = True, dedupe_threshold: float = DEDUPE_THRESHOLD,
                  scene_threshold: float = SCENE_CHANGE_THRESHOLD) -> VideoFrames:
    """Sample a video at ``fps`` frames per second (the first frame at or after each multiple of 1/fps), drop
    repeats of the last kept frame (``dedupe``), then keep at most ``max_frames`` evenly spaced ones.

    ``video``: a file path (decoded with PyAV) or an (F, H, W, 3) uint8 array whose frames are ``source_fps``
    apart. A missing file raises ``FileNotFoundError``; a file that cannot be decoded, has no video stream or no
    frame raises ``ValueError`` naming it."""
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
    if isinstance(video, np.ndarray):
        frames, times, source, meta = _sample_array(video, fps, source_fps)
    elif isinstance(video, (str, os.PathLike)):
        if source_fps is not None:
            raise ValueError("source_fps is for arrays; a video file carries its own timing")
        frames, times, meta = _sample_file(Path(video), fps, max_frames * OVERSAMPLE)
        source = str(video)
    else:
        raise TypeError(f"video must be a file path or an (F, H, W, 3) uint8 array, got {type(video).__name__}")
    num_sampled = len(frames)
    keep, scene = [0], [True]
    last = thumbnail(frames[0])
    for i in range(1, len(frames)):
        thumb = thumbnail(frames[i])
        distance = thumbnail_distance(thumb, last)
        if dedupe and distance < dedupe_threshold:
            continue
        keep.append(i)
        scene.append(distance > scene_threshold)
        last = thumb
    chosen = evenly_spaced(len(keep), max_frames)
    kept = [keep[i] for i in chosen]
    # a thinned-away scene change still marks the next frame kept after it
    scene_flags = np.asarray([j == 0 or any(scene[chosen[j - 1] + 1: c + 1]) for j, c in enumerate(chosen)],
                             dtype=bool)
    return VideoFrames(np.stack([frames[i] for i in kept]), np.asarray([times[i] for i in kept], np.float64),
                       scene_flags, source, num_sampled, meta)


def _sample_array(video: np.ndarray, fps: float, source_fps: float | None):
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"a video array must be (F, H, W, 3) uint8, got {video.shape} {video.dtype}")
    if video.shape[0] == 0:
        raise ValueError("the video array has no frames")
    if source_fps is None or not source_fps > 0:
        raise ValueError("a video array needs source_fps (its frames per second) to be sampled in time")
    times = np.arange(video.shape[0]) / float(source_fps)
    picked = _pick_times(times, fps)
    return [video[i] for i in picked], [float(times[i]) for i in picked], None, {"source_fps": float(source_fps)}


def _pick_times(times: np.ndarray, fps: float) -> list[int]:
    """Index of the first frame at or after each sampling instant k/fps (instants with no frame of their
    own before the next one are skipped)."""
    picked, k = [], 0
    for i, t in enumerate(times):
        if t >= k / fps - 1e-6:
            picked.append(i)
            k = math.floor(t * fps + 1e-6) + 1
    return picked


def _sample_file(path: Path, fps: float, cap: int):
    import av

    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base \
                else (container.duration / 1e6 if container.duration else None)
            # a long video is sampled more sparsely so that at most `cap` full-size frames are held
            rate = min(fps, cap / duration) if duration and duration * fps > cap else fps
            k = 0
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(times) / float(stream.average_rate or 1)
                if t >= k / rate - 1e-6:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    times.append(t)
                    k = math.floor(t * rate + 1e-6) + 1
            meta = {"source_fps": float(stream.average_rate) if stream.average_rate else None,
                    "duration": duration, "sampling_fps": rate, "codec": stream.codec_context.name}
    except av.EOFError:  # the stream ended early (a truncated or empty file): keep what was decoded
        pass
    except av.FFmpegError as err:
        raise ValueError(f"cannot read video {path}: {err}") from None
    if not frames:
        raise ValueError(f"video {path} has no decodable frames")
    return frames, times, meta


# =========================================================================================================
# frames mode: the token budget
# =========================================================================================================
def shrink_frame(frame: np.ndarray, max_pixels: int) -> np.ndarray:
    """The frame scaled down (aspect kept, antialiased) so that its area is at most ``max_pixels``."""
    h, w = frame.shape[:2]
    if h * w <= max_pixels:
        return frame
    scale = math.sqrt(max_pixels / (h * w))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))


def image_token_count(processor: Any, image: np.ndarray) -> int:
    """How many ``<image>`` tokens the processor gives an (H, W, 3) image (tiles and thumbnail included)."""
    from captionaura.processor import plan_image

    layout = plan_image(image.shape[0], image.shape[1], processor.image_config)
    return processor.image_placeholder(layout).count(processor.image_token)


def fit_frames(frames: VideoFrames, processor: Any, token_budget: int,
               frame_image_tokens: int | None = None) -> tuple[VideoFrames, int]:
    """The context frames of ``"frames"`` mode and their image-token count.

    Each frame is shrunk to about ``frame_image_tokens`` image tokens (default: the processor's
    ``min_image_tokens``; never tiled), then the most frames that fit ``token_budget`` image tokens are kept,
    evenly spaced and ending at the last one."""
    cfg = processor.image_config
    per_frame = frame_image_tokens or cfg.min_image_tokens
    if per_frame < 1:
        raise ValueError(f"frame_image_tokens must be positive, got {per_frame}")
    area = per_frame * cfg.total_factor ** 2
    small = np.stack([shrink_frame(f, area) for f in frames.frames]) if len(frames) else frames.frames
    shrunk = VideoFrames(small, frames.timestamps, frames.scene_change, frames.source, frames.num_sampled,
                         dict(frames.metadata))
    costs = [image_token_count(processor, f) for f in small]
    for n in range(len(costs), -1, -1):
        idx = evenly_spaced(len(costs), n)
        total = sum(costs[i] for i in idx)
        if total <= token_budget:
            return shrunk.subset(idx), total
    raise AssertionError("unreachable: zero frames always fit")  # pragma: no cover


# =========================================================================================================
# captions mode: one context sentence
# =========================================================================================================
def _normalise(caption: str) -> str:
    return re.sub(r"\s+", " ", caption.strip().rstrip(".!?").strip()).lower()


def aggregate_captions(captions: Sequence[str]) -> str:
    """Fold per-frame captions (in time order) into one sentence: consecutive repeats (same words, ignoring case,
    spacing and final punctuation) are merged, empty ones dropped, and the rest told in order — "First a, then b,
    and finally c." ("" when no caption has words)."""
    parts: list[str] = []
    for caption in captions:
        text = re.sub(r"\s+", " ", caption.strip()).rstrip(".!? ")
        if text and (not parts or _normalise(parts[-1]) != _normalise(text)):
            parts.append(text)
    if not parts:
        return ""
    if len(parts) == 1:
        return f"{parts[0]}."
    middle = "".join(f", then {p}" for p in parts[1:-1])
    return f"First {parts[0]}{middle}, and finally {parts[-1]}."
