"""The built-in default model, aura-tiny, which ships inside the package (``captionaura/assets/aura-tiny``).

aura-tiny is a small LFM2-VL pretrained on AuraScenes by ``scripts/make_aura_tiny.py``; its folder is an ordinary
Hugging Face checkpoint (config.json, model.safetensors, tokenizer and processor files, generation_config.json),
so ``Lfm2VlModel.from_pretrained`` reads it like any other.
"""

from __future__ import annotations

from pathlib import Path

from captionaura.vl import Lfm2VlModel

DEFAULT_MODEL_NAME = "aura-tiny"


def default_model_path() -> Path:
    """The folder of the packaged aura-tiny checkpoint."""
    path = Path(__file__).resolve().parent / "assets" / DEFAULT_MODEL_NAME
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the packaged {DEFAULT_MODEL_NAME} checkpoint is missing ({path}); "
                                "reinstall captionaura or run scripts/make_aura_tiny.py")
    return path


def load_default() -> Lfm2VlModel:
    """aura-tiny with its processor (tokenizer, chat template, image settings) and generation settings."""
    return Lfm2VlModel.from_pretrained(default_model_path())
