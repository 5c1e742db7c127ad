"""`CaptionExample`: one image with its reference captions, the unit every dataset in captionaura.data yields."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from captionaura.image import load_image

if TYPE_CHECKING:  # pragma: no cover
    from captionaura.data.scenes import SceneSpec


class CaptionExample:
    """An RGB image and its reference captions.

    The image is either held in memory (``image=`` an (H, W, 3) uint8 array), loaded from ``path`` the first
    time ``.image`` is read (real datasets are too large to decode up front) through
    :func:`captionaura.image.load_image` and kept, or made by ``loader()`` on every read and not kept (lazy
    AuraScenes examples, cheaper to redraw than to hold). ``scene`` is the ground-truth :class:`SceneSpec` for
    AuraScenes images, None for real data.
    """

    __slots__ = ("_image", "_loader", "path", "captions", "scene", "image_id")

    def __init__(self, image: np.ndarray | None = None, captions: Sequence[str] = (),
                 scene: SceneSpec | None = None, *, path: str | os.PathLike[str] | None = None,
                 loader: Callable[[], np.ndarray] | None = None, image_id: Any = None) -> None:
        if image is None and path is None and loader is None:
            raise ValueError("a CaptionExample needs an image array, an image path or a loader")
        caption_list = [str(c) for c in captions]
        if not caption_list:
            where = f" for {path}" if path is not None else ""
            raise ValueError(f"empty caption list{where}: every example needs at least one caption")
        if any(not c.strip() for c in caption_list):
            raise ValueError(f"empty caption string in {caption_list!r}")
        self._image = None if image is None else load_image(image)
        self._loader = loader
        self.path = None if path is None else Path(path)
        self.captions = caption_list
        self.scene = scene
        self.image_id = image_id

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB pixels (decoded from ``path`` on first access and kept, or made by the loader)."""
        if self._image is not None:
            return self._image
        if self._loader is not None:
            return load_image(self._loader())
        self._image = load_image(self.path)
        return self._image

    @property
    def is_loaded(self) -> bool:
        """Whether the pixels are held in memory (eager examples; files after the first ``.image``)."""
        return self._image is not None

    def __repr__(self) -> str:
        src = (f"image={self._image.shape}" if self._image is not None
               else f"path={str(self.path)!r}" if self.path is not None else "lazy")
        return f"CaptionExample({src}, captions={self.captions[:2]!r}{'...' if len(self.captions) > 2 else ''})"
