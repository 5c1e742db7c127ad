"""Short AuraScenes videos of an evolving scene, and writing frames as a real .mp4 file with PyAV.

Kinds: ``sunset`` (the sun sinks below the horizon and the sky darkens to night), ``balloon`` (a balloon rises
from the ground into the sky), ``rain`` (clouds gather, the light dims and rain starts), ``boat`` (a boat
crosses the water from left to right). Each video carries a ground-truth context sentence and a caption per
frame describing what that frame shows.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from captionaura.data.captions import SCENE_NOUNS, SCENE_PLACES, count_word, reference_captions
from captionaura.data.scenes import (COLOURS, LIGHT, SIZE_SCALE, SKY_GRADIENTS, SUNS, Look, SceneObject,
                                     SceneSpec, _lerp, placements, render, sample_scene)

VIDEO_KINDS = ("sunset", "balloon", "rain", "boat")
_VIDEO_SCENES = {
    "sunset": ("beach", "lake", "field", "desert", "harbour", "mountains"),
    "balloon": ("field", "desert", "mountains", "lake", "city", "beach"),
    "rain": ("city", "field", "lake", "beach", "forest", "harbour"),
    "boat": ("lake", "harbour", "beach"),
}
_RAIN_SKY = ((105, 115, 130), (165, 170, 180))
#: Encoders tried in order: H.264 first, MPEG-4 part 2 where the PyAV build lacks libx264.
VIDEO_CODECS = ("libx264", "libopenh264", "mpeg4")


@dataclass
class Video:
    """A synthetic clip: ``frames`` (F, H, W, 3) uint8 at ``fps``, the ``context`` sentence saying what happens,
    one caption per frame, and the scene it happens in."""

    kind: str
    frames: np.ndarray
    fps: float
    context: str
    captions: list[str]
    scene: SceneSpec

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the clip as an .mp4 (see :func:`write_video`)."""
        return write_video(path, self.frames, self.fps)


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return _lerp(a, b, min(max(t, 0.0), 1.0))


def _sunset_look(t: float) -> tuple[Look, str]:
    """Midday -> sunset over the first half, sunset -> night over the second; the sun sinks past the horizon."""
    (mt, mh), (st, sh), (nt, nh) = SKY_GRADIENTS["midday"], SKY_GRADIENTS["sunset"], SKY_GRADIENTS["night"]
    u = 2 * t if t < 0.5 else 2 * t - 1
    top, horizon = (_mix(mt, st, u), _mix(mh, sh, u)) if t < 0.5 else (_mix(st, nt, u), _mix(sh, nh, u))
    light = LIGHT["midday"] + (LIGHT["sunset"] - LIGHT["midday"]) * min(2 * t, 1) \
        + (LIGHT["night"] - LIGHT["sunset"]) * max(2 * t - 1, 0)
    sx, _, sr, s_rgb = SUNS["midday"]
    _, _, er, e_rgb = SUNS["sunset"]
    sun = (sx, 0.12 + 0.62 * t, sr + (er - sr) * t, _mix(s_rgb, e_rgb, 1.5 * t))
    time = "midday" if t < 0.3 else "sunset" if t < 0.75 else "night"
    look = Look(sky_top=top, sky_horizon=horizon, light=light, sun=sun, stars=max(0.0, (t - 0.7) / 0.3) * 0.35,
                moon=t > 0.85, lit_windows=t > 0.7)
    return look, time


def _rain_look(t: float, time: str) -> tuple[Look, str]:
    """Clouds gather over the first half while the sky greys; rain starts at 40% and gets heavier."""
    top, horizon = SKY_GRADIENTS[time]
    look = Look(sky_top=_mix(top, _RAIN_SKY[0], 1.6 * t), sky_horizon=_mix(horizon, _RAIN_SKY[1], 1.6 * t),
                light=LIGHT[time] * (1 - 0.2 * min(1.6 * t, 1)), sun=SUNS[time] if t < 0.3 else None,
                clouds=min(2 * t, 1.0), dark_clouds=t >= 0.4, precipitation="rainy",
                precipitation_amount=max(0.0, (t - 0.4) / 0.6))
    weather = "clear" if t < 0.2 else "cloudy" if t < 0.4 else "rainy"
    return look, weather


def _position(x: float) -> str:
    return "left" if x < 1 / 3 else "centre" if x < 2 / 3 else "right"


