"""Federated LoRA simulation: rounds reduce the loss, LoRA-aware aggregation, secure aggregation with
dropouts, differential privacy, FedProx, robust strategies, exact resume, and what leaves a client."""

from __future__ import annotations

import numpy as np
import pytest

import captionaura as ca
from captionaura import federated as fl
from captionaura.federated import FederatedClient, Simulation


def base_model() -> ca.Lfm2Model:
    cfg = ca.Lfm2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, block_auto_adjust_ff_dim=False,
                        layer_types=["conv", "full_attention"], initializer_range=0.3)
    return ca.Lfm2Model.from_config(cfg, seed=0)


def make_clients(k: int = 4, n: int = 6) -> list[FederatedClient]:
    rng = np.random.default_rng(1)
    shared = rng.integers(20, 48, 5)  # every client's captions share a style, plus its own words
    out = []
    for c in range(k):
        examples = []
        for _ in range(n):
            ids = np.concatenate([[1, 2, 3], shared, rng.integers(4, 20, 3)]).astype(np.int32)
            labels = ids.copy()
            labels[:3] = -100
            examples.append({"input_ids": ids, "labels": labels})
        out.append(FederatedClient(c, examples))
    return out


LORA = ca.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "in_proj", "w1", "w2"])


def simulate(**kw) -> tuple[Simulation, list]:
    args = dict(rounds=3, local_steps=4, batch_size=3, optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0),
                progressbar=False)
    args.update(kw)
    sim = Simulation(base_model(), make_clients(), LORA, **args)
    return sim, sim.run()


def test_fedavg_rounds_reduce_loss_and_report():
    sim, history = simulate()
    assert [r.round for r in history] == [1, 2, 3]
    assert history[-1].train_loss < history[0].train_loss
    n = sim.global_vector.size
    assert history[0].bytes_sent == history[0].bytes_received == 4 * n * 4
    assert set(history[0].aggregation_error) == {m["module"] for m in sim.model.lora_modules()}
    assert all(0 <= e < 1 for e in history[-1].aggregation_error.values())


def test_ffa_keeps_a_and_is_exact():
    sim, history = simulate(lora_aggregation="ffa")
    start = base_model()
    start.add_lora(LORA, seed=0)
    for m in sim.model.lora_modules():
        a = slice(m["a_offset"], m["a_offset"] + m["r"] * m["in_features"])
        np.testing.assert_array_equal(sim.global_vector[a], start.lora_vector()[a])
    assert max(max(r.aggregation_error.values()) for r in history) < 1e-5


def test_exact_refactorisation_beats_naive_averaging():
    _, naive = simulate(rounds=1)
    _, exact = simulate(rounds=1, lora_aggregation="exact")
    assert np.mean(list(exact[0].aggregation_error.values())) < np.mean(list(naive[0].aggregation_error.values()))


# weights n_k/max_weight scale the deltas before fixed-point quantisation: size both to the data
SECAGG = fl.SecAggConfig(threshold=3, max_weight=8.0, clipping_range=2.0, stochastic_rounding=False)


def test_secure_aggregation_equals_plain_fedavg_and_survives_dropouts():
    plain, _ = simulate(rounds=1)
    secure, _ = simulate(rounds=1, secure_aggregation=SECAGG)
    np.testing.assert_allclose(secure.global_vector, plain.global_vector, atol=2e-5)
    dropped, history = simulate(rounds=1, secure_aggregation=SECAGG, dropouts=lambda rnd, ids: [ids[-1]])
    assert history[0].clients == [0, 1, 2, 3] and history[0].num_examples == 18  # the survivors' examples only
    survivors = Simulation(base_model(), make_clients()[:3], LORA, rounds=1, local_steps=4, batch_size=3,
                           optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0), progressbar=False)
    survivors.run()  # plain FedAvg over the three survivors only
    np.testing.assert_allclose(dropped.global_vector, survivors.global_vector, atol=2e-5)


def test_robust_strategy_cannot_use_secure_aggregation():
    with pytest.raises(ValueError, match="secure aggregation"):
        Simulation(base_model(), make_clients(), LORA, strategy=fl.FedMedian(),
                   secure_aggregation=fl.SecAggConfig(threshold=2), progressbar=False)


def test_central_dp_reports_growing_epsilon():
    _, history = simulate(dp=fl.DPConfig(noise_multiplier=1.0, clipping_norm=0.5, population=8), fraction_fit=0.5)
    eps = [r.metrics["epsilon"] for r in history]
    assert all(np.isfinite(eps)) and eps[0] < eps[1] < eps[2]


