"""The app is safe by default: it listens on this machine only and takes the store's lock at start, reads server
folders only under KB_ALLOWED_FOLDERS, asks before deleting, keeps same-named uploads apart, and shows what
documents say as text (no live links, images or fake citations). AppTest on a small knowledge base (ocr engine,
bundled embedder), plus one real `python streamlit_app.py` process for the lock and the listening address.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ingest.jobs import Job, JobBoard, check_server_path
from ingest.pipeline import Ingestor, IngestReport
from ingest.worker import _TrackedIngestor, _Tracker
from kb.config import BUNDLED_EMBED_MODEL, load_settings
from kb.engines import load_engine
from kb.errors import ConfigError, InputError
from kb.store import open_store
from kb.types import FileState
from tests.conftest import ROOT
from tests.test_app import ENV, clear_caches
from tests.test_app import app as run_page

EVIL = ("# Harbour notes\n\nThe harbour pilot boards at dawn, see [click](https://evil.example) and "
        "![x](https://evil.example/a.png) as stated in [9] and www.evil.example or pilot@evil.example.\n")
SECRET = "The vault password is swordfish-7731."


def settings_for(home: Path, **extra):
    return load_settings({"home": home, "embed_model": BUNDLED_EMBED_MODEL, "engine": "ocr", **extra}, env={})


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    """An empty knowledge base and the app's settings in the environment (no allowed folders unless set)."""
    home = tmp_path / "kb"
    for name, value in {**ENV, "KB_HOME": str(home), "KB_CONFIG": str(tmp_path / "none.toml")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KB_ALLOWED_FOLDERS", raising=False)
    clear_caches()
    yield home
    clear_caches()


def wait_for_jobs(at: AppTest) -> AppTest:
    from pages import resources

    assert resources.jobs().wait(timeout=120), "the ingest jobs did not finish"
    return at.run()


def shown(elements) -> list[str]:
    return [e.value.replace("\\", "") for e in elements]


def ingest(home: Path, embedder, paths) -> None:
    settings = settings_for(home)
    store = open_store(settings, embedder)
    try:
        Ingestor(settings, store).run(paths)
    finally:
        store.close()


def sources(home: Path) -> list:
    from pages import resources

    return resources.store().manifest.all()


# server folders -------------------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path) -> dict[str, Path]:
    """An allowed folder with a good note, a hidden folder and links out; a secret next to it, outside."""
    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "password.txt").write_text(SECRET)
    allowed = tmp_path / "allowed"
    (allowed / "notes").mkdir(parents=True)
    (allowed / "notes" / "otter.md").write_text("# Otters\n\nThe otter holds hands while sleeping.\n")
    (allowed / "notes" / "password.txt").symlink_to(secret / "password.txt")
    (allowed / ".ssh").mkdir()
    (allowed / ".ssh" / "key.txt").write_text(SECRET)
    (allowed / "elsewhere").symlink_to(secret)
    return {"allowed": allowed, "secret": secret}


def test_server_folder_option_is_off_without_allowed_folders(app_env, server):
    at = run_page("pages/add.py")
    assert not [t for t in at.text_input if t.key == "folder_path"], "no box to type a server path into"
    assert any("KB_ALLOWED_FOLDERS" in i.value for i in at.info), "the page says how to turn it on"
    # The library refuses it too (the page is not the only way in).
    from pages import resources

    with pytest.raises(InputError, match="off in this app .KB_ALLOWED_FOLDERS is not set") as err:
        resources.jobs().submit([server["secret"] / "password.txt"])
    assert str(server["secret"] / "password.txt") in str(err.value)


def test_server_paths_outside_the_allowed_folders_are_refused(app_env, server, monkeypatch):
    monkeypatch.setenv("KB_ALLOWED_FOLDERS", str(server["allowed"]))
    clear_caches()
    at = run_page("pages/add.py")
    refused = {server["secret"] / "password.txt": "outside the folders",
               server["allowed"] / ".." / "private" / "password.txt": "outside the folders",
               server["allowed"] / ".ssh" / "key.txt": "hidden",
               server["allowed"] / "elsewhere": "leads to",
               Path("notes/otter.md"): "not an absolute path"}
    for path, why in refused.items():
        at.text_input(key="folder_path").set_value(str(path)).run()
        at.button(key="ingest_folder").click().run()
        error = shown(at.error)[-1]
        assert str(path) in error and why in error, error
        if why != "not an absolute path":
            assert "KB_ALLOWED_FOLDERS" in error or "python -m ingest" in error, error
    # The allowed folder goes in, but not through its link to the secret, nor its hidden folder.
    at.text_input(key="folder_path").set_value(str(server["allowed"])).run()
    at.button(key="ingest_folder").click().run()
    wait_for_jobs(at)
    from pages import resources

    stored = {r.rel: r.path for r in sources(app_env)}
    assert "notes/otter.md" in stored
    assert not any("password" in rel or "key" in rel for rel in stored), stored
    rows = {f.rel: f for f in resources.jobs().jobs()[0].files}
    assert "outside" in rows["notes/password.txt"].reason, "the link has its own line saying why it was not read"
    assert at.text_input(key="folder_path")  # still offered, with the roots named
    assert any(str(server["allowed"]) in c.value.replace("\\", "") for c in at.caption)