def make_video(world_seed: int, kind: str, frames: int = 24, seed: int = 0, image_size: int = 128,
               fps: float = 8.0) -> Video:
    """The ``kind`` clip number ``seed`` of the world with seed ``world_seed`` (see ``AuraScenes.video``)."""
    if kind not in VIDEO_KINDS:
        raise ValueError(f"unknown video kind {kind!r}; choose one of {VIDEO_KINDS}")
    if frames < 2:
        raise ValueError(f"a video needs at least 2 frames, got {frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    key = [int(world_seed), 400, VIDEO_KINDS.index(kind), int(seed)]
    rng = np.random.default_rng(key)
    scene_kind = _VIDEO_SCENES[kind][rng.integers(len(_VIDEO_SCENES[kind]))]
    base = sample_scene(rng, scene_kind)
    time = ("morning", "midday")[rng.integers(2)]
    base = dataclasses.replace(base, weather="clear", time_of_day="sunset" if kind == "sunset" else time)
    noun = SCENE_NOUNS[scene_kind][0]
    mover: SceneObject | None = None  # the balloon or boat that moves
    if kind in ("balloon", "boat"):
        name = "balloon" if kind == "balloon" else "boat"
        colour = ("red", "yellow", "orange", "purple", "pink")[rng.integers(5)]
        mover = SceneObject(name, colour, 1, "centre" if kind == "balloon" else "left", "large")
        others = tuple(g for g in base.objects if g.name != name and g.position != "centre")[:1]
        base = dataclasses.replace(base, objects=(mover,) + others)
    place = SCENE_PLACES[scene_kind][0]
    if kind == "sunset":
        context = f"The sun sets over {noun} and the sky grows dark."
    elif kind == "rain":
        context = f"Clouds gather over {noun} and rain begins to fall."
    elif mover is not None and kind == "balloon":
        context = f"{count_word(1, mover.colour).capitalize()} {mover.colour} balloon rises into the sky {place}."
    elif mover is not None:
        context = f"{count_word(1, mover.colour).capitalize()} {mover.colour} boat sails across {noun} from left to right."
    out = np.empty((frames, image_size, image_size, 3), np.uint8)
    captions = []
    for f in range(frames):
        t = f / (frames - 1)
        spec, look = base, Look.of(base)
        objects = placements(base)
        if kind == "sunset":
            look, tod = _sunset_look(t)
            spec = dataclasses.replace(base, time_of_day=tod)
        elif kind == "rain":
            look, weather = _rain_look(t, time)
            spec = dataclasses.replace(base, weather=weather)
        elif mover is not None:
            still = [o for o in objects if o[0] != mover.name]
            scale = SIZE_SCALE["large"]
            if kind == "balloon":
                moving = ("balloon", 0.5 + 0.04 * np.sin(3 * t), 0.95 - 0.75 * t, scale, COLOURS[mover.colour])
            else:
                x = 0.08 + 0.84 * t
                moving = ("boat", x, next(o[2] for o in objects if o[0] == "boat"), scale, COLOURS[mover.colour])
                spec = dataclasses.replace(base, objects=(dataclasses.replace(mover, position=_position(x)),)
                                           + base.objects[1:])
            objects = still + [moving]
        out[f] = render(scene_kind, look, objects, image_size, np.random.default_rng(key),
                        np.random.default_rng(key + [f]))
        captions.append(reference_captions(spec, np.random.default_rng(key + [f, 1]), 5)[0])
    return Video(kind=kind, frames=out, fps=float(fps), context=context, captions=captions, scene=base)


def _pick_codec() -> str:
    import av  # imported on use: the rest of captionaura.data works where PyAV is not installed yet

    for name in VIDEO_CODECS:
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:  # not in this PyAV build
            continue
        return name
    raise RuntimeError(f"PyAV has none of the video encoders {VIDEO_CODECS}")


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float, *, codec: str | None = None,
                crf: int = 18) -> Path:
    """Write (F, H, W, 3) uint8 RGB ``frames`` as an .mp4 (H.264 yuv420p; MPEG-4 where the PyAV build has no
    H.264 encoder). Written to a temporary file then renamed, so ``path`` is never left half written."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"video frames must be a (F, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if n == 0:
        raise ValueError("cannot write a video with zero frames")
    if h % 2 or w % 2 or h == 0 or w == 0:
        raise ValueError(f"video frames need an even, non-zero width and height (yuv420p), got {w}x{h}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder for the video not found: {path.parent}")
    codec = codec or _pick_codec()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(int(crf)), "preset": "veryfast"}
            else:
                stream.bit_rate = 8_000_000  # MPEG-4 has no CRF: a high rate keeps small frames near lossless
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