def test_fedprox_and_fedadam_run():
    _, h1 = simulate(strategy=fl.FedProx(proximal_mu=0.1))
    _, h2 = simulate(strategy=fl.FedAdam(eta=1e-2))
    assert h1[-1].train_loss < h1[0].train_loss and np.isfinite(h2[-1].train_loss)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    kw = dict(strategy=fl.FedAdam(eta=1e-2), dp=fl.DPConfig(noise_multiplier=0.5, clipping_norm=1.0))
    straight, _ = simulate(rounds=3, output_dir=str(tmp_path / "a"), **kw)
    first = Simulation(base_model(), make_clients(), LORA, rounds=3, local_steps=4, batch_size=3,
                       optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0), progressbar=False,
                       output_dir=str(tmp_path / "b"), strategy=fl.FedAdam(eta=1e-2),
                       dp=fl.DPConfig(noise_multiplier=0.5, clipping_norm=1.0))
    first.rounds = 2  # killed after round 2
    first.run()
    resumed = Simulation(base_model(), make_clients(), LORA, rounds=3, local_steps=4, batch_size=3,
                         optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0), progressbar=False,
                         output_dir=str(tmp_path / "b"), strategy=fl.FedAdam(eta=1e-2),
                         dp=fl.DPConfig(noise_multiplier=0.5, clipping_norm=1.0))
    history = resumed.run(resume=True)
    assert [r.round for r in history] == [1, 2, 3]
    np.testing.assert_array_equal(resumed.global_vector, straight.global_vector)


def test_a_hundred_clients_share_one_base_model():
    clients = [FederatedClient(i, make_clients(1, 2)[0].train) for i in range(100)]
    sim = Simulation(base_model(), clients, LORA, rounds=1, local_steps=1, fraction_fit=0.1, progressbar=False)
    history = sim.run()
    assert len(history[0].clients) == 10
    assert len(sim.client_state) == 10  # optimiser state only for clients that trained


def test_only_adapter_vectors_leave_clients():
    """Everything a client hands to the server is a float vector of the adapter's size: no token ids,
    captions or pixels (the privacy property checked on the captured messages)."""
    sent = []
    sim = Simulation(base_model(), make_clients(), LORA, rounds=1, local_steps=2, progressbar=False)
    original = sim._aggregate

    def capture(round_, updates, ids):
        sent.extend(updates)
        return original(round_, updates, ids)

    sim._aggregate = capture
    sim.run()
    n = sim.global_vector.size
    for vector, num_examples in sent:
        assert isinstance(vector, np.ndarray) and vector.dtype == np.float32 and vector.shape == (n,)
        assert isinstance(num_examples, float)
    token_ids = np.concatenate([e["input_ids"] for c in make_clients() for e in c.train])
    assert not any(np.array_equal(v[: len(token_ids)].astype(np.int32), token_ids) for v, _ in sent)


class PoisonedSimulation(Simulation):
    """Clients in `attackers` send the global vector minus 100 times their honest update (sign-flipped,
    scaled x100), the classic model-poisoning attack."""

    attackers: set = set()

    def local_train(self, client, round_):
        vector, loss, n = super().local_train(client, round_)
        if client.client_id in self.attackers:
            vector = self.global_vector - 100.0 * (vector - self.global_vector)
        return vector, loss, n


@pytest.mark.parametrize("name", ["krum", "median"])
def test_byzantine_clients_pull_fedavg_away_but_not_krum_or_median(name):
    clients = make_clients(k=8)
    honest = clients[:6]
    kw = dict(rounds=2, local_steps=3, batch_size=3, optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0),
              progressbar=False)
    start = base_model()
    start.add_lora(LORA, seed=0)
    x0 = start.lora_vector()
    clean = Simulation(base_model(), honest, LORA, **kw)
    clean.run()
    step = np.linalg.norm(clean.global_vector - x0)   # how far honest training moves the adapter

    def attacked(strategy):
        sim = PoisonedSimulation(base_model(), clients, LORA, strategy=strategy, **kw)
        sim.attackers = {6, 7}
        sim.run()
        return np.linalg.norm(sim.global_vector - clean.global_vector) / step

    robust = attacked(fl.Krum(num_malicious_clients=2) if name == "krum" else fl.FedMedian())
    poisoned = attacked(fl.FedAvg())
    assert poisoned > 10, poisoned         # 2 of 8 clients at x100 drag the mean ~25 steps away
    assert robust < 1.0, robust            # within one honest step of the clean run


