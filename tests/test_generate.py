"""Decoding (captionaura.generate) against transformers 5.23 ``generate`` on the tiny random LFM2 fixtures
(tests/reference/make_generate_reference.py), plus sampling, batching, streaming and validation behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import captionaura as ca
from captionaura.generate import GenerationConfig, generate

FIXTURES = Path(__file__).parent / "reference" / "fixtures"
MODELS = ["mixed", "odd", "attn_only"]
N_GREEDY, N_BEAM = 64, 16

GREEDY_CASES = {
    "greedy": dict(min_new_tokens=N_GREEDY),
    "greedy_eos": {},
    "greedy_min_new": dict(min_new_tokens=24),
    "rep": dict(min_new_tokens=N_GREEDY, repetition_penalty=1.5),
    "ngram": dict(min_new_tokens=N_GREEDY, no_repeat_ngram_size=2),
    "rep_ngram": dict(min_new_tokens=N_GREEDY, repetition_penalty=1.3, no_repeat_ngram_size=3),
}
BEAM_CASES = {f"beam_lp{lp}_es{es}": dict(length_penalty=lp, early_stopping=es)
              for lp in (0.7, 1.5) for es in (True, False, "never")}
BEAM_CASES["beam_ngram"] = dict(length_penalty=1.0, early_stopping=False, no_repeat_ngram_size=2,
                                repetition_penalty=1.2)


@pytest.fixture(scope="module", params=MODELS)
def fixture(request):
    model = ca.Lfm2Model.from_pretrained(FIXTURES / "lfm2" / request.param)
    return model, dict(np.load(FIXTURES / "generate" / f"{request.param}.npz"))


def prompts(ref):
    return [ref[f"prompt.{i}"] for i in range(3)]


@pytest.mark.parametrize("case", list(GREEDY_CASES))
def test_greedy_tokens_identical_to_transformers(fixture, case):
    model, ref = fixture
    eos = ref[f"eos.{case}"].tolist()
    for i, p in enumerate(prompts(ref)):
        out = model.generate(p, max_new_tokens=N_GREEDY, eos_token_id=eos, pad_token_id=0, return_scores=True,
                             **GREEDY_CASES[case])
        n = int(ref[f"{case}__len.{i}"][0])
        assert out.lengths.tolist() == [n]
        np.testing.assert_array_equal(out.sequences[0], ref[f"{case}__new.{i}"][0, :n])
        if case == "greedy":
            assert n == N_GREEDY


@pytest.mark.parametrize("case", list(BEAM_CASES))
def test_beam_search_identical_to_transformers(fixture, case):
    model, ref = fixture
    eos = ref[f"eos.{case}"].tolist()
    for i, p in enumerate(prompts(ref)):
        out = model.generate(p, num_beams=4, num_return_sequences=4, max_new_tokens=N_BEAM, eos_token_id=eos,
                             pad_token_id=0, return_scores=True, **BEAM_CASES[case])
        np.testing.assert_array_equal(out.lengths, ref[f"{case}__len.{i}"])
        # transformers pads with `pad_token_id or eos_token_id[0]`: pad id 0 → eos[0]; the whole array must match
        np.testing.assert_array_equal(out.sequences, ref[f"{case}__new.{i}"])
        np.testing.assert_allclose(out.sequences_scores, ref[f"{case}__scores.{i}"], atol=1e-4, rtol=0)


def test_early_stopping_settings_differ_in_the_fixtures():
    """Guards the fixtures themselves: True / False / "never" must lead to different beams somewhere, and
    early_stopping=False must stop before max_new_tokens somewhere (the heuristic is exercised)."""
    refs = [np.load(FIXTURES / "generate" / f"{m}.npz") for m in MODELS]
    lens = {es: [r[f"beam_lp1.5_es{es}__len.{i}"] for r in refs for i in range(3)] for es in (True, False, "never")}
    assert any(not np.array_equal(a, b) for a, b in zip(lens[True], lens[False]))
    assert any(not np.array_equal(a, b) for a, b in zip(lens[False], lens["never"]))
    assert any(a.max() < N_BEAM for a in lens[False])


@pytest.mark.parametrize("padding", ["left", "right"])
def test_batch_equals_one_by_one(fixture, padding):
    """A padded batch (each row unpadded internally) gives transformers' one-by-one results, rows that stop
    early padded with pad_token_id."""
    model, ref = fixture
    ps = prompts(ref)
    T = max(len(p) for p in ps)
    ids = np.full((3, T), 0, np.int32)
    mask = np.zeros((3, T), np.int32)
    for i, p in enumerate(ps):
        sl = slice(T - len(p), T) if padding == "left" else slice(0, len(p))
        ids[i, sl], mask[i, sl] = p, 1
    eos = ref["eos.greedy_eos"].tolist()
    out = model.generate(ids, mask, max_new_tokens=N_GREEDY, eos_token_id=eos, pad_token_id=0, return_scores=True)
    lengths = [int(ref[f"greedy_eos__len.{i}"][0]) for i in range(3)]
    assert out.lengths.tolist() == lengths
    assert out.sequences.shape == (3, max(lengths))
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(out.sequences[i, :n], ref[f"greedy_eos__new.{i}"][0, :n])
        assert (out.sequences[i, n:] == 0).all()
    # our own batch of the 64-token greedy case equals our one-by-one runs too
    full = model.generate(ids, mask, max_new_tokens=N_GREEDY, min_new_tokens=N_GREEDY, eos_token_id=2)
    for i, p in enumerate(ps):
        np.testing.assert_array_equal(full[i], model.generate(p, max_new_tokens=N_GREEDY, min_new_tokens=N_GREEDY,
                                                              eos_token_id=2)[0])


def test_eos_stops_and_min_new_tokens_holds(fixture):
    model, ref = fixture
    p = prompts(ref)[2]
    free = model.generate(p, max_new_tokens=20, min_new_tokens=20, eos_token_id=2)[0]
    eos = int(free[3])  # a token greedy decoding emits at step 3
    first = int(np.flatnonzero(free == eos)[0])
    stopped = model.generate(p, max_new_tokens=20, eos_token_id=eos, pad_token_id=0)[0]
    assert len(stopped) == first + 1 and stopped[-1] == eos
    held = model.generate(p, max_new_tokens=20, min_new_tokens=10, eos_token_id=eos, pad_token_id=0)[0]
    assert len(held) >= 10 and eos not in held[:10].tolist()
    assert model.generate(p, max_new_tokens=0, eos_token_id=2).shape == (1, 0)


# ---- sampling ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed():
    return ca.Lfm2Model.from_pretrained(FIXTURES / "lfm2" / "mixed")


PROMPT = np.array([5, 17, 42, 99, 7, 250], np.int32)


def test_seeded_sampling_is_reproducible(mixed):
    kw = dict(do_sample=True, temperature=1.5, top_k=0, max_new_tokens=32, min_new_tokens=32, eos_token_id=2)
    a = mixed.generate(PROMPT, seed=7, **kw)
    b = mixed.generate(PROMPT, seed=7, **kw)
    c = mixed.generate(PROMPT, seed=8, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = mixed.generate(PROMPT, max_new_tokens=32, min_new_tokens=32, eos_token_id=2)
    assert not np.array_equal(a, greedy)
    # top_k = 1 leaves one token: sampling becomes greedy
    np.testing.assert_array_equal(mixed.generate(PROMPT, seed=3, **{**kw, "top_k": 1}), greedy)
    # num_return_sequences copies draw from different streams
    rows = mixed.generate(PROMPT, seed=7, num_return_sequences=3, **kw)
    assert rows.shape == (3, 32) and len({r.tobytes() for r in rows}) == 3


def reference_warp(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float | None):
    """transformers' warpers written from their documented math (float64): which tokens survive."""
    s = logits.astype(np.float64) / temperature
    keep = np.ones_like(s, bool)
    if top_k:
        keep &= s >= np.sort(s)[::-1][top_k - 1]
    s = np.where(keep, s, -np.inf)
    if top_p < 1:
        order = np.argsort(s, kind="stable")
        p = np.exp(s[order] - s.max())
        p /= p.sum()
        drop = np.cumsum(p) <= 1 - top_p
        drop[-1] = False
        keep[order[drop]] = False
    s = np.where(keep, s, -np.inf)
    if min_p is not None:
        p = np.exp(s - s.max())
        p /= p.sum()
        low = p < min_p * p.max()
        low[np.argmax(p)] = False
        keep &= ~low
    return keep


