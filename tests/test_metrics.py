"""Parity of captionaura.metrics with pycocoevalcap 1.2 (the COCO caption toolkit) on generated caption sets.

The toolkit's scorer classes run on exactly the same tokenised input; every corpus and per-image value must
agree within 1e-9 relative. Hand-computed expectations pin the quirks of cocoeval.md section 7.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import captionaura.metrics as cm

sys.path.insert(0, os.path.dirname(__file__))

coco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
coco_cider = pytest.importorskip("pycocoevalcap.cider.cider")
coco_rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")

REL = 1e-9

# Token pool: plain words, unicode, hashtags, handles, BMP symbols, PTB survivors, and tokens holding U+00A0
# (BLEU/CIDEr split on it, ROUGE-L does not).
BASE = (
    "a the man woman dog cat red blue sitting on of with is two ski café naïve straße über 東京 日本 "
    "#sunset #love @john_doe ❤ ★ ☀ -lrb- -rrb- -lsb- 's n't !!! ?! $ % & / * st. etc. u.s. 3.5 1,000 10:30"
).split() + ["2\u00a01/2", "555\u00a01234"]


def make_vocab(rng: random.Random, size: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyzéü"
    vocab = rng.sample(BASE, min(len(BASE), size // 2))
    while len(vocab) < size:
        vocab.append("".join(rng.choice(letters) for _ in range(rng.randint(1, 6))))
    return vocab


def make_caption(rng: random.Random, vocab: list[str], lo: int = 0, hi: int = 30) -> str:
    n = rng.randint(lo, hi)
    # Zipf-like choice so n-grams repeat across captions (exercises clipping, df and idf)
    return " ".join(vocab[min(int(rng.paretovariate(1.0)) - 1, len(vocab) - 1)] for _ in range(n))


def make_set(seed: int, n_images: int, vocab_size: int = 40):
    rng = random.Random(seed)
    vocab = make_vocab(rng, vocab_size)
    gts, res = {}, {}
    for i in range(n_images):
        img = rng.choice([i, f"img{i}"])
        gts[img] = [make_caption(rng, vocab) for _ in range(rng.randint(1, 7))]
        # sometimes copy a reference (exact match), sometimes empty or very short
        r = rng.random()
        if r < 0.1:
            res[img] = [rng.choice(gts[img])]
        elif r < 0.15:
            res[img] = [""]
        elif r < 0.3:
            res[img] = [make_caption(rng, vocab, 1, 3)]
        else:
            res[img] = [make_caption(rng, vocab)]
    return gts, res


def toolkit(gts, res):
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its totals
        b, b_img = coco_bleu.Bleu(4).compute_score(gts, res)
    c, c_img = coco_cider.Cider().compute_score(gts, res)
    r, r_img = coco_rouge.Rouge().compute_score(gts, res)
    return b, b_img, c, c_img, r, r_img


def assert_close(ours, theirs, what):
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, what
    np.testing.assert_allclose(ours, theirs, rtol=REL, atol=0, err_msg=what)


@pytest.mark.parametrize("seed,n_images,vocab", [(1, 1, 20), (2, 2, 10), (3, 7, 15), (4, 60, 40), (5, 300, 200), (6, 40, 5)])
def test_parity_with_toolkit(seed, n_images, vocab):
    gts, res = make_set(seed, n_images, vocab)
    b, b_img, c, c_img, r, r_img = toolkit(gts, res)
    ob, ob_img = cm.bleu(gts, res)
    oc, oc_img = cm.cider(gts, res)
    orr, or_img = cm.rouge_l(gts, res)
    assert_close(ob, b, "corpus BLEU")
    assert_close(ob_img, b_img, "per-image BLEU")
    assert_close(oc, c, "corpus CIDEr")
    assert_close(oc_img, c_img, "per-image CIDEr")
    assert_close(orr, r, "corpus ROUGE-L")
    assert_close(or_img, r_img, "per-image ROUGE-L")
    # evaluate(tokenize="none") is the same computation keyed by image id
    ev = cm.evaluate({k: v for k, v in gts.items()}, {k: v[0] for k, v in res.items()}, tokenize="none")
    assert ev.scores["CIDEr"] == pytest.approx(c, rel=REL, abs=0)
    for i, img in enumerate(gts):
        assert ev.per_image[img]["Bleu_4"] == pytest.approx(b_img[3][i], rel=REL, abs=0)
        assert ev.per_image[img]["ROUGE_L"] == pytest.approx(r_img[i], rel=REL, abs=0)


def test_whitespace_variants_match_toolkit():
    # tokenize="none" input may carry tabs, double spaces, U+3000, U+00A0, leading/trailing spaces: BLEU/CIDEr
    # split like str.split(), ROUGE-L like str.split(" ").
    gts = {
        1: ["a  dog\truns", "a\u00a0dog runs ", " the\u3000dog"],
        2: ["x y z", "x\u2003y z"],
        3: ["", "p q"],
    }
    res = {1: ["a dog  runs"], 2: ["x\u00a0y z"], 3: [" "]}
    b, b_img, c, c_img, r, r_img = toolkit(gts, res)
    assert_close(cm.bleu(gts, res)[1], b_img, "BLEU")
    assert_close(cm.cider(gts, res)[1], c_img, "CIDEr")
    assert_close(cm.rouge_l(gts, res)[1], r_img, "ROUGE-L")


# ---- the quirks of cocoeval.md section 7, with values worked out by hand ----


def test_exact_match_bleu_is_not_one():
    gts = {1: ["a b c d e f g"], 2: ["x y"]}
    res = {1: ["a b c d e f g"], 2: ["q r"]}
    _, per = cm.bleu(gts, res)
    L = 7
    ratio = (L + 1e-15) / (L + 1e-9)
    expected = math.exp(1 - 1 / ratio)  # every p_k = (c+1e-15)/(c+1e-9), here c = guess
    p = 1.0
    for k in range(4):
        p *= (L - k + 1e-15) / (L - k + 1e-9)
        assert per[k][0] == pytest.approx(p ** (1 / (k + 1)) * expected, rel=1e-12)
        assert per[k][0] < 1.0
    assert 1 - 1e-9 < per[3][0] < 1.0  # cocoeval.md: "about 1 - 2e-9/L", never exactly 1


def test_short_candidate_bleu4_not_zero_and_empty_is_zero():
    gts = {1: ["a red bus"], 2: ["a red bus"]}
    res = {1: ["a red bus"], 2: [""]}
    corpus, per = cm.bleu(gts, res)
    # "a red bus": all 3 trigrams... p1=p2=p3~1, p4 = 1e-15/1e-9 = 1e-6 -> BLEU-4 ~ 1e-6^(1/4) = 0.0316
    assert per[3][0] == pytest.approx(1e-6 ** 0.25, rel=1e-6)
    assert [per[k][1] for k in range(4)] == [0.0, 0.0, 0.0, 0.0]  # BP underflows for the empty candidate


def test_single_image_cider_is_zero_and_short_candidate_loses_orders():
    gts = {1: ["a man riding a horse", "a person on a horse"]}
    res = {1: ["a man riding a horse"]}
    c, per = cm.cider(gts, res)
    assert c == 0.0 and per.tolist() == [0.0]
    # Two images with disjoint vocabularies: every idf is log 2; a 3-token exact copy of the only
    # reference gets 10 * (1 + 1 + 1 + 0) / 4 = 7.5 (the missing 4-gram order is not renormalised).
    gts = {1: ["a b c"], 2: ["x y z w"]}
    res = {1: ["a b c"], 2: ["x y z w"]}
    _, per = cm.cider(gts, res)
    assert per.tolist() == pytest.approx([7.5, 10.0], rel=1e-12)


def test_rouge_empty_candidate_and_nbsp():
    # empty candidate: 0, but 1.0 when some reference is empty too ("" matches "")
    gts = {1: ["a b"], 2: ["a b", ""]}
    res = {1: [""], 2: [""]}
    _, per = cm.rouge_l(gts, res)
    assert per.tolist() == [0.0, 1.0]
    # U+00A0 stays inside a ROUGE-L token but splits BLEU tokens
    gts = {1: ["2\u00a01/2 cups"], 2: ["q"]}
    res = {1: ["2 1/2 cups"], 2: ["q"]}
    _, per = cm.rouge_l(gts, res)
    # LCS("2\xa01/2 cups", "2 1/2 cups") = 1 ("cups"): P = 1/3, R = 1/2
    P, R, b2 = 1 / 3, 1 / 2, 1.2**2
    assert per[0] == pytest.approx((1 + b2) * P * R / (R + b2 * P), rel=1e-12)
    _, bper = cm.bleu(gts, res)
    assert bper[0][0] == pytest.approx(1.0, abs=1e-8)  # 3 unigrams, all match


def test_rouge_p_and_r_maximised_separately():
    gts = {1: ["a b c d e f", "a"]}
    res = {1: ["a b"]}
    _, per = cm.rouge_l(gts, res)
    P, R, b2 = 1.0, 1.0, 1.44  # P=2/2 from ref 1, R=1/1 from ref 2
    assert per[0] == pytest.approx((1 + b2) * P * R / (R + b2 * P), rel=1e-12)


def test_bleu_corpus_is_not_mean_of_per_image():
    gts, res = make_set(11, 30)
    corpus, per = cm.bleu(gts, res)
    assert abs(corpus[3] - float(np.mean(per[3]))) > 1e-6


# ---- errors ----


def test_errors_name_the_image():
    refs = {"a": ["x y"], "b": ["z"]}
    with pytest.raises(KeyError, match="'b'"):
        cm.evaluate(refs, {"a": "x"}, tokenize="none")
    with pytest.raises(KeyError, match="'c'"):
        cm.evaluate(refs, {"a": "x", "b": "z", "c": "q"}, tokenize="none")
    with pytest.raises(TypeError, match="'a'"):
        cm.evaluate(refs, {"a": 3, "b": "z"}, tokenize="none")
    with pytest.raises(TypeError, match="'b'"):
        cm.evaluate({"a": ["x"], "b": ["y", None]}, {"a": "x", "b": "z"}, tokenize="none")
    with pytest.raises(ValueError, match="'b'"):
        cm.evaluate({"a": ["x"], "b": []}, {"a": "x", "b": "z"}, tokenize="none")
    with pytest.raises(ValueError, match="'a'"):
        cm.bleu({"a": ["x"]}, {"a": ["x", "y"]})
    with pytest.raises(ValueError, match="metric"):
        cm.evaluate(refs, {"a": "x", "b": "z"}, metrics=("METEOR",), tokenize="none")
    with pytest.raises(ValueError, match="empty"):
        cm.cider({1: [""], 2: [""]}, {1: ["a"], 2: ["b"]})


def test_results_reader_rejects_duplicates(tmp_path):
    p = tmp_path / "res.json"
    p.write_text(json.dumps([{"image_id": 7, "caption": "a"}, {"image_id": 7, "caption": "b"}]))
    with pytest.raises(ValueError, match="7"):
        cm.load_results(str(p))
    p.write_text(json.dumps([{"image_id": 7, "caption": 5}]))
    with pytest.raises(TypeError, match="7"):
        cm.load_results(str(p))


def test_metric_selection():
    gts, res = make_set(21, 10)
    ev = cm.evaluate(gts, {k: v[0] for k, v in res.items()}, metrics=("ROUGE_L",), tokenize="none")
    assert set(ev.scores) == {"ROUGE_L"}
    assert all(set(v) == {"ROUGE_L"} for v in ev.per_image.values())


# ---- end to end: raw captions through the toolkit's pipeline (Java PTBTokenizer, then the scorers) ----

needs_java = pytest.mark.skipif(
    __import__("shutil").which("java") is None,
    reason="java is not installed: the toolkit's PTBTokenizer cannot run (make system-deps installs it)",
)


def raw_set(seed: int, n_images: int):
    from test_ptb_tokenizer import make_caption

    rng = random.Random(seed)
    refs = {i: [make_caption(rng) or "a" for _ in range(rng.randint(1, 7))] for i in range(n_images)}
    cands = {i: make_caption(rng) for i in range(n_images)}
    return refs, cands


@needs_java
def test_evaluate_ptb_equals_toolkit_pipeline():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs, cands = raw_set(5, 200)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in rs] for i, rs in refs.items()})
    res = tok.tokenize({i: [{"caption": c}] for i, c in cands.items()})
    b, b_img, c, c_img, r, r_img = toolkit(gts, res)
    ev = cm.evaluate(refs, cands)  # tokenize="ptb" by default
    expected = {f"Bleu_{k + 1}": b[k] for k in range(4)} | {"CIDEr": c, "ROUGE_L": r}
    for name, value in expected.items():
        assert ev.scores[name] == pytest.approx(value, rel=REL, abs=0), name
    for i, img in enumerate(gts):
        assert ev.per_image[img]["CIDEr"] == pytest.approx(c_img[i], rel=REL, abs=0)
        assert ev.per_image[img]["Bleu_2"] == pytest.approx(b_img[1][i], rel=REL, abs=0)
        assert ev.per_image[img]["ROUGE_L"] == pytest.approx(r_img[i], rel=REL, abs=0)


def test_cli_evaluate_writes_scores(tmp_path):
    ann = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "annotations": [
            {"image_id": 1, "id": 1, "caption": "A man riding a horse on the beach."},
            {"image_id": 1, "id": 2, "caption": "A person rides a brown horse."},
            {"image_id": 2, "id": 3, "caption": "Two dogs playing in the snow!"},
            {"image_id": 3, "id": 4, "caption": "A red bus on a street."},
        ],
    }
    res = [{"image_id": 1, "caption": "a man riding a horse"}, {"image_id": 2, "caption": "two dogs in the snow"}]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "res.json").write_text(json.dumps(res))
    out = tmp_path / "scores.json"
    cmd = [sys.executable, "-m", "captionaura", "evaluate", "--refs", str(tmp_path / "ann.json"),
           "--results", str(tmp_path / "res.json"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    direct = cm.evaluate({1: [a["caption"] for a in ann["annotations"][:2]], 2: [ann["annotations"][2]["caption"]]},
                         {1: res[0]["caption"], 2: res[1]["caption"]})
    assert data["scores"] == direct.scores
    assert [p["image_id"] for p in data["per_image"]] == [1, 2]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    # every annotated image must have a result with --images all: a clear error naming image 3
    proc = subprocess.run(cmd[:-2] + ["--images", "all"], capture_output=True, text=True)
    assert proc.returncode == 2 and "image 3" in proc.stderr