def test_per_client_bleu_cider_rise_as_the_federation_learns_the_captions():
    clients = make_clients(k=3, n=7)
    for c in clients:  # each client holds out three of its captions
        c.train, c.eval = c.train[:4], c.train[4:]
    scorer = fl.caption_eval_fn(max_new_tokens=8)
    untrained = base_model()
    untrained.add_lora(LORA, seed=0)
    before = {str(c.client_id): scorer(untrained, c) for c in clients}
    sim = Simulation(base_model(), clients, LORA, rounds=3, local_steps=6, batch_size=4,
                     optimizer=ca.AdamWConfig(lr=3e-2, weight_decay=0.0), progressbar=False, eval_fn=scorer)
    history = sim.run()
    last = history[-1]
    assert all(set(r.client_metrics) == {"0", "1", "2"} for r in history)
    for k in ("Bleu_4", "CIDEr"):
        assert last.metrics[f"eval_{k}"] == pytest.approx(np.mean([m[k] for m in last.client_metrics.values()]))
    for cid, scores in last.client_metrics.items():
        assert scores["Bleu_4"] > before[cid]["Bleu_4"] + 0.3, (cid, scores, before[cid])
        assert scores["CIDEr"] > before[cid]["CIDEr"], (cid, scores, before[cid])
    # the hook scores what the model writes: a client whose references are its candidates scores BLEU 1
    greedy = sim.model.generate(np.array([[1, 2, 3]], np.int32), max_new_tokens=8, do_sample=False)[0]
    assert not {0, sim.model.config.eos_token_id} & set(greedy.tolist())
    echo = FederatedClient("echo", [], [{"input_ids": np.concatenate([[1, 2, 3], greedy]).astype(np.int32),
                                         "labels": np.concatenate([[-100] * 3, greedy]).astype(np.int32)}])
    assert scorer(sim.model, echo)["Bleu_4"] == pytest.approx(1.0)


def test_fedex_folds_the_residual_into_the_base_exactly(tmp_path):
    sent = []
    sim = Simulation(base_model(), make_clients(), LORA, rounds=1, local_steps=4, batch_size=3,
                     optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0), lora_aggregation="fedex", progressbar=False)
    original = sim._aggregate
    sim._aggregate = lambda r, updates, ids: (sent.extend(updates), original(r, updates, ids))[1]
    w0 = {k: v.astype(np.float64) for k, v in base_model().parameters().items()}
    history = sim.run()
    assert max(history[0].aggregation_error.values()) < 1e-6
    sim.model.merge_lora()
    merged = sim.model.parameters()
    total = sum(n for _, n in sent)
    for m in sim.model.lora_modules():
        r, fin, fout = m["r"], m["in_features"], m["out_features"]
        # W0 + s·Σ p_k B_k A_k: the average of the clients' models, formed in float64 from what they sent
        want = w0[m["module"] + ".weight"] + m["scaling"] * sum(
            (n / total) * vec[m["b_offset"]: m["b_offset"] + fout * r].reshape(fout, r).astype(np.float64)
            @ vec[m["a_offset"]: m["a_offset"] + r * fin].reshape(r, fin) for vec, n in sent)
        np.testing.assert_allclose(merged[m["module"] + ".weight"], want, atol=2e-6)
    # naive averaging misses the same target
    _, naive = simulate(rounds=1)
    assert min(naive[0].aggregation_error.values()) > 1e-3


def test_fedex_resume_restores_the_folded_base(tmp_path):
    kw = dict(local_steps=4, batch_size=3, optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0),
              lora_aggregation="fedex", progressbar=False)
    straight = Simulation(base_model(), make_clients(), LORA, rounds=3, **kw)
    straight.run()
    first = Simulation(base_model(), make_clients(), LORA, rounds=2, output_dir=str(tmp_path), **kw)
    first.run()
    resumed = Simulation(base_model(), make_clients(), LORA, rounds=3, output_dir=str(tmp_path), **kw)
    resumed.run(resume=True)
    np.testing.assert_array_equal(resumed.global_vector, straight.global_vector)
    for name, w in straight.model.parameters().items():
        np.testing.assert_array_equal(resumed.model.parameters()[name], w)