@pytest.mark.parametrize("settings", [dict(top_k=7), dict(top_k=0, top_p=0.3), dict(top_k=0, min_p=0.5),
                                      dict(temperature=0.7, top_k=20, top_p=0.8, min_p=0.1)])
def test_sampling_support_matches_the_warpers(mixed, settings):
    """Each step's surviving tokens (finite processed scores) are exactly what top_k/top_p/min_p keep of the
    full-recomputation logits, and the sampled token is one of them."""
    kw = dict(do_sample=True, temperature=1.0, max_new_tokens=8, min_new_tokens=8, eos_token_id=2, seed=11)
    kw.update(settings)
    out = mixed.generate(PROMPT, return_scores=True, **kw)
    seq = np.concatenate([PROMPT, out.sequences[0]])
    for step in range(8):
        logits = mixed.forward(seq[: len(PROMPT) + step]).logits[0, -1]
        keep = reference_warp(logits, kw["temperature"], kw["top_k"], kw.get("top_p", 1.0), kw.get("min_p"))
        got = np.isfinite(out.scores[0, step])
        np.testing.assert_array_equal(got, keep)
        assert got[out.sequences[0, step]]
        np.testing.assert_allclose(out.scores[0, step][got], logits[got] / kw["temperature"], atol=1e-4, rtol=0)