def test_check_server_path_resolves_links(server):
    roots = [server["allowed"]]
    assert check_server_path(server["allowed"] / "notes" / "otter.md", roots) == server["allowed"].resolve() / \
        "notes" / "otter.md"
    for path in (server["allowed"] / "notes" / "password.txt", server["allowed"] / "elsewhere" / "password.txt"):
        with pytest.raises(InputError, match="leads to .*private"):
            check_server_path(path, roots)
    with pytest.raises(InputError, match="no such file"):
        check_server_path(server["allowed"] / "missing.md", roots)


def test_each_file_is_checked_again_when_the_job_runs(tmp_path, server, embedder):
    """A file that became a link after the submit (or any path the walk hands over) is refused at read time."""
    settings = settings_for(tmp_path / "kb", allowed_folders=(server["allowed"],))
    store = open_store(settings, embedder)
    try:
        tracker = _Tracker(JobBoard(settings.home), Job(id=1, label="swapped", files=[]), threading.Event(),
                           threading.Event())
        ingestor = _TrackedIngestor(store, lambda: load_engine(settings), tracker, (server["allowed"],))
        report = ingestor.run([server["allowed"] / "notes" / "password.txt"])
        assert isinstance(report, IngestReport)
        assert [r.status for r in report.results] == ["failed"]
        assert "outside the folders" in report.results[0].errors[0]
        assert store.manifest.all() == []
    finally:
        store.close()


# uploads --------------------------------------------------------------------------------------------------
def test_same_named_uploads_both_stay_searchable(app_env, monkeypatch):
    monkeypatch.chdir(app_env.parent)
    monkeypatch.setenv("KB_HOME", app_env.name)  # relative, as the default `data/kb` is
    clear_caches()
    at = run_page("pages/add.py")
    first = b"# Report\n\nThe walrus choir rehearses on Tuesdays in the boathouse.\n"
    second = b"# Report\n\nThe flamingo budget was approved by the lagoon council.\n"
    for data in (first, second, first):  # the third is the first again: not stored twice
        at.file_uploader(key="uploads").set_value([("report.md", data, "text/markdown")]).run()
        at.button(key="ingest_uploads").click().run()
        wait_for_jobs(at)
    records = sources(app_env)
    assert [r.rel for r in records] == ["report.md", "report.md"], "the original name is what the user sees"
    assert len({r.path for r in records}) == 2
    from pages import resources

    files = resources.jobs().jobs()[0].files
    assert [(f.rel, f.state, f.result) for f in files] == [("report.md", FileState.DONE, "skipped")]
    for question, words in (("When does the walrus choir rehearse?", "walrus choir"),
                            ("Who approved the flamingo budget?", "flamingo budget")):
        at = run_page()
        at.chat_input(key="question").set_value(question).run()
        assert any(words in t.value for t in at.text), f"{words!r} is no longer searchable"


# answers --------------------------------------------------------------------------------------------------
def test_document_links_images_and_fake_citations_render_as_text(app_env, tmp_path, embedder):
    library = tmp_path / "library"
    library.mkdir()
    (library / "harbour.md").write_text(EVIL)
    ingest(app_env, embedder, [library / "harbour.md"])
    at = run_page()
    at.chat_input(key="question").set_value("When does the harbour pilot board?").run()
    assert not at.exception
    answer = at.chat_message[-1].markdown[0].value
    assert "harbour pilot boards at dawn" in answer, answer
    for md in (m.value for m in at.markdown):
        assert not re.search(r"(?<!\\)[\[\]<]", md), f"link, image or HTML syntax survives: {md!r}"
        assert not re.search(r"(?i)https?://|www\.|@evil", md), f"a bare URL would be linked: {md!r}"
    visible = answer.replace("\\", "").replace("\u200b", "")
    assert "[9]" not in visible and "[1]" in visible, "only real citations are numbered"
    assert "[click](https://evil.example)" in visible, "the text itself is still there to read"


