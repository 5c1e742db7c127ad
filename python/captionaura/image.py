"""Image loading and the exact resize used by LFM2-VL preprocessing.

Loading (`load_image`) follows ``transformers.image_utils.load_image``: decode with Pillow, apply the EXIF
orientation (``PIL.ImageOps.exif_transpose``), then ``convert("RGB")`` (alpha is dropped, not composited;
palette, L, LA, CMYK, I;16 ... go through Pillow's own conversion). transformers' processor decodes file paths
with ``torchvision.io.decode_image(mode=RGB, apply_exif_orientation=True)``, which gives the same pixels for
PNG files; Pillow images handed to it directly are used as they are, without EXIF orientation.

Resizing (`resize_bilinear_aa`) reproduces what transformers' ``Lfm2VlImageProcessor`` (torchvision backend)
computes on CPU: ``torchvision.transforms.v2.functional.resize(uint8, antialias=True)`` runs PyTorch's native
uint8 antialiased bilinear kernel. That kernel is Pillow-SIMD's fixed-point algorithm: per axis a triangle
filter whose support widens with the downscale factor, weights computed in float64, normalised, converted to
int16 with a precision chosen from the largest weight, accumulated in int32 with rounding, clamped to uint8;
the horizontal pass runs first (into a uint8 intermediate), then the vertical pass; an unchanged axis is skipped.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Union

import numpy as np

try:  # Pillow is a runtime dependency; keep the import error readable.
    from PIL import Image, ImageOps
except ImportError as err:  # pragma: no cover
    raise ImportError("captionaura's image loading needs Pillow: pip install pillow") from err

#: Pillow's own decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``, about 89.5 megapixels).
DEFAULT_MAX_PIXELS = 89_478_485

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, "Image.Image", np.ndarray]


class ImageLoadError(ValueError):
    """An image that cannot be used: corrupt or truncated data, zero size, too many pixels, unsupported
    mode, array dtype or shape."""


def load_image(image: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               composite_alpha: bool = False) -> np.ndarray:
    """Decode `image` into an upright (H, W, 3) uint8 RGB array.

    Accepts a file path, the encoded bytes of a file, a Pillow image, or an (H, W, 3) uint8 array (used as
    is). Pillow inputs get their EXIF orientation applied and are converted with ``convert("RGB")`` (alpha
    dropped), as ``transformers.image_utils.load_image`` does. ``composite_alpha=True`` (only for Pillow image
    objects) instead composites images with an alpha band or a transparency entry onto white, as transformers'
    ``convert_to_rgb`` does when an image processor has ``do_convert_rgb=True``.
    ``max_pixels`` (None: no limit) rejects images whose width x height exceeds it before decoding them.
    """
    if isinstance(image, np.ndarray):
        return _check_array(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        return _from_pil(_open(path.read_bytes(), str(path), max_pixels), str(path), max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _from_pil(_open(bytes(image), "image bytes", max_pixels), "image bytes", max_pixels)
    if isinstance(image, Image.Image):
        return _from_pil(image, "Pillow image", max_pixels, composite_alpha)
    raise TypeError(
        "an image must be a path, encoded bytes, a PIL.Image.Image or an (H, W, 3) uint8 numpy array, "
        f"got {type(image).__name__}")


def _check_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ImageLoadError(f"image arrays must be uint8 (H, W, 3) RGB, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageLoadError(f"image arrays must have shape (H, W, 3), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"image has zero size: {arr.shape[1]}x{arr.shape[0]}")
    return np.ascontiguousarray(arr)


def _check_size(width: int, height: int, what: str, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{what} has zero size: {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{what} has {width}x{height} = {width * height} pixels, more than the limit of {max_pixels} "
            "(possible decompression bomb; raise max_pixels to allow it)")


def _open(data: bytes, what: str, max_pixels: int | None) -> "Image.Image":
    if len(data) == 0:
        raise ImageLoadError(f"{what}: empty data")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{what}: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise ImageLoadError(f"{what}: cannot decode image data ({err})") from None
    # The header gives the size before any pixel is decoded: refuse bombs and empty images here.
    _check_size(img.size[0], img.size[1], what, max_pixels)
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{what}: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageLoadError(f"{what}: corrupt or truncated image data ({err})") from None
    return img


# Modes whose Pillow conversion to RGB is meaningful. Refused: "F" (float) and "I" (int32) data, which Pillow
# clips to 0..255 without scaling, and "LAB"/"HSV", which it cannot convert to RGB.
_SUPPORTED_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                    "I;16", "I;16L", "I;16B", "I;16N"}


def _from_pil(img: "Image.Image", what: str, max_pixels: int | None, composite_alpha: bool = False) -> np.ndarray:
    _check_size(img.size[0], img.size[1], what, max_pixels)
    if img.mode not in _SUPPORTED_MODES:
        raise ImageLoadError(f"{what}: unsupported image mode {img.mode!r}")
    try:
        img = ImageOps.exif_transpose(img)
        if composite_alpha and ("A" in img.getbands() or img.info.get("transparency") is not None):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, rgba).convert("RGB")
        else:
            rgb = img.convert("RGB")
    except (OSError, ValueError) as err:
        raise ImageLoadError(f"{what}: cannot convert mode {img.mode!r} to RGB ({err})") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - Pillow guarantees RGB here
        raise ImageLoadError(f"{what}: conversion to RGB gave shape {arr.shape}")
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------------------
# antialiased bilinear resize (uint8, fixed point), identical to PyTorch's CPU kernel
# ---------------------------------------------------------------------------------------------------------
def _aa_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Taps of one axis: input indices (n_out, K), int16-valued weights (n_out, K) as int32, precision bits."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0  # bilinear: half-width 1 input pixel, widened when shrinking
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    ksize = int(math.ceil(support)) * 2 + 1
    center = scale * (np.arange(n_out, dtype=np.float64) + 0.5)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C casts truncate toward zero
    xsize = np.minimum((center + support + 0.5).astype(np.int64), n_in) - xmin
    taps = np.arange(ksize, dtype=np.int64)
    dist = np.abs(((taps[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * invscale)
    w = np.where(dist < 1.0, 1.0 - dist, 0.0)
    w[taps[None, :] >= xsize[:, None]] = 0.0
    total = np.zeros(n_out, dtype=np.float64)
    for k in range(ksize):  # sequential sum in tap order, as the C loop does
        total += w[:, k]
    w = np.divide(w, total[:, None], out=w, where=total[:, None] != 0.0)
    w_max = float(w.max())
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    wi = np.floor(0.5 + w * float(1 << precision)).astype(np.int32)
    idx = np.minimum(xmin[:, None] + taps[None, :], n_in - 1)  # padded taps have weight 0
    return idx, wi, precision


def _resample_axis(img: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    idx, wi, precision = _aa_weights(img.shape[axis], n_out)
    shape = list(img.shape)
    shape[axis] = n_out
    acc = np.full(shape, 1 << (precision - 1), dtype=np.int32)
    bshape = [1] * img.ndim
    bshape[axis] = n_out
    for k in range(idx.shape[1]):
        acc += np.take(img, idx[:, k], axis=axis).astype(np.int32) * wi[:, k].reshape(bshape)
    np.right_shift(acc, precision, out=acc)
    return np.clip(acc, 0, 255).astype(np.uint8)


def resize_bilinear_aa(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, C) uint8 image to (height, width, C) exactly as PyTorch's CPU
    ``interpolate(mode="bilinear", antialias=True, align_corners=False)`` does for uint8 tensors
    (and therefore as torchvision's ``resize`` does on CPU). Same size returns a copy."""
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"resize_bilinear_aa expects an (H, W, C) uint8 array, got {img.dtype} {img.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive, got {height}x{width}")
    out = img
    if width != img.shape[1]:
        out = _resample_axis(out, 1, width)
    if height != img.shape[0]:
        out = _resample_axis(out, 0, height)
    return out.copy() if out is img else out
