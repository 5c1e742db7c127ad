"""The web app (`captionaura serve`) through Starlette's test client: the page, validation of what browsers
send (size, pixels, type by magic bytes, rate), per-connection context, captions streamed over the WebSocket
equal to the model's own captions of the same prompt, settings, ratings, errors, the CLI.

Helpers here (``tiny_captioner``, ``picture``, ``encode``) are shared with test_serve_browser.py and
test_serve_load.py."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the web app needs the serve extra (starlette, uvicorn)")
import captionaura as ca
from captionaura import cli
from captionaura.serve import CaptionRequest, CaptionService, ServeConfig, create_app
from captionaura.serve.context import ContextBuffer, ContextConfig
from captionaura.serve.validation import (
    InputError,
    RateLimiter,
    decode_image,
    sniff_image_type,
)
from captionaura.video import VideoFrames, aggregate_captions, fit_frames
from captionaura.vl import REFERENCE_PROMPT
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from conftest import PROCESSOR, tiny_captioner_config

SETTINGS = {"max_new_tokens": 8}


def tiny_captioner(folder: Path) -> ca.Lfm2VlModel:
    """A tiny random LFM2-VL with the processor fixture's tokenizer (as tests/test_vl.py builds it), saved to
    ``folder`` and loaded back like a real checkpoint."""
    processor = ca.Lfm2VlProcessor.from_pretrained(PROCESSOR)
    config = tiny_captioner_config(processor)
    model = ca.Lfm2VlModel.from_config(config, seed=0)
    model.processor = processor
    model.save_pretrained(folder)
    return ca.Lfm2VlModel.from_pretrained(folder)


def picture(seed: int, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """Smooth random colours (a photo-like image that survives JPEG well)."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_captioner(tmp_path_factory.mktemp("tiny_vl"))


@pytest.fixture
def client(model):
    with TestClient(create_app(CaptionService(model, "tiny"))) as c:
        yield c


def receive_until(ws, kind: str, limit: int = 200) -> tuple[dict, list[dict]]:
    seen = []
    for _ in range(limit):
        msg = ws.receive_json()
        seen.append(msg)
        if msg["type"] == kind:
            return msg, seen
    raise AssertionError(f"no {kind!r} message in {limit}: {seen[-5:]}")


@pytest.fixture
def connect(client):
    """Open WebSocket connections (ready, then settings applied); they are closed at the end of the test,
    before the client, whatever happened."""
    opened = []

    def open_one(app_client=client, **settings):
        ws = app_client.websocket_connect("/ws")
        ws.__enter__()
        opened.append(ws)
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "settings", "generation": SETTINGS, **settings})
        receive_until(ws, "settings")
        return ws

    yield open_one
    for ws in reversed(opened):
        with contextlib.suppress(Exception):
            ws.__exit__(None, None, None)


def caption_of(ws) -> tuple[str, list[dict]]:
    end, seen = receive_until(ws, "caption_end")
    pieces = "".join(m["text"] for m in seen if m["type"] == "token" and m["id"] == end["id"])
    assert pieces.strip() == end["text"]
    return end["text"], seen


# ---- validation -------------------------------------------------------------------------------------

def test_types_are_sniffed_from_magic_bytes_not_names():
    image = picture(0)
    assert sniff_image_type(encode(image, "JPEG")) == "jpeg"
    assert sniff_image_type(encode(image, "PNG")) == "png"
    assert sniff_image_type(encode(image, "WEBP")) == "webp"
    for other in (encode(image, "GIF"), encode(image, "BMP"), b"<svg xmlns='http://www.w3.org/2000/svg'/>"):
        with pytest.raises(InputError, match="only JPEG, PNG and WebP"):
            sniff_image_type(other)


def test_size_pixel_and_corruption_limits():
    np.testing.assert_array_equal(decode_image(encode(picture(1), "PNG")), picture(1))
    with pytest.raises(InputError, match="too large: 10.5 MB, the limit is 10 MB"):
        decode_image(b"\xff\xd8\xff" + bytes(10 * 1024 * 1024))
    big = encode(np.zeros((3000, 6000, 3), np.uint8), "PNG")  # 18 MP, a small file: refused before decoding
    assert len(big) < 1_000_000
    with pytest.raises(InputError, match="18000000 pixels, more than the limit of 16777216"):
        decode_image(big)
    wide = decode_image(encode(picture(3, (1500, 3000)), "PNG"))       # kept at most 2048 px long
    assert wide.shape == (1024, 2048, 3)
    with pytest.raises(InputError, match="invalid JPEG image"):
        decode_image(encode(picture(2))[:200])
    with pytest.raises(InputError, match="empty"):
        decode_image(b"")


