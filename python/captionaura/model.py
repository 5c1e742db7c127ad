"""The LFM2 language model on the C core: Hugging Face checkpoints in, logits, losses and gradients out."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from captionaura import _core
from captionaura._io import write_json_atomic
from captionaura.config import Lfm2Config

ArrayLike = np.ndarray | Sequence[int] | Sequence[Sequence[int]]

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"


@dataclass
class Lfm2Output:
    """What ``Lfm2Model.forward`` returns.

    ``logits``: (B, T, V) float32. ``hidden_states``: when asked, a tuple of L+1 arrays (B, T, C) in
    transformers' ``output_hidden_states`` layout: the embeddings, the outputs of decoder layers 0..L-2,
    and the final norm (``embedding_norm``) of the last layer's output.
    """

    logits: np.ndarray
    hidden_states: tuple[np.ndarray, ...] | None = None


class Lfm2Model:
    """An LFM2 causal language model (``Lfm2ForCausalLM``) whose compute runs in captionaura's C core.

    Parameters live in one flat float32 buffer; ``parameters()`` and ``gradients()`` return NumPy views
    of it under Hugging Face names, so writing into them changes the model.
    """

    def __init__(self, config: Lfm2Config, core: "_core.Lfm2") -> None:
        self.config = config
        self._core = core
        self._table = core.param_table()

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Lfm2Config | dict, seed: int = 0) -> "Lfm2Model":
        """A randomly initialised model (N(0, initializer_range) weights, unit norms), reproducible from `seed`."""
        if isinstance(config, dict):
            config = Lfm2Config.from_dict(config)
        core = _core.Lfm2(json.dumps(config.to_dict()), seed=int(seed), init_std=config.initializer_range)
        return cls(config, core)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> "Lfm2Model":
        """Load a Hugging Face checkpoint folder: ``config.json`` plus ``model.safetensors`` or the shards
        of ``model.safetensors.index.json`` (F32, BF16 or F16; every tensor's shape is checked)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {path}")
        config = Lfm2Config.from_pretrained(path)
        core = _core.Lfm2(json.dumps(config.to_dict()))
        core.load_safetensors([str(p) for p in weight_files(path)], prefix=None)
        return cls(config, core)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` (float32, Hugging Face names), each atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._core.save_safetensors(str(path / WEIGHTS_NAME))
        write_json_atomic(path / CONFIG_NAME, self.config.to_dict())

    # -- compute --------------------------------------------------------------------------------
    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None,
                output_hidden_states: bool = False) -> Lfm2Output:
        """Logits for a batch of right-padded sequences ``input_ids`` (B, T) (a 1-D sequence is a batch of one)."""
        ids = _token_array(input_ids, "input_ids")
        mask = _mask_array(attention_mask, ids.shape)
        B, T = ids.shape
        logits = np.empty((B, T, self.config.vocab_size), dtype=np.float32)
        hidden = None
        if output_hidden_states:
            hidden = np.empty((self.config.num_hidden_layers + 1, B, T, self.config.hidden_size), dtype=np.float32)
        self._core.forward(ids, mask, logits, hidden)
        return Lfm2Output(logits, tuple(hidden) if hidden is not None else None)

    __call__ = forward

    def loss_and_grad(self, input_ids: ArrayLike, labels: ArrayLike, attention_mask: ArrayLike | None = None,
                      accumulate: bool = False) -> float:
        """Causal-LM loss (labels shifted inside; -100 ignored; mean over counted tokens), filling
        ``gradients()`` (overwritten, or added to with ``accumulate=True``)."""
        ids = _token_array(input_ids, "input_ids")
        lab = _token_array(labels, "labels", allow_negative=True)
        if lab.shape != ids.shape:
            raise ValueError(f"labels has shape {lab.shape} but input_ids has shape {ids.shape}")
        mask = _mask_array(attention_mask, ids.shape)
        return self._core.loss_and_grad(ids, lab, mask, accumulate)

    # -- parameters -----------------------------------------------------------------------------
    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: flat[off:off + numel].reshape(shape) for name, shape, off, numel in self._table}

    def parameters(self) -> dict[str, np.ndarray]:
        """Name → float32 view of every parameter (Hugging Face names and shapes)."""
        return self._views(self._core.params())

    def gradients(self) -> dict[str, np.ndarray]:
        """Name → float32 view of every parameter's gradient (zeros before the first backward)."""
        return self._views(self._core.grads())

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        yield from self.parameters().items()

    def num_parameters(self) -> int:
        """Parameter count (the tied lm_head counted once, as Hugging Face does)."""
        return int(self._core.num_parameters)

    def __repr__(self) -> str:
        c = self.config
        return (f"Lfm2Model(layers={c.num_hidden_layers} ({len(c.attention_layers)} attention), "
                f"hidden={c.hidden_size}, ffn={c.ffn_dim}, vocab={c.vocab_size}, "
                f"parameters={self.num_parameters():,})")


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: the single file, or every shard of the index."""
    single, index = path / WEIGHTS_NAME, path / WEIGHTS_INDEX_NAME
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(_core.safetensors_index(str(index)).values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that do not exist: {', '.join(missing)}")
        return [path / s for s in shards]
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {path}")


def _token_array(values: ArrayLike, what: str, allow_negative: bool = False) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 1-D or 2-D (batch, length), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what} must hold integers, got dtype {arr.dtype}")
    lo = -100 if allow_negative else 0
    if arr.min() < lo or arr.max() > np.iinfo(np.int32).max:
        bad = arr.min() if arr.min() < lo else arr.max()
        raise IndexError(f"{what} contains {int(bad)}, which is not a valid token id")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _mask_array(mask: ArrayLike | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.shape != shape:
        raise ValueError(f"attention_mask has shape {arr.shape} but input_ids has shape {shape}")
    return np.ascontiguousarray(arr, dtype=np.int32)
