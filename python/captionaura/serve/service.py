"""The model-facing side of the server: ``CaptionService`` turns a connection's state (latest frame, video
context, reference image, past posts, generation settings) into a caption streamed piece by piece.

The model runs on one worker thread per service (a single-thread executor is the per-model lock: requests from
every connection queue there in order), never on the event loop; pieces come back through an asyncio queue.
The caption itself is ``Lfm2VlModel.caption(stream=True)``: in "frames" mode the earlier frames of the scene
go as the ``video`` (``VideoFrames``, fitted to the image-token budget by ``captionaura.video.fit_frames``), in
"captions" mode the captions of the last scenes go as a ready context sentence
(``captionaura.video.aggregate_captions``), the pasted posts as a ``StyleProfile``, the reference image and
the language as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from captionaura.generate import GenerationConfig
from captionaura.personal import StyleProfile
from captionaura.serve.validation import InputError
from captionaura.video import CONTEXT_MODES, VideoFrames, aggregate_captions
from captionaura.vl import CaptionContext, Lfm2VlModel, VideoContextConfig

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
    earlier_frames: VideoFrames | None = None           # frames mode: the scene's frames before it
    scene_captions: list[str] = field(default_factory=list)  # captions mode: the last scenes', oldest first
    context_mode: str = "captions"
    reference: np.ndarray | None = None                 # the user's reference image
    posts: list[str] = field(default_factory=list)      # the user's past posts (their voice)
    language: str = ""
    generation: GenerationConfig | None = None

    def context(self) -> tuple[VideoFrames | None, CaptionContext | None]:
        """``(video, context)`` for ``Lfm2VlModel.caption``: the frames in frames mode, the captions folded
        into one sentence in captions mode (each None when there is nothing before the image)."""
        if self.context_mode == "frames":
            return self.earlier_frames, None
        if not self.scene_captions:
            return None, None
        return None, CaptionContext(mode="captions", frame_captions=list(self.scene_captions),
                                    sentence=aggregate_captions(self.scene_captions))

    def style(self) -> StyleProfile | None:
        return StyleProfile.from_posts(self.posts) if self.posts else None


def parse_posts(text: str) -> list[str]:
    """Past posts pasted one per line: the last ``MAX_POSTS`` non-empty lines, each clipped."""
    if not isinstance(text, str):
        raise InputError("posts must be text, one post per line")
    lines = [line.strip()[:MAX_POST_CHARS] for line in text.splitlines() if line.strip()]
    return lines[-MAX_POSTS:]


class CaptionService:
    """Captions for the web app from one ``Lfm2VlModel`` (with its processor)."""

    def __init__(self, model: Lfm2VlModel, name: str = "model",
                 video_config: VideoContextConfig | None = None) -> None:
        if model.processor is None:
            raise ValueError("the server needs a model with its processor (tokenizer.json and processor config)")
        self.model = model
        self.name = name
        self.video_config = video_config or VideoContextConfig()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captionaura-model")
        tok = model.processor.tokenizer
        eos = tok.token_to_id("<|im_end|>")
        self.default_generation = model.generation_config or GenerationConfig(
            max_new_tokens=48, eos_token_id=eos if eos is not None else tok.eos_token_id,
            pad_token_id=tok.pad_token_id)

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
                "context_modes": list(CONTEXT_MODES)}

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
        video, context = request.context()
        pieces = self.model.caption(request.image, generation=request.generation or self.default_generation,
                                    stream=True, video=video, context_mode=request.context_mode, context=context,
                                    reference=request.reference, style=request.style(),
                                    language=request.language or None, video_config=self.video_config)
        with contextlib.closing(pieces):  # closing it ends the decoding at its next token
            for piece in pieces:
                if stop.is_set():
                    break
                emit(piece)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
