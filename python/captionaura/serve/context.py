"""The video context of one connection: a bounded buffer of recent camera frames, scene changes found by
comparing small grey thumbnails, and the captions written so far (the context summary).

A frame is kept when it differs from the last kept frame (mean absolute difference of 16x16 grey thumbnails
above ``keep_threshold``); near-duplicates are counted but not stored. A difference above
``scene_threshold`` starts a new scene. Memory is bounded by ``capacity`` frames and ``summary_scenes``
captions."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

THUMB = 16


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(16, 16) float32 grey levels in [0, 1] (box-filtered), the signature used to compare frames."""
    grey = Image.fromarray(image).convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    return np.asarray(grey, np.float32) / 255.0


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8
    thumb: np.ndarray  # (16, 16) float32
    scene: int
    time: float


@dataclass
class ContextConfig:
    capacity: int = 8
    keep_threshold: float = 0.01
    scene_threshold: float = 0.12
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
        self._last_thumb: np.ndarray | None = None

    def add(self, image: np.ndarray) -> bool:
        """Add a frame; True when it starts a new scene (the first frame starts scene 0, not a change)."""
        self.frames_seen += 1
        thumb = thumbnail(image)
        changed = False
        if self._last_thumb is not None:
            diff = float(np.mean(np.abs(thumb - self._last_thumb)))
            if diff < self.config.keep_threshold:
                return False
            if diff > self.config.scene_threshold:
                self.scene += 1
                self.scene_changes += 1
                changed = True
        self._last_thumb = thumb
        self.frames.append(Frame(image, thumb, self.scene, time.monotonic()))
        return changed

    def latest(self) -> np.ndarray | None:
        return self.frames[-1].image if self.frames else None

    def scene_frames(self, limit: int) -> list[np.ndarray]:
        """Up to ``limit`` kept frames of the current scene before the latest one, oldest first."""
        earlier = [f.image for f in list(self.frames)[:-1] if f.scene == self.scene]
        return earlier[-limit:] if limit > 0 else []

    def note_caption(self, caption: str) -> None:
        """Remember the caption of the current scene (a later caption of the same scene replaces it)."""
        caption = caption.strip()
        if not caption:
            return
        if self.captions and self.captions[-1][0] == self.scene:
            self.captions.pop()
        self.captions.append((self.scene, caption))

    def summary(self) -> str:
        """The captions of the last scenes, oldest first: what the next caption's prompt is told."""
        return " ".join(f"Scene {scene + 1}: {text}" + ("" if text.endswith((".", "!", "?")) else ".")
                        for scene, text in self.captions)

    def reset(self) -> None:
        self.__post_init__()

    def state(self) -> dict:
        """What the page's context panel shows."""
        return {"frames_kept": len(self.frames), "capacity": self.config.capacity,
                "frames_seen": self.frames_seen, "scene": self.scene + 1, "scene_changes": self.scene_changes,
                "summary": self.summary()}
