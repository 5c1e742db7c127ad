"""The LFM2-VL vision side on the C core: the SigLIP2 NaFlex vision tower and the multimodal projector.

Input tiles are given exactly as transformers' ``Lfm2VlModel.get_image_features`` receives them (what the
LFM2-VL image processor returns): ``pixel_values`` (tiles, max_patches, 3·16·16) float32 with each patch's
values in (py, px, channel) order, ``spatial_shapes`` (tiles, 2) = (hP, wP) patches per side, and
``pixel_attention_mask`` (tiles, max_patches) with ones on the first hP·wP rows. The output is the image
features (Σ hP·wP/4, text hidden): tile after tile, each tile row-major over its (hP/2, wP/2) grid — the
rows that replace the ``<image>`` tokens, in order.

Which encoder layers run follows ``vision_feature_layer`` (lfm2.md §4.4): all of them for -1, else
``vision_feature_layer mod N + 1`` (the original remote code's truncation; transformers' native class ignores
the field). post_layernorm is always applied.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from captionaura import _core
from captionaura._io import read_json
from captionaura.device import backend_device, normalize_device
from captionaura.model import weight_files

VISION_PREFIX = "model.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.multi_modal_projector."

_VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                  "patch_size", "num_patches", "layer_norm_eps", "hidden_act", "vision_use_head", "initializer_range")
_TOP_FIELDS = ("vision_feature_layer", "downsample_factor", "projector_hidden_size", "projector_hidden_act",
               "projector_bias", "projector_use_layernorm")


@dataclass
class VisionConfig:
    """The vision-side fields of an LFM2-VL ``config.json``, with Hugging Face names.

    The first group lives in ``vision_config`` (``Siglip2VisionConfig``), the second at the top level
    (``Lfm2VlConfig``); ``text_hidden_size`` is ``text_config.hidden_size`` (the projector's output width).
    Defaults are the LFM2-VL-450M values.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    patch_size: int = 16
    num_patches: int = 256
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    vision_use_head: bool = False
    vision_feature_layer: int = -1
    downsample_factor: int = 2
    projector_hidden_size: int = 2560
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    projector_use_layernorm: bool = True
    text_hidden_size: int = 1024
    initializer_range: float = 0.02
    #: the rest of the source config.json, kept for a round trip
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # one definition of the rules (layer count, activations, sizes): the C reader validates
        self._resolved = _core.vision_config_resolve(json.dumps(self.to_dict()))

    @property
    def num_layers_run(self) -> int:
        """Encoder layers that run: all for vision_feature_layer -1, else vision_feature_layer mod N + 1."""
        return int(self._resolved["num_layers_run"])

    @property
    def patch_dim(self) -> int:
        return self.num_channels * self.patch_size * self.patch_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionConfig":
        """From a whole LFM2-VL config dict (``vision_config``, projector fields, ``text_config``)."""
        if not isinstance(d, dict) or not isinstance(d.get("vision_config"), dict):
            raise KeyError("config has no 'vision_config' object (not an LFM2-VL config?)")
        vc = d["vision_config"]
        kw: dict[str, Any] = {}
        for k in _VISION_FIELDS:
            if vc.get(k) is not None:
                kw[k] = vc[k]
        for k in _TOP_FIELDS:
            if d.get(k) is not None:
                kw[k] = d[k]
        tc = d.get("text_config")
        if isinstance(tc, dict) and tc.get("hidden_size") is not None:
            kw["text_hidden_size"] = tc["hidden_size"]
        kw["extra"] = {k: v for k, v in d.items() if k not in _TOP_FIELDS}
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> "VisionConfig":
        path = Path(path)
        return cls.from_dict(read_json(path / "config.json" if path.is_dir() else path, "config.json"))

    def to_dict(self) -> dict[str, Any]:
        """An LFM2-VL-shaped config dict (vision_config + top-level projector fields + text hidden size)."""
        d = {k: v for k, v in self.extra.items()}
        vc = dict(d.get("vision_config") or {})
        vc["model_type"] = "siglip2_vision_model"
        for k in _VISION_FIELDS:
            vc[k] = getattr(self, k)
        d["vision_config"] = vc
        for k in _TOP_FIELDS:
            d[k] = getattr(self, k)
        tc = dict(d.get("text_config") or {})
        tc["hidden_size"] = self.text_hidden_size
        d["text_config"] = tc
        return d

    def replace(self, **changes: Any) -> "VisionConfig":
        return dataclasses.replace(self, **changes)


class VisionTower:
    """SigLIP2 vision tower + pixel unshuffle + projector of LFM2-VL, computed by the C core.

    Parameters live in one flat float32 buffer; ``parameters()`` / ``gradients()`` are NumPy views of it
    under the checkpoint's Hugging Face names (``model.vision_tower.vision_model.*``,
    ``model.multi_modal_projector.*``).
    """

    def __init__(self, config: VisionConfig, core: "_core.Vision") -> None:
        self.config = config
        self._core = core
        self._table = core.param_table()

    @classmethod
    def from_config(cls, config: VisionConfig | dict, seed: int = 0) -> "VisionTower":
        """Random weights (N(0, initializer_range) matrices and position table, LayerNorms 1/0, biases 0)."""
        if isinstance(config, dict):
            config = VisionConfig.from_dict(config)
        core = _core.Vision(json.dumps(config.to_dict()), seed=int(seed), init_std=config.initializer_range)
        return cls(config, core)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], dtype: str = "fp32", keep_fp32: bool = True) -> "VisionTower":
        """Load the vision and projector tensors of an LFM2-VL checkpoint folder (config.json + safetensors),
        into ``to_dtype(dtype, keep_fp32)``: with "bf16" and ``keep_fp32=False`` each tensor is packed as it is
        read, so that loading never holds the fp32 tower.

        Whether the projector has a LayerNorm is decided by the weights: some configs claim
        ``projector_use_layernorm: false`` while the tensors exist (lfm2.md gotcha 15)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {path}")
        config = VisionConfig.from_pretrained(path)
        files = [str(p) for p in weight_files(path)]
        names = {row[0] for f in files for row in _core.safetensors_header(f)}
        has_ln = PROJECTOR_PREFIX + "layer_norm.weight" in names
        if has_ln != config.projector_use_layernorm:
            config = config.replace(projector_use_layernorm=has_ln)
        tower = cls(config, _core.Vision(json.dumps(config.to_dict()))).to_dtype(dtype, keep_fp32)
        tower._core.load_safetensors(files)
        unused = sorted({int(n.split(".")[idx]) for n in names for pre, idx in (
            ("model.vision_tower.vision_model.encoder.layers.", 5), ("model.vision_tower.encoder.layers.", 4))
            if n.startswith(pre) and n.split(".")[idx].isdigit() and int(n.split(".")[idx]) >= config.num_layers_run})
        if unused:  # accepted by the loader (the remote code built them too), but worth knowing about
            warnings.warn(f"{path}: encoder layers {unused[0]}..{unused[-1]} are past vision_feature_layer="
                          f"{config.vision_feature_layer} and are not used ({config.num_layers_run} of "
                          f"{config.num_hidden_layers} layers run, lfm2.md §4.4)", stacklevel=2)
        return tower

    def save_safetensors(self, path: str | os.PathLike[str]) -> None:
        """Write the vision and projector tensors (float32, checkpoint names) to one file, atomically."""
        self._core.save_safetensors(str(path))

    # -- compute --------------------------------------------------------------------------------
    def encode(self, pixel_values: np.ndarray, spatial_shapes: np.ndarray | Sequence[Sequence[int]],
               pixel_attention_mask: np.ndarray | None = None, output_hidden_states: bool = False,
               train: bool = False):
        """Image features (Σ hP·wP/f², text hidden) of a batch of tiles.

        With ``output_hidden_states`` also returns (L+1, N, D): the embeddings and every layer's output over
        the N = Σ hP·wP valid patches, tiles packed one after the other (the last entry before
        post_layernorm). ``train=True`` keeps the activations for ``backward``."""
        pv = np.asarray(pixel_values)
        if pv.ndim == 2:
            pv = pv[None]
        if pv.ndim != 3:
            raise ValueError(f"pixel_values must be (tiles, patches, {self.config.patch_dim}), got shape {pv.shape}")
        pv = np.ascontiguousarray(pv, dtype=np.float32)
        ss = np.asarray(spatial_shapes)
        if ss.ndim == 1:
            ss = ss[None]
        if not np.issubdtype(ss.dtype, np.integer):
            raise TypeError(f"spatial_shapes must hold integers, got dtype {ss.dtype}")
        if ss.size and (ss.min() < 0 or ss.max() > np.iinfo(np.int32).max):
            raise ValueError("spatial_shapes holds values outside [0, 2^31)")
        ss = np.ascontiguousarray(ss, dtype=np.int32)
        mask = None
        if pixel_attention_mask is not None:
            m = np.asarray(pixel_attention_mask)
            if m.ndim == 1:
                m = m[None]
            mask = np.ascontiguousarray(m.astype(np.int32) if m.dtype == bool else m, dtype=np.int32)
        return self._core.forward(pv, ss, mask, hidden_states=bool(output_hidden_states), train=bool(train))

    __call__ = encode

    def backward(self, d_features: np.ndarray, accumulate: bool = False) -> None:
        """Gradients of every vision/projector parameter from d(features) of the last ``encode(..., train=True)``
        into ``gradients()`` (overwritten, or added to with ``accumulate=True``)."""
        self._core.backward(np.ascontiguousarray(d_features, dtype=np.float32), bool(accumulate))

    # -- parameters -----------------------------------------------------------------------------
    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: flat[off:off + numel].reshape(shape) for name, shape, off, numel in self._table}

    @property
    def device(self) -> str:
        """"cuda" when the tower computes on the CUDA backend, else "cpu"."""
        return backend_device(self._core.backend)

    def to(self, device: str) -> "VisionTower":
        """Move parameters and gradients to ``device`` ("cpu" or "cuda") and return self; RuntimeError naming
        the reason when CUDA cannot be used. Earlier ``parameters()``/``gradients()`` views must be taken again."""
        self._core.to_device(normalize_device(device))
        return self

    def to_dtype(self, dtype: str, keep_fp32: bool = True) -> "VisionTower":
        """The weights' dtype, "fp32" or "bf16", and return self. "bf16" rounds every parameter to bf16 in place
        (as ``.to(torch.bfloat16)``; LFM2-VL checkpoints are stored in bf16, so their weights lose nothing) and
        keeps a bf16 copy: each linear runs a bf16 GEMM with the input rounded to bf16 and fp32 sums
        (AVX512-BF16), twice the fp32 GEMM's rate; backward then trains LoRA adapters only. Everything else stays
        fp32. CPU only. ``keep_fp32=False`` (bf16, AVX512-BF16) gives back the linear weights' fp32 copy, each as it
        is packed, as ``Lfm2Model.to_inference_dtype`` does; ``parameters()``, saving and merging raise until ``to_dtype``
        restores it."""
        if dtype not in ("fp32", "bf16"):
            raise ValueError(f"vision dtype {dtype!r} is not one of 'fp32', 'bf16'")
        if not keep_fp32 and dtype != "bf16":
            raise ValueError("keep_fp32=False needs dtype 'bf16'")
        self._core.set_dtype(dtype, keep_fp32)
        return self

    @property
    def dtype(self) -> str:
        """"fp32" or "bf16" (see ``to_dtype``)."""
        return self._core.dtype()

    def parameters(self) -> dict[str, np.ndarray]:
        if self._core.fp32_dropped():
            raise RuntimeError("the fp32 vision weights were dropped (to_dtype('bf16', keep_fp32=False)): call "
                               "to_dtype('bf16') to restore them")
        return self._views(self._core.params())

    def gradients(self) -> dict[str, np.ndarray]:
        return self._views(self._core.grads())

    def num_parameters(self) -> int:
        return int(sum(numel for _, _, _, numel in self._table))

    def __repr__(self) -> str:
        c = self.config
        return (f"VisionTower(layers={c.num_layers_run}/{c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"heads={c.num_attention_heads}, projector={c.hidden_size * c.downsample_factor ** 2}->"
                f"{c.projector_hidden_size}->{c.text_hidden_size}, parameters={self.num_parameters():,})")
