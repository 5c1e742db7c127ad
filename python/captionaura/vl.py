"""LFM2-VL: the SigLIP2 vision tower and projector feeding the LFM2 language model, both in the C core.

An image becomes tiles (``Lfm2VlProcessor``), the tiles become projected features (``VisionTower``), and the
features replace the embeddings of the prompt's ``<image>`` tokens, one feature per token in order
(transformers' ``masked_scatter``). Gradients of a caption loss flow back through the same path into the
vision tower and projector.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from captionaura import _core
from captionaura._io import read_json, write_json_atomic
from captionaura.config import Lfm2Config
from captionaura.device import cuda_available, cuda_status, normalize_device
from captionaura.generate import GenerationConfig
from captionaura.model import ArrayLike, Lfm2Model, Lfm2Output, _token_array
from captionaura.processor import Lfm2VlProcessor, ProcessorOutput
from captionaura.vision import VisionConfig, VisionTower

TEXT_PREFIX = "model.language_model."
DEFAULT_CAPTION_PROMPT = "Write a short caption for this image."


class Lfm2VlModel:
    """``Lfm2VlForConditionalGeneration`` on captionaura's C core.

    ``text`` is the language model (an ``Lfm2Model``: LoRA, caches and generation work on it as on a text
    model), ``vision`` the tower + projector, ``processor`` the checkpoint's processor when the folder has
    one (tokenizer, chat template, image processor)."""

    def __init__(self, config: dict[str, Any], text: Lfm2Model, vision: VisionTower,
                 processor: Lfm2VlProcessor | None = None) -> None:
        self.config = config
        self.text = text
        self.vision = vision
        self.processor = processor
        token = config.get("image_token_id", config.get("image_token_index"))
        if token is None:
            raise KeyError("config.json has neither image_token_id nor image_token_index")
        self.image_token_id = int(token)
        self.generation_config: GenerationConfig | None = None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> "Lfm2VlModel":
        """A local LFM2-VL checkpoint folder (remote-code or transformers-native config.json, safetensors,
        and the processor files when present)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {path}")
        config = read_json(path / "config.json", "config file")
        if "text_config" not in config or "vision_config" not in config:
            raise KeyError(f"{path / 'config.json'} is not an LFM2-VL config (no text_config / vision_config)")
        text = Lfm2Model._load(path, Lfm2Config.from_dict(config["text_config"]), prefix=TEXT_PREFIX)
        vision = VisionTower.from_pretrained(path)
        processor = Lfm2VlProcessor.from_pretrained(path) if (path / "tokenizer.json").is_file() else None
        model = cls(config, text, vision, processor)
        if (path / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(path)
        return model

    @classmethod
    def from_config(cls, config: dict[str, Any], seed: int = 0) -> "Lfm2VlModel":
        """Random weights for an LFM2-VL config dictionary (text_config, vision_config, projector fields)."""
        text = Lfm2Model.from_config(Lfm2Config.from_dict(config["text_config"]), seed=seed)
        vision = VisionTower.from_config(VisionConfig.from_dict(config), seed=seed + 1)
        return cls(dict(config), text, vision)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """config.json and one model.safetensors with Hugging Face names (atomically), plus the processor."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = dict(self.parameters())
        _core.safetensors_save(str(path / "model.safetensors"), tensors, {"format": "pt"})
        write_json_atomic(path / "config.json", self.config)
        if self.processor is not None:
            self.processor.save_pretrained(path)

    # -- compute --------------------------------------------------------------------------------------
    def image_features(self, pixel_values: np.ndarray, spatial_shapes: np.ndarray,
                       pixel_attention_mask: np.ndarray | None = None, train: bool = False) -> np.ndarray:
        """Projected features (Σ tokens, text hidden) of a batch of tiles, in tile order."""
        return self.vision.encode(pixel_values, spatial_shapes, pixel_attention_mask, train=train)

    def _inputs(self, input_ids, pixel_values, spatial_shapes, pixel_attention_mask, images, text, messages):
        if images is not None or text is not None or messages is not None:
            if self.processor is None:
                raise ValueError("this model has no processor: pass input_ids and pixel values")
            batch: ProcessorOutput = self.processor(images=images, text=text, messages=messages)
            return (batch.input_ids, batch.attention_mask, batch.pixel_values, batch.spatial_shapes,
                    batch.pixel_attention_mask)
        return input_ids, None, pixel_values, spatial_shapes, pixel_attention_mask

    def _features(self, ids: np.ndarray, pixel_values, spatial_shapes, pixel_attention_mask, train: bool):
        positions = np.flatnonzero(ids.reshape(-1) == self.image_token_id).astype(np.int32)
        if pixel_values is None:
            if positions.size:
                raise ValueError(f"the prompt has {positions.size} <image> tokens but no image was given")
            return None, None
        features = self.image_features(pixel_values, spatial_shapes, pixel_attention_mask, train=train)
        if features.shape[0] != positions.size:
            raise ValueError(f"the prompt has {positions.size} <image> tokens but the images give "
                             f"{features.shape[0]} features: image tokens and images do not match")
        return positions, features

    def forward(self, input_ids: ArrayLike | None = None, attention_mask: ArrayLike | None = None,
                pixel_values: np.ndarray | None = None, spatial_shapes: np.ndarray | None = None,
                pixel_attention_mask: np.ndarray | None = None, *, images: Any = None,
                text: str | Sequence[str] | None = None, messages: Sequence[dict] | None = None,
                output_hidden_states: bool = False) -> Lfm2Output:
        """Logits (B, T, V) for token ids with pixel tiles, or for raw ``images`` with ``text``/``messages``
        (run through the processor)."""
        ids, mask, pv, ss, pm = self._inputs(input_ids, pixel_values, spatial_shapes, pixel_attention_mask,
                                             images, text, messages)
        ids = _token_array(ids, "input_ids")
        mask = attention_mask if attention_mask is not None else mask
        positions, features = self._features(ids, pv, ss, pm, train=False)
        return self.text.forward(ids, mask, output_hidden_states=output_hidden_states,
                                 features=None if positions is None else (positions, features))

    __call__ = forward

    def loss_and_grad(self, input_ids: ArrayLike, labels: ArrayLike, attention_mask: ArrayLike | None = None,
                      pixel_values: np.ndarray | None = None, spatial_shapes: np.ndarray | None = None,
                      pixel_attention_mask: np.ndarray | None = None, train_vision: bool = True,
                      accumulate: bool = False) -> float:
        """Causal-LM loss of a (caption) batch; fills the language model's gradients (or its LoRA's) and, with
        ``train_vision``, the vision tower's and projector's (overwritten, or added to with ``accumulate``)."""
        ids = _token_array(input_ids, "input_ids")
        positions, features = self._features(ids, pixel_values, spatial_shapes, pixel_attention_mask,
                                             train=train_vision)
        if positions is None:
            return self.text.loss_and_grad(ids, labels, attention_mask, accumulate=accumulate)
        grad = np.empty_like(features) if train_vision else None
        loss = self.text.loss_and_grad(ids, labels, attention_mask, accumulate=accumulate,
                                       features=(positions, features), feature_grad=grad)
        if train_vision:
            self.vision.backward(grad, accumulate=accumulate)
        return loss

    def caption_example(self, image: Any, caption: str, prompt: str | None = None) -> dict[str, np.ndarray]:
        """One training example: the user turn (the image and ``prompt``) rendered by the chat template, then the
        assistant's ``caption`` and ``<|im_end|>``. Labels are −100 on the prompt and image tokens, so only the
        caption (and its end) is scored; the image's tiles come along for ``Trainer``/``collate``."""
        if self.processor is None:
            raise ValueError("building captioning examples needs the checkpoint's processor")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError("caption must be a non-empty string")
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": prompt or DEFAULT_CAPTION_PROMPT}]}]
        batch = self.processor(images=[image], messages=messages)
        prompt_ids = np.asarray(batch.input_ids)[0].astype(np.int32)
        target = np.asarray(self.processor.tokenizer.encode(caption + "<|im_end|>", add_special_tokens=False),
                            np.int32)
        ids = np.concatenate([prompt_ids, target])
        labels = np.concatenate([np.full(prompt_ids.size, -100, np.int32), target])
        return {"input_ids": ids, "labels": labels, "pixel_values": batch.pixel_values,
                "spatial_shapes": batch.spatial_shapes, "pixel_attention_mask": batch.pixel_attention_mask}

    # -- captions -------------------------------------------------------------------------------------
    def _caption_settings(self, generation: GenerationConfig | None) -> GenerationConfig:
        if self.processor is None:
            raise ValueError("captioning needs the checkpoint's processor (tokenizer.json and processor config)")
        if generation is not None:
            return generation
        if self.generation_config is not None:
            return self.generation_config
        tok = self.processor.tokenizer
        eos = tok.token_to_id("<|im_end|>")
        return GenerationConfig(max_new_tokens=64, do_sample=False,
                                eos_token_id=eos if eos is not None else tok.eos_token_id,
                                pad_token_id=tok.pad_token_id)

    def _caption_inputs(self, image: Any, prompt: str | None):
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": prompt or DEFAULT_CAPTION_PROMPT}]}]
        batch = self.processor(images=[image], messages=messages)
        ids = np.asarray(batch.input_ids)[0].astype(np.int32)
        positions, features = self._features(ids[None], batch.pixel_values, batch.spatial_shapes,
                                             batch.pixel_attention_mask, train=False)
        return ids, (positions, features)

    def caption(self, images: Any, prompt: str | None = None, generation: GenerationConfig | None = None,
                stream: bool = False) -> str | list[str] | Iterator[str]:
        """Caption one image (a path, bytes, a Pillow image or an (H, W, 3) uint8 array) or a list of them.

        The image and ``prompt`` (default: a short-caption request) go through the chat template; decoding
        follows ``generation`` (default: the checkpoint's generation_config.json, else greedy up to 64 new
        tokens ending at ``<|im_end|>``). ``stream=True`` (one image) yields the caption's text as it grows."""
        settings = self._caption_settings(generation)
        single = not isinstance(images, (list, tuple))
        if stream:
            if not single:
                raise ValueError("stream=True captions one image at a time")
            ids, features = self._caption_inputs(images, prompt)
            return self._stream_caption(ids, features, settings)
        captions = []
        for image in [images] if single else images:
            ids, features = self._caption_inputs(image, prompt)
            out = self.text.generate(ids, generation=settings, features=features, return_scores=True)
            tokens = out.sequences[0, : int(out.lengths[0])]
            captions.append(self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        return captions[0] if single else captions

    def _stream_caption(self, ids: np.ndarray, features, settings: GenerationConfig) -> Iterator[str]:
        tok, tokens, shown = self.processor.tokenizer, [], ""
        for _, token in self.text.generate(ids, generation=settings, features=features, stream=True):
            tokens.append(token)
            text = tok.decode(tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
                continue
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text

    # -- parameters -----------------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        """Every parameter under its LFM2-VL checkpoint name."""
        out = {TEXT_PREFIX + k[len("model."):] if k.startswith("model.") else k: v
               for k, v in self.text.parameters().items()}
        out.update(self.vision.parameters())
        return out

    def gradients(self) -> dict[str, np.ndarray]:
        out = {TEXT_PREFIX + k[len("model."):] if k.startswith("model.") else k: v
               for k, v in self.text.gradients().items()}
        out.update(self.vision.gradients())
        return out

    def num_parameters(self) -> int:
        return self.text.num_parameters() + self.vision.num_parameters()

    @property
    def device(self) -> str:
        """"cuda" when both towers compute on the CUDA backend, else "cpu"."""
        return "cuda" if self.text.device == self.vision.device == "cuda" else "cpu"

    def to(self, device: str) -> "Lfm2VlModel":
        """Move the language model and the vision tower to ``device`` ("cpu" or "cuda") and return self;
        RuntimeError naming the reason when CUDA cannot be used (nothing moves then)."""
        device = normalize_device(device)
        if device == "cuda" and not cuda_available():
            raise RuntimeError(f"CUDA is not available: {cuda_status()['reason']}")
        self.vision.to(device)
        self.text.to(device)
        return self

    def __repr__(self) -> str:
        return f"Lfm2VlModel(text={self.text!r}, vision={self.vision!r})"
