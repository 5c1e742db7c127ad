"""COCO caption metrics (BLEU-1..4, CIDEr-D, ROUGE-L) equal to the COCO caption toolkit (pycocoevalcap 1.2).

The scoring runs in the C core (``captionaura._core.caption_metrics``); this module validates inputs, tokenises
raw captions like the toolkit's PTBTokenizer (see :mod:`captionaura.ptb`) and shapes the results.

Usage::

    import captionaura.metrics as cm
    result = cm.evaluate({"img1": ["A dog runs.", "A brown dog."]}, {"img1": "a dog running"})
    result.scores["CIDEr"], result.per_image["img1"]["Bleu_4"]

The toolkit's quirks are reproduced on purpose (shared/reference/cocoeval.md section 7): CIDEr depends on the
set of images scored together (one image scores 0), per-image BLEU is never exactly 0 or 1, ROUGE-L splits on
ASCII spaces only, and so on.
"""

from __future__ import annotations

import json
from collections import abc
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

from captionaura import _core
from captionaura.ptb import tokenize_batch

__all__ = [
    "EvalResult",
    "METRICS",
    "evaluate",
    "bleu",
    "cider",
    "rouge_l",
    "load_references",
    "load_results",
]

#: Metric groups accepted by :func:`evaluate`, with the score keys each produces.
METRICS: dict[str, tuple[str, ...]] = {
    "Bleu": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"),
    "CIDEr": ("CIDEr",),
    "ROUGE_L": ("ROUGE_L",),
}
_MASK = {"Bleu": 1, "CIDEr": 2, "ROUGE_L": 4}


@dataclass
class EvalResult:
    """Scores of one evaluation.

    ``scores`` holds the corpus numbers the toolkit reports (``Bleu_1``..``Bleu_4``, ``CIDEr``, ``ROUGE_L``);
    ``per_image`` maps every image id to its per-image values of the same metrics.
    """

    scores: dict[str, float]
    per_image: dict[Hashable, dict[str, float]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# validation and the C call


def _check_pair(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, Any]) -> None:
    """Raise a clear exception naming the image when the two id sets differ or a reference set is empty or
    not a sequence. (Caption types are checked by the C glue; :func:`_name_bad_caption` names the image.)"""
    if references.keys() != candidates.keys():
        for img in candidates:
            if img not in references:
                raise KeyError(f"candidate for image {img!r} has no references")
        for img in references:
            if img not in candidates:
                raise KeyError(f"image {img!r} has references but no candidate caption")
    for img, refs in references.items():
        if type(refs) is not list and type(refs) is not tuple:
            if isinstance(refs, (str, bytes)) or not isinstance(refs, abc.Sequence):
                raise TypeError(f"references of image {img!r} must be a sequence of str, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"image {img!r} has an empty reference set")


def _name_bad_caption(ids: Sequence[Hashable], cands: Sequence[Any], refs: Sequence[Sequence[Any]]) -> None:
    """Raise TypeError naming the image of the first caption that is not a str (if any)."""
    for img, c, rs in zip(ids, cands, refs):
        if not isinstance(c, str):
            raise TypeError(f"candidate of image {img!r} must be str, got {type(c).__name__}")
        for j, r in enumerate(rs):
            if not isinstance(r, str):
                raise TypeError(f"reference {j} of image {img!r} must be str, got {type(r).__name__}")


def _score(ids: list[Hashable], cands: list[str], refs: list[Sequence[str]], mask: int) -> dict[str, Any]:
    """Run the C scorers on tokenised captions (image i: cands[i] against refs[i])."""
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in refs], out=offsets[1:])
    flat = [r for rs in refs for r in rs]
    try:
        return _core.caption_metrics(cands, flat, offsets, mask)
    except TypeError:
        _name_bad_caption(ids, cands, refs)
        raise


def _toolkit_inputs(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]):
    """Validate toolkit-shaped inputs ({id: [refs]}, {id: [one candidate]}) and flatten them in gts order."""
    if set(gts.keys()) != set(res.keys()):
        only_res = [k for k in res if k not in gts]
        only_gts = [k for k in gts if k not in res]
        if only_res:
            raise KeyError(f"candidate for image {only_res[0]!r} has no references")
        raise KeyError(f"image {only_gts[0]!r} has references but no candidate caption")
    ids = list(gts.keys())
    cands: list[str] = []
    for img in ids:
        hypo = res[img]
        if isinstance(hypo, str) or len(hypo) != 1:
            n = "a str" if isinstance(hypo, str) else f"{len(hypo)} captions"
            raise ValueError(f"image {img!r} must have exactly one candidate in a list, got {n}")
        cands.append(hypo[0])
    _check_pair(gts, res)
    return ids, cands, [gts[k] for k in ids]


# ---------------------------------------------------------------------------------------------------------
# the toolkit-shaped scorers (tokenised input, like pycocoevalcap's compute_score)


def bleu(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]) -> tuple[list[float], list[list[float]]]:
    """BLEU-1..4 like ``Bleu(4).compute_score(gts, res)``: ``([corpus b1..b4], [per-image b1 list, ..., b4 list])``.

    ``gts`` maps image ids to tokenised references, ``res`` to a one-element list with the tokenised candidate.
    Corpus BLEU is computed from counts summed over the images ("closest" reference length).
    """
    ids, cands, refs = _toolkit_inputs(gts, res)
    out = _score(ids, cands, refs, _MASK["Bleu"])
    return list(out["bleu"]), [row.tolist() for row in out["bleu_per_image"]]