def test_rate_limiter_allows_bursts_then_the_rate(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    limiter = RateLimiter(rate=4.0, burst=3)
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # two more tokens
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)


# ---- context and prompt -------------------------------------------------------------------------------

def test_context_keeps_distinct_frames_counts_scene_changes_and_is_bounded():
    # video.py's frame distance and thresholds: dropped below 0.02, a new scene above 0.15
    assert (ContextConfig().keep_threshold, ContextConfig().scene_threshold) == (0.02, 0.15)
    ctx = ContextBuffer(ContextConfig(capacity=3))
    grey = np.full((48, 64, 3), 100, np.uint8)
    assert ctx.add(grey) is False and ctx.add(grey + 2) is False       # 2/255 = 0.008: seen, not kept
    assert ctx.state()["frames_kept"] == 1 and ctx.frames_seen == 2
    assert ctx.add(grey + 8) is False                                  # 8/255 = 0.03: kept, same scene
    earlier = ctx.scene_video(5)                                       # the scene's frames before the latest
    assert len(earlier) == 1 and earlier.frames[0].tolist() == grey.tolist() and earlier.scene_change.tolist() == [True]
    assert ctx.add(np.full_like(grey, 230)) is True                    # 0.48: a new scene
    ctx.note_caption("a grey wall")
    assert ctx.scene_video(5) is None                                  # the new scene has only its latest frame
    for level in (190, 150, 110):                                     # 40/255 = 0.157 apart
        ctx.add(np.full_like(grey, level))
    assert ctx.state()["frames_kept"] == 3 and ctx.state()["scene_changes"] == 4
    ctx.note_caption("darker")
    ctx.note_caption("darker still.")                                  # same scene: replaces
    assert ctx.scene_captions() == ["a grey wall", "darker still."]
    assert ctx.summary() == "First a grey wall, and finally darker still."   # aggregate_captions' sentence
    ctx.reset()
    assert ctx.state() == {"frames_kept": 0, "capacity": 3, "frames_seen": 0, "scene": 1, "scene_changes": 0,
                           "summary": ""}


def test_request_context_is_the_frames_or_the_aggregated_captions():
    frame, ctx = np.full((96, 128, 3), 125, np.uint8), ContextBuffer()
    for level in (90, 110, 125):                                       # one scene
        ctx.add(np.full((96, 128, 3), level, np.uint8))
    assert len(ctx.scene_video(5)) == 2
    request = CaptionRequest(image=frame, earlier_frames=ctx.scene_video(1), scene_captions=["a cat", "a cat.", "a dog"],
                             context_mode="frames", posts=["sunday pancakes", "new city, same coffee"])
    video, context = request.context()
    assert context is None and len(video) == 1 and video.frames[0].tolist() == [[[110] * 3] * 128] * 96
    assert request.style().posts == ["sunday pancakes", "new city, same coffee"]
    request.context_mode = "captions"
    video, context = request.context()
    assert video is None and (context.mode, context.sentence) == ("captions", "First a cat, and finally a dog.")
    assert CaptionRequest(image=frame).context() == (None, None) and CaptionRequest(image=frame).style() is None


