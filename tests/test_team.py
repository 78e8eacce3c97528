"""compose.yaml's topology as processes on this machine: a Chroma server, the vLLM CPU server with the tiny
Qwen3-VL, one ingest worker and two app processes sharing one KB_HOME. Files uploaded in a browser on app A are
ingested by the worker (the image through vLLM) and answer a question asked on app B; B lists A's job too.
(Killing the worker mid-job is tests/test_jobs.py::test_killing_the_worker_mid_job_loses_and_duplicates_nothing.)
"""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from ingest.jobs import JobBoard
from kb.config import BUNDLED_EMBED_MODEL
from tests.conftest import ROOT, write_pdf
from tests.test_app_browser import CHROMIUM, wait_until
from tests.test_auth_browser import browser, click, stop  # noqa: F401  (browser is a fixture)
from tests.test_chroma_server import chroma_url  # noqa: F401  (a fixture: a real `chroma run`)
from tests.vllm_server import VLLMServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


def team_env(home: Path, chroma: str, vllm: VLLMServer) -> dict[str, str]:
    return {**os.environ, "KB_HOME": str(home), "KB_CHROMA_URL": chroma, "KB_ENGINE": "openai",
            "KB_OPENAI_BASE_URL": vllm.base_url, "KB_MODEL": vllm.model, "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL,
            "KB_CONFIG": str(home.parent / "none.toml"), "KB_MAX_PAGE_TOKENS": "16", "KB_AUTH": "none",
            "HF_HUB_OFFLINE": "1"}


def start_app(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                            "--server.address", "127.0.0.1", "--server.headless", "true",
                            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                           cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return app, f"http://127.0.0.1:{port}"


def test_a_file_added_through_one_app_is_found_from_the_other(chroma_url, vllm_server, browser,  # noqa: F811
                                                              tmp_path):
    home = tmp_path / "kb"
    env = team_env(home, chroma_url, vllm_server)
    worker = subprocess.Popen([sys.executable, "-m", "ingest", "--worker", "--worker-name", "team-worker"], cwd=ROOT,
                              env=env, stdout=(tmp_path / "worker.log").open("w"), stderr=subprocess.STDOUT)
    apps = [start_app(env, tmp_path / f"app{n}.log") for n in (1, 2)]
    try:
        for _, url in apps:
            wait_until(lambda url=url: urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).status == 200,
                       f"the app at {url}", timeout=120)
        (a, url_a), (b, url_b) = apps
        pdf = write_pdf(tmp_path / "osprey.pdf", ["The osprey dives feet first and carries fish head forward."])
        photo = tmp_path / "sign.png"
        image = Image.new("RGB", (320, 120), "white")
        ImageDraw.Draw(image).text((20, 40), "NO FISHING", fill="black", font_size=36)
        image.save(photo)

        browser.send("Page.navigate", url=f"{url_a}/add")
        browser.wait_text("Upload files", timeout=90)
        document = browser.send("DOM.getDocument", depth=-1, pierce=True)
        node = wait_until(lambda: browser.send("DOM.querySelector", nodeId=document["root"]["nodeId"],
                                               selector="input[type=file]").get("nodeId"), "the file input")
        browser.send("DOM.setFileInputFiles", files=[str(pdf), str(photo)], nodeId=node)
        browser.wait_text("sign.png", timeout=30)
        click(browser, "Ingest uploaded files")
        board = JobBoard(home)
        assert wait_until(lambda: board.jobs() and not board.busy, "the worker to finish the upload", timeout=240)
        job = board.jobs()[0]
        assert job.worker == "team-worker"  # no app process ingested it: neither owns a store
        states = sorted((f.rel, f.state, f.result) for f in job.files)
        assert [(rel, state) for rel, state, _ in states] == [("osprey.pdf", "done"), ("sign.png", "done")], \
            [(f.rel, f.state, f.result, f.reason) for f in job.files]
        assert job.engine.startswith("openai") and job.pages_read >= 1  # the photo went through vLLM

        browser.send("Page.navigate", url=url_b)
        browser.wait_text("Ask your knowledge base", timeout=90)
        browser.type_question("How does the osprey dive?")
        browser.wait_text("[1] osprey.pdf p. 1", timeout=120)
        browser.send("Page.navigate", url=f"{url_b}/add")
        browser.wait_text("done · 2/2 files", timeout=60)  # app B shows the job queued on app A
    finally:
        for process, _ in apps:
            stop(process)
        stop(worker)
