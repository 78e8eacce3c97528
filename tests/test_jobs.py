"""Ingest jobs outside the web process: the job table (ingest/jobs.py) and the worker (ingest/worker.py).

Two JobBoard objects on one KB_HOME stand for two processes (each has its own SQLite connection); the
kill-and-resume test runs real `python -m ingest --worker` processes and kills one with SIGKILL mid-job.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from ingest.jobs import JobBoard
from ingest.worker import Worker, start_thread
from kb.config import BUNDLED_EMBED_MODEL
from kb.engines import load_engine
from kb.errors import InputError
from kb.types import FileState, JobState
from tests.conftest import ROOT, write_pdf


def test_a_job_is_claimed_by_one_worker_and_a_shared_file_waits(tmp_path):
    home = tmp_path / "kb"
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", ["Alpha."])
    write_pdf(docs / "b.pdf", ["Beta."])
    app, worker_a, worker_b = JobBoard(home, allowed_folders=[docs]), JobBoard(home), JobBoard(home)
    first = app.submit([docs], label="the folder")
    second = app.submit([docs / "b.pdf"])  # b.pdf is in both jobs
    third = app.submit([docs / "a.pdf"])
    assert [f.rel for f in first.files] == ["a.pdf", "b.pdf"] and first.state == JobState.QUEUED

    assert worker_a.claim("a").id == first.id
    # The other worker may not take a job that shares a file with the running one: it waits.
    assert worker_b.claim("b") is None
    assert app.job(first.id).state == JobState.RUNNING and app.job(first.id).worker == "a"
    worker_a.finish(worker_a.job(first.id), JobState.DONE)
    assert worker_b.claim("b").id == second.id
    assert worker_a.claim("a").id == third.id  # a.pdf is free again
    assert worker_a.claim("a") is None


def test_a_stopping_worker_hands_its_job_back_and_keeps_what_it_finished(tmp_path):
    home, docs = tmp_path / "kb", tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", ["Alpha."])
    write_pdf(docs / "b.pdf", ["Beta."])
    board = JobBoard(home, allowed_folders=[docs])
    job = board.submit([docs])
    claimed = board.claim("stopping")
    board.set_files(job.id, {claimed.files[0].path: FileState.DONE, claimed.files[1].path: FileState.OCR})
    board.release(job.id, "stopping")
    back = board.job(job.id)
    assert (back.state, back.worker) == (JobState.QUEUED, "")
    assert [f.state for f in back.files] == [FileState.DONE, FileState.QUEUED]  # a.pdf is not read again
    assert board.claim("next").id == job.id


def test_only_uploads_and_allowed_folders_are_queued_and_checked_again_per_file(tmp_path, open_kb):
    store = open_kb()
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (secret / "passwords.md").write_text("# Passwords\n\nhunter2\n")
    (allowed / "notes.md").write_text("# Notes\n\nThe kestrel hovers.\n")
    board = JobBoard(store.settings.home, allowed_folders=[allowed])
    with pytest.raises(InputError, match="outside the folders the app may read"):
        board.submit([secret])
    job = board.submit([allowed])
    (allowed / "notes.md").unlink()
    (allowed / "notes.md").symlink_to(secret / "passwords.md")  # swapped for a link after the submit
    worker = Worker(store, lambda: load_engine(store.settings), board)
    assert worker.run_one()
    done = board.job(job.id)
    # Refused by the walk (a link out of the folder) or by the per-file check: never read.
    assert done.files[0].state == "failed" and done.files[0].result in ("link", "failed")
    assert store.manifest.all() == []


def test_a_job_whose_worker_stopped_beating_is_taken_over(tmp_path):
    home = tmp_path / "kb"
    (tmp_path / "n.md").write_text("# N\n")
    app = JobBoard(home, lease=1.0, allowed_folders=[tmp_path])
    job = app.submit([tmp_path / "n.md"])
    assert JobBoard(home, lease=1.0).claim("dead").id == job.id
    survivor = JobBoard(home, lease=1.0)
    assert survivor.claim("alive") is None  # the lease still holds
    time.sleep(1.2)
    taken = survivor.claim("alive")
    assert (taken.id, taken.worker, taken.attempts) == (job.id, "alive", 2)
    assert not JobBoard(home).renew(job.id, "dead")  # the dead worker, if it woke up, would learn it lost it


def test_cancel_stops_queued_and_running_jobs(tmp_path, open_kb):
    store = open_kb()
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (300, 120), "white").save(pictures / "one.png")
    write_pdf(tmp_path / "guide.pdf", ["Guide."])
    board = JobBoard(store.settings.home, allowed_folders=[tmp_path])
    loading, release = threading.Event(), threading.Event()

    def slow_engine():  # the engine is still loading when the user cancels
        loading.set()
        release.wait(60)
        return load_engine(store.settings)

    first = board.submit([pictures / "one.png"])
    second = board.submit([tmp_path / "guide.pdf"])
    worker = Worker(store, slow_engine, JobBoard(store.settings.home), poll=0.05)
    thread = start_thread(worker)
    try:
        assert loading.wait(60)  # the worker took the first job and waits for its engine
        board.cancel(second.id)
        board.cancel(first.id)
        release.set()
        assert board.wait(60)
        first, second = board.job(first.id), board.job(second.id)
        assert (first.state, [f.state for f in first.files]) == (JobState.CANCELLED, [FileState.CANCELLED])
        assert (second.state, [f.state for f in second.files]) == (JobState.CANCELLED, [FileState.CANCELLED])
        assert store.manifest.all() == []
    finally:
        worker.stop()
        thread.join(30)


def test_files_dropped_in_the_inbox_are_ingested_once(tmp_path, open_kb):
    store = open_kb()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "heron.md").write_text("# Herons\n\nThe grey heron waits in the shallows.\n")
    old = time.time() - 10
    os.utime(inbox / "heron.md", (old, old))  # written a while ago: the copy has finished
    (inbox / "copying.md").write_text("# Half\n")  # written just now: left for the next look
    board = JobBoard(store.settings.home)
    worker = Worker(store, lambda: load_engine(store.settings), board, inbox=inbox)
    assert worker.run_one()
    job = board.jobs()[0]
    assert (job.label, job.owner, [(f.rel, f.state, f.result) for f in job.files]) == (
        "inbox: 1 file", "inbox", [("heron.md", FileState.DONE, "added")])
    # Once the copy has settled, the next look queues that file alone: never a second job for heron.md.
    os.utime(inbox / "copying.md", (old, old))
    assert worker.run_one()
    assert [(f.rel, f.state) for f in board.jobs()[0].files] == [("copying.md", FileState.DONE)]
    assert not worker.run_one()
    assert [r.rel for r in store.manifest.all()] == ["copying.md", "heron.md"]


def scanned_pdf(path: Path, pages: int) -> Path:
    """A PDF of page images (no text layer): every page goes through the ocr engine."""
    images = []
    for n in range(1, pages + 1):
        image = Image.new("RGB", (900, 400), "white")
        ImageDraw.Draw(image).text((40, 150), f"PAGE {n} KINGFISHER REPORT", fill="black", font_size=48)
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:], resolution=100)
    return path


def start_worker(home: Path, name: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "KB_HOME": str(home), "KB_ENGINE": "ocr", "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL,
           "KB_BATCH_SIZE": "1", "KB_JOB_LEASE": "2", "KB_CONFIG": str(home / "none.toml"), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "ingest", "--worker", "--worker-name", name], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_killing_the_worker_mid_job_loses_and_duplicates_nothing(tmp_path, make_settings, embedder):
    from kb.store import open_store

    settings = make_settings()
    pages = 4
    scan = scanned_pdf(tmp_path / "report.pdf", pages)
    board = JobBoard(settings.home, allowed_folders=[tmp_path])
    job = board.submit([scan])
    first = start_worker(settings.home, "first", tmp_path / "first.log")
    checkpoints = settings.home / "checkpoints"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            done = sum(len(p.read_text().splitlines()) for p in checkpoints.glob("*.jsonl")) if checkpoints.is_dir() \
                else 0
            if done >= 1:
                break
            time.sleep(0.05)
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        first.send_signal(signal.SIGKILL)  # no goodbye: its claim stays until the lease runs out
        first.wait(10)
        killed = board.job(job.id)
        assert killed.state == JobState.RUNNING and killed.worker == "first"

        second = start_worker(settings.home, "second", tmp_path / "second.log")
        try:
            assert board.wait(180), (tmp_path / "second.log").read_text()
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    finished = board.job(job.id)
    assert (finished.state, finished.worker, finished.attempts) == (JobState.DONE, "second", 2)
    assert [(f.state, f.result) for f in finished.files] == [(FileState.DONE, "added")]
    # Resumed from the checkpoint: the second worker read fewer pages than the file has.
    assert 0 < finished.pages_read < pages
    store = open_store(settings, embedder)
    try:
        chunks, _ = store.chunks_of(str(scan.resolve()))
        assert sorted(c.page for c in chunks) == list(range(1, pages + 1))  # every page once: none lost, none twice
        assert store.count() == len(chunks) == store.manifest.get(str(scan.resolve())).chunks
        assert all(f"PAGE {c.page}" in c.text for c in chunks)
    finally:
        store.close()


def test_the_ocr_first_choice_travels_with_the_job_to_the_worker(tmp_path):
    """A visitor's OCR-first choice is part of the job, so a worker in another process reads text only."""
    home, docs = tmp_path / "kb", tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "a.pdf", ["Alpha."])
    app, worker = JobBoard(home, allowed_folders=[docs]), JobBoard(home)
    plain, text_only = app.submit([docs / "a.pdf"]), app.submit([docs], ocr_first=True)
    assert worker.job(plain.id).ocr_first is False
    assert worker.job(text_only.id).ocr_first is True


