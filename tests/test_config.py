"""LFM2 config.json resolution (lfm2.md §1): key aliases, layer types, FFN auto-adjust, VL nesting, errors."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from captionaura import _core

# LFM2-350M config.json as published (LiquidAI/LFM2-350M; both block_ff_dim and intermediate_size present).
LFM2_350M = {
    "architectures": ["Lfm2ForCausalLM"],
    "block_auto_adjust_ff_dim": True,
    "block_dim": 1024,
    "block_ff_dim": 6656,
    "block_ffn_dim_multiplier": 1.0,
    "block_mlp_init_scale": 1.0,
    "block_multiple_of": 256,
    "block_norm_eps": 1e-05,
    "block_out_init_scale": 1.0,
    "block_use_swiglu": True,
    "block_use_xavier_init": True,
    "bos_token_id": 1,
    "conv_L_cache": 3,
    "conv_bias": False,
    "conv_dim": 1024,
    "conv_dim_out": 1024,
    "conv_use_xavier_init": True,
    "eos_token_id": 7,
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 6656,
    "layer_types": [
        "conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
        "full_attention", "conv", "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
    ],
    "max_position_embeddings": 128000,
    "model_type": "lfm2",
    "norm_eps": 1e-05,
    "num_attention_heads": 16,
    "num_heads": 16,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pad_token_id": 0,
    "rope_theta": 1000000.0,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.54.0.dev0",
    "use_cache": True,
    "use_pos_enc": True,
    "vocab_size": 65536,
}

# LFM2-1.2B (the LFM2-VL-1.6B backbone): original keys, full_attn_idxs instead of layer_types, theta.
LFM2_1_2B = {
    "architectures": ["Lfm2ForCausalLM"],
    "block_auto_adjust_ff_dim": True,
    "block_dim": 2048,
    "block_ff_dim": 12288,
    "block_ffn_dim_multiplier": 1.0,
    "block_multiple_of": 256,
    "block_norm_eps": 1e-05,
    "bos_token_id": 1,
    "conv_L_cache": 3,
    "conv_bias": False,
    "eos_token_id": 7,
    "full_attn_idxs": [2, 5, 8, 10, 12, 14],
    "hidden_size": 2048,
    "max_position_embeddings": 128000,
    "model_type": "lfm2",
    "num_attention_heads": 32,
    "num_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pad_token_id": 0,
    "theta": 1000000.0,
    "tie_embedding": True,
    "vocab_size": 65536,
}


def resolve(cfg, **kw):
    return _core.lfm2_config_resolve(json.dumps(cfg), **kw)


def attention_layers(c):
    return [i for i, a in enumerate(c["layer_is_attention"]) if a]


def test_lfm2_350m():
    c = resolve(LFM2_350M)
    assert c["intermediate_size"] == 6656
    assert c["ffn_dim"] == 4608
    assert attention_layers(c) == [2, 5, 8, 10, 12, 14]
    assert len(c["layer_is_attention"]) == 16
    assert c["layer_types"] == LFM2_350M["layer_types"]
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (1024, 16, 8, 64)
    assert (c["vocab_size"], c["num_hidden_layers"], c["conv_L_cache"]) == (65536, 16, 3)
    assert c["rope_theta"] == 1e6 and c["norm_eps"] == 1e-5
    assert c["tie_word_embeddings"] is True and c["conv_bias"] is False
    assert (c["pad_token_id"], c["bos_token_id"], c["eos_token_id"]) == (0, 1, 7)
    assert c["block_ffn_dim_multiplier"] == 1.0 and c["block_multiple_of"] == 256
    assert c["max_position_embeddings"] == 128000


def test_lfm2_1_2b_original_keys():
    c = resolve(LFM2_1_2B)
    assert c["intermediate_size"] == 12288
    assert c["ffn_dim"] == 8192
    assert attention_layers(c) == [2, 5, 8, 10, 12, 14]
    assert c["head_dim"] == 64 and c["rope_theta"] == 1e6 and c["tie_word_embeddings"] is True


def test_lfm2_700m_width():
    cfg = dict(LFM2_350M, hidden_size=1536, block_ff_dim=10240, intermediate_size=10240, num_attention_heads=24)
    assert resolve(cfg)["ffn_dim"] == 6912


def test_block_ff_dim_overrides_intermediate_size():
    cfg = dict(LFM2_350M, intermediate_size=999)
    assert resolve(cfg)["intermediate_size"] == 6656
    cfg = dict(LFM2_350M)
    del cfg["block_ff_dim"]
    cfg["intermediate_size"] = 12288
    assert resolve(cfg)["ffn_dim"] == 8192


def test_auto_adjust_false_keeps_width():
    cfg = dict(LFM2_350M, block_auto_adjust_ff_dim=False, block_ff_dim=4608, intermediate_size=4608)
    c = resolve(cfg)
    assert c["ffn_dim"] == 4608 and c["block_auto_adjust_ff_dim"] is False


def test_multiplier_null_skips_rounding():
    # transformers rounds to block_multiple_of only inside the multiplier branch.
    c = resolve(dict(LFM2_350M, block_ffn_dim_multiplier=None))
    assert c["ffn_dim"] == 4437 and c["block_ffn_dim_multiplier"] is None


def hf_ffn_dim(ff, auto, mult, multiple_of):
    """transformers Lfm2MLP.__init__, verbatim logic."""
    if auto:
        ff = int(2 * ff / 3)
        if mult is not None:
            ff = int(mult * ff)
            ff = multiple_of * ((ff + multiple_of - 1) // multiple_of)
    return ff


def test_ffn_rule_matches_transformers_logic():
    rng = np.random.default_rng(0)
    for _ in range(500):
        ff = int(rng.integers(2, 100000))
        auto = bool(rng.integers(0, 2))
        mult = None if rng.random() < 0.3 else float(rng.choice([1.0, 0.5, 1.3, 2.0, 0.75, rng.random() * 3 + 0.1]))
        multiple_of = int(rng.choice([1, 8, 64, 256, 7]))
        want = hf_ffn_dim(ff, auto, mult, multiple_of)
        cfg = {"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
               "num_key_value_heads": 1, "intermediate_size": ff, "block_auto_adjust_ff_dim": auto,
               "block_ffn_dim_multiplier": mult, "block_multiple_of": multiple_of}
        if want < 1:
            with pytest.raises(ValueError):
                resolve(cfg)
        else:
            assert resolve(cfg)["ffn_dim"] == want, (ff, auto, mult, multiple_of)


def test_rope_theta_layouts():
    base = dict(LFM2_350M)
    del base["rope_theta"]
    assert resolve(base)["rope_theta"] == 1e6  # class default
    assert resolve(dict(base, rope_theta=5e5))["rope_theta"] == 5e5
    assert resolve(dict(base, theta=2e5))["rope_theta"] == 2e5
    assert resolve(dict(base, theta=2e5, rope_theta=5e5))["rope_theta"] == 2e5  # theta wins, as in transformers
    newer = dict(base, rope_parameters={"rope_theta": 250000.0, "rope_type": "default"})
    assert resolve(newer)["rope_theta"] == 250000.0
    per_type = dict(base, rope_parameters={"full_attention": {"rope_theta": 3e5, "rope_type": "default"}})
    assert resolve(per_type)["rope_theta"] == 3e5
    with pytest.raises(NotImplementedError, match="rope_type"):
        resolve(dict(base, rope_parameters={"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(ValueError, match="rope_parameters"):
        resolve(dict(base, rope_parameters=[1e6]))


def test_aliases():
    cfg = dict(LFM2_350M)
    del cfg["num_attention_heads"], cfg["norm_eps"]
    cfg.update(num_heads=8, block_norm_eps=1e-6, tie_embedding=False, head_dim=32)
    c = resolve(cfg)
    assert c["num_attention_heads"] == 8 and c["norm_eps"] == 1e-6
    assert c["tie_word_embeddings"] is False and c["head_dim"] == 32
    assert resolve(dict(LFM2_350M, block_norm_eps=1e-3))["norm_eps"] == 1e-5  # norm_eps wins


def test_layer_types_win_and_defaults():
    cfg = dict(LFM2_350M, full_attn_idxs=[0, 1])
    assert attention_layers(resolve(cfg)) == [2, 5, 8, 10, 12, 14]
    cfg = dict(LFM2_350M, full_attn_idxs=[0, 1])
    del cfg["layer_types"]
    assert attention_layers(resolve(cfg)) == [0, 1]
    cfg = dict(LFM2_350M, full_attn_idxs=[])
    del cfg["layer_types"]
    assert attention_layers(resolve(cfg)) == []
    del cfg["full_attn_idxs"]
    assert attention_layers(resolve(cfg)) == list(range(16))  # neither key: every layer attention
    assert attention_layers(resolve(dict(cfg, layer_types=None, full_attn_idxs=None))) == list(range(16))


def test_token_ids():
    assert resolve(dict(LFM2_350M, eos_token_id=[7, 2]))["eos_token_id"] == 7
    assert resolve(dict(LFM2_350M, eos_token_id=None))["eos_token_id"] is None
    assert resolve(dict(LFM2_350M, pad_token_id=None))["pad_token_id"] is None
    cfg = dict(LFM2_350M)
    del cfg["eos_token_id"]
    assert resolve(cfg)["eos_token_id"] == 2  # class default


def test_class_defaults_for_optional_keys():
    minimal = {"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
               "intermediate_size": 384}
    c = resolve(minimal)
    assert c["num_key_value_heads"] == 8 and c["head_dim"] == 8
    assert c["conv_L_cache"] == 3 and c["block_multiple_of"] == 256 and c["block_auto_adjust_ff_dim"] is True
    assert c["ffn_dim"] == 256  # int(2*384/3) = 256, x1.0, rounded up to 256
    assert c["norm_eps"] == 1e-5 and c["rope_theta"] == 1e6 and c["tie_word_embeddings"] is True
    assert attention_layers(c) == [0, 1]


def test_vl_nested_text_config():
    vl = {"model_type": "lfm2-vl", "image_token_index": 396, "downsample_factor": 2,
          "vision_config": {"model_type": "siglip2_vision_model", "hidden_size": 768},
          "text_config": copy.deepcopy(LFM2_350M)}
    c = resolve(vl)
    assert c["ffn_dim"] == 4608 and attention_layers(c) == [2, 5, 8, 10, 12, 14] and c["hidden_size"] == 1024
    vl["model_type"] = "lfm2_vl"
    assert resolve(vl)["hidden_size"] == 1024
    del vl["text_config"]
    with pytest.raises(KeyError, match="text_config"):
        resolve(vl)


@pytest.mark.parametrize("key", ["vocab_size", "hidden_size", "num_hidden_layers"])
def test_missing_required_key(key):
    cfg = dict(LFM2_350M)
    del cfg[key]
    with pytest.raises(KeyError, match=f"missing required key '{key}'"):
        resolve(cfg)


def test_missing_heads_and_width():
    cfg = dict(LFM2_350M)
    del cfg["num_attention_heads"], cfg["num_heads"]
    with pytest.raises(KeyError, match="num_attention_heads"):
        resolve(cfg)
    cfg = dict(LFM2_350M)
    del cfg["block_ff_dim"], cfg["intermediate_size"]
    with pytest.raises(KeyError, match="intermediate_size"):
        resolve(cfg)


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("hidden_size", "1024", "'hidden_size': expected an integer, got string"),
        ("hidden_size", 1024.5, "'hidden_size': expected an integer"),
        ("vocab_size", 0, "'vocab_size': 0 is out of range"),
        ("num_hidden_layers", 10**6, "'num_hidden_layers'"),
        ("num_hidden_layers", 2**40, "'num_hidden_layers'"),
        ("conv_bias", 1, "'conv_bias': expected true or false"),
        ("norm_eps", "small", "'norm_eps': expected a number"),
        ("block_ffn_dim_multiplier", "x", "'block_ffn_dim_multiplier'"),
        ("block_ffn_dim_multiplier", 1e300, "block_ffn_dim_multiplier"),
        ("layer_types", ["conv"] * 15, "'layer_types': 15 entries"),
        ("layer_types", ["conv"] * 15 + ["mamba"], "'layer_types\\[15\\]'"),
        ("layer_types", "conv", "'layer_types'"),
        ("eos_token_id", "7", "'eos_token_id'"),
        ("eos_token_id", ["a"], "'eos_token_id\\[0\\]'"),
        ("text_config", 3, "'text_config'"),
    ],
)
def test_bad_types_and_values(key, value, why):
    with pytest.raises(ValueError, match=why):
        resolve(dict(LFM2_350M, **{key: value}))


def test_full_attn_idxs_out_of_range():
    cfg = dict(LFM2_350M, full_attn_idxs=[2, 16])
    del cfg["layer_types"]
    with pytest.raises(ValueError, match=r"'full_attn_idxs\[1\]': 16 is out of range"):
        resolve(cfg)


def test_validate():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        resolve(dict(LFM2_350M, num_key_value_heads=3))
    with pytest.raises(ValueError, match="hidden_size 1000 is not divisible"):
        resolve(dict(LFM2_350M, hidden_size=1000))
    with pytest.raises(ValueError, match="head_dim must be even"):
        resolve(dict(LFM2_350M, head_dim=63))
    with pytest.raises(ValueError, match="norm_eps"):
        resolve(dict(LFM2_350M, norm_eps=0.0))
    assert resolve(dict(LFM2_350M, num_key_value_heads=3), validate=False)["num_key_value_heads"] == 3
    # An odd shape from the fixtures: hidden 48 with 3 heads (head_dim 16) and 1 KV head.
    small = {"vocab_size": 97, "hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 3,
             "num_key_value_heads": 1, "intermediate_size": 160, "conv_L_cache": 4, "block_multiple_of": 16,
             "layer_types": ["conv", "full_attention", "conv"]}
    c = resolve(small)
    assert c["head_dim"] == 16 and c["ffn_dim"] == 112 and c["conv_L_cache"] == 4


def test_other_architectures_rejected():
    with pytest.raises(NotImplementedError, match="model_type"):
        resolve(dict(LFM2_350M, model_type="llama"))


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "unexpected end"),
        ("[]", "expected a JSON object"),
        ('{"vocab_size": 1,}', "expected a string key"),
        ('{"vocab_size": 1, "vocab_size": 2}', 'duplicate key "vocab_size"'),
        ('{"norm_eps": NaN}', "unexpected character"),
        ('{"norm_eps": 1e999}', "out of range"),
        ("\ufeff{}", "unexpected character"),
        ('{"a": tru}', "invalid literal"),
    ],
)
def test_json_errors(text, why):
    with pytest.raises(ValueError, match=why):
        _core.lfm2_config_resolve(text)


def test_json_numbers_and_escapes():
    cfg = dict(LFM2_350M)
    text = json.dumps(cfg).replace('"norm_eps": 1e-05', '"norm_eps": 1.0E-5').replace(
        '"hidden_size": 1024', '"hidden\\u005fsize": 1024.0')
    c = _core.lfm2_config_resolve(text)
    assert c["norm_eps"] == 1e-5 and c["hidden_size"] == 1024
    assert _core.lfm2_config_resolve(text.encode())["hidden_size"] == 1024
    assert math.isclose(resolve(dict(cfg, rope_theta=10000))["rope_theta"], 1e4)
