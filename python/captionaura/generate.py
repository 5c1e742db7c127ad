"""Caption generation: greedy, sampling and beam search decoding in the C core, with transformers' semantics.

``generate(model, input_ids, ...)`` runs the whole decoding loop in C (``_core.generate``); Python only prepares
the prompts and, when asked, receives each emitted token through a callback (streaming, stop strings).

Semantics follow transformers 5.23 ``GenerationMixin.generate``:

* processor order: repetition_penalty → no_repeat_ngram_size → min_new_tokens, then (sampling only)
  temperature → top_k → top_p → min_p; beam search applies the processors to log-softmax scores;
* top_k keeps every token tied with the k-th score; top_p drops tokens whose ascending cumulative probability is
  ≤ 1 − top_p but always keeps the most likely one (min_tokens_to_keep = 1); min_p drops p < min_p · max p;
* finished rows of a batch are padded with ``pad_token_id`` (``eos_token_id[0]`` when there is no pad id);
* beam search keeps ``max(2, 1 + len(eos)) · num_beams`` candidates a step, scores a finished hypothesis as
  Σ log p / new_len^length_penalty (new_len counts the eos token), stops per ``early_stopping``
  (True: when num_beams hypotheses are done; False: when the best running beam, scored at its current length,
  cannot beat the worst finished one; "never": the same test at max length when length_penalty > 0), and pads its
  returned sequences with ``pad_token_id or eos_token_id[0]`` (transformers' expression, so pad id 0 pads with eos);
* beam sampling (``do_sample`` with ``num_beams > 1``): the warpers act on the processed log-softmax scores and keep
  at least ``max(2, 1 + len(eos))`` tokens per beam (so ``top_k=1`` keeps 2); the candidates are drawn without
  replacement from the softmax over all beams' accumulated scores, in draw order (only the first ``num_beams``
  draws may finish a hypothesis); scores accumulate the warped values (a temperature T divides them by T).

Departures, on purpose:

* each prompt runs unpadded with its own cache, so a batch equals decoding the prompts one by one (transformers
  needs left padding for that, and its no_repeat_ngram_size then also sees the pad tokens);
* sampling and beam sampling draw from captionaura's own seeded generator (torch's RNG stream cannot be
  reproduced): the same seed, prompts and settings give the same tokens; different seeds give different draws;
* stop strings are checked in Python at token boundaries with the caller's tokenizer (``tokenizer.decode``):
  a row stops after the token that completes an occurrence of a stop string in its decoded new text;
* the returned ids are the new tokens only (B·R, n), n = the longest continuation; transformers returns
  prompt + new tokens.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from captionaura import _core
from captionaura._io import read_json

GENERATION_CONFIG_NAME = "generation_config.json"
_EARLY_STOPPING = {False: 0, True: 1, "never": 2}


@dataclass
class GenerationConfig:
    """Decoding settings, with transformers' field names and defaults (``GenerationConfig`` of transformers 5.23).

    ``max_new_tokens`` wins over ``max_length`` (prompt + new tokens, transformers' default 20).
    ``seed`` is captionaura's: the sampling seed (None: a fresh random seed per call).
    """

    max_length: int = 20
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    stop_strings: str | list[str] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        # transformers' files may hold null for a numeric setting: that means the default
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None and f.default is not None:
                setattr(self, f.name, f.default)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for settings transformers rejects or that have no meaning."""
        def whole(name: str, lo: int) -> None:
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo):
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        whole("max_length", 0)
        whole("max_new_tokens", 0)
        whole("min_new_tokens", 0)
        whole("top_k", 0)
        whole("num_beams", 1)
        whole("no_repeat_ngram_size", 0)
        whole("num_return_sequences", 1)
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.min_p is not None and not 0.0 <= float(self.min_p) <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if self.do_sample and not float(self.temperature) > 0.0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
        if not float(self.repetition_penalty) > 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                             f"({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError("greedy search returns one sequence per prompt: num_return_sequences must be 1")
        for t in self.eos_ids():
            if t < 0:
                raise ValueError(f"eos_token_id must hold non-negative ids, got {self.eos_token_id!r}")

    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, (int, np.integer)):
            return [int(self.eos_token_id)]
        return [int(t) for t in self.eos_token_id]

    def replace(self, **changes: Any) -> "GenerationConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GenerationConfig":
        """Known fields only (transformers' files carry many more, e.g. transformers_version)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "GenerationConfig":
        """Defaults from a checkpoint folder: ``generation_config.json`` when present, else the token ids of
        ``config.json`` (as transformers derives a generation config from the model config)."""
        path = Path(path)
        if (path / GENERATION_CONFIG_NAME).is_file():
            return cls.from_dict(read_json(path / GENERATION_CONFIG_NAME, "generation config"))
        if (path / "config.json").is_file():
            cfg = read_json(path / "config.json", "model config")
            cfg = cfg.get("text_config", cfg)
            return cls(**{k: cfg[k] for k in ("eos_token_id", "pad_token_id", "bos_token_id") if k in cfg})
        raise FileNotFoundError(f"no {GENERATION_CONFIG_NAME} or config.json in {path}")


@dataclass
class GenerateOutput:
    """What ``generate(..., return_scores=True)`` returns.

    ``sequences`` (B·R, n) int32: the new tokens, padded after each row's end; ``lengths`` (B·R): real tokens per
    row (including a final eos); ``sequences_scores`` (B·R) float32: beam search's length-penalised scores (None
    otherwise); ``scores`` (B·R, n, V) float32: greedy/sampling, the processed scores of each step (transformers'
    ``output_scores``; entries after a row's end are meaningless).
    """

    sequences: np.ndarray
    lengths: np.ndarray
    sequences_scores: np.ndarray | None = None
    scores: np.ndarray | None = None


def _feature_args(features: tuple[np.ndarray, np.ndarray] | None) -> tuple:
    if features is None:
        return (None, None)
    positions, rows = features
    return (np.ascontiguousarray(positions, np.int32), np.ascontiguousarray(rows, np.float32))


def _prompts(input_ids: Any, attention_mask: Any) -> list[np.ndarray]:
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty 1-D or 2-D array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"input_ids must hold integers, got {ids.dtype}")
    if attention_mask is None:
        rows = list(ids)
    else:
        mask = np.asarray(attention_mask)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape} but input_ids has shape {ids.shape}")
        rows = [row[m != 0] for row, m in zip(ids, mask)]  # left or right padding alike
    for i, r in enumerate(rows):
        if r.size == 0:
            raise ValueError(f"prompt {i} has no tokens")
    return [np.ascontiguousarray(r, dtype=np.int32) for r in rows]


class _StopStrings:
    """Per-row check at token boundaries: stop once a stop string completes in the decoded new text."""

    def __init__(self, stop_strings: Sequence[str], tokenizer: Any, rows: int) -> None:
        self.stops = list(stop_strings)
        self.tokenizer = tokenizer
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.text = [""] * rows

    def __call__(self, row: int, token: int) -> bool:
        self.tokens[row].append(token)
        before = self.text[row]
        text = self.tokenizer.decode(self.tokens[row])
        self.text[row] = text
        return any(text.find(s, max(0, len(before) - len(s) + 1)) >= 0 for s in self.stops)


def generate(model: Any, input_ids: Any, attention_mask: Any = None, generation: GenerationConfig | None = None, *,
             return_scores: bool = False, stream: bool = False,
             callback: Callable[[int, int], bool | None] | None = None, tokenizer: Any = None,
             features: tuple[np.ndarray, np.ndarray] | None = None,
             **overrides: Any) -> np.ndarray | GenerateOutput | Iterator[tuple[int, int]]:
    """Continue each prompt of ``input_ids`` (1-D, or 2-D padded with ``attention_mask``, left or right).

    ``generation``: settings (default: ``model.generation_config`` if the model has one, else transformers'
    defaults with the model config's token ids); keyword ``overrides`` replace single fields.
    Returns the new tokens (B·R, n) int32 padded after each row's end, or a ``GenerateOutput`` with
    ``return_scores``. ``callback(row, token)`` is called from the decoding loop for every emitted token
    (greedy/sampling); a true return value ends that row. It must not use the same model (it is busy).
    ``stream=True`` returns an iterator of ``(row, token)`` pairs as they are produced (the loop runs in a
    worker thread and hands tokens over without the GIL: as fast as a plain call); closing it early stops
    generation. ``features``: ``(positions, rows)`` replacing the
    embeddings of prompt tokens at positions of the concatenated prompts (LFM2-VL's image features).
    """
    g = _resolve(model, generation, overrides)
    prompts = _prompts(input_ids, attention_mask)
    R = g.num_return_sequences
    sampling_copies = g.do_sample and g.num_beams == 1 and R > 1
    if sampling_copies:  # transformers expands each prompt R times; each copy gets its own random stream
        if features is not None:
            raise NotImplementedError("num_return_sequences > 1 with sampling and image features")
        prompts = [p for p in prompts for _ in range(R)]
    if g.max_new_tokens is not None:
        max_new = g.max_new_tokens
    else:
        max_new = max(0, g.max_length - max(len(p) for p in prompts))
    eos = g.eos_ids()
    beams = g.num_beams > 1
    if beams and stream:
        raise ValueError("streaming needs greedy or sampling decoding (num_beams = 1)")
    if g.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer (pass tokenizer=...) to decode the generated text")
    if beams:  # transformers fills beam outputs with `pad_token_id or eos_token_id[0]`
        pad = g.pad_token_id if g.pad_token_id else (eos[0] if eos else -1)
    else:
        pad = g.pad_token_id if g.pad_token_id is not None else (eos[0] if eos else 0)
    seed = g.seed if g.seed is not None else secrets.randbits(63)

    stops = None
    if g.stop_strings:
        stops = _StopStrings([g.stop_strings] if isinstance(g.stop_strings, str) else g.stop_strings, tokenizer,
                             len(prompts))
    hooks = [h for h in (callback, stops) if h is not None]
    core_cb = None
    if hooks:
        def core_cb(row: int, token: int) -> bool:
            stop = False
            for h in hooks:
                stop = bool(h(row, token)) or stop
            return stop

    def run(cb: Any) -> GenerateOutput:  # a callable(row, token), a _core.TokenChannel or None
        tokens, lengths, seq_scores, steps = _core.generate(
            model._core, np.concatenate(prompts), np.array([len(p) for p in prompts], np.int32),
            int(max_new), int(g.min_new_tokens or 0), bool(g.do_sample), float(g.temperature),
            int(g.top_k or 0), float(g.top_p), float(-1.0 if g.min_p is None else g.min_p),
            float(g.repetition_penalty), int(g.no_repeat_ngram_size or 0), int(g.num_beams),
            float(g.length_penalty), _EARLY_STOPPING[g.early_stopping], int(R if beams else 1),
            np.array(eos, np.int32), int(pad), int(seed) & (2**64 - 1), cb, bool(return_scores and not beams),
            *_feature_args(features))
        n = int(lengths.max()) if lengths.size else 0
        return GenerateOutput(tokens[:, :n].copy(), lengths, seq_scores if beams else None,
                              steps[:, :n].copy() if steps is not None else None)

    if stream:
        return _stream(run, core_cb, len(prompts) * int(max_new))
    out = run(core_cb)
    return out if return_scores else out.sequences


def _stream(run: Callable[[Any], GenerateOutput], hook: Callable[[int, int], bool] | None, capacity: int
            ) -> Iterator[tuple[int, int]]:
    """The decoding loop runs on a worker thread and hands its tokens over through a ``_core.TokenChannel``: the
    loop never takes the GIL for them and the consumer takes every token that has arrived at once, so
    streaming costs what a plain call does (a per-token Python callback here waited for the consumer's GIL,
    ~5x slower). ``hook`` (stop strings, the caller's callback) still runs per token on the worker."""
    channel = _core.TokenChannel(max(1, capacity), hook)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            run(channel)
        except BaseException as e:  # handed to the consumer
            failure.append(e)
        finally:
            channel.finish()

    def iterate() -> Iterator[tuple[int, int]]:
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while batch := channel.take():
                yield from batch
            worker.join()
            if failure:
                raise failure[0]
        finally:
            channel.close()
            worker.join()

    return iterate()


def _resolve(model: Any, generation: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    if generation is None:
        generation = getattr(model, "generation_config", None)
    if generation is None:
        c = model.config
        generation = GenerationConfig(eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
                                      bos_token_id=c.bos_token_id)
    if overrides:
        generation = generation.replace(**overrides)
    generation.validate()
    return generation
