"""Shared fixtures: a tiny random LFM2-VL captioner with a real processor (the LFM2-VL-450M processor
fixture's tokenizer, chat template and image settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

import captionaura as ca

PROCESSOR = Path(__file__).parent / "reference" / "fixtures" / "lfm2vl_processor" / "lfm2vl_450m"


def tiny_captioner_config(processor: ca.Lfm2VlProcessor) -> dict:
    """A three-layer LFM2 (conv + attention) under a two-layer SigLIP2 tower; weights with signal
    (initializer_range 0.3) so a few LoRA steps visibly change the captions."""
    return {
        "model_type": "lfm2_vl", "image_token_id": processor.image_token_id, "downsample_factor": 2,
        "projector_hidden_size": 32, "projector_bias": True, "projector_hidden_act": "gelu",
        "projector_use_layernorm": True, "vision_feature_layer": -1,
        "text_config": {"model_type": "lfm2", "vocab_size": processor.tokenizer.vocab_size, "hidden_size": 64,
                        "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "layer_types": ["conv", "full_attention", "full_attention"],
                        "block_auto_adjust_ff_dim": False, "initializer_range": 0.3},
        "vision_config": {"model_type": "siglip2_vision_model", "hidden_size": 32, "intermediate_size": 48,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "num_patches": 256,
                          "patch_size": 16, "num_channels": 3, "hidden_act": "gelu_pytorch_tanh",
                          "layer_norm_eps": 1e-6, "initializer_range": 0.2},
    }


@pytest.fixture(scope="module")
def tiny_captioner_dir(tmp_path_factory) -> Path:
    """A saved tiny random LFM2-VL checkpoint folder (config, weights, tokenizer, processor config)."""
    processor = ca.Lfm2VlProcessor.from_pretrained(PROCESSOR)
    model = ca.Lfm2VlModel.from_config(tiny_captioner_config(processor), seed=0)
    model.processor = processor
    folder = tmp_path_factory.mktemp("captioner")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def captioner(tiny_captioner_dir) -> ca.Lfm2VlModel:
    return ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir)


@pytest.fixture(params=["avx512", "avx2"])
def isa(request):
    """Runs a test with each variant of the low-precision kernels (GEMVs, bf16 GEMMs; AVX-512 skipped on CPUs
    without AVX512-BF16), then back to the best one."""
    from captionaura import _core

    try:
        _core.lowp_isa(request.param)
    except ValueError:
        pytest.skip(f"this CPU has no {request.param}")
    yield request.param
    _core.lowp_isa("auto")
