"""captionaura.data: the built-in AuraScenes world (images, captions, users, videos) and real-data loaders."""

from __future__ import annotations

from captionaura.data.example import CaptionExample
from captionaura.data.scenes import COLOURS, SCENE_KINDS, TIMES_OF_DAY, WEATHERS, SceneObject, SceneSpec
from captionaura.data.world import HELDOUT_OFFSET, AuraScenes

__all__ = ["AuraScenes", "CaptionExample", "SceneSpec", "SceneObject", "SCENE_KINDS", "TIMES_OF_DAY",
           "WEATHERS", "COLOURS", "HELDOUT_OFFSET"]