def test_fedex_refuses_dp_and_secure_aggregation():
    with pytest.raises(ValueError, match="bypassing differential privacy"):
        Simulation(base_model(), make_clients(), LORA, lora_aggregation="fedex", dp=fl.DPConfig(noise_multiplier=1.0), progressbar=False)
    for mode in ("fedex", "exact"):
        with pytest.raises(ValueError, match="secure aggregation hides"):
            Simulation(base_model(), make_clients(), LORA, lora_aggregation=mode, secure_aggregation=SECAGG,
                       progressbar=False)
def test_an_image_captioner_federates_its_language_model_adapters(captioner):
    """Lfm2VlModel clients send image + caption examples; with language-model targets only the vision tower
    stays frozen and shared, only the language model's adapter vector moves, and the federated adapter learns
    the clients' captions (tests/test_simulation_vision.py federates tower and projector adapters too)."""
    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (250, 200, 0)]
    words = ["red kite", "green field", "blue sea", "yellow sun"]

    def example(c: int) -> dict:
        image = np.clip(np.full((48, 64, 3), colours[c]) + rng.normal(0, 8, (48, 64, 3)), 0, 255)
        return captioner.caption_example(image.astype(np.uint8), f"a {words[c]} #aura")

    clients = [FederatedClient(c, [example(c) for _ in range(3)]) for c in range(4)]
    vision_before = {k: v.copy() for k, v in captioner.vision.parameters().items()}
    text_linears = r"model\.language_model\.layers\.\d+\.(conv\.(in|out)_proj|self_attn\.\w+|feed_forward\.w\d)"
    sim = Simulation(captioner, clients, ca.LoraConfig(r=4, lora_alpha=8, target_modules=text_linears),
                     rounds=4, local_steps=5, batch_size=3, progressbar=False,
                     optimizer=ca.AdamWConfig(lr=1e-2, weight_decay=0.0))
    try:
        history = sim.run()
        assert history[-1].train_loss < 0.5 * history[0].train_loss
        assert not sim.train_vision and sim.global_vector.size == captioner.text.lora_vector().size
        for k, v in captioner.vision.parameters().items():
            np.testing.assert_array_equal(v, vision_before[k])
    finally:
        captioner.remove_lora()


def test_caption_eval_fn_scores_an_image_captioner_as_metrics_evaluate_does(captioner):
    """Held-out image + caption pairs: caption_eval_fn's BLEU/CIDEr are `metrics.evaluate` on the captions
    `Lfm2VlModel.caption` writes for the same images, before federated training and in the Simulation's
    per-client evaluation after a round."""
    from captionaura.metrics import evaluate

    rng = np.random.default_rng(3)
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (250, 200, 0)]
    images = [np.clip(np.full((48, 64, 3), c) + rng.normal(0, 8, (48, 64, 3)), 0, 255).astype(np.uint8)
              for c in colours]
    tok = captioner.processor.tokenizer
    greedy = ca.GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=tok.token_to_id("<|im_end|>"),
                                 pad_token_id=tok.pad_token_id)
    scorer = fl.caption_eval_fn(max_new_tokens=8)

    def expected(model, references):
        captions = model.caption(images, generation=greedy)
        return evaluate({i: [r] for i, r in enumerate(references)}, dict(enumerate(captions)),
                        metrics=("Bleu", "CIDEr")).scores

    # two references are the model's own captions (high scores), two are other captions
    direct = captioner.caption(images, generation=greedy)
    assert all(direct), direct
    references = [direct[0], "a red kite over the hill #aura", direct[2], "a green field at dawn"]
    client = FederatedClient(0, [captioner.caption_example(im, f"a photo {i} #aura") for i, im in enumerate(images)],
                             [captioner.caption_example(im, r) for im, r in zip(images, references)])
    scores = scorer(captioner, client)
    assert scores == pytest.approx(expected(captioner, references), rel=1e-12, abs=1e-12)
    assert 0.1 < scores["Bleu_1"] < 1.0 and scores["CIDEr"] > 0, (direct, scores)

    sim = Simulation(captioner, [client], ca.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), rounds=1,
                     local_steps=2, batch_size=4, progressbar=False, eval_fn=scorer,
                     optimizer=ca.AdamWConfig(lr=3e-2, weight_decay=0.0))
    try:
        history = sim.run()
        assert history[0].client_metrics["0"] == pytest.approx(expected(captioner, references), rel=1e-12, abs=1e-12)
    finally:
        captioner.remove_lora()