def test_generation_settings_are_bounded(model):
    service = CaptionService(model)
    g = service.generation({"max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "seed": 3})
    assert (g.max_new_tokens, g.do_sample, g.temperature, g.seed) == (5, True, 0.7, 3)
    assert g.eos_token_id == model.processor.tokenizer.token_to_id("<|im_end|>")
    for bad, match in (({"max_new_tokens": 1000}, "between 1 and 128"), ({"top_k": 2.5}, "whole number"),
                       ({"do_sample": 1}, "true or false"), ({"eos_token_id": 3}, "unknown generation setting"),
                       ({"temperature": "hot"}, "must be a number")):
        with pytest.raises(InputError, match=match):
            service.generation(bad)
    service.close()


# ---- HTTP and WebSocket ---------------------------------------------------------------------------------

def test_page_static_files_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for element in ('id="camera"', 'id="upload"', 'id="reference"', 'id="posts"', 'id="ctx-summary"',
                    'id="copy"', 'id="rate-up"', 'id="max-new-tokens"', 'id="fps"'):
        assert element in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "getUserMedia" in script.text
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    info = client.get("/api/info").json()
    assert info["model"] == "tiny" and info["limits"]["max_image_bytes"] == 10 * 1024 * 1024


def test_live_frame_streams_the_models_caption_token_by_token(client, model, connect):
    ws = connect()
    frame = picture(10)
    ws.send_bytes(b"\x01" + encode(frame, "PNG"))
    ctx, _ = receive_until(ws, "context")
    assert (ctx["frames_kept"], ctx["frames_seen"], ctx["summary"]) == (1, 1, "")
    text, seen = caption_of(ws)
    settings = ca.GenerationConfig(max_new_tokens=8, eos_token_id=model.processor.tokenizer.token_to_id("<|im_end|>"))
    assert text == model.caption(frame, generation=settings)     # the plain caption API, same prompt
    assert sum(m["type"] == "token" for m in seen) >= 2
    ctx, _ = receive_until(ws, "context")
    assert ctx["summary"] == aggregate_captions([text])                # the panel shows the context sentence
    # the next caption is told what came before: captions mode's prompt with that sentence
    frame2 = picture(11)
    ws.send_bytes(b"\x01" + encode(frame2, "PNG"))
    text2, _ = caption_of(ws)
    prompt = f"Context from a video taken just before: {ctx['summary']}\nWrite a short caption for this image."
    assert model.caption_prompt(context=ca.CaptionContext(mode="captions", sentence=ctx["summary"])).text == prompt
    assert text2 == model.caption(frame2, prompt=prompt, generation=settings)


def test_reference_image_and_frames_mode_put_several_images_in_one_turn(client, model, connect):
    ws = connect(live=False, context_mode="frames")
    ref = picture(20)
    big = picture(21, (384, 512))                               # large enough for fit_frames to shrink it
    frames = [big, np.clip(big.astype(int) + 12, 0, 255).astype(np.uint8)]  # one scene
    ws.send_bytes(b"\x02" + encode(ref, "PNG"))
    assert receive_until(ws, "reference")[0] == {"type": "reference", "width": 128, "height": 96}
    for f in frames:
        ws.send_bytes(b"\x01" + encode(f, "PNG"))
        receive_until(ws, "context")
    ws.send_json({"type": "caption"})
    text, _ = caption_of(ws)
    # greedy decoding by hand with the whole model's forward over three images: the reference, the earlier
    # frame as frames mode's video (shrunk to the frame budget by fit_frames), the frame
    video = VideoFrames(frames[0][None], np.zeros(1), np.ones(1, bool))
    kept, _ = fit_frames(video, model.processor, ca.VideoContextConfig().frame_token_budget)
    assert len(kept) == 1 and kept.frames[0].shape[0] * kept.frames[0].shape[1] < 384 * 512
    prompt = model.caption_prompt(context=ca.CaptionContext(mode="frames", frames=kept), reference=True).text
    assert prompt == (f"{REFERENCE_PROMPT}\nThe next 1 image is a frame of a video, in time order, leading up to the "
                      "last image.\nWrite a short caption for this image.")
    content = [{"type": "image"}] * 3 + [{"type": "text", "text": prompt}]
    batch = model.processor(images=[ref, kept.frames[0], frames[1]], messages=[{"role": "user", "content": content}])
    tok, tokens = model.processor.tokenizer, []
    while len(tokens) < SETTINGS["max_new_tokens"]:
        ids = np.concatenate([batch.input_ids, np.asarray([tokens], np.int64).reshape(1, -1)], axis=1)
        logits = model.forward(ids, pixel_values=batch.pixel_values, spatial_shapes=batch.spatial_shapes,
                               pixel_attention_mask=batch.pixel_attention_mask).logits
        tokens.append(int(np.argmax(logits[0, -1])))
        if tokens[-1] == tok.token_to_id("<|im_end|>"):
            break
    assert text == tok.decode(tokens, skip_special_tokens=True).strip()


def test_style_posts_upload_and_rating(client, model, connect):
    ws = connect(live=False, posts="sunday pancakes\n\n  new city, same coffee  \n", language="French")
    image = picture(30)
    ws.send_bytes(b"\x03" + encode(image, "WEBP"))               # an upload is captioned even when not live
    text, _ = caption_of(ws)
    settings = ca.GenerationConfig(max_new_tokens=8, eos_token_id=model.processor.tokenizer.token_to_id("<|im_end|>"))
    decoded = decode_image(encode(image, "WEBP"))
    # the posts as a StyleProfile: examples retrieved with a plain draft caption, then the style's prompt
    draft = model.caption(decoded, generation=settings)
    style = ca.StyleProfile.from_posts(["sunday pancakes", "new city, same coffee"])
    prompt = model.caption_prompt(style=style, language="French", query=draft).text
    assert style.prompt_text(style.retrieve(draft, 3)) in prompt and prompt.endswith("Write the caption in French.")
    assert text == model.caption(decoded, prompt=prompt, generation=settings)
    with pytest.raises(ValueError, match="either video or a ready context"):
        model.caption(decoded, video=np.stack([decoded]), context=ca.CaptionContext(mode="captions", sentence="x."))
    ws.send_json({"type": "rate", "id": 1, "rating": 1})
    assert receive_until(ws, "rated")[0] == {"type": "rated", "id": 1, "rating": 1}
    feedback = client.get("/api/feedback").json()["ratings"]
    assert [(f["caption"], f["rating"]) for f in feedback] == [(text, 1)]


@pytest.mark.parametrize("message, error", [
    (b"\x01GIF89a" + bytes(20), "only JPEG, PNG and WebP"),
    (b"\x07" + b"\xff\xd8\xff", "kind byte"),
    (b"\x01" + b"\xff\xd8\xff" + bytes(11 * 1024 * 1024), "too large: 11.5 MB"),
    ("not json", "must be JSON objects"),
    ('{"type": "dance"}', "unknown command 'dance'"),
    ('{"type": "caption"}', "no frame yet"),
    ('{"type": "rate", "id": 9, "rating": 1}', "no finished caption with id 9"),
    ('{"type": "settings", "context_mode": "audio"}', "context_mode must be one of frames, captions"),
    ('{"type": "settings", "generation": {"top_p": 0}}', "top_p must be between"),
])
def test_bad_messages_get_a_clear_error_and_the_connection_stays(client, connect, message, error):
    ws = connect()
    if isinstance(message, bytes):
        ws.send_bytes(message)
    else:
        ws.send_text(message)
    msg, _ = receive_until(ws, "error")
    assert error in msg["message"]
    ws.send_json({"type": "settings", "live": False})
    assert receive_until(ws, "settings")[0]["live"] is False


def test_other_sites_cannot_open_the_socket(client):
    with pytest.raises(WebSocketDisconnect) as refused, \
            client.websocket_connect("/ws", headers={"origin": "https://elsewhere.example"}):
        pass
    assert refused.value.code == 1008
    with client.websocket_connect("/ws", headers={"origin": "http://testserver"}) as ws:
        assert ws.receive_json()["type"] == "ready"


def test_rate_limit_per_connection(model, connect):
    app = create_app(CaptionService(model), ServeConfig(messages_per_second=2, burst=3))
    with TestClient(app) as c:
        ws = connect(app_client=c, live=False)   # settings used one token
        for _ in range(4):
            ws.send_json({"type": "reset"})
        kinds = [ws.receive_json() for _ in range(4)]
        assert [m["type"] for m in kinds] == ["context", "context", "error", "error"]
        assert "rate limit: at most 2 messages a second" in kinds[2]["message"]
        other = connect(app_client=c, live=False)  # another connection has its own budget
        other.send_json({"type": "reset"})
        assert other.receive_json()["type"] == "context"
        for socket_ in (ws, other):
            socket_.__exit__(None, None, None)


def test_connections_have_their_own_context_and_a_dropped_client_frees_the_model(client, connect):
    a, b = connect(live=False), connect(live=False)
    for seed in (40, 41, 42):
        a.send_bytes(b"\x01" + encode(picture(seed)))
        receive_until(a, "context")
    b.send_bytes(b"\x01" + encode(picture(43)))
    assert receive_until(b, "context")[0]["frames_seen"] == 1
    a.send_json({"type": "settings", "generation": {"max_new_tokens": 128}})
    receive_until(a, "settings")
    a.send_json({"type": "caption"})
    receive_until(a, "caption_start")
    a.close()                                  # leaves mid-caption
    b.send_json({"type": "caption"})
    text, _ = caption_of(b)
    assert isinstance(text, str)


def test_cli_serve_defaults_and_missing_model(monkeypatch, capsys):
    args = cli.build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 8000, None)
    monkeypatch.delattr(ca, "load_default", raising=False)
    assert cli.main(["serve"]) == 2
    assert "no --model given" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "/nonexistent/model"]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_the_page_ships_in_the_wheel(tmp_path):
    """The page's files are package data: a built wheel holds them (builds the C extension: slow)."""
    root = Path(__file__).parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w",
                    str(tmp_path), str(root)], check=True)
    (wheel,) = tmp_path.glob("captionaura-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "app.js", "style.css"):
        assert f"captionaura/serve/static/{name}" in names
