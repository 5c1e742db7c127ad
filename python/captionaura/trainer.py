"""A small trainer over token batches: steps or epochs, gradient accumulation, learning-rate schedules with
warmup, an evaluation hook, tqdm progress, atomic checkpoints and exact resume.

Examples are dicts of 1-D integer arrays ``input_ids`` and ``labels`` (−100 where a token is not scored,
e.g. the prompt and image tokens of a captioning example); the trainer pads them into right-padded batches.
Image-caption examples (``Lfm2VlModel.caption_example``) also carry their tiles (``pixel_values``,
``spatial_shapes``, ``pixel_attention_mask``), which batch by concatenation in example order — the order of
the ``<image>`` tokens in the flattened batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from captionaura import _core
from captionaura.model import Lfm2Model
from captionaura.optim import AdamW, AdamWConfig

Example = Mapping[str, Sequence[int] | np.ndarray]
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainingConfig:
    """How to train. Exactly one of ``max_steps`` and ``num_epochs`` sets the length (optimiser steps)."""

    max_steps: int | None = None
    num_epochs: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    optimizer: AdamWConfig = field(default_factory=lambda: AdamWConfig(lr=1e-4, max_grad_norm=1.0))
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    eval_every: int | None = None
    save_every: int | None = None
    output_dir: str | None = None
    seed: int = 0
    progressbar: bool = True
    #: ``Lfm2VlModel`` only: train the vision tower and projector too (with the language model's trainable
    #: buffers: every parameter without adapters), i.e. full pre-training of the whole captioner
    train_vision: bool = False

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.num_epochs is None):
            raise ValueError("give exactly one of max_steps and num_epochs")
        if (self.max_steps is not None and self.max_steps < 1) or (self.num_epochs is not None and self.num_epochs < 1):
            raise ValueError("max_steps / num_epochs must be >= 1")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1 or self.warmup_steps < 0:
            raise ValueError("batch_size and gradient_accumulation_steps must be >= 1, warmup_steps >= 0")
        if self.lr_scheduler not in SCHEDULES:
            raise ValueError(f"lr_scheduler must be one of {SCHEDULES}, got {self.lr_scheduler!r}")
        if self.save_every is not None and self.output_dir is None:
            raise ValueError("save_every needs an output_dir")
        if isinstance(self.optimizer, dict):
            self.optimizer = AdamWConfig(**self.optimizer)


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The multiplier of the base learning rate at optimiser step `step` (0-based), as transformers'
    get_{constant,linear,cosine}_schedule_with_warmup define it."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


PIXEL_KEYS = ("pixel_values", "spatial_shapes", "pixel_attention_mask")


def collate(examples: Sequence[Example], pad_token_id: int = 0) -> dict[str, np.ndarray]:
    """Right-pad examples into (B, T) int32 ``input_ids``, ``labels`` (−100 on padding), ``attention_mask``;
    image tiles, when the examples have them, are concatenated (patches padded to the longest)."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    lengths = [len(e["input_ids"]) for e in examples]
    for i, e in enumerate(examples):
        if len(e["labels"]) != lengths[i]:
            raise ValueError(f"example {i}: labels has {len(e['labels'])} tokens, input_ids {lengths[i]}")
        if lengths[i] == 0:
            raise ValueError(f"example {i} is empty")
    T = max(lengths)
    ids = np.full((len(examples), T), pad_token_id, np.int32)
    labels = np.full((len(examples), T), -100, np.int32)
    mask = np.zeros((len(examples), T), np.int32)
    for i, e in enumerate(examples):
        n = lengths[i]
        ids[i, :n], labels[i, :n], mask[i, :n] = e["input_ids"], e["labels"], 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if "pixel_values" in examples[0]:
        if any("pixel_values" not in e for e in examples):
            raise ValueError("some examples have images and some do not")
        P = max(np.asarray(e["pixel_values"]).shape[1] for e in examples)
        pv, am = [], []
        for e in examples:
            v, a = np.asarray(e["pixel_values"], np.float32), np.asarray(e["pixel_attention_mask"], np.int32)
            pad = P - v.shape[1]
            pv.append(np.pad(v, ((0, 0), (0, pad), (0, 0))) if pad else v)
            am.append(np.pad(a, ((0, 0), (0, pad))) if pad else a)
        batch["pixel_values"] = np.concatenate(pv)
        batch["pixel_attention_mask"] = np.concatenate(am)
        batch["spatial_shapes"] = np.concatenate([np.asarray(e["spatial_shapes"]) for e in examples])
    return batch


