"""LFM2-VL: the SigLIP2 vision tower and projector feeding the LFM2 language model, both in the C core.

An image becomes tiles (``Lfm2VlProcessor``), the tiles become projected features (``VisionTower``), and the
features replace the embeddings of the prompt's ``<image>`` tokens, one feature per token in order
(transformers' ``masked_scatter``). Gradients of a caption loss flow back through the same path into the
vision tower and projector.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from captionaura import _core
from captionaura._io import read_json, write_json_atomic
from captionaura.config import Lfm2Config
from captionaura.device import cuda_available, cuda_status, normalize_device
from captionaura.generate import GenerationConfig
from captionaura.model import ArrayLike, Lfm2Model, Lfm2Output, _token_array
from captionaura.processor import Lfm2VlProcessor, ProcessorOutput
from captionaura.video import CONTEXT_MODES, VideoFrames, aggregate_captions, fit_frames, sample_frames
from captionaura.vision import VisionConfig, VisionTower

if TYPE_CHECKING:  # pragma: no cover
    from captionaura.personal import StyleProfile

TEXT_PREFIX = "model.language_model."
DEFAULT_CAPTION_PROMPT = "Write a short caption for this image."


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
                       query: str = "", num_examples: int = 3) -> CaptionContext:
        """The user text of a caption prompt (returned in ``context.text`` with the retrieved ``examples``):
        the video context, the request, the user's style (the ``num_examples`` posts closest to ``query``),
        and the language instruction."""
        from captionaura.personal import language_name

        context = context or CaptionContext()
        parts = []
        if context.mode == "frames" and context.frames is not None and len(context.frames):
            n = len(context.frames)
            parts.append(f"The first {n} image{'s are frames' if n > 1 else ' is a frame'} of a video, in time "
                         "order, leading up to the last image.")
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
        the same prompt, ``"captions"`` puts the aggregated frame captions in the text. ``style`` (a
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
        context = self.video_context(video, context_mode, settings, video_config, progressbar) \
            if video is not None else CaptionContext()
        context_images = list(context.frames.frames) if context.mode == "frames" and context.frames is not None \
            else []
        plain = video is None and style is None and language is None
        captions, prompts = [], []
        for image in targets:
            text = prompt
            if not plain:
                query = " ".join([context.sentence, *context.frame_captions])
                if style is not None and not query.strip():
                    ids, features = self._caption_inputs(image, None)
                    query = self._generate_caption(ids, features, settings)
                text = self.caption_prompt(prompt, context, style, language, query, num_examples).text
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

    def to_inference_dtype(self, dtype: str) -> "Lfm2VlModel":
        """The language model's inference weights ("fp32", "bf16" or "int8", see ``Lfm2Model.to_inference_dtype``);
        decoding is where they matter (the vision tower runs once per image and stays fp32). Returns self."""
        self.text.to_inference_dtype(dtype)
        return self

    def __repr__(self) -> str:
        return f"Lfm2VlModel(text={self.text!r}, vision={self.vision!r})"


def _write_png_atomic(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(frame).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
