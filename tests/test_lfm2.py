"""LFM2 text model against transformers' Lfm2ForCausalLM (fixtures written by
tests/reference/make_lfm2_reference.py), plus checkpoint I/O and bad-input behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import captionaura as ca
from captionaura import _core

FIXTURES = Path(__file__).parent / "reference" / "fixtures" / "lfm2"
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.npz").is_file()) if FIXTURES.is_dir() else []


@pytest.fixture(scope="module", params=FIXTURE_NAMES)
def case(request):
    folder = FIXTURES / request.param
    ref = dict(np.load(folder / "reference.npz"))
    model = ca.Lfm2Model.from_pretrained(folder)
    return request.param, folder, ref, model


def test_fixtures_exist():
    assert len(FIXTURE_NAMES) >= 4, f"expected at least 4 reference fixtures in {FIXTURES}"


def valid(ref) -> np.ndarray:
    return ref["attention_mask"].astype(bool)


def test_logits_match_transformers(case):
    _, _, ref, model = case
    out = model.forward(ref["input_ids"], ref["attention_mask"], output_hidden_states=True)
    m = valid(ref)
    np.testing.assert_allclose(out.logits[m], ref["logits"][m], atol=1e-4, rtol=0)
    hidden = np.stack(out.hidden_states)
    assert hidden.shape == ref["hidden_states"].shape
    for i in range(hidden.shape[0]):
        np.testing.assert_allclose(hidden[i][m], ref["hidden_states"][i][m], atol=1e-4, rtol=0,
                                   err_msg=f"hidden state {i}")


def test_padded_batch_equals_unpadded_sequences(case):
    _, _, ref, model = case
    padded = model.forward(ref["input_ids"], ref["attention_mask"]).logits
    for row in range(ref["input_ids"].shape[0]):
        n = int(ref["attention_mask"][row].sum())
        alone = model.forward(ref["input_ids"][row, :n]).logits[0]
        np.testing.assert_allclose(padded[row, :n], alone, atol=5e-5, rtol=1e-5)  # GEMM blocking order
        np.testing.assert_allclose(alone, ref[f"logits_row{row}"], atol=1e-4, rtol=0)


def test_loss_and_gradients_match_transformers(case):
    _, _, ref, model = case
    loss = model.loss_and_grad(ref["input_ids"], ref["labels"], ref["attention_mask"])
    assert abs(loss - float(ref["loss"])) <= 1e-5 * abs(float(ref["loss"]))
    grads = model.gradients()
    ref_grads = {k[len("grad."):]: v for k, v in ref.items() if k.startswith("grad.")}
    assert set(ref_grads) == set(grads), "gradient names differ from transformers' parameter names"
    for name, expected in ref_grads.items():
        err = np.linalg.norm(grads[name] - expected) / max(np.linalg.norm(expected), 1e-12)
        assert err <= 1e-3, f"{name}: relative gradient error {err:.2e}"


def test_gradient_accumulation_adds(case):
    _, _, ref, model = case
    model.loss_and_grad(ref["input_ids"], ref["labels"], ref["attention_mask"])
    once = {k: v.copy() for k, v in model.gradients().items()}
    model.loss_and_grad(ref["input_ids"], ref["labels"], ref["attention_mask"], accumulate=True)
    for k, v in model.gradients().items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-5, atol=1e-7)


def test_save_pretrained_round_trip(case, tmp_path):
    name, folder, ref, model = case
    model.save_pretrained(tmp_path)
    again = ca.Lfm2Model.from_pretrained(tmp_path)
    assert again.config.to_dict() == model.config.to_dict()
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(again.parameters()[k], v)
    # the same tensor names and shapes transformers wrote
    ours = {n: tuple(s) for n, _, s, _, _ in _core.safetensors_header(str(tmp_path / "model.safetensors"))}
    theirs = {n: tuple(s) for n, _, s, _, _ in _core.safetensors_header(str(folder / "model.safetensors"))}
    theirs.pop("lm_head.weight", None) if model.config.tie_word_embeddings else None
    assert ours == theirs
    assert not list(tmp_path.glob("*.tmp"))


def test_sharded_checkpoint_loads(case, tmp_path):
    _, folder, ref, model = case
    params = model.parameters()
    names = list(params)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, keys in shards.items():
        _core.safetensors_save(str(tmp_path / shard), {k: params[k] for k in keys}, None)
        weight_map.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    sharded = ca.Lfm2Model.from_pretrained(tmp_path)
    np.testing.assert_array_equal(sharded.forward(ref["input_ids"]).logits, model.forward(ref["input_ids"]).logits)


# ---- a full-size checkpoint ----------------------------------------------------------------------

LFM2_350M = {
    "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", "vocab_size": 65536, "hidden_size": 1024,
    "intermediate_size": 6656, "block_ff_dim": 6656, "num_hidden_layers": 16, "num_attention_heads": 16,
    "num_key_value_heads": 8, "max_position_embeddings": 128000, "norm_eps": 1e-5, "rope_theta": 1000000.0,
    "conv_bias": False, "conv_L_cache": 3, "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True, "tie_embedding": True, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 7,
    "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                    "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
                    "full_attention", "conv"],
}


def test_lfm2_350m_bf16_checkpoint_loads_with_exact_parameter_count(tmp_path):
    config = ca.Lfm2Config.from_dict(LFM2_350M)
    assert config.ffn_dim == 4608
    skeleton = _core.Lfm2(json.dumps(config.to_dict()))
    rng = np.random.default_rng(0)
    tensors, dtypes = {}, {}
    for name, shape, _, numel in skeleton.param_table():
        bits = rng.integers(0x3C00, 0x3D00, size=numel, dtype=np.uint16)  # bf16 values in [2^-7, 2^-5)
        tensors[name] = bits.reshape(shape)
        dtypes[name] = "BF16"
    del skeleton
    _core.safetensors_save(str(tmp_path / "model.safetensors"), tensors, None, dtypes)
    (tmp_path / "config.json").write_text(json.dumps(LFM2_350M))
    model = ca.Lfm2Model.from_pretrained(tmp_path)
    assert model.num_parameters() == 354_483_968
    w = model.parameters()["model.layers.15.feed_forward.w2.weight"]
    bits = tensors["model.layers.15.feed_forward.w2.weight"].astype(np.uint32) << 16
    np.testing.assert_array_equal(w, bits.view(np.float32))


# ---- bad input --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    folder = FIXTURES / FIXTURE_NAMES[0]
    return folder, ca.Lfm2Model.from_pretrained(folder)


def copy_checkpoint(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst, dirs_exist_ok=True)
    return dst


def test_token_outside_vocabulary(tiny):
    _, model = tiny
    with pytest.raises(IndexError, match="vocabulary"):
        model.forward([[1, 2, model.config.vocab_size]])
    with pytest.raises(IndexError):
        model.forward([[1, -3]])


def test_empty_input(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match="empty"):
        model.forward(np.zeros((1, 0), dtype=np.int64))


def test_labels_of_wrong_shape(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match="labels"):
        model.loss_and_grad([[1, 2, 3]], [[1, 2]])


def test_mask_of_wrong_shape(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match="attention_mask"):
        model.forward([[1, 2, 3]], attention_mask=[[1, 1]])


def test_missing_tensor(tiny, tmp_path):
    folder, model = tiny
    params = model.parameters()
    victim = "model.layers.0.ffn_norm.weight"
    _core.safetensors_save(str(tmp_path / "model.safetensors"), {k: v for k, v in params.items() if k != victim}, None)
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    with pytest.raises(KeyError, match=victim.replace(".", r"\.")):
        ca.Lfm2Model.from_pretrained(tmp_path)


def test_extra_tensor(tiny, tmp_path):
    folder, model = tiny
    params = dict(model.parameters())
    params["model.layers.99.ffn_norm.weight"] = np.ones(4, np.float32)
    _core.safetensors_save(str(tmp_path / "model.safetensors"), params, None)
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    with pytest.raises(KeyError, match="layers.99"):
        ca.Lfm2Model.from_pretrained(tmp_path)


def test_wrong_shape(tiny, tmp_path):
    folder, model = tiny
    params = dict(model.parameters())
    params["model.embedding_norm.weight"] = np.ones(params["model.embedding_norm.weight"].size + 1, np.float32)
    _core.safetensors_save(str(tmp_path / "model.safetensors"), params, None)
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="embedding_norm"):
        ca.Lfm2Model.from_pretrained(tmp_path)


def test_truncated_checkpoint(tiny, tmp_path):
    folder, _ = tiny
    copy_checkpoint(folder, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        ca.Lfm2Model.from_pretrained(tmp_path)


def test_config_missing_key(tiny, tmp_path):
    folder, _ = tiny
    copy_checkpoint(folder, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KeyError, match="hidden_size"):
        ca.Lfm2Model.from_pretrained(tmp_path)


def test_missing_weights_file(tiny, tmp_path):
    folder, _ = tiny
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ca.Lfm2Model.from_pretrained(tmp_path)


def test_views_keep_model_alive():
    cfg = ca.Lfm2Config(vocab_size=32, hidden_size=16, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, layer_types=["conv", "full_attention"])
    w = ca.Lfm2Model.from_config(cfg, seed=3).parameters()["model.embed_tokens.weight"]
    import gc
    gc.collect()
    assert np.isfinite(w).all() and w.std() > 0


def test_seeded_init_is_reproducible():
    cfg = ca.Lfm2Config(vocab_size=32, hidden_size=16, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, layer_types=["conv", "full_attention"])
    a = ca.Lfm2Model.from_config(cfg, seed=7).parameters()
    b = ca.Lfm2Model.from_config(cfg, seed=7).parameters()
    c = ca.Lfm2Model.from_config(cfg, seed=8).parameters()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a if a[k].ndim > 1)
    w = a["model.layers.0.feed_forward.w1.weight"]
    assert abs(w.std() - cfg.initializer_range) < 0.2 * cfg.initializer_range


def test_feature_rows_replace_embeddings_and_get_their_gradient(tiny):
    """Scattering rows into the embedding stream equals feeding those rows as embeddings; the gradient that
    comes back for them matches central differences."""
    _, model = tiny
    rng = np.random.default_rng(0)
    ids = rng.integers(1, model.config.vocab_size, (2, 9)).astype(np.int32)
    positions = np.array([2, 3, 11], np.int32)  # (row 0, t 2), (row 0, t 3), (row 1, t 2)
    rows = rng.normal(0, 0.5, (3, model.config.hidden_size)).astype(np.float32)
    out = model.forward(ids, features=(positions, rows), output_hidden_states=True)
    np.testing.assert_array_equal(out.hidden_states[0].reshape(-1, model.config.hidden_size)[positions], rows)
    plain = model.forward(ids).logits
    assert np.allclose(out.logits[0, :2], plain[0, :2], atol=1e-6) and not np.allclose(out.logits[0, 2:], plain[0, 2:])
    grad = np.empty_like(rows)
    model.loss_and_grad(ids, ids, features=(positions, rows), feature_grad=grad)
    for p, c in [(0, 1), (1, 5), (2, 7)]:
        def loss_with(delta):
            r = rows.copy()
            r[p, c] += delta
            return model.loss_and_grad(ids, ids, features=(positions, r))
        numeric = (loss_with(1e-2) - loss_with(-1e-2)) / 2e-2
        assert numeric == pytest.approx(grad[p, c], abs=1e-3, rel=1e-2)
    with pytest.raises(ValueError, match="twice"):
        model.forward(ids, features=(np.array([1, 1], np.int32), rows[:2]))
    with pytest.raises(IndexError):
        model.forward(ids, features=(np.array([18], np.int32), rows[:1]))
