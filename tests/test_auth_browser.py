"""Sign-in in a real browser: Streamlit's st.login against a real OpenID Connect provider on this machine
(`oidc-provider-mock`, PyPI), and the trusted-header mode refusing a header from an address that is no proxy.

vera@example.com is a viewer (no Add page; a delete is refused), eddie@example.com an editor (uploads work).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from kb.config import BUNDLED_EMBED_MODEL, load_settings
from tests.conftest import ROOT, write_pdf
from tests.test_app_browser import CHROMIUM, DevTools, chromium, free_port, http_json, wait_until

PROVIDER = Path(sys.executable).parent / "oidc-provider-mock"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make browser`)"),
              pytest.mark.skipif(not PROVIDER.exists(), reason="oidc-provider-mock is not installed "
                                 "(requirements-dev.txt)")]
USERS = [{"sub": "vera@example.com", "email": "vera@example.com", "name": "Vera Viewer"},
         {"sub": "eddie@example.com", "email": "eddie@example.com", "name": "Eddie Editor", "groups": ["writers"]}]


def start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("oidc") / "provider.log"
    argv = [str(PROVIDER), "--port", str(port), *[x for u in USERS for x in ("--user-claims", json.dumps(u))]]
    server = start(argv, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_json(f"{url}/.well-known/openid-configuration").get("issuer"), "the OIDC provider")
        yield url
    finally:
        stop(server)


@pytest.fixture(scope="module")
def team_kb(tmp_path_factory, embedder) -> Path:
    from ingest.pipeline import Ingestor
    from kb.store import open_store

    root = tmp_path_factory.mktemp("team-kb")
    write_pdf(root / "handbook.pdf", ["Team handbook.", "The osprey dives feet first into the lake."])
    settings = load_settings({"home": root / "kb", "embed_model": BUNDLED_EMBED_MODEL, "engine": "ocr"}, env={})
    store = open_store(settings, embedder)
    try:
        assert Ingestor(settings, store).run([root / "handbook.pdf"]).exit_code == 0
    finally:
        store.close()
    return root / "kb"


def run_app(home: Path, workdir: Path, env: dict[str, str], flags: list[str] = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "KB_HOME": str(home), "KB_ENGINE": "ocr", "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL,
           "KB_CONFIG": str(workdir / "none.toml"), "HF_HUB_OFFLINE": "1", **env}
    app = start([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                 "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
                 "--browser.gatherUsageStats", "false", *flags], workdir / "app.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).status == 200,
                   f"the app (log {workdir / 'app.log'})", timeout=120)
    except AssertionError:
        stop(app)
        raise
    return app, url


@pytest.fixture(scope="module")
def oidc_url(provider, team_kb, tmp_path_factory):
    """The app on the port its secrets.toml names as the redirect (chosen before the app starts)."""
    workdir = tmp_path_factory.mktemp("oidc-app")
    port = free_port()
    secrets = workdir / "secrets.toml"
    secrets.write_text(f"""[auth]