def test_sampling_frequencies_follow_the_distribution(mixed):
    """4000 independent first-token draws (one batch, one stream per row) with top_k = 4: empirical
    frequencies within 4 standard errors of softmax(top-4 logits / T)."""
    n, T = 4000, 0.5
    logits = mixed.forward(PROMPT).logits[0, -1].astype(np.float64)
    top = np.argsort(logits)[::-1][:4]
    p = np.exp((logits[top] - logits[top].max()) / T)
    p /= p.sum()
    ids = np.tile(PROMPT, (n, 1))
    draws = mixed.generate(ids, do_sample=True, temperature=T, top_k=4, max_new_tokens=1, eos_token_id=2,
                           seed=2024)[:, 0]
    assert set(draws.tolist()) <= set(top.tolist())
    freq = np.array([(draws == t).mean() for t in top])
    se = np.sqrt(p * (1 - p) / n)
    assert (np.abs(freq - p) <= 4 * se + 1e-9).all(), (freq, p)


def test_repetition_penalty_demotes_seen_tokens(mixed):
    """Penalised greedy step scores: a seen token's logit s becomes s·θ (s < 0) or s/θ, others unchanged."""
    out = mixed.generate(PROMPT, max_new_tokens=1, eos_token_id=2, repetition_penalty=2.0, return_scores=True)
    logits = mixed.forward(PROMPT).logits[0, -1]
    expect = logits.copy()
    seen = np.unique(PROMPT)
    expect[seen] = np.where(logits[seen] < 0, logits[seen] * 2.0, logits[seen] / 2.0)
    np.testing.assert_allclose(out.scores[0, 0], expect, atol=1e-4, rtol=0)


# ---- streaming, callbacks, stop strings --------------------------------------------------------------------

