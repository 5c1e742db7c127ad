"""Model configurations, read from and written to Hugging Face ``config.json`` files."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captionaura import _core
from captionaura._io import read_json

LAYER_CONV = "conv"
LAYER_ATTENTION = "full_attention"


@dataclass
class Lfm2Config:
    """Configuration of an LFM2 text model, with transformers' field names and class defaults.

    ``Lfm2Config.from_dict`` accepts every layout of a Hugging Face ``config.json`` (the original key
    aliases such as ``block_ff_dim``, ``theta``, ``tie_embedding`` and ``full_attn_idxs``, or
    ``rope_parameters``). Aliases, defaults and the FFN auto-adjust rule are resolved by the C core's
    config reader, the same code that checkpoints go through, so there is one definition of them.
    """

    vocab_size: int = 65536
    hidden_size: int = 2560
    intermediate_size: int = 12288
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    max_position_embeddings: int = 128000
    norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0
    conv_bias: bool = False
    conv_L_cache: int = 3
    block_multiple_of: int = 256
    block_ffn_dim_multiplier: float | None = 1.0
    block_auto_adjust_ff_dim: bool = True
    layer_types: list[str] | None = None
    head_dim: int | None = None
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    initializer_range: float = 0.02
    #: keys of the source config.json this class does not model, kept so a round trip preserves them
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.layer_types is None:
            self.layer_types = [LAYER_ATTENTION] * self.num_hidden_layers
        self.layer_types = list(self.layer_types)
        # Validate (and resolve the FFN width) through the C reader; raises ValueError/KeyError naming the key.
        self._resolved = _core.lfm2_config_resolve(json.dumps(self.to_dict()))

    # -- derived values -------------------------------------------------------------------------
    @property
    def ffn_dim(self) -> int:
        """The FFN width after ``block_auto_adjust_ff_dim`` (the rows of ``feed_forward.w1.weight``)."""
        return int(self._resolved["ffn_dim"])

    @property
    def resolved_head_dim(self) -> int:
        return int(self._resolved["head_dim"])

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layer_types) if kind == LAYER_ATTENTION]

    # -- (de)serialisation ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Lfm2Config":
        """Build from a ``config.json`` dictionary (LFM2, or LFM2-VL's ``text_config``)."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be a dict, got {type(data).__name__}")
        if "text_config" in data and isinstance(data["text_config"], dict):
            data = data["text_config"]
        r = _core.lfm2_config_resolve(json.dumps(data))
        n = int(r["num_hidden_layers"])
        known = {f.name for f in dataclasses.fields(cls)} | {
            "block_ff_dim", "tie_embedding", "theta", "rope_parameters", "full_attn_idxs", "num_heads",
            "block_norm_eps", "model_type", "architectures", "torch_dtype", "dtype", "transformers_version",
        }
        return cls(
            vocab_size=int(r["vocab_size"]),
            hidden_size=int(r["hidden_size"]),
            intermediate_size=int(r["intermediate_size"]),
            num_hidden_layers=n,
            num_attention_heads=int(r["num_attention_heads"]),
            num_key_value_heads=int(r["num_key_value_heads"]),
            max_position_embeddings=int(r["max_position_embeddings"]),
            norm_eps=float(r["norm_eps"]),
            rope_theta=float(r["rope_theta"]),
            conv_bias=bool(r["conv_bias"]),
            conv_L_cache=int(r["conv_L_cache"]),
            block_multiple_of=int(r["block_multiple_of"]),
            block_ffn_dim_multiplier=r["block_ffn_dim_multiplier"],
            block_auto_adjust_ff_dim=bool(r["block_auto_adjust_ff_dim"]),
            layer_types=list(r["layer_types"]),
            head_dim=int(r["head_dim"]),
            tie_word_embeddings=bool(r["tie_word_embeddings"]),
            pad_token_id=_optional_id(r["pad_token_id"]),
            bos_token_id=_optional_id(r["bos_token_id"]),
            eos_token_id=_optional_id(r["eos_token_id"]),
            initializer_range=float(data.get("initializer_range", 0.02)),
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> "Lfm2Config":
        return cls.from_dict(read_json(path, "config file"))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> "Lfm2Config":
        """Read ``config.json`` from a checkpoint folder (or the file itself)."""
        path = Path(path)
        return cls.from_json_file(path / "config.json" if path.is_dir() else path)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` dictionary transformers' ``Lfm2Config`` reads."""
        out: dict[str, Any] = {"architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2"}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        if out["head_dim"] is None:
            del out["head_dim"]
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


def _optional_id(value: int | None) -> int | None:
    return None if value is None or value < 0 else int(value)