class Trainer:
    """Trains `model` (its LoRA adapters, or every parameter when it has none) on `examples`. For an
    ``Lfm2VlModel`` the language model trains (its adapters) while the frozen vision tower supplies features,
    unless ``config.train_vision``: then the tower and projector train too, in the same AdamW step. With
    adapters on the whole LFM2-VL model (``Lfm2VlModel.add_lora``) only adapters train: the language model's,
    and with ``train_vision`` the tower's and projector's, their base weights frozen.

    ``examples`` is any sequence (indexable, with a length): a list, or a lazy view that builds each example
    when asked, so a large image set need not be preprocessed up front.

    ``eval_fn(model) -> dict`` runs every ``eval_every`` steps and at the end; its figures join the
    history. Checkpoints go to ``output_dir/checkpoint-<step>/`` (written to a temporary folder, then
    renamed); ``train(resume=True)`` continues from the newest one with the same data order.
    """

    def __init__(self, model: Lfm2Model, examples: Sequence[Example], config: TrainingConfig,
                 eval_fn: Callable[[Lfm2Model], Mapping[str, float]] | None = None) -> None:
        if not examples:
            raise ValueError("no training examples")
        self.model, self.examples, self.config, self.eval_fn = model, examples, config, eval_fn
        self.lm: Lfm2Model = getattr(model, "text", model)  # what the optimiser updates and checkpoints hold
        self.vision = getattr(model, "vision", None) if config.train_vision else None
        if config.train_vision and self.vision is None:
            raise ValueError("train_vision needs an Lfm2VlModel (a model with a vision tower)")
        # an Lfm2VlModel with adapters (add_lora/load_adapter on the whole model): its adapters train, with
        # train_vision those of the tower and projector too, every base weight stays frozen
        self.vl_lora = hasattr(model, "vision") and getattr(model, "lora_config", None) is not None
        self.pad_token_id = self.lm.config.pad_token_id if self.lm.config.pad_token_id is not None else 0
        micro = math.ceil(len(self.examples) / config.batch_size)
        self.steps_per_epoch = max(1, micro // config.gradient_accumulation_steps)
        self.total_steps = config.max_steps or config.num_epochs * self.steps_per_epoch
        self.step = 0
        self.history: list[dict] = []
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> AdamW:
        """The language model's AdamW (kept on it, as ``train_step`` uses it), or with ``train_vision`` one AdamW
        over its trainable buffers and the vision tower's flat parameter buffer."""
        if self.vl_lora:
            return AdamW(*self.model.trainable_buffers(vision=self.vision is not None), self.config.optimizer)
        if self.vision is None:
            return self.lm.set_optimizer(self.config.optimizer)
        params, grads = self.lm.trainable_buffers()
        return AdamW(params + [self.vision._core.params()], grads + [self.vision._core.grads()],
                     self.config.optimizer)

    def _micro_batches(self, start_step: int):
        """Micro-batches from optimiser step `start_step` on; each epoch is a fresh seeded permutation."""
        c = self.config
        per_step = c.batch_size * c.gradient_accumulation_steps
        step = start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = np.random.default_rng([c.seed, epoch]).permutation(len(self.examples))
            begin = within * per_step
            for k in range(c.gradient_accumulation_steps):
                lo = begin + k * c.batch_size  # < n: steps_per_epoch counts whole optimiser steps only
                yield collate([self.examples[i] for i in order[lo: lo + c.batch_size]], self.pad_token_id)
            step += 1

    def train(self, resume: bool = False) -> list[dict]:
        c, model, lm = self.config, self.model, self.lm
        if resume:
            self._resume()
        batches = self._micro_batches(self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", disable=not c.progressbar)
        try:
            while self.step < self.total_steps:
                loss = 0.0
                # dropout masks depend only on (seed, step), so a resumed run draws the same ones
                lm._core.set_dropout_seed(c.seed * 1_000_003 + self.step * c.gradient_accumulation_steps)
                if self.vl_lora:
                    model.vision._core.set_dropout_seed(c.seed * 1_000_003 + self.step * c.gradient_accumulation_steps)
                for k in range(c.gradient_accumulation_steps):
                    b = next(batches)
                    pixels = {key: b[key] for key in PIXEL_KEYS if key in b}
                    if pixels:
                        pixels["train_vision"] = self.vision is not None
                    loss += model.loss_and_grad(b["input_ids"], b["labels"], b["attention_mask"], accumulate=k > 0,
                                                **pixels)
                if c.gradient_accumulation_steps > 1:  # the mean over micro-batches, as HF's Trainer scales it
                    for g in self.optimizer.grads:
                        _core.scale_inplace(g, 1.0 / c.gradient_accumulation_steps)
                lr = c.optimizer.lr * lr_factor(c.lr_scheduler, self.step, c.warmup_steps, self.total_steps)
                grad_norm = self.optimizer.step(lr)
                self.step += 1
                record = {"step": self.step, "loss": loss / c.gradient_accumulation_steps, "lr": lr,
                          "grad_norm": grad_norm}
                if self.eval_fn and ((c.eval_every and self.step % c.eval_every == 0) or self.step == self.total_steps):
                    record.update({f"eval_{k}": float(v) for k, v in self.eval_fn(model).items()})
                self.history.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if c.save_every and (self.step % c.save_every == 0 or self.step == self.total_steps):
                    self.save_checkpoint()
        finally:
            bar.close()
        return self.history

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        out = Path(self.config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        final = out / f"checkpoint-{self.step}"
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".checkpoint-{self.step}."))
        try:
            if self.vl_lora:
                self.model.save_adapter(tmp / "adapter")
            elif self.vision is not None:
                self.model.save_pretrained(tmp / "vl_model")
                if self.lm.lora_config is not None:
                    self.lm.save_adapter(tmp / "adapter")
            elif self.lm.lora_config is not None:
                self.lm.save_adapter(tmp / "adapter")
            else:
                self.lm.save_pretrained(tmp / "model")
            state = self.optimizer.state_dict()
            np.savez(tmp / "optimizer.npz", **{k: np.asarray(v) for k, v in state.items()})
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"step": self.step, "history": self.history, "config": _jsonable(asdict(self.config))}, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _resume(self) -> None:
        out = Path(self.config.output_dir or ".")
        checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not checkpoints:
            return
        latest = checkpoints[-1]
        if (latest / "vl_model").is_dir():
            saved_model = type(self.model).from_pretrained(latest / "vl_model")
            self.lm._core.params()[:] = saved_model.text._core.params()
            self.vision._core.params()[:] = saved_model.vision._core.params()
        if (latest / "adapter").is_dir():
            (self.model if self.vl_lora else self.lm).load_adapter(latest / "adapter")
            self.optimizer = self._make_optimizer()
        elif (latest / "model").is_dir():
            loaded = Lfm2Model.from_pretrained(latest / "model")
            self.lm._core.params()[:] = loaded._core.params()
        with np.load(latest / "optimizer.npz") as state:
            self.optimizer.load_state_dict({k: state[k] for k in state.files})
        saved = json.loads((latest / "trainer_state.json").read_text())
        self.step, self.history = int(saved["step"]), list(saved["history"])


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
