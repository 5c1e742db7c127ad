"""LFM2-VL: the SigLIP2 vision tower and projector feeding the LFM2 language model, both in the C core.

An image becomes tiles (``Lfm2VlProcessor``), the tiles become projected features (``VisionTower``), and the
features replace the embeddings of the prompt's ``<image>`` tokens, one feature per token in order
(transformers' ``masked_scatter``). Gradients of a caption loss flow back through the same path into the
vision tower and projector.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from captionaura import _core
from captionaura._io import atomic_write, read_json, write_json_atomic
from captionaura.config import Lfm2Config
from captionaura.device import cuda_available, cuda_status, normalize_device
from captionaura.generate import GenerationConfig
from captionaura.lora import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PEFT_PREFIX, LoraConfig, peft_key
from captionaura.model import ArrayLike, Lfm2Model, Lfm2Output, _token_array
from captionaura.processor import Lfm2VlProcessor, ProcessorOutput
from captionaura.video import CONTEXT_MODES, VideoFrames, aggregate_captions, fit_frames, sample_frames
from captionaura.vision import VisionConfig, VisionTower

if TYPE_CHECKING:  # pragma: no cover
    from captionaura.personal import StyleProfile

TEXT_PREFIX = "model.language_model."
#: module paths of the vision side as transformers 5 names them in Lfm2VlForConditionalGeneration (what PEFT
#: matches and saves); checkpoints may also spell the tower "model.vision_tower.vision_model."
TOWER_MODULE_PREFIX = "model.vision_tower."
PROJECTOR_MODULE_PREFIX = "model.multi_modal_projector."
DEFAULT_CAPTION_PROMPT = "Write a short caption for this image."
REFERENCE_PROMPT = "The first image is a reference photo from the user: mention what it shows if it appears."


@dataclass
class VideoContextConfig:
    """How a video becomes caption context: sampling (``fps``, ``max_frames``, ``dedupe``, see
    ``captionaura.video.sample_frames``; ``source_fps`` is the frame rate of a video given as an array) and,
    in ``"frames"`` mode, the image-token budget of the context frames (``frame_token_budget``) and the tokens
    each frame is shrunk to (``frame_image_tokens``, default the processor's ``min_image_tokens``)."""

    fps: float = 1.0
    max_frames: int = 12
    dedupe: bool = True
    source_fps: float | None = None
    frame_token_budget: int = 768
    frame_image_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.frame_token_budget < 0:
            raise ValueError(f"frame_token_budget must be >= 0, got {self.frame_token_budget}")


@dataclass
class CaptionContext:
    """What went around the image in a caption prompt: the context ``mode`` (None without a video), the
    context ``frames`` (frames mode: those in the prompt; captions mode: every sampled frame), their
    ``frame_captions`` and aggregated ``sentence`` (captions mode), the image tokens of the frames
    (``frame_tokens``), the retrieved style ``examples`` and the user ``text`` of the prompt."""

    mode: str | None = None
    frames: VideoFrames | None = None
    frame_captions: list[str] = field(default_factory=list)
    sentence: str = ""
    frame_tokens: int = 0
    examples: list[str] = field(default_factory=list)
    text: str = ""


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
        self.lora_config: LoraConfig | None = None
        self._merged = False
        self._lora_A_frozen = False

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], dtype: str = "fp32", keep_fp32: bool = True) -> "Lfm2VlModel":
        """A local LFM2-VL checkpoint folder (remote-code or transformers-native config.json, safetensors,
        and the processor files when present). ``dtype`` and ``keep_fp32`` are ``to_inference_dtype``'s, applied
        while loading (``Lfm2Model.from_pretrained``, ``VisionTower.from_pretrained``)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {path}")
        config = read_json(path / "config.json", "config file")
        if "text_config" not in config or "vision_config" not in config:
            raise KeyError(f"{path / 'config.json'} is not an LFM2-VL config (no text_config / vision_config)")
        text = Lfm2Model._load(path, Lfm2Config.from_dict(config["text_config"]), prefix=TEXT_PREFIX, dtype=dtype,
                               keep_fp32=keep_fp32)
        vision = VisionTower.from_pretrained(path, "bf16" if dtype == "bf16" else "fp32", keep_fp32)
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

    def _caption_inputs(self, image: Any, prompt: str | None, context_images: Sequence[Any] = ()):
        """Prompt ids and image features of one user turn: the ``context_images``, the image, then the text."""
        content = [{"type": "image"} for _ in range(len(context_images) + 1)]
        content.append({"type": "text", "text": prompt or DEFAULT_CAPTION_PROMPT})
        batch = self.processor(images=[*context_images, image], messages=[{"role": "user", "content": content}])
        ids = np.asarray(batch.input_ids)[0].astype(np.int32)
        positions, features = self._features(ids[None], batch.pixel_values, batch.spatial_shapes,
                                             batch.pixel_attention_mask, train=False)
        return ids, (positions, features)

    def _generate_caption(self, ids: np.ndarray, features, settings: GenerationConfig) -> str:
        out = self.text.generate(ids, generation=settings, features=features, return_scores=True)
        tokens = out.sequences[0, : int(out.lengths[0])]
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def video_context(self, video: Any, context_mode: str = "frames", generation: GenerationConfig | None = None,
                      video_config: VideoContextConfig | None = None, progressbar: bool = False) -> CaptionContext:
        """The context of ``video`` (a file path, an (F, H, W, 3) uint8 array at ``video_config.source_fps``
        frames per second, or ready ``VideoFrames``): in ``"frames"`` mode the frames that fit the token budget,
        in ``"captions"`` mode every sampled frame captioned on its own and the captions aggregated into one
        sentence."""
        if context_mode not in CONTEXT_MODES:
            raise ValueError(f"context_mode must be one of {CONTEXT_MODES}, got {context_mode!r}")
        cfg = video_config or VideoContextConfig()
        frames = video if isinstance(video, VideoFrames) else \
            sample_frames(video, fps=cfg.fps, max_frames=cfg.max_frames, source_fps=cfg.source_fps,
                          dedupe=cfg.dedupe)
        settings = self._caption_settings(generation)
        if context_mode == "frames":
            kept, tokens = fit_frames(frames, self.processor, cfg.frame_token_budget, cfg.frame_image_tokens)
            return CaptionContext(mode="frames", frames=kept, frame_tokens=tokens)
        from tqdm.auto import tqdm

        captions = []
        for frame in tqdm(frames.frames, desc="frame captions", disable=not progressbar):
            ids, features = self._caption_inputs(frame, None)
            captions.append(self._generate_caption(ids, features, settings))
        return CaptionContext(mode="captions", frames=frames, frame_captions=captions,
                              sentence=aggregate_captions(captions))

    def caption_prompt(self, prompt: str | None = None, context: CaptionContext | None = None,
                       style: "StyleProfile | None" = None, language: str | None = None,
                       query: str = "", num_examples: int = 3, reference: bool = False) -> CaptionContext:
        """The user text of a caption prompt (returned in ``context.text`` with the retrieved ``examples``):
        the reference image (first in the prompt, when there is one), the video context, the request, the
        user's style (the ``num_examples`` posts closest to ``query``), and the language instruction."""
        from captionaura.personal import language_name

        context = context or CaptionContext()
        parts = []
        if reference:
            parts.append(REFERENCE_PROMPT)
        if context.mode == "frames" and context.frames is not None and len(context.frames):
            n = len(context.frames)
            parts.append(f"The {'next' if reference else 'first'} {n} image{'s are frames' if n > 1 else ' is a frame'}"
                         " of a video, in time order, leading up to the last image.")
        elif context.mode == "captions" and context.sentence:
            parts.append(f"Context from a video taken just before: {context.sentence}")
        parts.append(prompt or DEFAULT_CAPTION_PROMPT)
        if style is not None:
            context.examples = style.retrieve(query, num_examples)
            parts.append(style.prompt_text(context.examples))
        if language is not None:
            parts.append(f"Write the caption in {language_name(language)}.")
        context.text = "\n".join(parts)
        return context

    def caption(self, images: Any, prompt: str | None = None, generation: GenerationConfig | None = None,
                stream: bool = False, *, video: Any = None, context_mode: str = "frames",
                context: CaptionContext | None = None, reference: Any = None,
                style: "StyleProfile | None" = None, language: str | None = None,
                video_config: VideoContextConfig | None = None, num_examples: int = 3,
                results_dir: str | os.PathLike[str] | None = None,
                progressbar: bool = False) -> str | list[str] | Iterator[str]:
        """Caption one image (a path, bytes, a Pillow image or an (H, W, 3) uint8 array) or a list of them.

        The image and ``prompt`` (default: a short-caption request) go through the chat template; decoding
        follows ``generation`` (default: the checkpoint's generation_config.json, else greedy up to 64 new
        tokens ending at ``<|im_end|>``). ``stream=True`` (one image) yields the caption's text as it grows.

        ``video`` (a file, an array or ``VideoFrames``) adds what happened before the photo
        (:meth:`video_context`): ``context_mode="frames"`` puts the frames as images before the target image in
        the same prompt, ``"captions"`` puts the aggregated frame captions in the text. ``context``: a context
        built beforehand instead of ``video`` (from :meth:`video_context`, or from captions already written:
        ``CaptionContext("captions", frame_captions=captions, sentence=aggregate_captions(captions))``).
        ``reference``: an image of the user's (their dog, their bike) put first in the prompt, with an
        instruction to mention it if it appears. ``style`` (a
        ``StyleProfile``) adds the user's closest posts as examples and a summary of their style; the posts are
        retrieved by word overlap with the frame captions in captions mode, else with a plain draft caption of
        the image. ``language`` (a code such as "fr", or a name) asks for the caption in that language.
        ``results_dir`` receives ``frames/frame_NNN.png`` and ``captions.json`` (frame times, scene changes,
        per-frame captions, the context sentence, examples, prompt text and caption), each written atomically."""
        settings = self._caption_settings(generation)
        single = not isinstance(images, (list, tuple))
        targets = [images] if single else list(images)
        if stream and (not single or results_dir is not None):
            raise ValueError("stream=True captions one image at a time, without a results folder")
        if video is not None and context is not None:
            raise ValueError("give either video or a ready context, not both")
        if video is not None:
            context = self.video_context(video, context_mode, settings, video_config, progressbar)
        context = context or CaptionContext()
        context_images = list(context.frames.frames) if context.mode == "frames" and context.frames is not None \
            else []
        if reference is not None:
            context_images.insert(0, reference)
        plain = video is None and style is None and language is None and context.mode is None and reference is None
        captions, prompts = [], []
        for image in targets:
            text = prompt
            if not plain:
                query = " ".join([context.sentence, *context.frame_captions])
                if style is not None and not query.strip():
                    ids, features = self._caption_inputs(image, None)
                    query = self._generate_caption(ids, features, settings)
                text = self.caption_prompt(prompt, context, style, language, query, num_examples,
                                           reference is not None).text
            prompts.append(text or DEFAULT_CAPTION_PROMPT)
            ids, features = self._caption_inputs(image, text, context_images)
            if stream:
                return self._stream_caption(ids, features, settings)
            captions.append(self._generate_caption(ids, features, settings))
        if results_dir is not None:
            _write_results(Path(results_dir), context, captions, prompts)
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
        text = tok.decode(tokens, skip_special_tokens=True)
        if len(text) > len(shown):  # the caption ended inside a character: as the plain caption shows it
            yield text[len(shown):]


    # -- LoRA -----------------------------------------------------------------------------------------
    def _lora_candidates(self) -> list[tuple[str, str, int, int]]:
        """(module path, "text" or "vision", layer, projection index) of every linear that can carry an adapter,
        under the module paths of transformers' Lfm2VlForConditionalGeneration. lm_head is not among them
        (PEFT's "all-linear" leaves the output layer out)."""
        out = []
        for layer, kind in enumerate(self.text.config.layer_types):
            for p, name in enumerate(_core.LFM2_PROJECTIONS):
                if (name.startswith("self_attn.") and kind != "full_attention") or \
                        (name.startswith("conv.") and kind != "conv"):
                    continue
                out.append((f"{TEXT_PREFIX}layers.{layer}.{name}", "text", layer, p))
        names = _core.VISION_PROJECTIONS  # six per encoder layer, then patch embedding, linear_1, linear_2
        for layer in range(self.vision.config.num_layers_run):
            for p in range(6):
                out.append((f"{TOWER_MODULE_PREFIX}encoder.layers.{layer}.{names[p]}", "vision", layer, p))
        out.append((f"{TOWER_MODULE_PREFIX}{names[6]}", "vision", -1, 6))
        out += [(f"{PROJECTOR_MODULE_PREFIX}{names[p]}", "vision", -1, p) for p in (7, 8)]
        return out

    def _check_unsupported_targets(self, config: LoraConfig) -> None:
        if config.target_modules == "all-linear":
            return
        unsupported = [f"{TEXT_PREFIX}layers.{i}.conv.conv" for i, kind in enumerate(self.text.config.layer_types)
                       if kind == "conv"]
        unsupported += [f"{TEXT_PREFIX}embed_tokens", f"{TOWER_MODULE_PREFIX}embeddings.position_embedding",
                        "lm_head"]
        for path in unsupported:
            if config.matches(path):
                raise NotImplementedError(f"target_modules matches {path}, which is not a linear projection; "
                                          "LoRA is supported on linear layers only")

    def add_lora(self, config: LoraConfig, seed: int = 0) -> None:
        """Put adapters on every linear of the language model, the vision tower and the projector whose module
        path (``model.language_model.layers.0.conv.in_proj``, ``model.vision_tower.encoder.layers.0.self_attn
        .q_proj``, ``model.vision_tower.embeddings.patch_embedding``, ``model.multi_modal_projector.linear_1``
        ...) ``config.target_modules`` matches, with PEFT's rules ("all-linear": every linear but lm_head), and
        freeze every base weight except the language model's ``modules_to_save``. Replaces existing adapters."""
        self._check_unsupported_targets(config)
        targets = [c for c in self._lora_candidates() if config.matches(c[0])]
        if not targets:
            raise ValueError(f"target_modules={config.target_modules!r} matches no linear module of this model")
        text_modules = self._text_modules_to_save(config)
        if self.lora_config is not None:
            self.remove_lora()
        text_targets = [(layer, p) for _, part, layer, p in targets if part == "text"]
        vision_targets = [(layer, p) for _, part, layer, p in targets if part == "vision"]
        text_config = LoraConfig(**{**config.__dict__, "modules_to_save": text_modules or None})
        if text_targets:
            self.text._add_lora_targets(text_config, text_targets, seed)
        else:  # no text adapter: the language model stays frozen but for its modules_to_save
            self.text.remove_lora()
            save = self.text._modules_to_save(text_config)
            for index, (name, *_rest) in enumerate(self.text._table):
                self.text._core.set_trainable(index, name in save)
        core = self.vision._core
        if vision_targets:
            core.lora_add(np.array([t[0] for t in vision_targets], np.int32),
                          np.array([t[1] for t in vision_targets], np.int32), config.r, config.scaling,
                          config.lora_dropout)
            if config.init_lora_weights is False:  # PEFT's debugging init: both factors random
                flat = core.lora_params()
                flat[:] = np.random.default_rng([seed, 1]).normal(0.0, 0.02, flat.size)
            else:
                core.lora_init(int(seed) + 1, config.init_lora_weights == "gaussian")
            core.set_dropout_seed(int(seed))
        else:
            core.lora_clear()
        core.set_lora_enabled(True)
        core.set_base_frozen(True)  # the tower's and projector's base weights take no gradient under LoRA
        self.lora_config = config
        self._merged = False
        self._lora_A_frozen = False

    def _text_modules_to_save(self, config: LoraConfig) -> list[str]:
        """modules_to_save in the language model's own names (only language-model modules are supported)."""
        out = []
        for wanted in config.modules_to_save or ():
            name = "model." + wanted[len(TEXT_PREFIX):] if wanted.startswith(TEXT_PREFIX) else wanted
            if wanted.startswith(("model.vision_tower", "model.multi_modal_projector", "vision_tower",
                                  "multi_modal_projector")):
                raise NotImplementedError(f"modules_to_save entry {wanted!r}: only language-model modules are "
                                          "supported")
            out.append(name)
        return out

    def _require_lora(self) -> LoraConfig:
        if self.lora_config is None:
            raise RuntimeError("this model has no LoRA adapters; call add_lora() or load_adapter() first")
        return self.lora_config

    def freeze_lora_A(self, frozen: bool = True) -> None:
        """FFA-LoRA on the whole model: every A (language model, tower, projector) keeps its shared-seed
        initialisation and only the B factors train (no A gradients, and ``trainable_buffers`` holds B only)."""
        self._require_lora()
        if self.text.lora_config is not None:
            self.text.freeze_lora_A(frozen)
        self.vision._core.set_lora_freeze_A(bool(frozen))
        self._lora_A_frozen = bool(frozen)

    def set_dropout_seed(self, seed: int) -> None:
        """Seed of the LoRA dropout masks of the language model and of the vision side."""
        self.text._core.set_dropout_seed(int(seed))
        self.vision._core.set_dropout_seed(int(seed))

    def lora_base_weight(self, module: str) -> np.ndarray:
        """The base weight (out, in) view of the linear an adapter of ``lora_modules()`` sits on (the tower's
        parameters are named ``model.vision_tower.vision_model.…``, its adapters ``model.vision_tower.…``)."""
        name = module + ".weight"
        if name.startswith(TOWER_MODULE_PREFIX) and not name.startswith(TOWER_MODULE_PREFIX + "vision_model."):
            name = TOWER_MODULE_PREFIX + "vision_model." + name[len(TOWER_MODULE_PREFIX):]
        params = self.parameters()
        if name not in params:
            raise KeyError(f"no base weight for adapted module {module!r}")
        return params[name]

    def lora_modules(self) -> list[dict]:
        """One entry per adapter, language model first: module path, r, in/out features, scaling, dropout, and
        the offsets of A and B in ``lora_vector()``."""
        self._require_lora()
        out = []
        text_size = 0
        if self.text.lora_config is not None:
            for m in self.text.lora_modules():
                out.append({**m, "module": TEXT_PREFIX + m["module"][len("model."):]})
            text_size = self.text.lora_vector().size
        for layer, proj, r, fin, fout, a, b, scale, drop in self.vision._core.lora_table():
            if layer >= 0:
                module = f"{TOWER_MODULE_PREFIX}encoder.layers.{layer}.{proj}"
            elif proj.startswith("linear_"):
                module = PROJECTOR_MODULE_PREFIX + proj
            else:
                module = TOWER_MODULE_PREFIX + proj
            out.append({"module": module, "r": r, "in_features": fin, "out_features": fout,
                        "a_offset": text_size + a, "b_offset": text_size + b, "scaling": scale, "dropout": drop})
        return out

    def _lora_flats(self, grads: bool) -> list[np.ndarray]:
        """The language model's and the vision side's flat LoRA buffers (those that exist), in that order."""
        flats = []
        if self.text.lora_config is not None:
            flats.append(self.text._core.lora_grads() if grads else self.text._core.lora_params())
        flat = self.vision._core.lora_grads() if grads else self.vision._core.lora_params()
        if flat is not None:
            flats.append(flat)
        return flats

    def lora_buffers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(parameters, gradients) flat LoRA buffer pairs (views) in ``lora_vector()`` order: the language
        model's, then the vision side's (those that exist)."""
        self._require_lora()
        return list(zip(self._lora_flats(grads=False), self._lora_flats(grads=True)))

    def _lora_views(self, grads: bool) -> dict[str, np.ndarray]:
        text = self.text.lora_vector().size if self.text.lora_config is not None else 0
        flats = self._lora_flats(grads)
        out = {}
        for m in self.lora_modules():
            r, fin, fout = m["r"], m["in_features"], m["out_features"]
            flat, base = (flats[0], 0) if m["a_offset"] < text else (flats[-1], text)
            a, b = m["a_offset"] - base, m["b_offset"] - base
            out[peft_key(m["module"], "lora_A")] = flat[a: a + r * fin].reshape(r, fin)
            out[peft_key(m["module"], "lora_B")] = flat[b: b + fout * r].reshape(fout, r)
        return out

    def lora_parameters(self) -> dict[str, np.ndarray]:
        """PEFT key (``base_model.model.<module path>.lora_A.weight`` [r, in], ``…lora_B.weight`` [out, r]) →
        view, for every adapter of the language model, the vision tower and the projector."""
        self._require_lora()
        return self._lora_views(grads=False)

    def lora_gradients(self) -> dict[str, np.ndarray]:
        self._require_lora()
        return self._lora_views(grads=True)

    def lora_vector(self) -> np.ndarray:
        """Every adapter's A and B in one flat float32 array (a copy): the language model's buffer, then the
        vision side's — the federated update vector of the whole captioner (offsets in ``lora_modules()``)."""
        self._require_lora()
        return np.concatenate(self._lora_flats(grads=False))

    def set_lora_vector(self, vector: np.ndarray) -> None:
        self._require_lora()
        flats = self._lora_flats(grads=False)
        v = np.asarray(vector)
        size = sum(f.size for f in flats)
        if v.shape != (size,):
            raise ValueError(f"LoRA vector has shape {v.shape}, expected ({size},)")
        if not np.isfinite(v).all():
            raise ValueError("LoRA vector contains NaN or Inf")
        start = 0
        for flat in flats:
            flat[:] = v[start: start + flat.size]
            start += flat.size

    def _set_lora_enabled(self, on: bool) -> None:
        if self.text.lora_config is not None:
            self.text._core.set_lora_enabled(on)
        self.vision._core.set_lora_enabled(on)

    @contextlib.contextmanager
    def disable_lora(self) -> Iterator[None]:
        """Inside the block the whole model computes with its base weights only."""
        self._require_lora()
        self._set_lora_enabled(False)
        try:
            yield
        finally:
            self._set_lora_enabled(not self._merged)

    def merge_lora(self) -> None:
        """Fold every adapter into its base weight (W += s·B·A); the adapters stay, inactive, for unmerge."""
        self._require_lora()
        if not self._merged:
            if self.text.lora_config is not None:
                self.text.merge_lora()
            self.vision._core.lora_merge(1.0)
            self._set_lora_enabled(False)
            self._merged = True

    def unmerge_lora(self) -> None:
        self._require_lora()
        if self._merged:
            if self.text.lora_config is not None:
                self.text.unmerge_lora()
            self.vision._core.lora_merge(-1.0)
            self._set_lora_enabled(True)
            self._merged = False

    def remove_lora(self) -> None:
        """Drop every adapter (unmerging first if merged) and make every base tensor trainable again."""
        if self.lora_config is not None and self._merged:
            self.unmerge_lora()
        self.text.remove_lora()
        self.vision._core.lora_clear()
        self.vision._core.set_lora_enabled(True)
        self.vision._core.set_base_frozen(False)
        self.lora_config = None
        self._merged = False
        self._lora_A_frozen = False

    def _saved_modules(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """PEFT key → (parameter, gradient) views of the language model's modules_to_save."""
        config = self._require_lora()
        text_config = LoraConfig(**{**config.__dict__, "modules_to_save": self._text_modules_to_save(config) or None})
        names = sorted(self.text._modules_to_save(text_config))
        if not names:  # (parameters() is refused while a bf16 base's fp32 copy is dropped)
            return {}
        params, grads = self.text.parameters(), self.text.gradients()
        return {PEFT_PREFIX + TEXT_PREFIX + name[len("model."):] if name.startswith("model.") else PEFT_PREFIX + name:
                (params[name], grads[name]) for name in names}

    def save_adapter(self, path: str | os.PathLike[str]) -> None:
        """Write PEFT's adapter_config.json and adapter_model.safetensors for the whole LFM2-VL model (keys
        ``base_model.model.model.{language_model,vision_tower,multi_modal_projector}.…``), each atomically."""
        config = self._require_lora()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: np.ascontiguousarray(v) for k, v in self.lora_parameters().items()}
        tensors.update({k: p for k, (p, _) in self._saved_modules().items()})
        _core.safetensors_save(str(path / ADAPTER_WEIGHTS_NAME), tensors, {"format": "pt"})
        write_json_atomic(path / ADAPTER_CONFIG_NAME, config.to_dict())

    def load_adapter(self, path: str | os.PathLike[str]) -> None:
        """Load a PEFT adapter folder of this LFM2-VL model strictly: every expected key present with its shape,
        nothing else (a tower spelled ``model.vision_tower.vision_model.`` is accepted too)."""
        path = Path(path)
        weights = path / ADAPTER_WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"no {ADAPTER_WEIGHTS_NAME} in {path}")
        self.add_lora(LoraConfig.from_pretrained(path))
        expected = {**self.lora_parameters(), **{k: p for k, (p, _) in self._saved_modules().items()}}
        old_tower = PEFT_PREFIX + TOWER_MODULE_PREFIX + "vision_model."

        def canonical(key: str) -> str:
            return PEFT_PREFIX + TOWER_MODULE_PREFIX + key[len(old_tower):] if key.startswith(old_tower) else key

        header = {canonical(name): tuple(shape) for name, _, shape, *_ in _core.safetensors_header(str(weights))}
        missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
        if missing or unexpected:
            self.remove_lora()
            raise KeyError(f"adapter {path} does not fit this model: missing {missing[:3]}"
                           f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                           f"{'...' if len(unexpected) > 3 else ''}")
        for name, view in expected.items():
            if header[name] != view.shape:
                self.remove_lora()
                raise ValueError(f"adapter tensor {name} has shape {header[name]}, expected {view.shape}")
        for name, array in _core.safetensors_load(str(weights)).items():
            expected[canonical(name)][...] = array

    def trainable_buffers(self, vision: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(parameters, gradients) LoRA training updates: the language model's adapters and modules_to_save,
        and with ``vision`` the vision tower's and projector's adapters (their base weights stay frozen); only
        the B factors after ``freeze_lora_A``."""
        self._require_lora()
        if self.text.lora_config is not None:
            params, grads = self.text.trainable_buffers()
        else:
            params, grads = [], []
            for p, g in self._saved_modules().values():
                params.append(p.reshape(-1))
                grads.append(g.reshape(-1))
        flat_p, flat_g = self.vision._core.lora_params(), self.vision._core.lora_grads()
        if vision and flat_p is not None:
            if self._lora_A_frozen:  # only the B slices: A must not even see weight decay
                for _, _, r, _, fout, _, b, _, _ in self.vision._core.lora_table():
                    params.append(flat_p[b: b + fout * r])
                    grads.append(flat_g[b: b + fout * r])
            else:
                params.append(flat_p)
                grads.append(flat_g)
        return params, grads

    def num_trainable_parameters(self) -> int:
        return sum(p.size for p in self.trainable_buffers()[0])

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

    def to_inference_dtype(self, dtype: str, keep_fp32: bool = True) -> "Lfm2VlModel":
        """The weights used for inference and LoRA training: "fp32", "bf16" or "int8" for the language model (see
        ``Lfm2Model.to_inference_dtype``); the tower and projector follow in bf16 (``VisionTower.to_dtype``: bf16
        GEMMs, twice the fp32 rate) and stay fp32 otherwise. ``keep_fp32=False`` (bf16) gives back both sides'
        fp32 weights, for inference and LoRA on the frozen base. Returns self."""
        if dtype not in ("fp32", "bf16", "int8"):
            raise ValueError(f"inference dtype {dtype!r} is not one of 'fp32', 'bf16', 'int8'")
        self.text.to_inference_dtype(dtype, keep_fp32)
        self.vision.to_dtype("bf16" if dtype == "bf16" else "fp32", keep_fp32)
        return self

    @property
    def inference_dtype(self) -> str:
        """The language model's inference dtype (the tower is bf16 exactly when it is bf16)."""
        return self.text.inference_dtype

    def __repr__(self) -> str:
        return f"Lfm2VlModel(text={self.text!r}, vision={self.vision!r})"


def _write_png_atomic(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    with atomic_write(path) as f:
        Image.fromarray(frame).save(f, format="PNG")


def _write_results(folder: Path, context: CaptionContext, captions: list[str], prompts: list[str]) -> None:
    """``frames/frame_NNN.png`` for the context frames and ``captions.json`` describing the whole caption."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for stale in (folder / "frames").glob("frame_*.png"):  # from an earlier caption into the same folder
        stale.unlink()
    if context.frames is not None:
        (folder / "frames").mkdir(exist_ok=True)
        for i, frame in enumerate(context.frames.frames):
            name = f"frames/frame_{i:03d}.png"
            _write_png_atomic(folder / name, frame)
            entry = {"file": name, "timestamp": float(context.frames.timestamps[i]),
                     "scene_change": bool(context.frames.scene_change[i])}
            if context.frame_captions:
                entry["caption"] = context.frame_captions[i]
            frames.append(entry)
    write_json_atomic(folder / "captions.json", {
        "context_mode": context.mode, "video": context.frames.source if context.frames is not None else None,
        "frames": frames, "context": context.sentence, "frame_tokens": context.frame_tokens,
        "examples": context.examples, "prompts": prompts, "captions": captions})
