"""End to end: `streamlit run` on a free port, Debian's chromium headless driven over the DevTools protocol.

Part of the sample library (data/make_samples.py) is ingested with the ocr engine; the browser asks about the
LinnSequencer and about the lecture clip, waits for the citations, and saves docs/img/ask.png and
docs/img/library.png (the README's screenshots); a browser set to Chinese gets the Chinese interface
(docs/img/ask-zh.png). Every step waits for the text it needs before acting:
Streamlit draws after the page load, so a plain `chromium --screenshot` would capture an empty page.
"""
from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from kb.config import BUNDLED_EMBED_MODEL, load_settings
from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y "
                                "chromium; `make browser` does it): the browser test needs it")
SHOTS = ROOT / "docs" / "img"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, what: str, timeout: float = 60.0, every: float = 0.25):
    """Poll `check` until it returns something truthy; fail with `what` when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:  # the server or browser is still starting
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def http_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class DevTools:
    """A minimal Chrome DevTools Protocol client: one page, request/response by id, events ignored."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=None, open_timeout=30)
        self._ids = itertools.count(1)

    def send(self, method: str, **params):
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_text(self, text: str, timeout: float = 60.0) -> None:
        try:
            wait_until(lambda: self.eval(f"document.body && document.body.innerText.includes({json.dumps(text)})"),
                       f"the page to show {text!r}", timeout)
        except AssertionError as err:
            shown = self.eval("document.body ? document.body.innerText : ''") or ""
            raise AssertionError(f"{err}; the page shows:\n{shown[-3000:]}") from None

    def wait_images(self, timeout: float = 60.0) -> None:
        wait_until(lambda: self.eval("[...document.images].every(i => i.complete)"), "images to load", timeout)

    def type_question(self, question: str) -> None:
        selector = '[data-testid="stChatInputTextArea"]'
        wait_until(lambda: self.eval(f"!!document.querySelector('{selector}')"), "the chat input")
        self.eval(f"document.querySelector('{selector}').focus()")
        self.send("Input.insertText", text=question)
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                      text="\r" if kind == "keyDown" else "")

    def screenshot(self, path: Path) -> None:
        """The whole app: the viewport grows to the height of Streamlit's scrolling main area first."""
        height = self.eval("Math.max(document.body.scrollHeight, "
                           "(document.querySelector('[data-testid=\"stMain\"]') || document.body).scrollHeight)")
        self.send("Emulation.setDeviceMetricsOverride", width=1400, height=min(int(height or 1200), 4000),
                  deviceScaleFactor=1, mobile=False)
        self.wait_images()
        time.sleep(0.5)  # let the layout settle after the resize (a picture, not an assertion)
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        self.send("Emulation.clearDeviceMetricsOverride")

    def close(self) -> None:
        self._ws.close()


@pytest.fixture(scope="module")
def sample_kb(tmp_path_factory, embedder) -> Path:
    """The sample library, ingested with the ocr engine (the video through ingest when it reads video)."""
    from data.make_samples import MANUAL_NAME, PHOTO_NAME, VIDEO_NAME, generate
    from ingest.pipeline import Ingestor
    from ingest.read import supported_extensions
    from kb.store import open_store
    from tests.test_app import add_video_source

    root = tmp_path_factory.mktemp("browser-kb")
    samples = root / "samples"
    generate(samples)
    settings = load_settings({"home": root / "kb", "embed_model": BUNDLED_EMBED_MODEL, "engine": "ocr"}, env={})
    store = open_store(settings, embedder)
    try:
        # The scanned invoice and the Chinese notice are left out: OCR on this CPU would double the test's time.
        video = ".mp4" in supported_extensions()
        names = [MANUAL_NAME, PHOTO_NAME] + ([VIDEO_NAME] if video else [])
        report = Ingestor(settings, store).run([samples / name for name in names])
        assert report.exit_code == 0, report.results
        if not video:  # ingest/video.py not in this tree: write the clip's segments as it would
            add_video_source(store, (samples / VIDEO_NAME).resolve())
    finally:
        store.close()  # the app process must own the store
    return root / "kb"


