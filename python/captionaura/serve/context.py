"""The video context of one connection: a bounded buffer of recent camera frames, scene changes, and the
captions written so far (the context summary).

Frames are compared as ``captionaura.video`` compares a video's frames (:func:`~captionaura.video.thumbnail`
and :func:`~captionaura.video.thumbnail_distance`, with its thresholds by default): a frame closer than
``keep_threshold`` to the last kept frame is counted but not stored; one farther than ``scene_threshold``
starts a new scene. The summary is the last scenes' captions folded into one sentence
(:func:`~captionaura.video.aggregate_captions`), as a video's frame captions are in the "captions" mode.
Memory is bounded by ``capacity`` frames and ``summary_scenes`` captions."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from captionaura.video import (
    DEDUPE_THRESHOLD,
    SCENE_CHANGE_THRESHOLD,
    VideoFrames,
    aggregate_captions,
    thumbnail,
    thumbnail_distance,
)


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8
    thumb: np.ndarray  # (32, 32, 3) float32, captionaura.video.thumbnail
    scene: int
    time: float        # time.monotonic() when it arrived


@dataclass
class ContextConfig:
    capacity: int = 8
    keep_threshold: float = DEDUPE_THRESHOLD
    scene_threshold: float = SCENE_CHANGE_THRESHOLD
    summary_scenes: int = 3

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.summary_scenes < 1:
            raise ValueError("capacity and summary_scenes must be >= 1")
        if not 0.0 <= self.keep_threshold <= self.scene_threshold <= 1.0:
            raise ValueError("need 0 <= keep_threshold <= scene_threshold <= 1")


@dataclass
class ContextBuffer:
    config: ContextConfig = field(default_factory=ContextConfig)

    def __post_init__(self) -> None:
        self.frames: deque[Frame] = deque(maxlen=self.config.capacity)
        self.captions: deque[tuple[int, str]] = deque(maxlen=self.config.summary_scenes)  # (scene, caption)
        self.frames_seen = 0
        self.scene = 0
        self.scene_changes = 0

    def add(self, image: np.ndarray) -> bool:
        """Add a frame; True when it starts a new scene (the first frame starts scene 0, not a change)."""
        self.frames_seen += 1
        thumb = thumbnail(image)
        changed = False
        if self.frames:
            distance = thumbnail_distance(thumb, self.frames[-1].thumb)
            if distance < self.config.keep_threshold:
                return False
            if distance > self.config.scene_threshold:
                self.scene += 1
                self.scene_changes += 1
                changed = True
        self.frames.append(Frame(image, thumb, self.scene, time.monotonic()))
        return changed

    def latest(self) -> np.ndarray | None:
        return self.frames[-1].image if self.frames else None

    def scene_video(self, limit: int) -> VideoFrames | None:
        """Up to ``limit`` kept frames of the current scene before the latest one (and of its size), oldest
        first, timed from the first of them; None when there is none. The "frames" mode's video."""
        if limit < 1 or not self.frames:
            return None
        latest = self.frames[-1]
        earlier = [f for f in list(self.frames)[:-1]
                   if f.scene == self.scene and f.image.shape == latest.image.shape][-limit:]
        if not earlier:
            return None
        return VideoFrames(np.stack([f.image for f in earlier]),
                           np.asarray([f.time - earlier[0].time for f in earlier], np.float64),
                           np.arange(len(earlier)) == 0, source=None, num_sampled=len(earlier))

    def note_caption(self, caption: str) -> None:
        """Remember the caption of the current scene (a later caption of the same scene replaces it)."""
        caption = caption.strip()
        if not caption:
            return
        if self.captions and self.captions[-1][0] == self.scene:
            self.captions.pop()
        self.captions.append((self.scene, caption))

    def scene_captions(self) -> list[str]:
        """The captions of the last scenes, oldest first."""
        return [text for _, text in self.captions]

    def summary(self) -> str:
        """The last scenes' captions as one sentence: what the next caption's prompt is told."""
        return aggregate_captions(self.scene_captions())

    def reset(self) -> None:
        self.__post_init__()

    def state(self) -> dict:
        """What the page's context panel shows."""
        return {"frames_kept": len(self.frames), "capacity": self.config.capacity,
                "frames_seen": self.frames_seen, "scene": self.scene + 1, "scene_changes": self.scene_changes,
                "summary": self.summary()}
