"""The model-facing side of the server: ``CaptionService`` turns a connection's state (latest frame, video
context, reference image, past posts, generation settings) into a caption streamed piece by piece.

The model runs on one worker thread per service (a single-thread executor is the per-model lock: requests from
every connection queue there in order), never on the event loop; pieces come back through an asyncio queue.

Two plug-in points, both in this file only: the video-context caption API (``model.caption(image, video=...,
context_mode=..., style=..., language=...)``, detected from the signature) and
``captionaura.personal.StyleProfile`` (imported when present), used together in ``caption_into``. Until they
are merged (and whenever a reference image is given, which that API does not take) the context is put into
the prompt itself: earlier captions as text or earlier frames as extra images, the user's past posts as
few-shot examples of their voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from captionaura import _core
from captionaura.generate import GenerationConfig
from captionaura.serve.validation import InputError
from captionaura.vl import Lfm2VlModel

try:  # plug-in point 1: personal style profiles (captionaura.personal, another branch)
    from captionaura.personal import StyleProfile
except ImportError:
    StyleProfile = None

CONTEXT_MODES = ("captions", "frames")
#: The generation settings the page may change, with their accepted ranges.
USER_SETTINGS = {"max_new_tokens": (1, 128), "do_sample": None, "temperature": (0.05, 2.0), "top_k": (0, 1000),
                 "top_p": (0.05, 1.0), "repetition_penalty": (0.5, 2.0), "seed": (0, 2**31 - 1)}
MAX_POSTS = 8
MAX_POST_CHARS = 280
MAX_LANGUAGE_CHARS = 40


@dataclass
class CaptionRequest:
    """One caption to write: the current frame and what the connection knows around it."""

    image: np.ndarray                                   # (H, W, 3) uint8, the frame to caption
    earlier_frames: list[np.ndarray] = field(default_factory=list)  # same scene, oldest first
    summary: str = ""                                   # captions of the last scenes
    context_mode: str = "captions"
    reference: np.ndarray | None = None                 # the user's reference image
    posts: list[str] = field(default_factory=list)      # the user's past posts (their voice)
    language: str = ""
    generation: GenerationConfig | None = None


def parse_posts(text: str) -> list[str]:
    """Past posts pasted one per line: the last ``MAX_POSTS`` non-empty lines, each clipped."""
    if not isinstance(text, str):
        raise InputError("posts must be text, one post per line")
    lines = [line.strip()[:MAX_POST_CHARS] for line in text.splitlines() if line.strip()]
    return lines[-MAX_POSTS:]


class CaptionService:
    """Captions for the web app from one ``Lfm2VlModel`` (with its processor)."""

    def __init__(self, model: Lfm2VlModel, name: str = "model") -> None:
        if model.processor is None:
            raise ValueError("the server needs a model with its processor (tokenizer.json and processor config)")
        self.model = model
        self.name = name
        # OpenMP's thread count is per thread: the worker takes the count in effect where the service is made
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captionaura-model",
                                          initializer=_core.set_num_threads, initargs=(_core.get_num_threads(),))
        tok = model.processor.tokenizer
        eos = tok.token_to_id("<|im_end|>")
        self.default_generation = model.generation_config or GenerationConfig(
            max_new_tokens=48, eos_token_id=eos if eos is not None else tok.eos_token_id,
            pad_token_id=tok.pad_token_id)
        # plug-in point 2: the video-context caption API (captionaura.video, another branch)
        params = inspect.signature(model.caption).parameters
        self.model_takes_context = all(p in params for p in ("video", "context_mode", "style", "language"))

    # -- settings -------------------------------------------------------------------------------------
    def generation(self, settings: dict[str, Any]) -> GenerationConfig:
        """The default decoding settings with the page's changes (bounded, validated)."""
        if not isinstance(settings, dict):
            raise InputError("generation settings must be an object")
        changes: dict[str, Any] = {}
        for key, value in settings.items():
            if key not in USER_SETTINGS:
                raise InputError(f"unknown generation setting {key!r} (allowed: {', '.join(USER_SETTINGS)})")
            bounds = USER_SETTINGS[key]
            if bounds is None:
                if not isinstance(value, bool):
                    raise InputError(f"{key} must be true or false")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InputError(f"{key} must be a number")
                lo, hi = bounds
                if not lo <= value <= hi:
                    raise InputError(f"{key} must be between {lo} and {hi}, got {value}")
                if isinstance(lo, int) and isinstance(hi, int):
                    if value != int(value):
                        raise InputError(f"{key} must be a whole number, got {value}")
                    value = int(value)
            changes[key] = value
        try:
            return self.default_generation.replace(**changes)
        except ValueError as err:
            raise InputError(f"invalid generation settings: {err}") from None

    def info(self) -> dict[str, Any]:
        return {"model": self.name, "parameters": self.model.num_parameters(),
                "context_modes": list(CONTEXT_MODES), "style_profiles": StyleProfile is not None,
                "video_context_api": self.model_takes_context}

    # -- captions -------------------------------------------------------------------------------------
    async def stream(self, request: CaptionRequest) -> AsyncIterator[str]:
        """The caption's text as it grows, produced on the model's worker thread. Leaving the iteration early
        (client gone) stops the generation at its next token."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def post(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                loop.call_soon_threadsafe(pieces.put_nowait, item)

        def work() -> None:
            try:
                if not stop.is_set():
                    self.caption_into(request, post, stop)
                post(done)
            except Exception as err:  # noqa: BLE001 (any failure is handed to the consumer, which reports it)
                post(err)

        loop.run_in_executor(self._worker, work)
        try:
            while (item := await pieces.get()) is not done:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()

    def caption_into(self, request: CaptionRequest, emit: Callable[[str], None], stop: threading.Event) -> None:
        """Runs on the worker thread: the one place that calls the model. Each new piece of the caption goes
        to ``emit``; ``stop`` set ends the generation at its next token."""
        settings = request.generation or self.default_generation
        if self.model_takes_context and request.reference is None:  # that API has no reference image
            style = StyleProfile.from_posts(request.posts) if StyleProfile is not None and request.posts else None
            pieces = self.model.caption(request.image, video=request.earlier_frames + [request.image],
                                        context_mode=request.context_mode, style=style,
                                        language=request.language or None, generation=settings, stream=True)
            with contextlib.closing(pieces):
                for piece in pieces:
                    if stop.is_set():
                        break
                    emit(piece)
            return
        images, prompt = self.prompt(request)
        self._generate(images, prompt, settings, emit, stop)

    @staticmethod
    def prompt(request: CaptionRequest) -> tuple[list[np.ndarray], str]:
        """The images and the instruction that carry the context today: the reference image first, then
        earlier frames of the scene (frames mode), the current frame last; earlier captions (captions mode),
        the user's past posts as examples of their voice and the language in the text."""
        earlier = request.earlier_frames if request.context_mode == "frames" else []
        images = ([request.reference] if request.reference is not None else []) + earlier + [request.image]
        lines = []
        if request.reference is not None:
            lines.append("The first image is a reference photo from the user: mention it if it appears.")
        if earlier:
            lines.append(f"The {len(earlier) + 1} last images are consecutive frames of a live video.")
        if request.context_mode == "captions" and request.summary:
            lines.append(f"Earlier in this video: {request.summary}")
        if request.posts:
            lines.append("Write in the user's own voice, like these past posts of theirs:")
            lines.extend(f"- {post}" for post in request.posts)
        if request.language:
            lines.append(f"Write the caption in {request.language}.")
        lines.append("Write a short caption for the last image." if len(images) > 1
                     else "Write a short caption for this image.")
        return images, "\n".join(lines)

    def _generate(self, images: list[np.ndarray], prompt: str, settings: GenerationConfig,
                  emit: Callable[[str], None], stop: threading.Event) -> None:
        """The images and the prompt in one user turn (as ``Lfm2VlModel.caption`` builds it for one image),
        decoded with a per-token callback on this thread: no thread hand-off per token."""
        model, tok = self.model, self.model.processor.tokenizer
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        batch = model.processor(images=images, messages=[{"role": "user", "content": content}])
        ids = np.asarray(batch.input_ids)[0].astype(np.int32)
        positions = np.flatnonzero(ids == model.image_token_id).astype(np.int32)
        features = model.image_features(batch.pixel_values, batch.spatial_shapes, batch.pixel_attention_mask)
        tokens: list[int] = []
        shown = [""]

        def on_token(row: int, token: int) -> bool:
            tokens.append(token)
            text = tok.decode(tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd") and len(text) > len(shown[0]):  # wait for incomplete characters
                emit(text[len(shown[0]):])
                shown[0] = text
            return stop.is_set()

        model.text.generate(ids, generation=settings, features=(positions, features), callback=on_token)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