def test_streaming_yields_the_same_tokens(mixed):
    ids = np.array([[0, 0, 3, 4, 5], [6, 7, 8, 9, 10]], np.int32)
    mask = (np.arange(5) >= np.array([[2], [0]])).astype(np.int32)
    kw = dict(max_new_tokens=12, eos_token_id=2)
    full = mixed.generate(ids, mask, **kw)
    rows: list[list[int]] = [[], []]
    for row, tok in mixed.generate(ids, mask, stream=True, **kw):
        rows[row].append(tok)
    for r in range(2):
        np.testing.assert_array_equal(rows[r], full[r, : len(rows[r])])
        assert len(rows[r]) == 12
    # closing the stream early stops the worker
    it = mixed.generate(PROMPT, stream=True, max_new_tokens=50, min_new_tokens=50, eos_token_id=2)
    first = [next(it) for _ in range(3)]
    it.close()
    assert [t for _, t in first] == full_prompt_greedy(mixed)[:3]


def test_closing_a_stream_ends_the_decoding_and_hooks_still_stop_rows(mixed):
    produced = []
    it = mixed.generate(PROMPT, stream=True, max_new_tokens=4000, min_new_tokens=4000, eos_token_id=2,
                        callback=lambda row, token: produced.append(token))
    assert len([next(it) for _ in range(3)]) == 3
    it.close()  # returns once the decoding thread has ended
    assert 3 <= len(produced) < 4000
    # a hook (here the callback) still ends its row at the token it returns true for
    greedy = full_prompt_greedy(mixed)
    stop = greedy[4]
    streamed = [t for _, t in mixed.generate(PROMPT, stream=True, max_new_tokens=20, min_new_tokens=20,
                                             eos_token_id=2, callback=lambda row, token: token == stop)]
    assert streamed == greedy[: greedy.index(stop) + 1]


def full_prompt_greedy(model):
    return model.generate(PROMPT, max_new_tokens=50, min_new_tokens=50, eos_token_id=2)[0].tolist()


def test_callback_can_stop_and_errors_propagate(mixed):
    seen = []

    def stop_after_five(row, tok):
        seen.append(tok)
        return len(seen) >= 5

    out = mixed.generate(PROMPT, max_new_tokens=20, min_new_tokens=20, eos_token_id=2, callback=stop_after_five)
    assert out.shape == (1, 5) and out[0].tolist() == seen

    def boom(row, tok):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        mixed.generate(PROMPT, max_new_tokens=4, eos_token_id=2, callback=boom)
    # the model is usable afterwards (the lock was released)
    assert mixed.generate(PROMPT, max_new_tokens=2, eos_token_id=2).shape == (1, 2)


class CharTokenizer:
    """Token t decodes to one character: enough to exercise stop strings at token boundaries."""

    def decode(self, ids):
        return "".join(chr(ord("a") + t % 26) for t in ids)


def test_stop_strings(mixed):
    base = full_prompt_greedy(mixed)
    text = CharTokenizer().decode(base)
    stop = text[6:8]
    end = text.find(stop) + len(stop)
    out = mixed.generate(PROMPT, max_new_tokens=50, min_new_tokens=50, eos_token_id=2, stop_strings=[stop],
                         tokenizer=CharTokenizer())
    assert out[0].tolist() == base[:end]
    with pytest.raises(ValueError, match="tokenizer"):
        mixed.generate(PROMPT, max_new_tokens=5, stop_strings="x")


# ---- configuration -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(max_new_tokens=-1), dict(num_beams=0), dict(top_p=0.0), dict(top_p=1.5),
                                 dict(do_sample=True, temperature=0.0), dict(do_sample=True, temperature=-1.0),
                                 dict(top_k=-2), dict(repetition_penalty=0.0), dict(early_stopping="sometimes"),
                                 dict(num_beams=2, num_return_sequences=3), dict(min_p=1.5),
                                 dict(num_return_sequences=2)])
