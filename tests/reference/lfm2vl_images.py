"""Deterministic test images for the LFM2-VL processor fixtures, shared by the fixture script and the tests.

Images are generated, never stored: `make_pil(spec)` / `make_png_bytes(spec)` rebuild the same pixels from a small spec (size, mode,
seed) with NumPy and Pillow, so the fixture folder only holds transformers' outputs. Content is smooth
(gradients, rings, a few hard edges, light noise) so that resize differences show and outputs compress.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageSpec:
    """A generated image: ``width`` x ``height`` in Pillow ``mode``; ``exif_orientation`` (1..8) stores the
    image as PNG bytes with that EXIF orientation tag (the pixels are the *stored*, un-rotated ones)."""

    width: int
    height: int
    mode: str = "RGB"
    seed: int = 0
    exif_orientation: int | None = None


def rgb_pixels(width: int, height: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8 smooth test pattern."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float64)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float64)[None, :]
    fx, fy, phase = rng.uniform(1.0, 6.0), rng.uniform(1.0, 6.0), rng.uniform(0, 2 * np.pi)
    r = 0.5 + 0.5 * np.sin(2 * np.pi * fx * x + phase) * np.cos(2 * np.pi * fy * y)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    rings = 0.5 + 0.5 * np.cos(40.0 * np.hypot(x - cx, (y - cy) * height / max(width, 1)))
    g = 0.6 * rings + 0.4 * x
    b = (y * 0.7 + 0.3 * ((x * 8).astype(int) % 2))  # hard vertical edges
    img = np.stack([r * np.ones_like(g), g, b * np.ones_like(g)], axis=-1)
    img = img * 255.0 + rng.normal(0.0, 3.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_pil(spec: ImageSpec) -> Image.Image:
    """The Pillow image of `spec` in its mode (before any EXIF handling)."""
    rgb = rgb_pixels(spec.width, spec.height, spec.seed)
    mode = spec.mode
    if mode == "RGB":
        return Image.fromarray(rgb, mode="RGB")
    if mode == "RGBA":
        alpha = np.linspace(0, 255, spec.width, dtype=np.float64)[None, :].repeat(spec.height, 0)
        return Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8)]), mode="RGBA")
    if mode == "L":
        return Image.fromarray(rgb[..., 1], mode="L")
    if mode == "LA":
        alpha = np.linspace(255, 0, spec.height, dtype=np.float64)[:, None].repeat(spec.width, 1)
        return Image.fromarray(np.dstack([rgb[..., 0], alpha.astype(np.uint8)]), mode="LA")
    if mode == "P":
        # An explicit 16-colour palette (no quantiser, so every Pillow version builds the same image).
        idx = (rgb[..., 0] // 16).astype(np.uint8)
        img = Image.fromarray(idx, mode="L").convert("P")
        palette = np.stack([np.arange(16) * 17, 255 - np.arange(16) * 13, (np.arange(16) * 53) % 256], 1)
        img.putpalette(palette.astype(np.uint8).ravel().tolist())
        return img
    if mode == "CMYK":
        k = (255 - rgb.max(axis=-1)).astype(np.uint8)
        return Image.fromarray(np.dstack([255 - rgb, k]).astype(np.uint8), mode="CMYK")
    if mode == "I;16":
        img = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257 // 3).astype(np.uint16))
        assert img.mode == "I;16", img.mode
        return img
    raise ValueError(f"no generator for mode {mode}")


def make_png_bytes(spec: ImageSpec) -> bytes:
    """PNG file bytes of `spec`, with the EXIF orientation tag when the spec has one."""
    img = make_pil(spec)
    buf = io.BytesIO()
    if spec.exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = int(spec.exif_orientation)
        img.save(buf, format="PNG", exif=exif)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def make_input(spec: ImageSpec) -> Image.Image | bytes:
    """What the tests hand to captionaura: PNG bytes for EXIF specs, else the Pillow image."""
    return make_png_bytes(spec) if spec.exif_orientation is not None else make_pil(spec)