def test_a_worker_keeps_its_reader_processes_from_job_to_job_and_lets_them_go_when_idle(tmp_path, open_kb,
                                                                                        reader_pools, monkeypatch):
    """Reader processes (long PDFs, videos) take seconds to start: a worker starts them once for the jobs that keep
    coming, not once per job, and ends them when no job has come for READERS_KEPT_IDLE_S."""
    from ingest import worker as worker_module

    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("first", "second"):
        write_pdf(docs / f"{name}.pdf", [f"The {name} report, page {n}: the heron waits." for n in range(1, 31)])
    started = reader_pools
    store = open_kb()
    board = JobBoard(store.settings.home, allowed_folders=[docs])
    jobs = [board.submit([docs / f"{name}.pdf"]) for name in ("first", "second")]
    worker = Worker(store, lambda: load_engine(store.settings), board, poll=0.05)
    thread = start_thread(worker)
    try:
        deadline = time.monotonic() + 120
        while any(board.job(j.id).state != JobState.DONE for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [board.job(j.id).state for j in jobs] == [JobState.DONE, JobState.DONE]
        assert len(started) == 1 and not started[0]._shutdown_thread  # one start for both jobs, still there
        monkeypatch.setattr(worker_module, "READERS_KEPT_IDLE_S", 0.0)
        while not started[0]._shutdown_thread and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started[0]._shutdown_thread  # let go while the worker waits for jobs
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert sorted(r.rel for r in store.manifest.all()) == ["first.pdf", "second.pdf"]
    assert [c.page for c in store.chunks_of(str((docs / "second.pdf").resolve()))[0]] == list(range(1, 31))