def cider(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]) -> tuple[float, np.ndarray]:
    """CIDEr-D like ``Cider().compute_score(gts, res)``: ``(mean, per-image array)``.

    Document frequencies and log N come from the references of exactly these images.
    """
    ids, cands, refs = _toolkit_inputs(gts, res)
    out = _score(ids, cands, refs, _MASK["CIDEr"])
    return out["cider"], out["cider_per_image"]


def rouge_l(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]) -> tuple[float, np.ndarray]:
    """ROUGE-L like ``Rouge().compute_score(gts, res)``: ``(mean, per-image array)`` (beta 1.2, split on " ")."""
    ids, cands, refs = _toolkit_inputs(gts, res)
    out = _score(ids, cands, refs, _MASK["ROUGE_L"])
    return out["rouge_l"], out["rouge_l_per_image"]


# ---------------------------------------------------------------------------------------------------------
# the main entry point


def evaluate(
    references: Mapping[Hashable, Sequence[str]],
    candidates: Mapping[Hashable, str],
    *,
    metrics: Iterable[str] = ("Bleu", "CIDEr", "ROUGE_L"),
    tokenize: str = "ptb",
) -> EvalResult:
    """Score one candidate caption per image against its references, as ``COCOEvalCap.evaluate`` does.

    Args:
        references: image id -> reference captions (at least one per image).
        candidates: image id -> the candidate caption; the id sets must be equal.
        metrics: any of ``"Bleu"``, ``"CIDEr"``, ``"ROUGE_L"``.
        tokenize: ``"ptb"`` (raw captions: the toolkit's PTBTokenizer + punctuation filter, references and
            candidates tokenised as two separate batches like the toolkit) or ``"none"`` (already tokenised,
            tokens separated by spaces).

    Raises:
        KeyError: an image with a candidate but no references, or the reverse.
        TypeError: a caption that is not a str.
        ValueError: an empty reference set, an unknown metric or tokenizer, no images at all.
    """
    wanted = list(metrics)
    for m in wanted:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {sorted(METRICS)}")
    if tokenize not in ("ptb", "none"):
        raise ValueError(f"tokenize must be 'ptb' or 'none', got {tokenize!r}")
    _check_pair(references, candidates)
    if not references:
        raise ValueError("no images to evaluate")

    ids = list(references.keys())
    refs = [list(references[k]) for k in ids]
    cands = [candidates[k] for k in ids]
    if tokenize == "ptb":
        _name_bad_caption(ids, cands, refs)
        flat = tokenize_batch([r for rs in refs for r in rs])
        pos = 0
        for i, rs in enumerate(refs):
            refs[i] = flat[pos : pos + len(rs)]
            pos += len(rs)
        cands = tokenize_batch(cands)

    mask = 0
    for m in wanted:
        mask |= _MASK[m]
    out = _score(ids, cands, refs, mask)

    scores: dict[str, float] = {}
    columns: dict[str, np.ndarray] = {}
    if "bleu" in out:
        for k in range(4):
            scores[f"Bleu_{k + 1}"] = float(out["bleu"][k])
            columns[f"Bleu_{k + 1}"] = out["bleu_per_image"][k]
    if "cider" in out:
        scores["CIDEr"] = float(out["cider"])
        columns["CIDEr"] = out["cider_per_image"]
    if "rouge_l" in out:
        scores["ROUGE_L"] = float(out["rouge_l"])
        columns["ROUGE_L"] = out["rouge_l_per_image"]
    names = list(columns)
    rows = zip(*(col.tolist() for col in columns.values()))
    per_image = {img: dict(zip(names, row)) for img, row in zip(ids, rows)}
    return EvalResult(scores=scores, per_image=per_image)


# ---------------------------------------------------------------------------------------------------------
# file readers


def load_references(path: str) -> dict[Hashable, list[str]]:
    """Read a COCO caption annotation file (``{"annotations": [{"image_id", "caption"}, ...], ...}``).

    Returns image id -> list of reference captions (annotation order within an image). Images come in the
    order of the ``"images"`` list when there is one (the order in which the toolkit, through pycocotools,
    tokenises and scores them), else in order of first annotation; images without any caption are left out.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO caption annotation file (no 'annotations' list)")
    refs: dict[Hashable, list[str]] = {}
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{path}: annotation {n} needs 'image_id' and 'caption'")
        img, cap = ann["image_id"], ann["caption"]
        if not isinstance(cap, str):
            raise TypeError(f"{path}: caption of annotation {n} (image {img!r}) must be str, got {type(cap).__name__}")
        refs.setdefault(img, []).append(cap)
    images = data.get("images")
    if isinstance(images, list):
        order = [im["id"] for im in images if isinstance(im, dict) and "id" in im and im["id"] in refs]
        if len(order) == len(refs):
            refs = {img: refs[img] for img in order}
    return refs


def load_results(path: str) -> dict[Hashable, str]:
    """Read a COCO results file (``[{"image_id": .., "caption": ..}, ...]``): image id -> candidate caption.

    Raises ValueError naming the id when an image has two results.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a results file is a JSON list of {{'image_id', 'caption'}} objects")
    res: dict[Hashable, str] = {}
    for n, item in enumerate(data):
        if not isinstance(item, dict) or "image_id" not in item or "caption" not in item:
            raise ValueError(f"{path}: result {n} needs 'image_id' and 'caption'")
        img, cap = item["image_id"], item["caption"]
        if not isinstance(cap, str):
            raise TypeError(f"{path}: caption of image {img!r} must be str, got {type(cap).__name__}")
        if img in res:
            raise ValueError(f"{path}: image {img!r} has more than one result caption")
        res[img] = cap
    return res
