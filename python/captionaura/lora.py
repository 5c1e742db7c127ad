"""LoRA adapters with PEFT's semantics and file format.

An adapter on a linear layer computes ``y = W x + s * B (A dropout(x))`` with ``s = lora_alpha / r``
(``lora_alpha / sqrt(r)`` with rsLoRA). All adapters of a model live in one flat float32 buffer in the C
core, so a federated update is exactly ``model.lora_vector()``. Files are PEFT's
(``adapter_config.json`` + ``adapter_model.safetensors`` with keys
``base_model.model.<module path>.lora_A.weight`` [r, in] and ``.lora_B.weight`` [out, r]) and load in
``peft.PeftModel.from_pretrained`` unchanged.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from captionaura._io import read_json

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass
class LoraConfig:
    """PEFT's ``LoraConfig`` fields that captionaura implements (same names, same defaults).

    ``target_modules``: a list of module names (a module matches when its path equals a name or ends with
    ``"." + name``), a regular expression matched against the whole module path, or ``"all-linear"``
    (every linear projection of the decoder layers; the output layer is excluded, as in PEFT; on an
    ``Lfm2VlModel`` also every linear of the vision tower and the projector, matched on the full LFM2-VL module
    paths such as ``model.vision_tower.encoder.layers.0.self_attn.q_proj``).
    ``init_lora_weights``: True (A kaiming-uniform, B = 0), ``"gaussian"`` (A ~ N(0, 1/r²), B = 0) or False
    (A and B random: useful only for tests). ``modules_to_save``: base modules trained fully and saved in
    the adapter file (e.g. ``["embedding_norm"]``).
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    modules_to_save: list[str] | None = None
    bias: str = "none"
    fan_in_fan_out: bool = False
    task_type: str | None = "CAUSAL_LM"
    base_model_name_or_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.target_modules is None or (not isinstance(self.target_modules, str) and not self.target_modules):
            raise ValueError("target_modules must name the modules to adapt (a list, a regex or 'all-linear'); "
                             "PEFT has no default for LFM2")
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = sorted(set(self.target_modules)) if isinstance(self.target_modules, set) \
                else list(self.target_modules)
        if self.bias != "none":
            raise NotImplementedError(f"bias={self.bias!r} is not supported (LFM2 linears have no bias); use 'none'")
        if self.fan_in_fan_out:
            raise NotImplementedError("fan_in_fan_out=True is for GPT-2-style Conv1D weights; LFM2 has none")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise NotImplementedError(f"init_lora_weights={self.init_lora_weights!r} is not supported "
                                      "(True, False or 'gaussian')")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def matches(self, module_path: str) -> bool:
        """PEFT's target-module rule for one module path."""
        t = self.target_modules
        if t == "all-linear":
            return True
        if isinstance(t, str):
            return re.fullmatch(t, module_path) is not None
        return any(module_path == name or module_path.endswith("." + name) for name in t)

    # -- adapter_config.json ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d.update({
            "peft_type": "LORA", "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
            "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "lora_bias": False,
        })
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoraConfig":
        if d.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"not a LoRA adapter: peft_type is {d.get('peft_type')!r}")
        for key, unsupported in (("use_dora", True), ("lora_bias", True)):
            if d.get(key) == unsupported:
                raise NotImplementedError(f"{key}={unsupported} adapters are not supported")
        for key in ("rank_pattern", "alpha_pattern"):
            if d.get(key):
                raise NotImplementedError(f"per-module {key} is not supported")
        for key in ("layers_to_transform", "layers_pattern"):
            if d.get(key) is not None:
                raise NotImplementedError(f"{key} is not supported")
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        if isinstance(known.get("target_modules"), list):
            known["target_modules"] = list(known["target_modules"])
        return cls(**known, extra=extra)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "LoraConfig":
        return cls.from_dict(read_json(Path(path) / ADAPTER_CONFIG_NAME, "adapter config"))


def resolve_targets(config: LoraConfig, layer_types: Sequence[str], projections: Sequence[str]) \
        -> list[tuple[int, int]]:
    """(layer, projection index) pairs whose module path ``model.layers.<i>.<projection>`` matches."""
    out = []
    for layer, kind in enumerate(layer_types):
        for p, name in enumerate(projections):
            if name.startswith("self_attn.") and kind != "full_attention":
                continue
            if name.startswith("conv.") and kind != "conv":
                continue
            if config.matches(f"model.layers.{layer}.{name}"):
                out.append((layer, p))
        if kind == "conv" and config.target_modules != "all-linear" and config.matches(f"model.layers.{layer}.conv.conv"):
            raise NotImplementedError(f"target_modules matches model.layers.{layer}.conv.conv, the depthwise "
                                      "convolution; LoRA is supported on linear projections only")
    if not out:
        raise ValueError(f"target_modules={config.target_modules!r} matches no linear module of this model")
    return out


def peft_key(module_path: str, which: str) -> str:
    """The saved key of lora_A / lora_B of a module: ``base_model.model.<path>.lora_A.weight``."""
    return f"{PEFT_PREFIX}{module_path}.{which}.weight"
