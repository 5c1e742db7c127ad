"""The LFM2-VL vision side (SigLIP2 tower + pixel unshuffle + projector) against transformers.

Fixtures (tests/reference/make_lfm2vl_reference.py, transformers 5.23.0 / torch 2.13.0 CPU, float32) hold tiny
random Lfm2VlForConditionalGeneration checkpoints, a padded batch of tiles (shapes with fewer than 16 patches
on a side, square, wide, tall, upsampled), and what transformers computes for it: the image features
(get_image_features), every vision hidden state and the gradients of loss = sum(features * R) w.r.t. every
vision and projector parameter.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from captionaura import _core
from captionaura.vision import VisionConfig, VisionTower

FIXTURES = Path(__file__).parent / "reference" / "fixtures" / "lfm2vl"
NAMES = ["base", "no_ln", "p16"]
FEATURE_ATOL = 1e-4
GRAD_RTOL = 1e-3


def load(name):
    if name == "p16":  # its file holds a layer past vision_feature_layer: loaded with a warning
        with pytest.warns(UserWarning, match=r"encoder layers 2\.\.2 are past vision_feature_layer=1"):
            vt = VisionTower.from_pretrained(FIXTURES / name)
    else:
        vt = VisionTower.from_pretrained(FIXTURES / name)
    return vt, np.load(FIXTURES / name / "reference.npz")


def ref_name(key):
    """grad.<transformers 5 name> -> our (hub) parameter name."""
    return key[len("grad."):].replace("model.vision_tower.", "model.vision_tower.vision_model.")


@pytest.mark.parametrize("name", NAMES)
def test_features_and_hidden_states_match_transformers(name):
    vt, z = load(name)
    feats, hidden = vt.encode(z["pixel_values"], z["spatial_shapes"], z["pixel_attention_mask"],
                              output_hidden_states=True)
    assert feats.shape == z["features"].shape
    assert np.max(np.abs(feats - z["features"])) <= FEATURE_ATOL
    assert hidden.shape == z["hidden_states"].shape  # (layers run + 1, valid patches, D)
    assert np.max(np.abs(hidden - z["hidden_states"])) <= FEATURE_ATOL
    # the same without the mask (it is implied by spatial_shapes) and without asking for hidden states
    again = vt.encode(z["pixel_values"], z["spatial_shapes"], None)
    np.testing.assert_array_equal(again, feats)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_transformers(name):
    vt, z = load(name)
    vt.encode(z["pixel_values"], z["spatial_shapes"], z["pixel_attention_mask"], train=True)
    vt.backward(z["R"])
    grads = vt.gradients()
    keys = [k for k in z.files if k.startswith("grad.")]
    assert {ref_name(k) for k in keys} == set(grads)  # every parameter, nothing else
    # self_attn.k_proj.bias has an exactly zero gradient (softmax is invariant to q·b_k); both sides hold only
    # rounding noise there, so the tolerance has an absolute floor relative to the largest gradient
    floor = 1e-7 * max(np.linalg.norm(z[k]) for k in keys)
    for k in keys:
        want, got = z[k], grads[ref_name(k)]
        err = np.linalg.norm(got.astype(np.float64) - want)
        assert err <= GRAD_RTOL * np.linalg.norm(want) + floor, (k, err, np.linalg.norm(want))
    # accumulate adds a second backward on top; without it the gradients are overwritten
    first = {n: g.copy() for n, g in grads.items()}
    top = max(float(np.abs(g).max()) for g in first.values())
    vt.backward(z["R"], accumulate=True)
    for n, g in vt.gradients().items():  # (k_proj.bias is pure rounding noise: an absolute floor again)
        np.testing.assert_allclose(g, 2 * first[n], rtol=1e-5, atol=1e-7 * top, err_msg=n)
    vt.backward(z["R"])
    for n, g in vt.gradients().items():
        np.testing.assert_array_equal(g, first[n], err_msg=n)


def test_layer_count_follows_vision_feature_layer():
    """lfm2.md §4.4: vfl -1 runs every layer; else vfl mod N + 1 (no_ln: 3 configured, vfl -2 -> 2;
    p16: 3 configured and stored, vfl 1 -> 2)."""
    base, no_ln, p16 = (VisionConfig.from_pretrained(FIXTURES / n) for n in NAMES)
    assert (base.num_hidden_layers, base.vision_feature_layer, base.num_layers_run) == (2, -1, 2)
    assert (no_ln.num_hidden_layers, no_ln.vision_feature_layer, no_ln.num_layers_run) == (3, -2, 2)
    assert (p16.num_hidden_layers, p16.vision_feature_layer, p16.num_layers_run) == (3, 1, 2)
    assert VisionConfig(num_hidden_layers=27, vision_feature_layer=-2).num_layers_run == 26  # the 1.6B layout
    with pytest.raises(ValueError, match="vision_feature_layer"):
        VisionConfig(num_hidden_layers=3, vision_feature_layer=3)


def test_tiles_are_independent_of_padding_and_batch():
    vt, z = load("base")
    feats = vt.encode(z["pixel_values"], z["spatial_shapes"], z["pixel_attention_mask"])
    start = 0
    for t, (h, w) in enumerate(z["spatial_shapes"]):
        alone = vt.encode(z["pixel_values"][t : t + 1, : h * w], z["spatial_shapes"][t : t + 1])
        n = (h // 2) * (w // 2)
        np.testing.assert_allclose(alone, feats[start : start + n], rtol=0, atol=1e-5)
        start += n
    assert start == feats.shape[0]
    # garbage in padded rows changes nothing
    pv = z["pixel_values"].copy()
    pv[z["pixel_attention_mask"] == 0] = 7.0
    np.testing.assert_array_equal(vt.encode(pv, z["spatial_shapes"], z["pixel_attention_mask"]), feats)


def copy_fixture(tmp_path, name="base"):
    d = tmp_path / name
    shutil.copytree(FIXTURES / name, d)
    return d


def rewrite_tensors(path, edit):
    """Rewrite a safetensors file through captionaura's own reader/writer with `edit(dict)` applied."""
    names = [row[0] for row in _core.safetensors_header(str(path))]
    tensors = _core.safetensors_load(str(path), names)
    edit(tensors)
    _core.safetensors_save(str(path), tensors)


