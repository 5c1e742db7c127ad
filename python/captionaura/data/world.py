"""`AuraScenes`: the seeded world that hands out captioned images, splits, users and videos."""

from __future__ import annotations

import numpy as np

from captionaura.data.captions import reference_captions
from captionaura.data.example import CaptionExample
from captionaura.data.scenes import SCENE_KINDS, SceneSpec, render_scene, sample_scene

#: Held-out examples start at this index, so public and held-out index ranges never meet.
HELDOUT_OFFSET = 1_000_000_000
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 128, 512


class AuraScenes:
    """A procedural image-caption dataset: ``example(i)`` is a pure function of ``(seed, i)``.

    >>> world = AuraScenes(seed=0, image_size=128)
    >>> ex = world.example(0)          # CaptionExample(image (128, 128, 3) uint8, >= 5 captions, scene)
    """

    def __init__(self, seed: int = 0, image_size: int = 128, captions_per_image: int = 6) -> None:
        if not isinstance(image_size, (int, np.integer)) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be an integer in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {image_size!r}")
        if captions_per_image < 5:
            raise ValueError(f"captions_per_image must be at least 5, got {captions_per_image}")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.captions_per_image = int(captions_per_image)

    def _rng(self, stream: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, int(index)])

    def scene(self, index: int, kind: str | None = None) -> SceneSpec:
        """The ground truth of example ``index`` (``kind`` forces the scene kind, as users' preferences do)."""
        if index < 0:
            raise ValueError(f"example index must be non-negative, got {index}")
        return sample_scene(self._rng(0 if kind is None else 1 + SCENE_KINDS.index(kind), index), kind)

    def example(self, index: int, kind: str | None = None) -> CaptionExample:
        """Example ``index``: its image, reference captions and scene, identical on every call and machine."""
        spec = self.scene(index, kind)
        stream = 0 if kind is None else 1 + SCENE_KINDS.index(kind)
        image = render_scene(spec, self.image_size, self._rng(100 + stream, index))
        captions = reference_captions(spec, self._rng(200 + stream, index), self.captions_per_image)
        return CaptionExample(image=image, captions=captions, scene=spec, image_id=(kind or "any", int(index)))

    def examples(self, start: int, count: int, kind: str | None = None) -> list[CaptionExample]:
        """Examples ``start .. start + count - 1``."""
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        return [self.example(i, kind) for i in range(start, start + count)]

    def public_split(self, n: int) -> list[CaptionExample]:
        """The first ``n`` public examples (indices 0 ..), the pretraining data."""
        if not 0 <= n < HELDOUT_OFFSET:
            raise ValueError(f"public split size must be in 0..{HELDOUT_OFFSET - 1}, got {n}")
        return self.examples(0, n)

    def heldout_split(self, n: int) -> list[CaptionExample]:
        """``n`` held-out examples from an index range the public split never reaches."""
        if n < 0:
            raise ValueError(f"held-out split size must be non-negative, got {n}")
        return self.examples(HELDOUT_OFFSET, n)