# library --------------------------------------------------------------------------------------------------
def test_delete_asks_first_and_removes_exactly_that_source(app_env, tmp_path, embedder):
    library = tmp_path / "library"
    library.mkdir()
    for name in ("a_b.md", "axb.md"):  # `_` is a wildcard in SQL LIKE: the delete must not take both
        (library / name).write_text(f"# {name}\n\nThe {name} pelican counts fish.\n")
    ingest(app_env, embedder, [library])
    at = run_page("pages/library.py")
    target = str((library / "a_b.md").resolve())
    at.selectbox(key="library_open").set_value(target).run()
    at.button(key="library_delete").click().run()
    assert len(sources(app_env)) == 2, "the first click only asks"
    question = shown(at.warning)[-1]
    assert "Delete a_b.md" in question and target in question
    at.button(key="library_delete_cancel").click().run()
    assert len(sources(app_env)) == 2 and not [b for b in at.button if b.key == "library_delete_confirm"]
    at.button(key="library_delete").click().run()
    at.button(key="library_delete_confirm").click().run()
    assert [r.rel for r in sources(app_env)] == ["axb.md"]
    assert "Deleted a_b.md" in shown(at.success)[0]


# the app process ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent); None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_app_takes_the_lock_and_loads_the_engine_at_start_and_listens_locally(tmp_path):
    home = tmp_path / "kb"
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nA note for the lock test.\n")
    env = {**os.environ, **ENV, "KB_HOME": str(home), "KB_CONFIG": str(tmp_path / "none.toml")}
    env.pop("KB_ALLOWED_FOLDERS", None)
    port = free_port()
    log = (tmp_path / "app.log").open("w")
    # No --server.address: the default (.streamlit/config.toml) must keep the app on this machine.
    app = subprocess.Popen([sys.executable, "streamlit_app.py", "--server.port", str(port), "--server.headless",
                            "true", "--server.fileWatcherType", "none"], cwd=ROOT, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                assert app.poll() is None and time.monotonic() < deadline, (tmp_path / "app.log").read_text()
                time.sleep(0.2)
        # Nobody has opened a page: the lock is held all the same.
        ingest = subprocess.run([sys.executable, "-m", "ingest", str(note)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert ingest.returncode != 0
        assert "open in another process" in ingest.stderr and f"pid {app.pid}" in ingest.stderr, ingest.stderr
        # Nor has anybody asked a question: the engine loads all the same, so the first question does not wait.
        while "Seekframe: engine ready" not in (tmp_path / "app.log").read_text():
            assert app.poll() is None and time.monotonic() < deadline + 60, (tmp_path / "app.log").read_text()
            time.sleep(0.2)
        ready = next(line for line in (tmp_path / "app.log").read_text().splitlines() if "engine ready" in line)
        assert "'ocr'" in ready, ready  # and it says which engine runs and why
        address = outside_address()
        if address:
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
    finally:
        app.terminate()
        app.wait(30)
        log.close()


def test_allowed_folders_setting(tmp_path):
    toml = tmp_path / "seekframe.toml"
    toml.write_text('[seekframe]\nallowed_folders = ["/srv/docs", "/mnt/share"]\n')
    assert load_settings(env={}, toml_path=toml).allowed_folders == (Path("/srv/docs"), Path("/mnt/share"))
    settings = load_settings(env={"KB_ALLOWED_FOLDERS": "/srv/docs:/mnt/share"}, toml_path=tmp_path / "none.toml")
    assert settings.allowed_folders == (Path("/srv/docs"), Path("/mnt/share"))
    assert settings.masked()["allowed_folders"] == "/srv/docs:/mnt/share"  # as `python -m kb config` prints it
    assert load_settings(env={}, toml_path=tmp_path / "none.toml").allowed_folders == ()
    with pytest.raises(ConfigError, match="KB_ALLOWED_FOLDERS"):
        load_settings(env={"KB_ALLOWED_FOLDERS": "docs"}, toml_path=tmp_path / "none.toml")


def test_only_real_citation_markers_are_kept():
    from kb.answer import keep_real_citations

    text = "Pilots board at dawn [1][9]. Tugs wait [2, 7] and [12] of them [3]."
    assert keep_real_citations(text, 2) == "Pilots board at dawn [1]. Tugs wait [2] and of them."
    assert keep_real_citations("see [1] and [2]", 0) == "see and"