def test_strict_loading(tmp_path):
    d = copy_fixture(tmp_path)
    st = d / "model.safetensors"
    orig = st.read_bytes()

    rewrite_tensors(st, lambda t: t.pop("model.vision_tower.encoder.layers.1.mlp.fc2.bias"))
    with pytest.raises(KeyError, match=r"missing tensor 'model\.vision_tower\.vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias'"):
        VisionTower.from_pretrained(d)

    st.write_bytes(orig)
    rewrite_tensors(st, lambda t: t.update({"model.vision_tower.encoder.layers.2.mlp.fc2.bias": np.zeros(32, np.float32)}))
    with pytest.raises(KeyError, match=r"unexpected tensor 'model\.vision_tower\.encoder\.layers\.2\.mlp\.fc2\.bias'"):
        VisionTower.from_pretrained(d)

    st.write_bytes(orig)
    rewrite_tensors(st, lambda t: t.update({"model.multi_modal_projector.linear_9.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(KeyError, match="unexpected tensor 'model.multi_modal_projector.linear_9.weight'"):
        VisionTower.from_pretrained(d)

    st.write_bytes(orig)
    rewrite_tensors(st, lambda t: t.update({"model.vision_tower.embeddings.position_embedding.weight": np.zeros((255, 32), np.float32)}))
    with pytest.raises(ValueError, match=r"position_embedding\.weight' has shape \[255, 32\].*expects \[256, 32\]"):
        VisionTower.from_pretrained(d)

    st.write_bytes(orig)  # both naming layouts of one tensor at once is ambiguous
    rewrite_tensors(st, lambda t: t.update({"model.vision_tower.vision_model.post_layernorm.bias": np.zeros(32, np.float32)}))
    with pytest.raises(ValueError, match="appears twice"):
        VisionTower.from_pretrained(d)

    st.write_bytes(orig)  # the language model's tensors are not the vision side's business
    rewrite_tensors(st, lambda t: t.update({"model.language_model.extra.weight": np.zeros(3, np.float32)}))
    VisionTower.from_pretrained(d)


def test_save_uses_hub_names_and_round_trips(tmp_path):
    vt, z = load("p16")
    out = tmp_path / "vision.safetensors"
    vt.save_safetensors(out)
    names = {row[0] for row in _core.safetensors_header(str(out))}
    assert names == set(vt.parameters())
    assert all(n.startswith(("model.vision_tower.vision_model.", "model.multi_modal_projector.")) for n in names)
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(FIXTURES / "p16" / "config.json", d / "config.json")
    shutil.copy(out, d / "model.safetensors")
    vt2 = VisionTower.from_pretrained(d)
    a = vt.encode(z["pixel_values"], z["spatial_shapes"], z["pixel_attention_mask"])
    np.testing.assert_array_equal(vt2.encode(z["pixel_values"], z["spatial_shapes"], z["pixel_attention_mask"]), a)


def test_projector_layernorm_follows_the_weights(tmp_path):
    """A config claiming projector_use_layernorm=false while the tensors exist (LFM2.5-VL) uses them."""
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["projector_use_layernorm"] = False
    (d / "config.json").write_text(json.dumps(cfg))
    vt = VisionTower.from_pretrained(d)
    assert vt.config.projector_use_layernorm
    z = np.load(d / "reference.npz")
    feats = vt.encode(z["pixel_values"], z["spatial_shapes"], z["pixel_attention_mask"])
    assert np.max(np.abs(feats - z["features"])) <= FEATURE_ATOL


def test_bad_inputs_raise_clearly():
    vt, z = load("base")
    pv, ss, mask = z["pixel_values"], z["spatial_shapes"], z["pixel_attention_mask"]
    bad = mask.copy()
    bad[1, 0] = 0  # a hole at the start of tile 1
    with pytest.raises(ValueError, match=r"pixel_attention_mask\[1, 0\]"):
        vt.encode(pv, ss, bad)
    with pytest.raises(ValueError, match="divisible by downsample_factor"):
        vt.encode(pv, np.array([[3, 4], [6, 10], [2, 12], [10, 4]], np.int32))
    with pytest.raises(ValueError, match="patches but pixel_values holds 256"):
        vt.encode(pv, np.array([[16, 18], [6, 10], [2, 12], [10, 4]], np.int32))
    with pytest.raises(ValueError, match=">= 1"):
        vt.encode(pv, np.array([[0, 4], [6, 10], [2, 12], [10, 4]], np.int32))
    with pytest.raises(ValueError, match="values per patch"):
        vt.encode(pv[:, :, :47], ss)
    with pytest.raises(ValueError, match="spatial_shapes"):
        vt.encode(pv, ss[:3])
    fresh = VisionTower.from_config(VisionConfig.from_pretrained(FIXTURES / "base"), seed=1)
    with pytest.raises(ValueError, match="train=True"):
        fresh.backward(np.zeros((95, 24), np.float32))
    fresh.encode(pv, ss, mask)  # an inference forward keeps no activations for a backward
    with pytest.raises(ValueError, match="train=True"):
        fresh.backward(np.zeros((95, 24), np.float32))
    fresh.encode(pv, ss, mask, train=True)
    with pytest.raises(ValueError, match="d_features"):
        fresh.backward(np.zeros((94, 24), np.float32))


def test_from_config_random_init_is_seeded_and_sane():
    cfg = VisionConfig.from_pretrained(FIXTURES / "base")
    a, b, c = (VisionTower.from_config(cfg, seed=s) for s in (3, 3, 4))
    pa, pb, pc = a.parameters(), b.parameters(), c.parameters()
    for n in pa:
        np.testing.assert_array_equal(pa[n], pb[n])
    assert not np.array_equal(pa["model.multi_modal_projector.linear_1.weight"],
                              pc["model.multi_modal_projector.linear_1.weight"])
    assert np.all(pa["model.vision_tower.vision_model.post_layernorm.weight"] == 1)
    assert np.all(pa["model.vision_tower.vision_model.post_layernorm.bias"] == 0)
    assert abs(float(pa["model.vision_tower.vision_model.embeddings.patch_embedding.weight"].std()) - 0.02) < 0.003
    z = np.load(FIXTURES / "base" / "reference.npz")
    f = a.encode(z["pixel_values"], z["spatial_shapes"], z["pixel_attention_mask"])
    assert f.shape == (95, 24) and np.all(np.isfinite(f))


def test_450m_shape_parameter_table():
    """lfm2.md §3.2: vision 85,843,200 + projector 10,495,488 parameters for LFM2-VL-450M, with its shapes."""
    cfg = VisionConfig(text_hidden_size=1024)
    assert cfg.num_layers_run == 12
    core = _core.Vision(json.dumps(cfg.to_dict()))
    table = {name: (shape, numel) for name, shape, _, numel in core.param_table()}
    vision = sum(n for k, (_, n) in table.items() if k.startswith("model.vision_tower.vision_model."))
    projector = sum(n for k, (_, n) in table.items() if k.startswith("model.multi_modal_projector."))
    assert (vision, projector) == (85_843_200, 10_495_488)
    assert table["model.vision_tower.vision_model.embeddings.patch_embedding.weight"][0] == (768, 768)
    assert table["model.vision_tower.vision_model.embeddings.position_embedding.weight"][0] == (256, 768)
    assert table["model.vision_tower.vision_model.encoder.layers.11.mlp.fc1.weight"][0] == (3072, 768)
    assert table["model.multi_modal_projector.layer_norm.weight"][0] == (3072,)
    assert table["model.multi_modal_projector.linear_1.weight"][0] == (2560, 3072)
    assert table["model.multi_modal_projector.linear_2.weight"][0] == (1024, 2560)
    assert "model.vision_tower.vision_model.encoder.layers.12.mlp.fc1.weight" not in table


@pytest.mark.reference
def test_saved_hub_names_load_in_transformers(tmp_path):
    """Our save uses the hub layout (model.vision_tower.vision_model.*); transformers maps it back onto its
    Siglip2VisionModel (prefix change) and computes the same features."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    vt, z = load("base")
    d = copy_fixture(tmp_path)
    st = d / "model.safetensors"
    rewrite_tensors(st, lambda t: [t.pop(k) for k in list(t) if not k.startswith("model.language_model.")])
    ours = tmp_path / "vision.safetensors"
    vt.save_safetensors(ours)
    names = [row[0] for row in _core.safetensors_header(str(ours))]
    merged = _core.safetensors_load(str(st), [row[0] for row in _core.safetensors_header(str(st))])
    merged.update(_core.safetensors_load(str(ours), names))
    _core.safetensors_save(str(st), merged)
    model = transformers.Lfm2VlForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=torch.from_numpy(z["pixel_values"]),
                                             spatial_shapes=torch.from_numpy(z["spatial_shapes"]).long(),
                                             pixel_attention_mask=torch.from_numpy(z["pixel_attention_mask"]))
    feats = torch.cat(list(out.pooler_output)).numpy()
    assert np.max(np.abs(feats - z["features"])) <= FEATURE_ATOL
