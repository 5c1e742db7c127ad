"""Federated LoRA of a whole captioner: when the LoRA config adapts the vision tower and the projector, their
adapters join the federated vector (the order of ``Lfm2VlModel.lora_vector``), clients train them through the
frozen tower, and every aggregation path (FedAvg, FFA-LoRA, FedEx-LoRA, secure aggregation, DP) works on
that vector. Expected values are computed here in NumPy from the clients' vectors."""

from __future__ import annotations

import numpy as np
import pytest

import captionaura as ca
from captionaura import federated as fl
from captionaura.federated import FederatedClient, Simulation
from captionaura.vl import PROJECTOR_MODULE_PREFIX, TOWER_MODULE_PREFIX

VISION_LORA = ca.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]
WORDS = ["red kite", "green field", "blue sea"]


def captioner_clients(model: ca.Lfm2VlModel) -> list[FederatedClient]:
    """Client c holds c + 1 photos of its colour captioned with its words (unequal FedAvg weights)."""
    rng = np.random.default_rng(0)
    out = []
    for c, colour in enumerate(COLOURS):
        examples = []
        for _ in range(c + 1):
            image = np.clip(np.full((48, 64, 3), colour) + rng.normal(0, 8, (48, 64, 3)), 0, 255)
            examples.append(model.caption_example(image.astype(np.uint8), f"a {WORDS[c]} #aura"))
        out.append(FederatedClient(c, examples))
    return out


def capturing(sim: Simulation) -> list:
    """Record every (vector, num_examples) message the clients hand to the server."""
    sent = []
    original = sim._aggregate

    def capture(round_, updates, ids):
        sent.append([(v.copy(), w) for v, w in updates])
        return original(round_, updates, ids)

    sim._aggregate = capture
    return sent


def simulate(model: ca.Lfm2VlModel, rounds: int = 1, **kw) -> tuple[Simulation, list]:
    args = dict(rounds=rounds, local_steps=2, batch_size=2, progressbar=False,
                optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0))
    args.update(kw)
    sim = Simulation(model, captioner_clients(model), VISION_LORA, **args)
    return sim, capturing(sim)


def vision_modules(model: ca.Lfm2VlModel) -> list[dict]:
    return [m for m in model.lora_modules() if m["module"].startswith((TOWER_MODULE_PREFIX, PROJECTOR_MODULE_PREFIX))]


def factors(m: dict, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, fin, fout = m["r"], m["in_features"], m["out_features"]
    A = vec[m["a_offset"]: m["a_offset"] + r * fin].reshape(r, fin).astype(np.float64)
    B = vec[m["b_offset"]: m["b_offset"] + fout * r].reshape(fout, r).astype(np.float64)
    return B, A


@pytest.fixture
def fresh(tiny_captioner_dir) -> ca.Lfm2VlModel:
    """A captioner of its own (FedEx rewrites base weights; the shared fixture must stay pristine)."""
    return ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir)


def test_a_round_trains_the_vision_adapters_and_is_the_fedavg_of_the_clients(fresh):
    vision_before = {k: v.copy() for k, v in fresh.vision.parameters().items()}
    sim, sent = simulate(fresh)
    start = sim.global_vector.copy()
    assert start.size == fresh.lora_vector().size > fresh.text.lora_vector().size
    sim.run()
    (updates,) = sent
    total = sum(w for _, w in updates)
    expected = sum(v.astype(np.float64) * (w / total) for v, w in updates)
    np.testing.assert_allclose(sim.global_vector, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fresh.lora_vector(), sim.global_vector)
    modules = vision_modules(fresh)
    assert {m["module"].split(".")[1] for m in modules} == {"vision_tower", "multi_modal_projector"}
    for m in modules:  # gradients reached every tower and projector adapter (B starts at zero)
        B, A = factors(m, sim.global_vector)
        B0, A0 = factors(m, start)
        assert not np.array_equal(B, B0) and not np.array_equal(A, A0), m["module"]
    for k, v in fresh.vision.parameters().items():  # the base tower stays frozen
        np.testing.assert_array_equal(v, vision_before[k])


def test_ffa_keeps_every_vision_a_at_its_shared_seed_init(fresh):
    sim, sent = simulate(fresh, rounds=2, lora_aggregation="ffa")
    start = sim.global_vector.copy()
    history = sim.run()
    for m in fresh.lora_modules():
        B, A = factors(m, sim.global_vector)
        B0, A0 = factors(m, start)
        np.testing.assert_array_equal(A, A0)
        for updates in sent:  # the clients did not move A either
            np.testing.assert_array_equal(factors(m, updates[0][0])[1], A0)
        assert np.abs(B).max() > 0, m["module"]
        assert history[-1].aggregation_error[m["module"]] < 1e-5  # a shared A makes mean(B)·A exact


