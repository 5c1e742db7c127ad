"""``captionaura serve``: a web page that captions a live camera (or uploaded images) with a model, token by
token, in the user's voice. ``create_app`` builds the ASGI app, ``CaptionService`` is its model-facing side."""

from __future__ import annotations

import os

from captionaura.serve.app import ServeConfig, create_app
from captionaura.serve.service import CaptionRequest, CaptionService

#: uvicorn settings: its sans-I/O websockets protocol; WebSocket messages over 16 MiB are refused by uvicorn
#: itself (up to that the app answers an image over its 10 MB limit with a clear error).
UVICORN_OPTIONS = {"ws": "websockets-sansio", "ws_max_size": 16 * 1024 * 1024}


def load_model(path: str | os.PathLike[str] | None):
    """The model to serve: a checkpoint folder, else the package's default model (``captionaura.load_default``)."""
    import captionaura
    from captionaura.vl import Lfm2VlModel

    if path is not None:
        return Lfm2VlModel.from_pretrained(path)
    load_default = getattr(captionaura, "load_default", None)
    if load_default is None:
        raise ValueError("no --model given and this captionaura has no packaged default model "
                         "(captionaura.load_default): pass --model DIR, an LFM2-VL checkpoint folder")
    return load_default()


def run(service: CaptionService, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
        log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn)."""
    import uvicorn

    uvicorn.run(create_app(service, config), host=host, port=port, log_level=log_level, **UVICORN_OPTIONS)


__all__ = ["CaptionRequest", "CaptionService", "ServeConfig", "create_app", "load_model", "run"]
