"""Checks on what a browser sends: image size, pixel count and type (by magic bytes), and a per-connection
rate limit. Every refusal is an ``InputError`` whose message is shown to the user as it is."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from captionaura.image import ImageLoadError, load_image

MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: 16 megapixels: a 4K photo fits; a decompression bomb does not.
MAX_IMAGE_PIXELS = 4096 * 4096
#: Longest side of the images a connection keeps: LFM2-VL's processor cuts larger ones into the same 512-pixel
#: tiles anyway, and this bounds a connection's memory (8 frames of at most 2048 x 2048 x 3 bytes).
MAX_IMAGE_SIDE = 2048


class InputError(ValueError):
    """Input the server refuses; the message names the problem and is sent to the page."""


def sniff_image_type(data: bytes) -> str:
    """"jpeg", "png" or "webp" from the file's magic bytes (the declared type is not trusted)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise InputError("unsupported image type: only JPEG, PNG and WebP images are accepted")


def decode_image(data: bytes, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS,
                 max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """Validated (H, W, 3) uint8 RGB pixels of an encoded image: size, type and pixel count are checked
    before any pixel is decoded; an image longer than ``max_side`` is scaled down to it (aspect kept)."""
    if len(data) == 0:
        raise InputError("empty image")
    if len(data) > max_bytes:
        raise InputError(f"image too large: {len(data) / 1e6:.1f} MB, the limit is {max_bytes / 1e6:.0f} MB")
    kind = sniff_image_type(data)
    try:
        pixels = load_image(data, max_pixels=max_pixels)
    except ImageLoadError as err:
        raise InputError(f"invalid {kind.upper()} image: {err}") from None
    height, width = pixels.shape[:2]
    if max(height, width) <= max_side:
        return pixels
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


@dataclass
class RateLimiter:
    """Token bucket: ``rate`` messages a second on average, bursts of up to ``burst``."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {self.rate}, {self.burst}")
        self._tokens = float(self.burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        """Take one token; False when the bucket is empty (the message is over the limit)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
