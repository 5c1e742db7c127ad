"""Regenerates the committed seed corpus in fuzz/corpus/ (tiny valid and near-valid inputs).
Standard library only: python3 fuzz/make_corpus.py"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def st_file(header, data, pad=True, length=None):
    text = json.dumps(header, separators=(",", ":")).encode() if isinstance(header, dict) else header
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def e(dtype, shape, b, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, end]}


SAFETENSORS = {
    "f32_two": st_file({"a": e("F32", [2], 0, 8), "b.weight": e("F32", [1, 2], 8, 16)},
                       struct.pack("<4f", 1, -2, 0.5, 3)),
    "mixed_meta": st_file({"__metadata__": {"format": "pt"}, "h": e("F16", [2], 0, 4), "bf": e("BF16", [2], 4, 8),
                           "d": e("F64", [1], 8, 16), "i": e("I64", [1], 16, 24), "m": e("BOOL", [2], 24, 26),
                           "s": e("F32", [], 26, 30), "z": e("F32", [0, 3], 30, 30)},
                          bytes([0x00, 0x3C, 0x01, 0x80, 0x80, 0x3F, 0xC0, 0x7F]) + struct.pack("<dq", 0.1, -5)
                          + b"\x01\x00" + struct.pack("<f", 2.0)),
    "escaped_names": st_file(b'{"na\\u00efve\\ud83d\\ude00":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}',
                             b"\x01\x02\x03"),
    "empty": st_file({}, b""),
    "truncated": st_file({"a": e("F32", [4], 0, 16)}, b"\x00" * 10),
    "overlap": st_file({"a": e("F32", [2], 0, 8), "b": e("F32", [2], 4, 12)}, b"\x00" * 12),
    "bad_len": st_file({"a": e("F32", [1], 0, 4)}, b"\x00" * 4, length=1000),
}

LFM2_350M = {
    "architectures": ["Lfm2ForCausalLM"], "block_auto_adjust_ff_dim": True, "block_dim": 1024, "block_ff_dim": 6656,
    "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256, "block_norm_eps": 1e-05, "bos_token_id": 1,
    "conv_L_cache": 3, "conv_bias": False, "eos_token_id": 7, "hidden_size": 1024, "intermediate_size": 6656,
    "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                    "full_attention", "conv", "full_attention", "conv", "full_attention", "conv", "full_attention",
                    "conv"],
    "max_position_embeddings": 128000, "model_type": "lfm2", "norm_eps": 1e-05, "num_attention_heads": 16,
    "num_heads": 16, "num_hidden_layers": 16, "num_key_value_heads": 8, "pad_token_id": 0, "rope_theta": 1000000.0,
    "vocab_size": 65536,
}
LFM2_1_2B = {
    "block_ff_dim": 12288, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256, "full_attn_idxs": [2, 5, 8, 10, 12, 14],
    "hidden_size": 2048, "model_type": "lfm2", "num_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "theta": 1000000.0, "tie_embedding": True, "vocab_size": 65536, "eos_token_id": [7, 2],
}
TINY = {
    "vocab_size": 97, "hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 3, "num_key_value_heads": 1,
    "intermediate_size": 160, "conv_L_cache": 4, "block_multiple_of": 16, "block_auto_adjust_ff_dim": False,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "head_dim": 16, "pad_token_id": None,
}
CONFIG = {
    "lfm2_350m.json": json.dumps(LFM2_350M, indent=2).encode(),
    "lfm2_1_2b.json": json.dumps(LFM2_1_2B).encode(),
    "tiny.json": json.dumps(TINY).encode(),
    "vl.json": json.dumps({"model_type": "lfm2-vl", "text_config": TINY, "vision_config": {"hidden_size": 768}}).encode(),
    "missing_key.json": b'{"hidden_size": 8, "num_hidden_layers": 1}',
    "bad_json.json": b'{"vocab_size": 10, "hidden_size": 8,, "x": "\\ud800"}',
    "index.json": json.dumps({"metadata": {"total_size": 16}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.embedding_norm.weight": "model-00002-of-00002.safetensors"}}).encode(),
}

for sub, files in (("safetensors", SAFETENSORS), ("config", CONFIG)):
    d = os.path.join(HERE, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
