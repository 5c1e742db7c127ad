"""captionaura.data: the built-in AuraScenes world (images, captions, users, videos) and real-data loaders."""

from __future__ import annotations

from captionaura.data.example import CaptionExample
from captionaura.data.loaders import load_coco, load_flickr8k, load_folder, load_instagram
from captionaura.data.scenes import COLOURS, SCENE_KINDS, TIMES_OF_DAY, WEATHERS, SceneObject, SceneSpec
from captionaura.data.users import STYLES, User, style_caption
from captionaura.data.videos import VIDEO_KINDS, Video, write_video
from captionaura.data.world import HELDOUT_OFFSET, AuraScenes

__all__ = ["AuraScenes", "CaptionExample", "SceneSpec", "SceneObject", "User", "Video", "SCENE_KINDS",
           "TIMES_OF_DAY", "WEATHERS", "COLOURS", "STYLES", "VIDEO_KINDS", "HELDOUT_OFFSET", "style_caption",
           "write_video", "load_instagram", "load_coco", "load_flickr8k", "load_folder"]