def test_fedex_folds_the_exact_residual_into_vision_base_weights(fresh):
    targets = [TOWER_MODULE_PREFIX + "encoder.layers.0.mlp.fc1", TOWER_MODULE_PREFIX + "embeddings.patch_embedding",
               PROJECTOR_MODULE_PREFIX + "linear_2"]
    names = {t: t.replace(TOWER_MODULE_PREFIX, TOWER_MODULE_PREFIX + "vision_model.") + ".weight" for t in targets}
    before = {t: fresh.parameters()[names[t]].astype(np.float64) for t in targets}
    sim, sent = simulate(fresh, lora_aggregation="fedex")
    sim.run()
    (updates,) = sent
    p = np.array([w for _, w in updates]) / sum(w for _, w in updates)
    by_name = {m["module"]: m for m in fresh.lora_modules()}
    for t in targets:
        m = by_name[t]
        pairs = [factors(m, v) for v, _ in updates]
        exact = sum(pk * (B @ A) for pk, (B, A) in zip(p, pairs))
        mean_B = sum(pk * B for pk, (B, _) in zip(p, pairs))
        mean_A = sum(pk * A for pk, (_, A) in zip(p, pairs))
        residual = m["scaling"] * (exact - mean_B @ mean_A)
        assert np.abs(residual).max() > 1e-6  # averaging A and B separately is not exact here
        np.testing.assert_allclose(sim.base_residual[t], residual, rtol=0, atol=1e-6)
        np.testing.assert_allclose(fresh.parameters()[names[t]], before[t] + residual, rtol=0, atol=1e-6)
        assert sim.history[0].aggregation_error[t] < 1e-5


def test_secure_aggregation_and_dp_work_on_the_whole_captioner_vector(fresh, tiny_captioner_dir):
    plain, _ = simulate(fresh)
    plain.run()
    secure, _ = simulate(ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir),
                         secure_aggregation=fl.SecAggConfig(threshold=2, max_weight=4.0, clipping_range=2.0,
                                                                 stochastic_rounding=False))
    secure.run()
    np.testing.assert_allclose(secure.global_vector, plain.global_vector, atol=2e-5)
    dp, sent = simulate(ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir),
                        dp=fl.DPConfig(noise_multiplier=0.0, clipping_norm=1e-3))
    start = dp.global_vector.copy()
    dp.run()
    # every client's delta over the whole vector (text and vision) is clipped to 1e-3, so is their mean
    assert all(np.linalg.norm(v - start) > 1e-3 for v, _ in sent[0])
    assert np.linalg.norm(dp.global_vector - start) <= 1e-3 * (1 + 1e-4)
    assert np.abs(dp.global_vector - start)[fresh.text.lora_vector().size:].max() > 0


def test_only_adapter_vectors_leave_captioner_clients(fresh):
    """What a client sends is a float vector of the whole adapter's size: no pixels, caption text or
    token ids, as bytes or values (the privacy property, on the captured messages)."""
    sim, sent = simulate(fresh)
    sim.run()
    n = fresh.lora_vector().size
    examples = [e for c in captioner_clients(fresh) for e in c.train]
    for vector, num_examples in sent[0]:
        assert isinstance(vector, np.ndarray) and vector.dtype == np.float32 and vector.shape == (n,)
        assert isinstance(num_examples, float)
        raw = vector.tobytes()
        for e in examples:
            assert e["input_ids"].astype(np.int32).tobytes() not in raw
            assert np.asarray(e["pixel_values"], np.float32).reshape(-1)[:64].tobytes() not in raw
        for words in WORDS:
            assert words.encode() not in raw


def test_the_global_captioner_adapter_saves_in_pefts_format_and_reloads(fresh, tiny_captioner_dir, tmp_path):
    sim, _ = simulate(fresh)
    sim.run()
    sim.save_adapter(tmp_path / "adapter")
    header = {name for name, *_ in ca._core.safetensors_header(str(tmp_path / "adapter" / "adapter_model.safetensors"))}
    assert any(k.startswith("base_model.model.model.vision_tower.encoder.layers.0.") for k in header)
    assert "base_model.model.model.multi_modal_projector.linear_1.lora_B.weight" in header
    loaded = ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir)
    loaded.load_adapter(tmp_path / "adapter")
    np.testing.assert_array_equal(loaded.lora_vector(), sim.global_vector)
    example = sim.clients[0].train[0]
    batch = {k: example[k][None] if k in ("input_ids",) else example[k] for k in example if k != "labels"}
    np.testing.assert_allclose(loaded(**batch).logits, fresh(**batch).logits, rtol=0, atol=1e-5)


def test_fedprox_term_spans_the_language_model_and_vision_buffers(fresh):
    """FedProx's μ/2·‖w − w_t‖² and its gradient μ·(w − w_t) over the whole captioner vector."""
    sim, _ = simulate(fresh, strategy=fl.FedProx(proximal_mu=0.5))
    delta = np.random.default_rng(2).normal(0, 0.1, sim.global_vector.size).astype(np.float32)
    fresh.set_lora_vector(sim.global_vector + delta)
    for _, grads in fresh.lora_buffers():
        grads[:] = 0.0
    term = sim._proximal(0.5)
    moved = (sim.global_vector + delta).astype(np.float64) - sim.global_vector
    assert term == pytest.approx(0.25 * float(moved @ moved), rel=1e-5)
    grads = np.concatenate([g for _, g in fresh.lora_buffers()])
    np.testing.assert_allclose(grads, 0.5 * moved, rtol=1e-5, atol=1e-7)
    history = sim.run()  # and a FedProx round trains the captioner
    assert np.isfinite(history[0].train_loss)
