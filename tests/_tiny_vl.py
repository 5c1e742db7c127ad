"""A tiny random LFM2-VL with the LFM2-VL-450M processor fixture (tokenizer, chat template, image settings),
shared by the video and personal-style tests."""

from __future__ import annotations

from pathlib import Path

import captionaura as ca

PROCESSOR = Path(__file__).parent / "reference" / "fixtures" / "lfm2vl_processor" / "lfm2vl_450m"


def tiny_vl_config(processor: ca.Lfm2VlProcessor) -> dict:
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


def save_tiny_vl(folder: Path, seed: int = 0) -> Path:
    """Write the tiny model (weights, config, processor files) to ``folder`` and return it."""
    processor = ca.Lfm2VlProcessor.from_pretrained(PROCESSOR)
    model = ca.Lfm2VlModel.from_config(tiny_vl_config(processor), seed=seed)
    model.processor = processor
    model.save_pretrained(folder)
    return folder
