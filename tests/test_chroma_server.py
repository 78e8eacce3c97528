"""Server mode: a real `chroma run` server, shared by several processes at once (no owner lock)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ingest.pipeline import Ingestor
from kb.search import search
from tests.conftest import write_pdf

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_url(tmp_path):
    chroma = Path(sys.executable).parent / "chroma"
    if not chroma.exists():
        pytest.skip(f"the chroma command is not installed next to {sys.executable}")
    port = _free_port()
    log = (tmp_path / "chroma.log").open("w")
    server = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"chroma run exited: {(tmp_path / 'chroma.log').read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"chroma run did not answer in 60 s: {(tmp_path / 'chroma.log').read_text()[-2000:]}")
    yield url
    server.terminate()
    server.wait(timeout=30)


def test_ingest_and_search_through_a_chroma_server_from_two_processes(chroma_url, open_kb, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    write_pdf(folder / "guide.pdf", ["Intro.", "The purple elephant parade happens on page two. " * 3])
    store = open_kb(chroma_url=chroma_url)
    assert not (store.settings.home / "owner.lock").exists()  # server mode takes no lock
    assert Ingestor(store.settings, store).run([folder]).counts() == {"added": 1}
    # While this process holds the store open, another process searches the same knowledge base.
    env = {**os.environ, "KB_HOME": str(store.settings.home), "KB_CHROMA_URL": chroma_url, "KB_ENGINE": "ocr",
           "KB_EMBED_MODEL": "bundled:all-MiniLM-L6-v2", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "kb", "search", "--json", "purple elephant parade"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    top = json.loads(done.stdout)[0]
    assert (top["source"], top["page"]) == ("guide.pdf", 2)
    assert search(store, "purple elephant parade", k=1)[0].chunk.page == 2