@pytest.fixture(scope="module")
def app_url(sample_kb, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "KB_HOME": str(sample_kb), "KB_ENGINE": "ocr", "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL,
           "KB_CONFIG": str(sample_kb / "none.toml"), "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    log = (tmp_path_factory.mktemp("streamlit") / "streamlit.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port",
                               str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
                               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
                               "--client.toolbarMode", "minimal"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).status == 200,
                   "streamlit to start", timeout=90)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    """Headless Chromium with its first page open over the DevTools protocol; stopped on exit."""
    port = free_port()
    process = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                f"--remote-debugging-port={port}", "--window-size=1400,1200", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pages = wait_until(lambda: [t for t in http_json(f"http://127.0.0.1:{port}/json/list")
                                    if t.get("type") == "page"], "chromium's DevTools endpoint", timeout=60)
        tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        tools.send("Page.enable")
        tools.send("Runtime.enable")
        yield tools
        tools.close()
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path / "profile") as tools:
        yield tools


def test_ask_and_library_in_a_real_browser(app_url, browser):
    browser.send("Page.navigate", url=app_url)
    browser.wait_text("Ask your knowledge base", timeout=90)
    browser.type_question("What is the LinnSequencer?")
    browser.wait_text("[1] linnsequencer_manual.pdf p.", timeout=90)
    wait_until(lambda: browser.eval("[...document.querySelectorAll('img')].some(i => i.complete && "
                                    "i.naturalWidth > 300)"), "the cited page's image")

    browser.type_question("When does the lecture talk about chunking PDFs by page?")
    browser.wait_text("lecture_clip.mp4 00:04–00:08", timeout=90)
    # The cited segment's player seeks to its start once the file's metadata is in.
    wait_until(lambda: browser.eval("[...document.querySelectorAll('video')].some(v => v.readyState >= 1 "
                                    "&& v.currentTime >= 4 && v.currentTime < 8)"), "a player at 00:04")
    browser.screenshot(SHOTS / "ask.png")

    browser.send("Page.navigate", url=f"{app_url}/library")
    browser.wait_text("Open a source", timeout=60)
    browser.wait_text("Slide 2: Chunking PDFs by page", timeout=60)
    browser.screenshot(SHOTS / "library.png")
    assert (SHOTS / "ask.png").stat().st_size > 10_000 and (SHOTS / "library.png").stat().st_size > 10_000


def test_a_browser_set_to_chinese_gets_the_chinese_interface(app_url, browser):
    """navigator.language zh-CN (what st.context.locale reads) chooses Chinese; a CJK font draws it (Debian:
    fonts-wqy-microhei, installed by `make browser`)."""
    agent = browser.eval("navigator.userAgent")
    browser.send("Network.setUserAgentOverride", userAgent=agent, acceptLanguage="zh-CN")
    browser.send("Emulation.setLocaleOverride", locale="zh-CN")
    browser.send("Page.navigate", url=app_url)
    browser.wait_text("向知识库提问", timeout=90)
    browser.type_question("LinnSequencer 是什么？")
    browser.wait_text("linnsequencer_manual.pdf 第", timeout=90)
    browser.wait_text("检索", timeout=30)
    wait_until(lambda: browser.eval("[...document.querySelectorAll('img')].some(i => i.complete && "
                                    "i.naturalWidth > 300)"), "the cited page's image")
    # The top of the conversation (title, engine, question, answer, first citation) rather than its end: one
    # window's height, scrolled up once the page stopped scrolling itself to the newest message.
    browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=1100, deviceScaleFactor=1, mobile=False)
    browser.wait_images()
    time.sleep(1.0)
    browser.eval("document.querySelectorAll('*').forEach(e => { if (e.scrollTop) e.scrollTop = 0; })")
    time.sleep(0.5)
    (SHOTS / "ask-zh.png").write_bytes(base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"]))
    browser.send("Emulation.clearDeviceMetricsOverride")
    assert (SHOTS / "ask-zh.png").stat().st_size > 10_000
