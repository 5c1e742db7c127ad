"""captionaura.metrics vs pycocoevalcap 1.2 on a COCO-sized evaluation: 5000 images x 5 references.

    .venv/bin/python benchmarks/bench_metrics.py [--images 5000] [--refs 5] [--repeat 3]

1. Scoring only, on the same tokenised input: the toolkit's Bleu(4), Cider() and Rouge() scorer classes vs
   captionaura's C scorers (bleu/cider/rouge_l one by one, and evaluate(tokenize="none"), which scores all
   three in one pass).
2. End to end from raw captions: the toolkit's PTBTokenizer (Java, one call for the references and one for
   the candidates) + the three scorers vs captionaura.metrics.evaluate(tokenize="ptb").
Also checks that both sides give the same numbers (1e-9 relative). Times are wall-clock, best of --repeat
(captionaura) and --toolkit-repeat (pycocoevalcap) runs. captionaura scores images in parallel on --threads
(default: every core); pycocoevalcap is pure Python on one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import shutil
import time

import numpy as np

import captionaura
import captionaura.metrics as cm
from captionaura import ptb

# A COCO-like vocabulary: function words are frequent, content words follow a Zipf law.
FUNCTION = "a a a an the the on of in with and is are at next to near".split()
CONTENT = (
    "man woman person people dog cat bus train plate food pizza table street sign car truck horse beach water "
    "grass field kitchen room bed bathroom toilet sink giraffe elephant zebra bird sky tree building city road "
    "sitting standing riding holding walking eating looking playing parked flying laying white black red blue "
    "green large small young little two three group skateboard surfboard tennis racket ball frisbee clock "
    "umbrella laptop phone computer desk chair couch window snow ski board boat river park bench fence"
).split()
CONTENT += [f"{w}s" for w in CONTENT[:40]]


def coco_caption(rng: random.Random) -> str:
    n = max(6, int(rng.gauss(10.5, 2.0)))
    words = []
    for _ in range(n):
        if rng.random() < 0.4:
            words.append(rng.choice(FUNCTION))
        else:
            words.append(CONTENT[min(int(rng.paretovariate(0.8)) - 1, len(CONTENT) - 1)])
    s = " ".join(words)
    s = s[0].upper() + s[1:]
    r = rng.random()
    if r < 0.5:
        s += "."
    elif r < 0.55:
        s = s.replace(" ", ", ", 1)
    return s


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def toolkit_scores(gts, res):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    with contextlib.redirect_stdout(io.StringIO()):
        b, _ = Bleu(4).compute_score(gts, res)
    c, _ = Cider().compute_score(gts, res)
    r, _ = Rouge().compute_score(gts, res)
    return {**{f"Bleu_{k + 1}": b[k] for k in range(4)}, "CIDEr": c, "ROUGE_L": r}


def timed_toolkit_each(gts, res, repeat: int) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    times = {}
    for name, make in (("BLEU-1..4", lambda: Bleu(4)), ("CIDEr-D", Cider), ("ROUGE-L", Rouge)):
        def run():
            with contextlib.redirect_stdout(io.StringIO()):
                make().compute_score(gts, res)
        times[name] = best_of(run, repeat)[0]
    return times


def check_same(ours: dict[str, float], theirs: dict[str, float], what: str) -> None:
    for k, v in theirs.items():
        if not np.isclose(ours[k], v, rtol=1e-9, atol=0):
            raise SystemExit(f"{what}: {k} differs: captionaura {ours[k]!r} vs toolkit {v!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--refs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs for captionaura")
    ap.add_argument("--toolkit-repeat", type=int, default=2, help="best of this many runs for pycocoevalcap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="captionaura's threads (0: every core)")
    args = ap.parse_args()
    if args.threads:
        captionaura.set_num_threads(args.threads)
    print(f"captionaura threads: {captionaura.get_num_threads()}")

    rng = random.Random(args.seed)
    refs_raw = {i: [coco_caption(rng) for _ in range(args.refs)] for i in range(args.images)}
    cands_raw = {i: coco_caption(rng) for i in range(args.images)}

    # tokenised input shared by both sides (our tokenizer; equal to the Java one, see tests/test_ptb_tokenizer.py)
    flat = ptb.tokenize_batch([c for rs in refs_raw.values() for c in rs])
    gts, pos = {}, 0
    for i, rs in refs_raw.items():
        gts[i] = flat[pos : pos + len(rs)]
        pos += len(rs)
    cand_tok = dict(zip(cands_raw, ptb.tokenize_batch(list(cands_raw.values()))))
    res = {i: [c] for i, c in cand_tok.items()}
    n_tok = sum(len(c.split()) for rs in gts.values() for c in rs) / sum(len(rs) for rs in gts.values())
    print(f"{args.images} images x {args.refs} references, {n_tok:.1f} tokens per reference on average\n")

    rows = []
    # 1. scoring only
    tk_each = timed_toolkit_each(gts, res, args.toolkit_repeat)
    ours_each = {
        "BLEU-1..4": best_of(lambda: cm.bleu(gts, res), args.repeat)[0],
        "CIDEr-D": best_of(lambda: cm.cider(gts, res), args.repeat)[0],
        "ROUGE-L": best_of(lambda: cm.rouge_l(gts, res), args.repeat)[0],
    }
    for name in tk_each:
        rows.append((f"{name} (tokenised input)", tk_each[name], ours_each[name]))
    tk_all = sum(tk_each.values())
    t_all, ev = best_of(lambda: cm.evaluate(gts, cand_tok, tokenize="none"), args.repeat)
    rows.append(("BLEU+CIDEr+ROUGE-L, tokenised (evaluate, one pass)", tk_all, t_all))
    check_same(ev.scores, toolkit_scores(gts, res), "tokenised input")

    # 2. end to end from raw captions
    if shutil.which("java"):
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        def toolkit_e2e():
            tok = PTBTokenizer()
            g = tok.tokenize({i: [{"caption": c} for c in rs] for i, rs in refs_raw.items()})
            r = tok.tokenize({i: [{"caption": c}] for i, c in cands_raw.items()})
            return toolkit_scores(g, r), g, r

        t_tk_e2e, (tk_scores, g_java, r_java) = best_of(toolkit_e2e, args.toolkit_repeat)

        def java_tok():
            tok = PTBTokenizer()
            tok.tokenize({i: [{"caption": c} for c in rs] for i, rs in refs_raw.items()})
            tok.tokenize({i: [{"caption": c}] for i, c in cands_raw.items()})

        t_java_tok, _ = best_of(java_tok, args.toolkit_repeat)
        t_ours_tok, _ = best_of(
            lambda: (ptb.tokenize_batch([c for rs in refs_raw.values() for c in rs]),
                     ptb.tokenize_batch(list(cands_raw.values()))), args.repeat)
        t_ours_e2e, ev_raw = best_of(lambda: cm.evaluate(refs_raw, cands_raw), args.repeat)
        check_same(ev_raw.scores, tk_scores, "end to end")
        same_tokens = g_java == gts and all(r_java[i] == res[i] for i in res)
        rows.append(("PTB tokenisation only (Java jar vs captionaura.ptb)", t_java_tok, t_ours_tok))
        rows.append(("end to end: tokenise + BLEU+CIDEr+ROUGE-L", t_tk_e2e, t_ours_e2e))
        print(f"Java and captionaura tokenisations identical on this set: {same_tokens}")
    else:
        print("java not found: end-to-end comparison with the toolkit's Java tokenizer skipped")

    print("scores (equal to the toolkit within 1e-9 relative): "
          + ", ".join(f"{k} {v:.4f}" for k, v in ev.scores.items()) + "\n")
    w = max(len(r[0]) for r in rows)
    print(f"| {'what':<{w}} | pycocoevalcap (s) | captionaura (s) | speed-up |")
    print(f"|{'-' * (w + 2)}|-------------------|-----------------|----------|")
    for name, tk, ours in rows:
        print(f"| {name:<{w}} | {tk:17.3f} | {ours:15.4f} | {tk / ours:7.1f}x |")


if __name__ == "__main__":
    main()
