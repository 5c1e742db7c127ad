"""The ASGI app: the page (``static/``), ``/api/info``, ``/api/feedback`` and the ``/ws`` WebSocket.

WebSocket protocol. Client to server: binary messages are one kind byte and an encoded JPEG/PNG/WebP image
(``1`` camera frame, ``2`` reference image, ``3`` uploaded image to caption now); text messages are JSON
objects: ``settings`` (live, context_mode, posts, language, generation), ``caption`` (caption the latest
frame now), ``rate`` (id, rating ±1), ``reset`` (clear the context), ``clear_reference``.
Server to client, JSON: ``ready``, ``context`` (the panel's figures), ``reference``, ``settings``,
``caption_start`` / ``token`` / ``caption_end`` (one caption, streamed), ``rated`` and ``error`` (message for
the page). Each connection owns its context buffer; its messages pass a rate limit; at most one caption of a
connection is in flight (in live mode new frames only update the context meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from captionaura.serve.context import ContextBuffer, ContextConfig
from captionaura.serve.service import MAX_LANGUAGE_CHARS, CaptionRequest, CaptionService, parse_posts
from captionaura.video import CONTEXT_MODES
from captionaura.serve.validation import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    InputError,
    RateLimiter,
    decode_image,
)

STATIC = Path(__file__).parent / "static"
FRAME, REFERENCE, UPLOAD = 1, 2, 3
KEPT_FEEDBACK = 1000


@dataclass
class ServeConfig:
    """Limits of the server (images larger than ``max_image_side`` are scaled down to it); ``prompt_frames``
    earlier frames go with a caption in the "frames" mode."""

    max_image_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_image_side: int = MAX_IMAGE_SIDE
    messages_per_second: float = 12.0
    burst: int = 24
    prompt_frames: int = 2
    context: ContextConfig = field(default_factory=ContextConfig)

    def limits(self) -> dict[str, Any]:
        return {"max_image_bytes": self.max_image_bytes, "max_image_pixels": self.max_image_pixels,
                "max_image_side": self.max_image_side,
                "messages_per_second": self.messages_per_second, "burst": self.burst,
                "context_frames": self.context.capacity}


class Session:
    """One WebSocket connection: its context buffer, reference image, style, settings and caption in flight."""

    def __init__(self, websocket: WebSocket, service: CaptionService, config: ServeConfig,
                 feedback: deque) -> None:
        self.ws, self.service, self.config, self.feedback = websocket, service, config, feedback
        self.context = ContextBuffer(config.context)
        self.limiter = RateLimiter(config.messages_per_second, config.burst)
        self.reference: np.ndarray | None = None
        self.posts: list[str] = []
        self.language = ""
        self.context_mode = "captions"
        self.live = True
        self.generation = service.default_generation
        self.captions: dict[int, str] = {}
        self.next_id = 0
        self.task: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client left meanwhile
            async with self._send_lock:
                await self.ws.send_text(json.dumps(message))

    async def error(self, message: str) -> None:
        await self.send({"type": "error", "message": message})

    async def run(self) -> None:
        await self.send({"type": "ready", **self.service.info(), "limits": self.config.limits()})
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if not self.limiter.allow():
                    await self.error(f"rate limit: at most {self.config.messages_per_second:g} messages a second; "
                                     "this one was dropped (lower the frame rate)")
                    continue
                try:
                    if message.get("bytes") is not None:
                        await self.on_image(message["bytes"])
                    elif message.get("text") is not None:
                        await self.on_command(message["text"])
                except InputError as err:
                    await self.error(str(err))
        finally:
            if self.task is not None:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task

    # -- messages -------------------------------------------------------------------------------------
    async def on_image(self, data: bytes) -> None:
        if not data or data[0] not in (FRAME, REFERENCE, UPLOAD):
            raise InputError("binary messages must start with a kind byte: 1 frame, 2 reference, 3 upload")
        kind = data[0]
        image = await asyncio.to_thread(decode_image, data[1:], self.config.max_image_bytes,
                                        self.config.max_image_pixels, self.config.max_image_side)
        if kind == REFERENCE:
            self.reference = image
            await self.send({"type": "reference", "width": image.shape[1], "height": image.shape[0]})
            return
        scene_change = self.context.add(image)
        await self.send({"type": "context", "scene_change": scene_change, **self.context.state()})
        if kind == UPLOAD or (self.live and not self.busy()):
            await self.start_caption(image)

    async def on_command(self, text: str) -> None:
        try:
            command = json.loads(text)
        except json.JSONDecodeError:
            raise InputError("text messages must be JSON objects") from None
        if not isinstance(command, dict) or not isinstance(command.get("type"), str):
            raise InputError("a command needs a string field 'type'")
        kind = command["type"]
        if kind == "settings":
            await self.on_settings(command)
        elif kind == "caption":
            image = self.context.latest()
            if image is None:
                raise InputError("no frame yet: start the camera or upload an image")
            await self.start_caption(image)
        elif kind == "rate":
            await self.on_rate(command)
        elif kind == "reset":
            self.context.reset()
            await self.send({"type": "context", "scene_change": False, **self.context.state()})
        elif kind == "clear_reference":
            self.reference = None
            await self.send({"type": "reference", "width": 0, "height": 0})
        else:
            raise InputError(f"unknown command {kind!r}")

    async def on_settings(self, command: dict[str, Any]) -> None:
        """Validate every field first, then apply them together."""
        live = command.get("live", self.live)
        mode = command.get("context_mode", self.context_mode)
        language = command.get("language", self.language)
        if not isinstance(live, bool):
            raise InputError("live must be true or false")
        if mode not in CONTEXT_MODES:
            raise InputError(f"context_mode must be one of {', '.join(CONTEXT_MODES)}, got {mode!r}")
        if not isinstance(language, str) or len(language) > MAX_LANGUAGE_CHARS:
            raise InputError(f"language must be text of at most {MAX_LANGUAGE_CHARS} characters")
        posts = parse_posts(command["posts"]) if "posts" in command else self.posts
        generation = self.service.generation(command["generation"]) if "generation" in command else self.generation
        self.live, self.context_mode, self.language = live, mode, language.strip()
        self.posts, self.generation = posts, generation
        await self.send({"type": "settings", "live": live, "context_mode": mode, "posts": len(posts),
                         "language": self.language, "max_new_tokens": generation.max_new_tokens})

    async def on_rate(self, command: dict[str, Any]) -> None:
        caption_id, rating = command.get("id"), command.get("rating")
        if caption_id not in self.captions:
            raise InputError(f"no finished caption with id {caption_id!r} to rate")
        if rating not in (1, -1) or isinstance(rating, bool):
            raise InputError("rating must be 1 (good) or -1 (bad)")
        self.feedback.append({"caption": self.captions[caption_id], "rating": rating, "time": time.time()})
        await self.send({"type": "rated", "id": caption_id, "rating": rating})

    # -- captions -------------------------------------------------------------------------------------
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    async def start_caption(self, image: np.ndarray) -> None:
        if self.busy():
            raise InputError("a caption is still being written: wait for it to finish")
        self.next_id += 1
        request = CaptionRequest(image=image, earlier_frames=self.context.scene_video(self.config.prompt_frames),
                                 scene_captions=self.context.scene_captions(), context_mode=self.context_mode,
                                 reference=self.reference, posts=list(self.posts), language=self.language,
                                 generation=self.generation)
        self.task = asyncio.create_task(self.write_caption(self.next_id, request))

    async def write_caption(self, caption_id: int, request: CaptionRequest) -> None:
        start = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        await self.send({"type": "caption_start", "id": caption_id})
        try:
            async for piece in self.service.stream(request):
                first = first or time.perf_counter()
                pieces.append(piece)
                await self.send({"type": "token", "id": caption_id, "text": piece})
        except Exception as err:  # noqa: BLE001 (whatever the model raised: tell the page, keep the connection)
            await self.error(f"captioning failed: {err}")
            await self.send({"type": "caption_end", "id": caption_id, "text": "", "failed": True})
            return
        text = "".join(pieces).strip()
        self.captions[caption_id] = text
        if len(self.captions) > KEPT_FEEDBACK:
            self.captions.pop(min(self.captions))
        self.context.note_caption(text)
        end = time.perf_counter()
        await self.send({"type": "caption_end", "id": caption_id, "text": text,
                         "latency_ms": round(1000 * (end - start), 1),
                         "first_token_ms": round(1000 * ((first or end) - start), 1)})
        await self.send({"type": "context", "scene_change": False, **self.context.state()})


def create_app(service: CaptionService, config: ServeConfig | None = None) -> Starlette:
    """The web app around a caption service (closed with the app)."""
    config = config or ServeConfig()
    feedback: deque = deque(maxlen=KEPT_FEEDBACK)

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({**service.info(), "limits": config.limits()})

    async def ratings(request: Request) -> JSONResponse:
        return JSONResponse({"ratings": list(feedback)})

    async def socket(websocket: WebSocket) -> None:
        # browsers send any page's origin: only the page served here may use the camera socket
        origin = websocket.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != websocket.headers.get("host"):
            await websocket.close(code=1008, reason="cross-origin WebSocket refused")
            return
        await websocket.accept()
        await Session(websocket, service, config, feedback).run()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        service.close()

    routes = [Route("/", index), Route("/api/info", info), Route("/api/feedback", ratings),
              WebSocketRoute("/ws", socket), Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, lifespan=lifespan)