redirect_uri = "http://127.0.0.1:{port}/oauth2callback"
cookie_secret = "a-test-cookie-secret-that-is-long-enough"
client_id = "seekframe"
client_secret = "seekframe-secret"
server_metadata_url = "{provider}/.well-known/openid-configuration"
""")
    env = {**os.environ, "KB_HOME": str(team_kb), "KB_ENGINE": "ocr", "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL,
           "KB_CONFIG": str(workdir / "none.toml"), "HF_HUB_OFFLINE": "1", "KB_AUTH": "oidc",
           "KB_EDITORS": "eddie@example.com", "KB_ADMINS": "root@example.com"}
    app = start([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                 "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
                 "--browser.gatherUsageStats", "false", "--secrets.files", str(secrets)], workdir / "app.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).status == 200,
                   f"the app (log {workdir / 'app.log'})", timeout=120)
        yield url
    finally:
        stop(app)


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path / "profile") as tools:
        yield tools


def click(browser: DevTools, label: str) -> None:
    """Click the first enabled button whose text is `label` (waiting for it to appear and be enabled)."""
    script = (f"(() => {{ const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === "
              f"{json.dumps(label)} && !b.disabled); if (b) {{ b.click(); return true; }} return false; }})()")
    wait_until(lambda: browser.eval(script), f"a {label!r} button", timeout=60)


def sign_in(browser: DevTools, url: str, email: str) -> None:
    browser.send("Page.navigate", url=url)
    browser.wait_text("Sign in to ask questions", timeout=90)  # signed out: the sign-in page, nothing else
    assert not browser.eval("document.body.innerText.includes('Ask your knowledge base')")
    click(browser, "Sign in")
    browser.wait_text("Authorize Client", timeout=60)  # the provider's own page
    click(browser, email)
    browser.wait_text("Signed in as", timeout=90)


def sidebar(browser: DevTools) -> str:
    return browser.eval("(document.querySelector('[data-testid=\"stSidebar\"]') || document.body).innerText") or ""


def test_viewer_asks_and_browses_but_cannot_add_or_delete(oidc_url, browser):
    sign_in(browser, oidc_url, "vera@example.com")
    browser.wait_text("Ask your knowledge base")
    assert "Vera Viewer · viewer" in sidebar(browser)
    assert "Add content" not in sidebar(browser) and "System" not in sidebar(browser)
    browser.type_question("What does the osprey do?")
    browser.wait_text("[1] handbook.pdf p. 2", timeout=90)

    browser.send("Page.navigate", url=f"{oidc_url}/library")
    browser.wait_text("Open a source", timeout=60)
    click(browser, "Delete")
    browser.wait_text("Refused: delete needs the editor role; you are viewer.", timeout=30)
    assert "Yes, delete" not in (browser.eval("document.body.innerText") or "")


def test_editor_uploads_a_file_that_is_ingested(oidc_url, browser, tmp_path):
    sign_in(browser, oidc_url, "eddie@example.com")
    assert "Eddie Editor · editor" in sidebar(browser)
    browser.send("Page.navigate", url=f"{oidc_url}/add")
    browser.wait_text("Upload files", timeout=60)
    note = tmp_path / "kingfisher.md"
    note.write_text("# Kingfishers\n\nThe kingfisher nests in a riverbank tunnel.\n")
    document = browser.send("DOM.getDocument", depth=-1, pierce=True)
    node = wait_until(lambda: browser.send("DOM.querySelector", nodeId=document["root"]["nodeId"],
                                           selector="input[type=file]").get("nodeId"), "the file input")
    browser.send("DOM.setFileInputFiles", files=[str(note)], nodeId=node)
    browser.wait_text("kingfisher.md", timeout=30)
    click(browser, "Ingest uploaded files")
    browser.wait_text("upload of 1 file", timeout=60)
    wait_until(lambda: browser.eval("document.body.innerText.includes('done · 1/1 files')"), "the upload's job",
               timeout=120)


def test_a_sign_in_header_from_an_address_that_is_no_proxy_is_refused(team_kb, browser, tmp_path):
    import shutil

    home = shutil.copytree(team_kb, tmp_path / "kb", ignore=shutil.ignore_patterns("owner.lock"))  # its own copy
    env = {"KB_AUTH": "header", "KB_AUTH_TRUSTED_PROXIES": "10.255.255.1", "KB_AUTH_HEADER_SECRET": "proxy-only-secret"}
    app, url = run_app(home, tmp_path, env)
    try:
        browser.send("Network.enable")
        browser.send("Network.setExtraHTTPHeaders", headers={"X-Seekframe-User": "mallory@example.com"})
        browser.send("Page.navigate", url=url)
        browser.wait_text("which is not a trusted proxy, and without the shared secret: refused", timeout=90)
        shown = browser.eval("document.body.innerText") or ""
        assert "Ask your knowledge base" not in shown and "Library" not in shown  # no page is offered
        # The proxy itself (here: the secret it shares with the app) is believed.
        browser.send("Network.setExtraHTTPHeaders", headers={"X-Seekframe-User": "eddie@example.com",
                                                              "X-Seekframe-Secret": "proxy-only-secret"})
        browser.send("Page.navigate", url=url)
        browser.wait_text("· viewer", timeout=90)
        assert "Signed in as eddie@" in sidebar(browser)  # (the app breaks autolinks after the @)
        browser.send("Page.navigate", url="about:blank")  # no open session: the app stops at once
    finally:
        stop(app)