def test_bad_settings_raise(mixed, bad):
    with pytest.raises(ValueError):
        GenerationConfig(**bad)
    with pytest.raises(ValueError):
        mixed.generate(PROMPT, **bad)


def test_generation_config_from_pretrained(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [7, 2], "pad_token_id": 0, "temperature": 0.3, "min_p": 0.15,
         "repetition_penalty": 1.05, "do_sample": True, "top_k": None, "transformers_version": "5.23.0"}))
    g = GenerationConfig.from_pretrained(tmp_path)
    assert (g.eos_ids(), g.pad_token_id, g.temperature, g.min_p, g.do_sample) == ([7, 2], 0, 0.3, 0.15, True)
    assert (g.top_k, g.top_p, g.num_beams, g.max_length) == (50, 1.0, 1, 20)  # transformers' defaults
    g2 = GenerationConfig.from_pretrained(FIXTURES / "lfm2" / "mixed")  # no generation_config.json: config ids
    assert (g2.eos_ids(), g2.pad_token_id, g2.bos_token_id) == ([2], 0, 1)


def test_default_max_length_counts_the_prompt(mixed):
    # transformers' default max_length = 20 includes the prompt
    assert mixed.generate(PROMPT, min_new_tokens=30, eos_token_id=2).shape == (1, 20 - len(PROMPT))
    g = GenerationConfig(max_new_tokens=3, min_new_tokens=3, eos_token_id=2)
    assert generate(mixed, PROMPT, generation=g).shape == (1, 3)


def test_streamed_beams_are_rejected(mixed):
    with pytest.raises(ValueError):
        mixed.generate(PROMPT, num_beams=2, max_new_tokens=3, stream=True)
    with pytest.raises(ValueError):
        mixed.generate(PROMPT, num_beams=2, do_sample=True, max_new_tokens=3, stream=True)


# ---- beam sampling (do_sample with num_beams > 1) ----------------------------------------------------------

BEAM_SAMPLE = dict(do_sample=True, num_beams=3, num_return_sequences=3, max_new_tokens=12, eos_token_id=2,
                   top_k=0, temperature=1.3, length_penalty=1.2)


def test_beam_sampling_is_reproducible(mixed):
    a = mixed.generate(PROMPT, seed=5, return_scores=True, **BEAM_SAMPLE)
    b = mixed.generate(PROMPT, seed=5, return_scores=True, **BEAM_SAMPLE)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.sequences_scores, b.sequences_scores)
    others = [mixed.generate(PROMPT, seed=s, **BEAM_SAMPLE) for s in (6, 7, 8)]
    assert any(o.shape != a.sequences.shape or not np.array_equal(o, a.sequences) for o in others)
    plain = mixed.generate(PROMPT, **{**BEAM_SAMPLE, "do_sample": False})
    assert any(o.shape != plain.shape or not np.array_equal(o, plain) for o in [a.sequences, *others])
    # returned hypotheses come best first; each prompt of a batch has its own stream, so the batch equals
    # one-by-one decoding only for the first prompt; a repeated batch is reproducible
    assert (np.diff(a.sequences_scores) <= 0).all()
    ids = np.tile(PROMPT, (2, 1))
    batch = mixed.generate(ids, seed=5, **BEAM_SAMPLE)
    np.testing.assert_array_equal(batch[:3, : a.sequences.shape[1]], a.sequences)
    np.testing.assert_array_equal(batch, mixed.generate(ids, seed=5, **BEAM_SAMPLE))


