"""LFM2-VL preprocessing: images to SigLIP2 patch sequences, prompts to token ids, identical to transformers.

The reference is transformers 5.23's ``Lfm2VlProcessor`` with its only image processor,
``Lfm2VlImageProcessor`` (torchvision backend, run on CPU). Per image (``ImageProcessorConfig`` fields, p =
encoder_patch_size, f = downsample_factor, F = p*f):

1. ``smart_resize``: round each side to a multiple of F (Python ``round``, half to even; at least F), then if the
   area is above ``max_image_tokens*F^2`` shrink by ``sqrt(H*W/max)`` with floor, if below ``min_image_tokens*F^2``
   grow with ceil.
2. "too large" when ``max(p, round_F(H)) * max(p, round_F(W)) > max_image_tokens * F^2 * max_pixels_tolerance``.
   If too large and splitting is on, a grid (gw, gh) with min_tiles <= gw*gh <= max_tiles is chosen by the
   closest aspect ratio (ties: the later candidate wins when H*W > 0.5 * tile^2 * gw * gh), the image is
   stretched to (tile*gh, tile*gw) and cut into row-major tiles, then (use_thumbnail) the whole image resized
   to the smart-resize size is appended. Otherwise the image is stretched to the smart-resize size.
3. Resize = antialiased bilinear on uint8 (``captionaura.image.resize_bilinear_aa``), then
   ``(x - mean/rescale) / (std/rescale)`` in float32, patches in (py, px, c) order, zero-padded to
   ``max(max_image_tokens*f^2, (tile/p)^2 if splitting)`` patches with ``pixel_attention_mask``.

Text: every ``<image>`` becomes ``<|image_start|>`` + (multi-tile: ``<|img_row_R_col_C|>`` + ``<image>`` x
tokens_per_tile for each tile in row-major order, R = tile row (1..gh), C = tile column (1..gw), then, with a
thumbnail, ``<|img_thumbnail|>`` + ``<image>`` x tokens of the smart-resize size; single: ``<image>`` x those
tokens) + ``<|image_end|>``, and the text is tokenised without special tokens (the chat template writes BOS).
transformers 5.23 labels tiles correctly (rows = grid height); older versions fed rows = grid width
(transposed labels on non-square grids), which this module does not reproduce.

Deliberate differences from transformers' ``Lfm2VlProcessor`` (everything else is identical, see
tests/test_processor.py):

* Pillow images get their EXIF orientation applied (transformers applies it only when it loads a file) and
  non-RGB Pillow images are converted the way ``transformers.image_utils.load_image`` converts them (with the
  checkpoints' ``do_convert_rgb`` unset, transformers' processor raises on them). With ``do_convert_rgb=True``
  alpha is composited onto white exactly as transformers does.
* Files and bytes are decoded with Pillow; transformers decodes paths with ``torchvision.io.decode_image``
  (same pixels for PNG; JPEG decoders could differ by library version).
* ``<image>`` markers without images, images without text, and marker/image count mismatches all raise
  ``ValueError`` (transformers tokenises markers in a text-only call as plain tokens).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from captionaura._io import read_json, write_json_atomic
from captionaura.image import DEFAULT_MAX_PIXELS, ImageInput, load_image, resize_bilinear_aa

PROCESSOR_CONFIG_NAME = "processor_config.json"
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
CHAT_TEMPLATE_NAME = "chat_template.jinja"

#: PIL.Image.Resampling.BILINEAR, the only resample mode of LFM2-VL checkpoints.
RESAMPLE_BILINEAR = 2


# =========================================================================================================
# image processor configuration
# =========================================================================================================
@dataclass
class ImageProcessorConfig:
    """The image-processor settings of an LFM2-VL checkpoint, with transformers' field names.

    Class defaults are those of transformers' ``Lfm2VlImageProcessor`` (which match LFM2-VL-1.6B); real
    checkpoints differ (LFM2-VL-450M: ``use_thumbnail=False``, ``max_pixels_tolerance=2.0``; 1.6B: thumbnail on,
    tolerance 1.5), so always build it with ``from_pretrained`` / ``from_dict``.
    """

    do_image_splitting: bool = True
    min_tiles: int = 2
    max_tiles: int = 10
    use_thumbnail: bool = True
    min_image_tokens: int = 64
    max_image_tokens: int = 256
    encoder_patch_size: int = 16
    tile_size: int = 512
    max_pixels_tolerance: float = 2.0
    downsample_factor: int = 2
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resample: int = RESAMPLE_BILINEAR
    do_pad: bool = True
    #: True: Pillow images with alpha are composited onto white (transformers' ``convert_to_rgb``); None/False:
    #: alpha is dropped as ``transformers.image_utils.load_image`` does (with None, transformers' processor
    #: itself fails on non-RGB Pillow images, so that is the loading path that works)
    do_convert_rgb: bool | None = None
    #: the file's ``max_num_patches`` (informational: transformers pads to ``padded_num_patches`` instead)
    max_num_patches: int | None = None
    #: keys of the source file this class does not model
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.image_mean = tuple(float(v) for v in _as_list(self.image_mean))
        self.image_std = tuple(float(v) for v in _as_list(self.image_std))
        for name in ("min_tiles", "max_tiles", "min_image_tokens", "max_image_tokens", "encoder_patch_size",
                     "tile_size", "downsample_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if "tiles" in name else 1):
                raise ValueError(f"image processor config: {name} must be a positive integer, got {value!r}")
        if self.min_image_tokens > self.max_image_tokens:
            raise ValueError("image processor config: min_image_tokens must be <= max_image_tokens")
        if self.do_image_splitting and self.min_tiles > self.max_tiles:
            raise ValueError("min_tiles must be less than or equal to max_tiles")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or 0.0 in self.image_std:
            raise ValueError("image processor config: image_mean/image_std must be 3 values, std non-zero")
        if self.resample != RESAMPLE_BILINEAR:
            raise NotImplementedError(f"only resample=2 (bilinear) is implemented, config has {self.resample}")
        if not self.do_pad:
            raise NotImplementedError("do_pad=False is not implemented (LFM2-VL always pads patch sequences)")

    # -- derived ------------------------------------------------------------------------------------------
    @property
    def total_factor(self) -> int:
        return self.encoder_patch_size * self.downsample_factor

    @property
    def padded_num_patches(self) -> int:
        """Length every patch sequence is padded to (what transformers computes, whatever the file says)."""
        thumb = self.max_image_tokens * self.downsample_factor ** 2
        tile = (self.tile_size // self.encoder_patch_size) ** 2 if self.do_image_splitting else 0
        return max(thumb, tile)

    @property
    def tokens_per_tile(self) -> int:
        side = math.ceil((self.tile_size // self.encoder_patch_size) / self.downsample_factor)
        return side * side

    # -- (de)serialisation ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageProcessorConfig":
        if not isinstance(data, dict):
            raise TypeError(f"image processor config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in names and (v is not None or k == "do_convert_rgb")}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> "ImageProcessorConfig":
        """Read a checkpoint folder the way transformers does: the ``image_processor`` dict nested in
        ``processor_config.json`` if there is one, else ``preprocessor_config.json``. For the older remote-code
        layout (flat ``processor_config.json`` with the tiling keys next to a SigLIP2 ``preprocessor_config.json``)
        the flat keys override (transformers 5.23 cannot load that layout as an LFM2-VL image processor)."""
        path = Path(path)
        proc = read_json(path / PROCESSOR_CONFIG_NAME, "processor config") \
            if (path / PROCESSOR_CONFIG_NAME).is_file() else {}
        if isinstance(proc.get("image_processor"), dict):
            return cls.from_dict(proc["image_processor"])
        pre_path = path / PREPROCESSOR_CONFIG_NAME
        data: dict[str, Any] = read_json(pre_path, "preprocessor config") if pre_path.is_file() else {}
        if not data and not proc:
            raise FileNotFoundError(f"no {PROCESSOR_CONFIG_NAME} or {PREPROCESSOR_CONFIG_NAME} in {path}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        data = {**data, **{k: v for k, v in proc.items() if k in names}}
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image_processor_type": self.extra.get("image_processor_type",
                                                                      "Lfm2VlImageProcessor")}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        if out["max_num_patches"] is None:
            out["max_num_patches"] = self.padded_num_patches
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


def _as_list(value: Any) -> list:
    return [value] * 3 if isinstance(value, (int, float)) else list(value)


# =========================================================================================================
# geometry: smart resize, "too large", tiling grid
# =========================================================================================================
def round_by_factor(number: float, factor: int) -> int:
    """Closest multiple of `factor` to `number`, halves to even (Python's ``round``)."""
    return round(number / factor) * factor


def smart_resize(height: int, width: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
    """(height, width) of the single-image / thumbnail resize: multiples of p*f within the token budget."""
    F = cfg.total_factor
    min_px = cfg.min_image_tokens * F * F
    max_px = cfg.max_image_tokens * F * F
    h = max(F, round_by_factor(height, F))
    w = max(F, round_by_factor(width, F))
    if h * w > max_px:
        beta = math.sqrt((height * width) / max_px)
        h = max(F, math.floor(height / beta / F) * F)
        w = max(F, math.floor(width / beta / F) * F)
    elif h * w < min_px:
        beta = math.sqrt(min_px / (height * width))
        h = math.ceil(height * beta / F) * F
        w = math.ceil(width * beta / F) * F
    return h, w


def is_image_too_large(height: int, width: int, cfg: ImageProcessorConfig) -> bool:
    """Whether the image is split into tiles (note: the floor here is p, not p*f, as in transformers)."""
    F = cfg.total_factor
    h = max(cfg.encoder_patch_size, round_by_factor(height, F))
    w = max(cfg.encoder_patch_size, round_by_factor(width, F))
    return h * w > cfg.max_image_tokens * F * F * cfg.max_pixels_tolerance


def target_ratios(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Candidate grids (gw, gh), sorted by tile count. Ties keep CPython's set iteration order, which decides
    equal-distance aspect-ratio ties, so the candidates go through a set exactly as in transformers."""
    cands = {(w, h) for n in range(min_tiles, max_tiles + 1) for w in range(1, n + 1) for h in range(1, n + 1)
             if min_tiles <= w * h <= max_tiles}
    return sorted(cands, key=lambda r: r[0] * r[1])


def choose_grid(height: int, width: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
    """Tile grid (grid_width, grid_height) for a too-large image."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    area = width * height
    for gw, gh in target_ratios(cfg.min_tiles, cfg.max_tiles):
        diff = abs(aspect - gw / gh)
        if diff < best_diff:
            best, best_diff = (gw, gh), diff
        elif diff == best_diff and area > 0.5 * cfg.tile_size * cfg.tile_size * gw * gh:
            best = (gw, gh)
    return best


@dataclass
class ImageLayout:
    """How one image is cut: ``rows`` (grid height) x ``cols`` (grid width) tiles, the smart-resize size
    (``resized_height``, ``resized_width``) used for the single image or thumbnail, and whether a thumbnail
    follows the tiles."""

    rows: int
    cols: int
    resized_height: int
    resized_width: int
    thumbnail: bool
    #: the tiling path was taken (the image was stretched to rows x cols tiles; 1 x 1 only if min_tiles == 1)
    split: bool = False

    @property
    def is_tiled(self) -> bool:
        return self.rows > 1 or self.cols > 1


def plan_image(height: int, width: int, cfg: ImageProcessorConfig) -> ImageLayout:
    """The tiling decision for an (height, width) image."""
    splitting = cfg.do_image_splitting and not (cfg.min_tiles == cfg.max_tiles == 1)
    rh, rw = smart_resize(height, width, cfg)
    if splitting and is_image_too_large(height, width, cfg):
        gw, gh = choose_grid(height, width, cfg)
        return ImageLayout(rows=gh, cols=gw, resized_height=rh, resized_width=rw,
                           thumbnail=cfg.use_thumbnail and gw * gh != 1, split=True)
    return ImageLayout(rows=1, cols=1, resized_height=rh, resized_width=rw, thumbnail=False)


# =========================================================================================================
# pixels: tiles, normalisation, patches
# =========================================================================================================
def image_tiles(image: np.ndarray, cfg: ImageProcessorConfig) -> tuple[list[np.ndarray], ImageLayout]:
    """The uint8 (h, w, 3) tiles of one RGB image, in model order (row-major tiles, then the thumbnail)."""
    layout = plan_image(image.shape[0], image.shape[1], cfg)
    if not layout.split:
        return [resize_bilinear_aa(image, layout.resized_height, layout.resized_width)], layout
    t = cfg.tile_size
    big = resize_bilinear_aa(image, t * layout.rows, t * layout.cols)
    tiles = [big[r * t:(r + 1) * t, c * t:(c + 1) * t] for r in range(layout.rows) for c in range(layout.cols)]
    if layout.thumbnail:
        tiles.append(resize_bilinear_aa(image, layout.resized_height, layout.resized_width))
    return tiles, layout


def normalize(tile: np.ndarray, cfg: ImageProcessorConfig) -> np.ndarray:
    """uint8 (h, w, 3) -> float32, as transformers' fused rescale+normalize: (x - m/r) / (s/r) in float32."""
    x = tile.astype(np.float32)
    if cfg.do_normalize:
        inv = np.float32(1.0 / cfg.rescale_factor) if cfg.do_rescale else np.float32(1.0)
        mean = np.asarray(cfg.image_mean, dtype=np.float32) * inv
        std = np.asarray(cfg.image_std, dtype=np.float32) * inv
        x -= mean
        x /= std
    elif cfg.do_rescale:
        x *= np.float32(cfg.rescale_factor)
    return x


def patchify(tile: np.ndarray, patch: int) -> np.ndarray:
    """(h, w, C) -> (h/p * w/p, p*p*C): patch (r, c) is row r*(w/p)+c, elements in (py, px, c) order."""
    h, w, c = tile.shape
    hp, wp = h // patch, w // patch
    x = tile[:hp * patch, :wp * patch].reshape(hp, patch, wp, patch, c).transpose(0, 2, 1, 3, 4)
    return x.reshape(hp * wp, patch * patch * c)


@dataclass
class ImageFeatures:
    """Preprocessed images: ``pixel_values`` (N, P, p*p*3) float32, ``pixel_attention_mask`` (N, P) int32,
    ``spatial_shapes`` (N, 2) int64 (patch rows, patch columns) for the N tiles/thumbnails of all images in
    order, and the per-image ``layouts``."""

    pixel_values: np.ndarray
    pixel_attention_mask: np.ndarray
    spatial_shapes: np.ndarray
    layouts: list[ImageLayout]


def preprocess_images(images: Sequence[np.ndarray], cfg: ImageProcessorConfig) -> ImageFeatures:
    """Run the LFM2-VL image pipeline on RGB uint8 (H, W, 3) arrays."""
    p = cfg.encoder_patch_size
    P = cfg.padded_num_patches
    tiles: list[np.ndarray] = []
    layouts: list[ImageLayout] = []
    for img in images:
        t, layout = image_tiles(img, cfg)
        tiles.extend(t)
        layouts.append(layout)
    n = len(tiles)
    pixel_values = np.zeros((n, P, p * p * 3), dtype=np.float32)
    mask = np.zeros((n, P), dtype=np.int32)
    shapes = np.zeros((n, 2), dtype=np.int64)
    for i, tile in enumerate(tiles):
        patches = patchify(normalize(tile, cfg), p)
        count = min(patches.shape[0], P)
        if patches.shape[0] > P:
            raise ValueError(f"tile of {patches.shape[0]} patches exceeds the padded length {P}")
        pixel_values[i, :count] = patches
        mask[i, :count] = 1
        shapes[i] = (tile.shape[0] // p, tile.shape[1] // p)
    return ImageFeatures(pixel_values, mask, shapes, layouts)


# =========================================================================================================
# tokenizer and chat template
# =========================================================================================================
class Tokenizer:
    """The checkpoint's Hugging Face ``tokenizer.json`` (``tokenizers`` library) with ``tokenizer_config.json``
    (special tokens, add_bos/add_eos) and the chat template, rendered as transformers renders it."""

    def __init__(self, tokenizer: Any, config: dict[str, Any] | None = None,
                 chat_template: str | None = None) -> None:
        self._tok = tokenizer
        self.config = dict(config or {})
        self.chat_template = chat_template if chat_template is not None else self.config.get("chat_template")
        self.bos_token = _token_content(self.config.get("bos_token"))
        self.eos_token = _token_content(self.config.get("eos_token"))
        self.pad_token = _token_content(self.config.get("pad_token"))
        self.unk_token = _token_content(self.config.get("unk_token"))
        self.add_bos_token = bool(self.config.get("add_bos_token", False))
        self.add_eos_token = bool(self.config.get("add_eos_token", False))
        self.padding_side = str(self.config.get("padding_side", "right"))
        # transformers skips this cleanup for BPE models (it would delete real spaces) unless forced.
        self.clean_up_tokenization_spaces = bool(self.config.get("clean_up_tokenization_spaces", False)) and (
            type(tokenizer.model).__name__ != "BPE"
            or bool(self.config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")))
        extra = self.config.get("extra_special_tokens") or {}
        self.extra_special_tokens = {k: _token_content(v) for k, v in extra.items()} if isinstance(extra, dict) \
            else {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> "Tokenizer":
        """Load ``tokenizer.json``, ``tokenizer_config.json`` and the chat template (``chat_template.jinja``,
        else the config's ``chat_template``) from a checkpoint folder."""
        try:
            from tokenizers import Tokenizer as HfTokenizer
        except ImportError as err:  # pragma: no cover
            raise ImportError("captionaura's tokenizer needs the `tokenizers` package") from err
        path = Path(path)
        tok_path = path / TOKENIZER_NAME
        if not tok_path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {tok_path}")
        try:
            tok = HfTokenizer.from_file(str(tok_path))
        except Exception as err:  # tokenizers raises its own Exception type
            raise ValueError(f"cannot read {tok_path}: {err}") from None
        config = read_json(path / TOKENIZER_CONFIG_NAME, "tokenizer config") \
            if (path / TOKENIZER_CONFIG_NAME).is_file() else {}
        template = None
        if (path / CHAT_TEMPLATE_NAME).is_file():
            template = (path / CHAT_TEMPLATE_NAME).read_text(encoding="utf-8")
        return cls(tok, config, template)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and (if any) ``chat_template.jinja``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path / TOKENIZER_NAME))
        config = {k: v for k, v in self.config.items() if k != "chat_template"}
        write_json_atomic(path / TOKENIZER_CONFIG_NAME, config)
        if self.chat_template is not None:
            (path / CHAT_TEMPLATE_NAME).write_text(self.chat_template, encoding="utf-8")

    # -- vocabulary -----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return int(idx)

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(int(idx))

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self._tok.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self._tok.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._tok.token_to_id(self.pad_token)

    def special_tokens_map(self) -> dict[str, str]:
        out = {k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token),
                                  ("unk_token", self.unk_token), ("pad_token", self.pad_token)) if v is not None}
        out.update({k: v for k, v in self.extra_special_tokens.items() if v is not None})
        return out

    # -- encode / decode -------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, BOS/EOS per ``add_bos_token``/``add_eos_token``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids = [self.bos_token_id] + ids
            if self.add_eos_token and self.eos_token_id is not None:
                ids = ids + [self.eos_token_id]
        return ids

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True,
                 padding: bool = False) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask`` (B, T) int64 for a string or a batch (``padding=True`` pads with
        the pad token on ``padding_side``; without it the sequences must have equal lengths)."""
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.encode(t, add_special_tokens) for t in texts]
        return _pad_batch(rows, padding, self.pad_token_id, self.padding_side)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        return text

    # -- chat template ---------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
                            tokenize: bool = False, chat_template: str | None = None,
                            tools: list[dict] | None = None, documents: list[dict] | None = None,
                            **kwargs: Any) -> str | list[int]:
        """Render `messages` with the checkpoint's Jinja chat template exactly as transformers does (sandboxed
        environment, ``trim_blocks``/``lstrip_blocks``, ``loopcontrols``, its ``tojson``, ``raise_exception``,
        ``strftime_now``; special tokens such as ``bos_token`` as variables). ``tokenize=True`` returns ids
        encoded without adding special tokens, so the template's BOS is the only one."""
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template (no chat_template.jinja or config entry)")
        context = {**self.special_tokens_map(), **kwargs}
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    tools=tools, documents=documents, **context)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _token_content(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("content")
    return str(value)


def _pad_batch(rows: list[list[int]], padding: bool, pad_id: int | None, side: str) -> dict[str, np.ndarray]:
    longest = max((len(r) for r in rows), default=0)
    if not padding and any(len(r) != longest for r in rows):
        raise ValueError("sequences have different lengths; pass padding=True to pad them")
    if padding and pad_id is None and any(len(r) != longest for r in rows):
        raise ValueError("padding needs a pad token, and the tokenizer config has none")
    ids = np.full((len(rows), longest), pad_id if pad_id is not None else 0, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, r in enumerate(rows):
        if side == "left":
            ids[i, longest - len(r):] = r
            mask[i, longest - len(r):] = 1
        else:
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (spaces before punctuation and English contractions)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


_TEMPLATE_CACHE: dict[str, Any] = {}


def _compile_template(template: str) -> Any:
    compiled = _TEMPLATE_CACHE.get(template)
    if compiled is not None:
        return compiled
    import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # Unlike Jinja's own filter, no HTML escaping.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    class _Generation(jinja2.ext.Extension):
        # ``{% generation %}...{% endgeneration %}`` (assistant-mask markers) render their body unchanged.
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    compiled = env.from_string(template)
    _TEMPLATE_CACHE[template] = compiled
    return compiled


def _plain(value: Any) -> Any:
    # What the template may see: JSON-like data; anything else (arrays, Pillow images) becomes "<TypeName>".
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def render_chat_template(template: str, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
                         tools: list[dict] | None = None, documents: list[dict] | None = None,
                         **kwargs: Any) -> str:
    """Render a Hugging Face chat template for one conversation."""
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
        raise TypeError("messages must be a list of dicts with 'role' and 'content'")
    return _compile_template(template).render(
        messages=_plain(list(messages)), tools=_plain(tools), documents=_plain(documents),
        add_generation_prompt=add_generation_prompt, **_plain(kwargs))


# =========================================================================================================
# the processor
# =========================================================================================================
@dataclass
class ProcessorOutput:
    """What ``Lfm2VlProcessor.__call__`` returns (NumPy, transformers' dtypes): ``input_ids`` and
    ``attention_mask`` (B, T) int64; with images ``pixel_values`` (N, P, p*p*3) float32,
    ``pixel_attention_mask`` (N, P) int32, ``spatial_shapes`` (N, 2) int64."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray | None = None
    pixel_attention_mask: np.ndarray | None = None
    spatial_shapes: np.ndarray | None = None

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.keys()}


class Lfm2VlProcessor:
    """Images + prompt (or chat messages) -> the inputs of ``Lfm2VlForConditionalGeneration``, as
    transformers' ``Lfm2VlProcessor`` produces them."""

    image_token = "<image>"
    image_start_token = "<|image_start|>"
    image_end_token = "<|image_end|>"
    image_thumbnail_token = "<|img_thumbnail|>"

    def __init__(self, image_config: ImageProcessorConfig, tokenizer: Tokenizer,
                 chat_template: str | None = None, use_image_special_tokens: bool = True,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.image_config = image_config
        self.tokenizer = tokenizer
        self.chat_template = chat_template or tokenizer.chat_template
        self.use_image_special_tokens = bool(use_image_special_tokens)
        self.max_pixels = max_pixels
        # Like transformers: the tokenizer's image_token / image_start_token / image_end_token attributes (top-level
        # tokenizer_config keys or extra_special_tokens), else the defaults; the thumbnail token is never renamed
        # (the checkpoints' key is "image_thumbnail", which transformers does not read for it).
        names = {**tokenizer.extra_special_tokens,
                 **{k: _token_content(v) for k, v in tokenizer.config.items() if k.startswith("image_")}}
        self.image_token = names.get("image_token") or self.image_token
        self.image_start_token = names.get("image_start_token") or self.image_start_token
        self.image_end_token = names.get("image_end_token") or self.image_end_token
        self.image_token_id = tokenizer.token_to_id(self.image_token)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **kwargs: Any) -> "Lfm2VlProcessor":
        """Processor, image and tokenizer configs, tokenizer.json and chat template of a checkpoint folder."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {path}")
        image_config = ImageProcessorConfig.from_pretrained(path)
        tokenizer = Tokenizer.from_pretrained(path)
        proc = read_json(path / PROCESSOR_CONFIG_NAME, "processor config") \
            if (path / PROCESSOR_CONFIG_NAME).is_file() else {}
        template = tokenizer.chat_template or proc.get("chat_template")
        # processor_config.json's use_image_special_tokens is NOT read: transformers 5.23 discards it (it is not
        # an explicit argument of Lfm2VlProcessor.__init__), so the default True applies unless passed here or
        # per call.
        return cls(image_config, tokenizer, chat_template=template, **kwargs)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer files, the chat template and a ``processor_config.json`` with the image settings
        nested under ``image_processor`` (the layout transformers 5 writes and reads)."""
        path = Path(path)
        self.tokenizer.save_pretrained(path)
        if self.chat_template is not None:
            (path / CHAT_TEMPLATE_NAME).write_text(self.chat_template, encoding="utf-8")
        write_json_atomic(path / PROCESSOR_CONFIG_NAME, {
            "image_processor": self.image_config.to_dict(), "processor_class": "Lfm2VlProcessor",
            "use_image_special_tokens": self.use_image_special_tokens})

    # -- pieces -------------------------------------------------------------------------------------------
    def load_images(self, images: ImageInput | Sequence[ImageInput]) -> list[np.ndarray]:
        """Decode images (path, bytes, Pillow image, (H, W, 3) uint8 array, or a list of them)."""
        if images is None:
            return []
        if isinstance(images, (list, tuple)):
            flat: list[Any] = []
            for item in images:
                flat.extend(item if isinstance(item, (list, tuple)) else [item])
            return [self._load(im) for im in flat]
        return [self._load(images)]

    def _load(self, image: ImageInput) -> np.ndarray:
        return load_image(image, max_pixels=self.max_pixels,
                          composite_alpha=self.image_config.do_convert_rgb is True)

    def image_placeholder(self, layout: ImageLayout, use_image_special_tokens: bool | None = None) -> str:
        """The expanded text of one ``<image>``."""
        cfg = self.image_config
        p, f = cfg.encoder_patch_size, cfg.downsample_factor
        n_image = math.ceil((layout.resized_height // p) / f) * math.ceil((layout.resized_width // p) / f)
        special = self.use_image_special_tokens if use_image_special_tokens is None else use_image_special_tokens
        parts = [self.image_start_token] if special else []
        if layout.is_tiled:
            per_tile = self.image_token * cfg.tokens_per_tile
            for r in range(layout.rows):
                for c in range(layout.cols):
                    if special:
                        parts.append(f"<|img_row_{r + 1}_col_{c + 1}|>")
                    parts.append(per_tile)
            if cfg.use_thumbnail:
                if special:
                    parts.append(self.image_thumbnail_token)
                parts.append(self.image_token * n_image)
        else:
            parts.append(self.image_token * n_image)
        if special:
            parts.append(self.image_end_token)
        return "".join(parts)

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """The rendered prompt of `messages` (image content items render as ``<image>``)."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  chat_template=self.chat_template, **kwargs)

    # -- main entry ---------------------------------------------------------------------------------------
    def __call__(self, images: ImageInput | Sequence[ImageInput] | None = None,
                 text: str | Sequence[str] | None = None, messages: Sequence[dict[str, Any]] | None = None,
                 add_generation_prompt: bool = True, padding: bool = False,
                 use_image_special_tokens: bool | None = None) -> ProcessorOutput:
        """Process a prompt (``text``: a string or a batch of strings with ``<image>`` markers, images in
        marker order across the batch) or a chat (``messages``: images taken from the ``image`` / ``path`` /
        ``url`` fields of ``{"type": "image"}`` content items unless `images` is given).
        ``use_image_special_tokens`` overrides the processor's setting for this call."""
        if messages is not None:
            if text is not None:
                raise ValueError("pass either text or messages, not both")
            text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
            if images is None:
                found = _images_in_messages(messages)
                images = found if found else None
        if text is None:
            raise ValueError("You must provide `text` (or `messages`); images alone have no prompt")
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a string or a list of strings")
        markers = [t.count(self.image_token) for t in texts]
        if isinstance(images, (list, tuple)) and len(images) == len(texts) and len(texts) > 1 \
                and all(isinstance(item, (list, tuple)) for item in images):
            per_text = [len(item) for item in images]  # images nested per prompt: check each prompt
            if per_text != markers:
                raise ValueError(
                    f"the prompts have {markers} {self.image_token} marker(s) but {per_text} image(s) per text "
                    "were given; each image needs exactly one marker")
        arrays = self.load_images(images) if images is not None else []
        if sum(markers) != len(arrays):
            raise ValueError(
                f"the prompt has {sum(markers)} {self.image_token} marker(s) ({markers} per text) but "
                f"{len(arrays)} image(s) were given; each image needs exactly one marker")
        features = preprocess_images(arrays, self.image_config) if arrays else None
        if features is not None:
            replacements = iter([self.image_placeholder(layout, use_image_special_tokens)
                                 for layout in features.layouts])
            texts = [_replace_markers(t, self.image_token, replacements) for t in texts]
        enc = self.tokenizer(texts, add_special_tokens=False, padding=padding)
        n_tokens = int((enc["input_ids"] == self.image_token_id).sum())
        if features is not None:
            expected = sum(self.image_placeholder(layout, use_image_special_tokens).count(self.image_token)
                           for layout in features.layouts)
            if n_tokens != expected:  # pragma: no cover - would mean the tokenizer splits <image>
                raise ValueError(f"tokenised prompt has {n_tokens} image tokens, expected {expected}")
            return ProcessorOutput(enc["input_ids"], enc["attention_mask"], features.pixel_values,
                                   features.pixel_attention_mask, features.spatial_shapes)
        return ProcessorOutput(enc["input_ids"], enc["attention_mask"])


def _replace_markers(text: str, marker: str, replacements: Iterator[str]) -> str:
    pieces = text.split(marker)
    out = [pieces[0]]
    for piece in pieces[1:]:
        out.append(next(replacements))
        out.append(piece)
    return "".join(out)


def _images_in_messages(messages: Sequence[dict[str, Any]]) -> list[Any]:
    found: list[Any] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            for item in content:
                if isinstance(item, dict) and item.get("type") == "image":
                    for key in ("image", "path", "url"):
                        if item.get(key) is not None:
                            found.append(item[key])
                            break
                    else:
                        raise ValueError("an image content item needs an 'image', 'path' or 'url' field")
    return found
