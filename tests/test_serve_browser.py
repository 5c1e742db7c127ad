"""The page in real headless Chromium (Debian's chromium, driven by Playwright with ``executable_path``; no
browser download) against ``captionaura serve`` in its own process. Chromium's fake camera
(``--use-fake-device-for-media-stream``, permission granted by ``--use-fake-ui-for-media-stream``) streams
frames: a caption must appear token by token and the context panel must update. Without a camera the upload
fallback captions a photo, and bad files show clear errors. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (test extra)")
pytest.importorskip("uvicorn", reason="the web app needs the serve extra (starlette, uvicorn)")

from captionaura.serve.load import serve_process  # noqa: E402
from captionaura.video import aggregate_captions  # noqa: E402
from test_serve import encode, picture, tiny_captioner  # noqa: E402

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_vl")
    tiny_captioner(folder)
    with serve_process(folder, threads=1) as where:
        yield where


@pytest.fixture(scope="module")
def launch():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make system-deps installs it with apt-get)")
    with sync_api.sync_playwright() as playwright:
        def start(camera: bool):
            args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            if camera:
                args += ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
            try:
                return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            except sync_api.Error as err:
                pytest.skip(f"{CHROMIUM} does not start under Playwright: {str(err).splitlines()[0]}")
        yield start


def test_fake_camera_streams_frames_and_a_caption_appears(address, launch, tmp_path):
    browser = launch(camera=True)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems, received = [], []
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(frame)))
    page.goto(f"http://{address}/")
    page.select_option("#fps", "5")
    page.fill("#posts", "sunday pancakes\nnew city, same coffee")
    page.fill("#max-new-tokens", "10")
    page.click("#apply")
    page.wait_for_function("document.querySelector('#style-state').textContent.includes('2 past posts')",
                           timeout=TIMEOUT_MS)
    # a caption finishes (the meta line shows its latency) and the context panel counts frames and scenes
    page.wait_for_function("document.querySelector('#caption-meta').textContent.includes('first token')",
                           timeout=TIMEOUT_MS)
    page.wait_for_function("Number(document.querySelector('#ctx-seen').textContent) >= 3", timeout=TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#ctx-summary').textContent !== '(nothing captioned yet)'",
                           timeout=TIMEOUT_MS)
    caption = page.text_content("#history li")  # the last finished caption (a new one may be under way)
    assert caption.strip()
    # it came token by token: the page's socket received the pieces, then the whole caption
    messages = [json.loads(m) for m in received if isinstance(m, str)]
    end = next(m for m in messages if m["type"] == "caption_end")
    assert end["text"].strip()
    pieces = [m["text"] for m in messages if m["type"] == "token" and m["id"] == end["id"]]
    assert len(pieces) >= 2 and "".join(pieces).strip() == end["text"]
    # the panel's summary after the first caption is that caption as the one-sentence video context
    after = messages[messages.index(end) + 1:]
    assert next(m for m in after if m["type"] == "context")["summary"] == aggregate_captions([end["text"]])
    reference = tmp_path / "reference.jpg"
    reference.write_bytes(encode(picture(5)))
    page.set_input_files("#reference", str(reference))
    page.wait_for_selector("#reference-preview", state="visible", timeout=TIMEOUT_MS)
    page.wait_for_selector("#clear-reference", state="visible", timeout=TIMEOUT_MS)
    assert int(page.text_content("#ctx-frames").split("/")[0]) >= 1
    assert page.is_visible("#camera") and page.is_enabled("#copy") and page.is_enabled("#rate-up")
    assert page.evaluate("document.querySelector('#history').children.length") >= 1
    # live captions off (the shown caption stays), then rate it and copy it
    page.uncheck("#live")
    page.wait_for_function("document.body.dataset.live === 'false'", timeout=TIMEOUT_MS)  # the server's answer
    page.wait_for_function("!document.querySelector('#caption').classList.contains('writing')", timeout=TIMEOUT_MS)
    page.click("#rate-up")
    page.wait_for_selector("#rate-up.active", timeout=TIMEOUT_MS)
    page.click("#copy")
    page.wait_for_function("document.querySelector('#caption-meta').textContent === 'copied'", timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_camera.png"), full_page=True)
    assert page.is_hidden("#error"), page.text_content("#error-text")
    assert problems == []
    browser.close()


def test_without_a_camera_uploads_are_captioned_and_bad_files_explained(address, launch, tmp_path):
    browser = launch(camera=False)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"http://{address}/")
    page.wait_for_selector("#no-camera", state="visible", timeout=TIMEOUT_MS)
    assert "no camera" in page.text_content("#error-text")
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(picture(7), "PNG"))
    page.set_input_files("#upload", str(photo))
    page.wait_for_function("document.querySelector('#caption-meta').textContent.includes('first token')",
                           timeout=TIMEOUT_MS)
    assert page.text_content("#caption").strip() and page.is_visible("#still")
    assert page.text_content("#ctx-seen") == "1"
    # a GIF named .png: the browser can show it, the server sniffs its bytes and the page says why it is refused
    fake = tmp_path / "fake.png"
    fake.write_bytes(encode(picture(8), "GIF"))
    page.set_input_files("#upload", str(fake))
    page.wait_for_function("document.querySelector('#error-text').textContent.includes('only JPEG, PNG and WebP')",
                           timeout=TIMEOUT_MS)
    # not an image at all: refused in the page
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(bytes(64))
    page.set_input_files("#upload", str(junk))
    page.wait_for_function("document.querySelector('#error-text').textContent.includes('not a readable image')",
                           timeout=TIMEOUT_MS)
    # over the size limit: refused in the page before sending
    big = tmp_path / "big.jpg"
    big.write_bytes(encode(picture(9, (2048, 2048)), "PNG") + bytes(11 * 1024 * 1024))  # readable, too big
    page.set_input_files("#upload", str(big))
    page.wait_for_function("document.querySelector('#error-text').textContent.includes('the limit is 10 MB')",
                           timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_upload.png"), full_page=True)
    browser.close()