@pytest.mark.parametrize("case", ["beam_lp0.7_esTrue", "beam_lp1.5_esFalse", "beam_lp1.5_esnever", "beam_ngram"])
def test_beam_sampling_at_low_temperature_is_beam_search(fixture, case):
    """At T → 0 the draws follow the score order, so beam sampling returns transformers' plain beam search
    sequences; its scores accumulate log p / T, i.e. T · score equals the beam score."""
    model, ref = fixture
    T = 1e-4
    eos = ref[f"eos.{case}"].tolist()
    for i, p in enumerate(prompts(ref)):
        out = model.generate(p, num_beams=4, num_return_sequences=4, max_new_tokens=N_BEAM, eos_token_id=eos,
                             pad_token_id=0, return_scores=True, do_sample=True, temperature=T, top_k=0, seed=i,
                             **BEAM_CASES[case])
        np.testing.assert_array_equal(out.lengths, ref[f"{case}__len.{i}"])
        np.testing.assert_array_equal(out.sequences, ref[f"{case}__new.{i}"])
        np.testing.assert_allclose(out.sequences_scores * T, ref[f"{case}__scores.{i}"], atol=1e-4, rtol=1e-5)


def test_beam_sampling_keeps_two_tokens_per_beam_at_top_k_1(mixed):
    """transformers raises top_k to min_tokens_to_keep = max(2, 1 + n_eos) for beams: with top_k = 1 and one
    eos id, the first step's two hypotheses are exactly the two most likely tokens, whatever the seed."""
    logits = mixed.forward(PROMPT).logits[0, -1].astype(np.float64)
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    top2 = np.argsort(logits)[::-1][:2]
    for seed in range(5):
        out = mixed.generate(PROMPT, do_sample=True, num_beams=2, num_return_sequences=2, max_new_tokens=1,
                             top_k=1, eos_token_id=2, seed=seed, return_scores=True)
        np.testing.assert_array_equal(out.sequences[:, 0], top2)  # best first
        np.testing.assert_allclose(out.sequences_scores, logp[top2], atol=1e-5, rtol=0)


def test_beam_sampling_draws_candidates_without_replacement(mixed):
    """One step, 2 beams, top_k = 4, 3000 prompts (one stream each): the returned pair of tokens is the first two
    draws without replacement from p = softmax(top-4 log p / T), so P({a, b}) = p_a p_b (1/(1 − p_a) +
    1/(1 − p_b)). Pearson's chi-square over the 6 pairs (5 degrees of freedom) stays below the 0.1 % critical
    value 20.52; the hypotheses' scores are their warped log-probabilities."""
    n, T = 3000, 2.0
    logits = mixed.forward(PROMPT).logits[0, -1].astype(np.float64)
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    top = np.argsort(logits)[::-1][:4]
    p = np.exp(logp[top] / T - (logp[top] / T).max())
    p /= p.sum()
    out = mixed.generate(np.tile(PROMPT, (n, 1)), do_sample=True, num_beams=2, num_return_sequences=2,
                         max_new_tokens=1, top_k=4, temperature=T, eos_token_id=2, seed=99, return_scores=True)
    pairs = out.sequences[:, 0].reshape(n, 2)
    assert set(pairs.ravel().tolist()) <= set(top.tolist())
    assert (pairs[:, 0] != pairs[:, 1]).all()
    np.testing.assert_allclose(out.sequences_scores, logp[out.sequences[:, 0]] / T, atol=1e-5, rtol=0)
    rank = {int(t): r for r, t in enumerate(top)}
    observed, expected = [], []
    for a in range(4):
        for b in range(a + 1, 4):
            got = sum(1 for x, y in pairs if {rank[int(x)], rank[int(y)]} == {a, b})
            observed.append(got)
            expected.append(n * p[a] * p[b] * (1 / (1 - p[a]) + 1 / (1 - p[b])))
    observed, expected = np.array(observed), np.array(expected)
    assert expected.min() > 20  # the test has power over every pair
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 20.52, (observed, expected.round(1), chi2)


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.2),
                                 dict(min_p=-0.1), dict(num_return_sequences=3)])
def test_beam_sampling_bad_settings_raise(mixed, bad):
    kw = dict(do_sample=True, num_beams=2, max_new_tokens=3, eos_token_id=2, **bad)
    with pytest.raises(ValueError):
        mixed.generate(PROMPT, **kw)
