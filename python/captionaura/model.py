"""The LFM2 language model on the C core: Hugging Face checkpoints in, logits, losses and gradients out."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from captionaura import _core
from captionaura._io import write_json_atomic
from captionaura.config import Lfm2Config
from captionaura.device import backend_device, normalize_device
from captionaura.lora import (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PEFT_PREFIX, LoraConfig, peft_key,
                              resolve_targets)
from captionaura.optim import AdamW, AdamWConfig

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
        self.lora_config: LoraConfig | None = None
        self.optimizer: AdamW | None = None
        self.generation_config = None  # a GenerationConfig from the checkpoint's generation_config.json
        self._merged = False
        self._lora_A_frozen = False

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Lfm2Config | dict, seed: int = 0) -> "Lfm2Model":
        """A randomly initialised model (N(0, initializer_range) weights, unit norms), reproducible from `seed`."""
        if isinstance(config, dict):
            config = Lfm2Config.from_dict(config)
        core = _core.Lfm2(json.dumps(config.to_dict()), seed=int(seed), init_std=config.initializer_range)
        return cls(config, core)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], dtype: str = "fp32", keep_fp32: bool = True) -> "Lfm2Model":
        """Load a Hugging Face checkpoint folder: ``config.json`` plus ``model.safetensors`` or the shards
        of ``model.safetensors.index.json`` (F32, BF16 or F16; every tensor's shape is checked).

        ``dtype`` and ``keep_fp32`` are ``to_inference_dtype``'s, applied while loading: with "bf16" and
        ``keep_fp32=False`` each tensor is packed as it is read, so that loading holds about the bf16 model's
        memory, never the fp32 one's."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {path}")
        model = cls._load(path, Lfm2Config.from_pretrained(path), prefix=None, dtype=dtype, keep_fp32=keep_fp32)
        if (path / "generation_config.json").is_file():
            from captionaura.generate import GenerationConfig
            model.generation_config = GenerationConfig.from_pretrained(path)
        return model

    @classmethod
    def _load(cls, path: Path, config: Lfm2Config, prefix: str | None, dtype: str = "fp32",
              keep_fp32: bool = True) -> "Lfm2Model":
        """Build from `config` and read the weights of `path` whose names start with `prefix` (None: "model.";
        LFM2-VL checkpoints keep the language model under "model.language_model."), into `dtype`."""
        model = cls(config, _core.Lfm2(json.dumps(config.to_dict())))
        model.to_inference_dtype(dtype, keep_fp32)  # before reading: the weights are packed as they arrive
        model._core.load_safetensors([str(p) for p in weight_files(path)], prefix=prefix)
        return model

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` (float32, Hugging Face names), each atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._core.save_safetensors(str(path / WEIGHTS_NAME))
        write_json_atomic(path / CONFIG_NAME, self.config.to_dict())

    # -- compute --------------------------------------------------------------------------------
    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None,
                output_hidden_states: bool = False, features: tuple[np.ndarray, np.ndarray] | None = None) \
            -> Lfm2Output:
        """Logits for a batch of right-padded sequences ``input_ids`` (B, T) (a 1-D sequence is a batch of one).

        ``features``: ``(positions, rows)`` replacing the token embeddings at flat positions ``b*T + t`` by the
        rows (P, hidden) — LFM2-VL's image features at its ``<image>`` tokens."""
        ids = _token_array(input_ids, "input_ids")
        mask = _mask_array(attention_mask, ids.shape)
        positions, rows = _feature_arrays(features)
        B, T = ids.shape
        logits = np.empty((B, T, self.config.vocab_size), dtype=np.float32)
        hidden = None
        if output_hidden_states:
            hidden = np.empty((self.config.num_hidden_layers + 1, B, T, self.config.hidden_size), dtype=np.float32)
        self._core.forward(ids, mask, logits, hidden, positions, rows)
        return Lfm2Output(logits, tuple(hidden) if hidden is not None else None)

    __call__ = forward

    def loss_and_grad(self, input_ids: ArrayLike, labels: ArrayLike, attention_mask: ArrayLike | None = None,
                      accumulate: bool = False, features: tuple[np.ndarray, np.ndarray] | None = None,
                      feature_grad: np.ndarray | None = None) -> float:
        """Causal-LM loss (labels shifted inside; -100 ignored; mean over counted tokens), filling
        ``gradients()`` (overwritten, or added to with ``accumulate=True``). With ``features`` (see
        ``forward``), ``feature_grad`` (P, hidden) receives d loss / d rows."""
        ids = _token_array(input_ids, "input_ids")
        lab = _token_array(labels, "labels", allow_negative=True)
        if lab.shape != ids.shape:
            raise ValueError(f"labels has shape {lab.shape} but input_ids has shape {ids.shape}")
        mask = _mask_array(attention_mask, ids.shape)
        positions, rows = _feature_arrays(features)
        return self._core.loss_and_grad(ids, lab, mask, accumulate, positions, rows, feature_grad)

    # -- parameters -----------------------------------------------------------------------------
    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: flat[off:off + numel].reshape(shape) for name, shape, off, numel in self._table}

    def parameters(self) -> dict[str, np.ndarray]:
        """Name → float32 view of every parameter (Hugging Face names and shapes)."""
        if self._core.fp32_dropped():
            raise RuntimeError("the fp32 weights were dropped (to_inference_dtype('bf16', keep_fp32=False)): call "
                               "to_inference_dtype('bf16') to restore them")
        return self._views(self._core.params())

    def gradients(self) -> dict[str, np.ndarray]:
        """Name → float32 view of every parameter's gradient (zeros before the first backward)."""
        return self._views(self._core.grads())

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        yield from self.parameters().items()

    def num_parameters(self) -> int:
        """Parameter count (the tied lm_head counted once, as Hugging Face does)."""
        return int(self._core.num_parameters)

    # -- LoRA -------------------------------------------------------------------------------------
    def add_lora(self, config: LoraConfig, seed: int = 0) -> None:
        """Put adapters on every projection ``config.target_modules`` matches and freeze the base model
        (except ``modules_to_save``). Replaces existing adapters; A is initialised as PEFT does, B = 0."""
        self._add_lora_targets(config, resolve_targets(config, self.config.layer_types, _core.LFM2_PROJECTIONS),
                               seed)

    def _add_lora_targets(self, config: LoraConfig, targets: Sequence[tuple[int, int]], seed: int = 0) -> None:
        """``add_lora`` on already-resolved (layer, projection index) pairs (LFM2-VL resolves its own names)."""
        layers = np.array([t[0] for t in targets], dtype=np.int32)
        projections = np.array([t[1] for t in targets], dtype=np.int32)
        self._core.lora_add(layers, projections, config.r, config.scaling, config.lora_dropout)
        self._core.set_lora_enabled(True)  # new adapters are active even after merge_lora() folded earlier ones
        if config.init_lora_weights is False:  # PEFT's debugging init: both factors random
            rng = np.random.default_rng(seed)
            flat = self._core.lora_params()
            flat[:] = rng.normal(0.0, 0.02, flat.size)
        else:
            self._core.lora_init(int(seed), config.init_lora_weights == "gaussian")
        self._core.set_dropout_seed(int(seed))
        save = self._modules_to_save(config)
        for index, (name, *_rest) in enumerate(self._table):
            self._core.set_trainable(index, name in save)
        self.lora_config = config
        self.optimizer = None
        self._merged = False
        self._lora_A_frozen = False

    def freeze_lora_A(self, frozen: bool = True) -> None:
        """FFA-LoRA: keep every A at its (shared-seed) initialisation and train only B. Resets the optimiser."""
        self._require_lora()
        self._core.set_lora_freeze_A(bool(frozen))
        self._lora_A_frozen = bool(frozen)
        self.optimizer = None

    def _modules_to_save(self, config: LoraConfig) -> set[str]:
        """Base tensor names (…​.weight) of the modules listed in modules_to_save."""
        names = set()
        for wanted in config.modules_to_save or ():
            found = [n for n, *_ in self._table
                     if n[: -len(".weight")] == wanted or n[: -len(".weight")].endswith("." + wanted)]
            if not found:
                raise ValueError(f"modules_to_save entry {wanted!r} matches no module")
            names.update(found)
        return names

    def _require_lora(self) -> LoraConfig:
        if self.lora_config is None:
            raise RuntimeError("this model has no LoRA adapters; call add_lora() or load_adapter() first")
        return self.lora_config

    def lora_modules(self) -> list[dict]:
        """One entry per adapter: module path, r, in/out features, scaling and offsets in lora_vector()."""
        return [{"module": f"model.layers.{layer}.{proj}", "r": r, "in_features": fin, "out_features": fout,
                 "a_offset": a, "b_offset": b, "scaling": s, "dropout": d}
                for layer, proj, r, fin, fout, a, b, s, d in self._core.lora_table()]

    def _lora_views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for m in self.lora_modules():
            r, fin, fout = m["r"], m["in_features"], m["out_features"]
            out[peft_key(m["module"], "lora_A")] = flat[m["a_offset"]: m["a_offset"] + r * fin].reshape(r, fin)
            out[peft_key(m["module"], "lora_B")] = flat[m["b_offset"]: m["b_offset"] + fout * r].reshape(fout, r)
        return out

    def lora_parameters(self) -> dict[str, np.ndarray]:
        """PEFT key → view of every lora_A [r, in] and lora_B [out, r]."""
        self._require_lora()
        return self._lora_views(self._core.lora_params())

    def lora_gradients(self) -> dict[str, np.ndarray]:
        self._require_lora()
        return self._lora_views(self._core.lora_grads())

    def lora_vector(self) -> np.ndarray:
        """Every adapter's A and B in one flat float32 view: the federated update vector."""
        self._require_lora()
        return self._core.lora_params()

    def set_lora_vector(self, vector: np.ndarray) -> None:
        flat = self.lora_vector()
        v = np.asarray(vector)
        if v.shape != flat.shape:
            raise ValueError(f"LoRA vector has shape {v.shape}, expected {flat.shape}")
        if not np.isfinite(v).all():
            raise ValueError("LoRA vector contains NaN or Inf")
        flat[:] = v

    @contextlib.contextmanager
    def disable_lora(self) -> Iterator[None]:
        """Inside the block the model computes with the base weights only."""
        self._require_lora()
        self._core.set_lora_enabled(False)
        try:
            yield
        finally:
            self._core.set_lora_enabled(not self._merged)

    def merge_lora(self) -> None:
        """Fold every adapter into its base weight (W += s·B·A); the adapters stay, inactive, for unmerge."""
        self._require_lora()
        if not self._merged:
            self._core.lora_merge(1.0)
            self._core.set_lora_enabled(False)
            self._merged = True

    def unmerge_lora(self) -> None:
        self._require_lora()
        if self._merged:
            self._core.lora_merge(-1.0)
            self._core.set_lora_enabled(True)
            self._merged = False

    def save_adapter(self, path: str | os.PathLike[str]) -> None:
        """Write PEFT's adapter_config.json and adapter_model.safetensors (each atomically)."""
        config = self._require_lora()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: np.ascontiguousarray(v) for k, v in self.lora_parameters().items()}
        tensors.update(self._saved_modules(config))
        _core.safetensors_save(str(path / ADAPTER_WEIGHTS_NAME), tensors, {"format": "pt"})
        write_json_atomic(path / ADAPTER_CONFIG_NAME, config.to_dict())

    def _saved_modules(self, config: LoraConfig) -> dict[str, np.ndarray]:
        """PEFT name → view of each ``modules_to_save`` tensor (none needs the fp32 weights when there are none)."""
        names = sorted(self._modules_to_save(config))
        params = self.parameters() if names else {}
        return {PEFT_PREFIX + name: params[name] for name in names}

    def load_adapter(self, path: str | os.PathLike[str]) -> None:
        """Load a PEFT adapter folder strictly: every expected key present with its shape, nothing else."""
        path = Path(path)
        config = LoraConfig.from_pretrained(path)
        self.add_lora(config)
        expected = self.lora_parameters()
        saved = self._saved_modules(config)
        weights = path / ADAPTER_WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"no {ADAPTER_WEIGHTS_NAME} in {path}")
        header = {name: tuple(shape) for name, _, shape, *_ in _core.safetensors_header(str(weights))}
        missing = sorted((set(expected) | set(saved)) - set(header))
        unexpected = sorted(set(header) - set(expected) - set(saved))
        if missing or unexpected:
            self.remove_lora()
            raise KeyError(f"adapter {path} does not fit this model: missing {missing[:3]}"
                           f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                           f"{'...' if len(unexpected) > 3 else ''}")
        for name, view in {**expected, **saved}.items():
            if header[name] != view.shape:
                self.remove_lora()
                raise ValueError(f"adapter tensor {name} has shape {header[name]}, expected {view.shape}")
        for name, array in _core.safetensors_load(str(weights)).items():
            target = expected.get(name, saved.get(name))
            target[...] = array

    def remove_lora(self) -> None:
        """Drop the adapters (unmerging first if merged) and make every base tensor trainable again."""
        if self.lora_config is not None and self._merged:
            self.unmerge_lora()
        self._core.lora_clear()
        for index in range(len(self._table)):
            self._core.set_trainable(index, True)
        self.lora_config = None
        self.optimizer = None
        self._merged = False
        self._lora_A_frozen = False

    def trainable_buffers(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(parameters, gradients) the optimiser updates: the LoRA buffer and modules_to_save, or every
        base tensor when there are no adapters (full fine-tuning)."""
        trainable = self._core.trainable()
        if self.lora_config is None:
            return [self._core.params()], [self._core.grads()]
        if self._lora_A_frozen:  # only the B slices: A must not even see weight decay
            flat_p, flat_g = self._core.lora_params(), self._core.lora_grads()
            spans = [(m["b_offset"], m["out_features"] * m["r"]) for m in self.lora_modules()]
            params = [flat_p[o: o + n] for o, n in spans]
            grads = [flat_g[o: o + n] for o, n in spans]
        else:
            params, grads = [self._core.lora_params()], [self._core.lora_grads()]
        if any(trainable):
            flat_p, flat_g = self._core.params(), self._core.grads()
            for on, (_, _, offset, numel) in zip(trainable, self._table):
                if on:
                    params.append(flat_p[offset: offset + numel])
                    grads.append(flat_g[offset: offset + numel])
        return params, grads

    def num_trainable_parameters(self) -> int:
        return sum(p.size for p in self.trainable_buffers()[0])

    def print_trainable_parameters(self) -> None:
        """PEFT's one-line summary."""
        trainable = self.num_trainable_parameters()
        total = self.num_parameters() + (self.lora_vector().size if self.lora_config else 0)
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # -- device -----------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """"cuda" when the model computes on the CUDA backend, else "cpu"."""
        return backend_device(self._core.backend)

    def to(self, device: str) -> "Lfm2Model":
        """Move parameters, gradients and LoRA adapters to ``device`` ("cpu" or "cuda") and return self.

        Raises RuntimeError naming the reason when CUDA cannot be used (see ``captionaura.cuda_status()``).
        NumPy views taken before (``parameters()``, ``gradients()``, ``lora_parameters()``) refer to the old
        buffers: take them again. An optimiser already set keeps its state and follows the buffers (on "cuda" its
        moments move to the device and its update runs there).
        """
        self._core.to_device(normalize_device(device))
        if self.optimizer is not None:
            self.optimizer.rebind(*self.trainable_buffers(), device=self.device)
        return self

    def to_inference_dtype(self, dtype: str, keep_fp32: bool = True) -> "Lfm2Model":
        """Choose the weights used for inference ("fp32", "bf16" or "int8") and return self.

        "bf16" rounds every parameter to bf16 in place (irreversibly, as ``torch_model.to(torch.bfloat16)``) and
        keeps a packed bf16 copy: decoding steps read it in a GEMV with fp32 activations and sums (half the memory
        traffic of fp32); prompts (several tokens) run a bf16 GEMM on it with the activations rounded to bf16 and
        fp32 sums (AVX512-BF16, twice the fp32 GEMM's rate; as transformers' bf16 model rounds them). "int8"
        rounds each matrix to ``scale[row] * q`` (q an int8, scale = max |row| / 127; vectors stay fp32);
        decoding steps quantise the activations per block of 32 to int8 too (as llama.cpp's q8_0 dot products)
        and sum in integers: a quarter of the fp32 traffic; prompts run the bf16 GEMM on q (exact in bf16) with the
        activations rounded to bf16, each row's sums times its scale.
        Each sequence of a batch gets the numbers it gets alone, so batched and one-by-one generation agree.
        Loading weights, ``init`` and ``merge_lora`` re-pack; writing into ``parameters()`` by hand needs another
        ``to_inference_dtype(...)``.
        A bf16 model trains in mixed precision: the GEMMs of the forward pass, of the input gradients and of the
        weight gradients run in bf16 with fp32 sums; adapters, gradients, the optimiser and every other op stay
        fp32. When base parameters train (full fine-tuning, ``modules_to_save``), ``parameters()`` are the fp32
        master weights (an optimiser step's updates below a bf16 step are kept) and the bf16 copy is re-made from
        them before the next pass. int8 weights do not train: go back with ``to_inference_dtype("fp32")`` (which
        keeps the rounded values). CPU only.

        ``keep_fp32=False`` (bf16, CPUs with AVX512-BF16) gives back the memory of the matrices' fp32 values, about
        two thirds of the weights' memory, each matrix as soon as it is packed (converting never holds both
        copies): inference and LoRA on the frozen base run on the bf16 copy alone, with or without adapters.
        Reading ``parameters()``, saving, merging and training base parameters then raise until a later
        ``to_inference_dtype`` restores them (exactly: they are bf16 values).
        """
        if dtype not in ("fp32", "bf16", "int8"):
            raise ValueError(f"inference dtype {dtype!r} is not one of 'fp32', 'bf16', 'int8'")
        if not keep_fp32 and dtype != "bf16":
            raise ValueError("keep_fp32=False needs dtype 'bf16'")
        self._core.set_inference_dtype(dtype, keep_fp32)
        return self

    @property
    def inference_dtype(self) -> str:
        """"fp32", "bf16" or "int8" (see ``to_inference_dtype``)."""
        return self._core.inference_dtype()

    def set_optimizer(self, config: AdamWConfig) -> AdamW:
        """(Re)create the AdamW that ``train_step`` uses, over the current trainable buffers."""
        self.optimizer = AdamW(*self.trainable_buffers(), config=config)
        if self.device != "cpu":  # moments and updates on the model's device
            self.optimizer.rebind(*self.trainable_buffers(), device=self.device)
        return self.optimizer

    def train_step(self, batch: Mapping[str, ArrayLike], lr: float | None = None) -> float:
        """loss_and_grad on ``batch`` (input_ids, labels, optional attention_mask) and one optimiser step."""
        if self._merged:
            raise RuntimeError("unmerge_lora() before training")
        if self.optimizer is None:
            self.set_optimizer(AdamWConfig())
        loss = self.loss_and_grad(batch["input_ids"], batch["labels"], batch.get("attention_mask"))
        self.optimizer.step(lr)
        return loss

    def __repr__(self) -> str:
        c = self.config
        return (f"Lfm2Model(layers={c.num_hidden_layers} ({len(c.attention_layers)} attention), "
                f"hidden={c.hidden_size}, ffn={c.ffn_dim}, vocab={c.vocab_size}, "
                f"parameters={self.num_parameters():,})")

    # -- generation -------------------------------------------------------------------------------
    def generate(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, generation=None, **kwargs):
        """Decode continuations in the C core: see ``captionaura.generate.generate`` (same arguments)."""
        from captionaura.generate import generate
        return generate(self, input_ids, attention_mask, generation, **kwargs)


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


def _feature_arrays(features: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if features is None:
        return None, None
    positions, rows = features
    return (np.ascontiguousarray(positions, dtype=np.int32), np.ascontiguousarray(rows, dtype=np.float32))


def _mask_array(mask: ArrayLike | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.shape != shape:
        raise ValueError(f"attention_mask has shape {arr.shape} but input_ids has shape {shape}")
    return np.ascontiguousarray(arr, dtype=np.int32)
