"""`kill -9` of `python -m ingest` and `python -m kb delete` at chosen moments, then a re-run: nothing lost,
nothing duplicated, Chroma, the lexical index and the manifest agree with a clean run.

A moment is reached without timing guesses: the process runs under a small launcher that wraps one function
(say, the 3rd call of `read_file`), touches a marker file there and waits; the test sees the marker and sends
SIGKILL. The product code has no test hooks. One step also kills at a moment seen only from outside (one more
manifest row), whatever the process is doing then. The checks are on results only, never on timings.
"""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageDraw

from data.make_samples import font
from ingest.chunk import chunk_id
from kb.config import BUNDLED_EMBED_MODEL, load_settings
from kb.store import open_store
from tests.conftest import write_pdf

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = """
import importlib, os, runpy, sys, time
spec, marker, module = sys.argv[1:4]
sys.argv = [module, *sys.argv[4:]]
if spec != "-":
    where, attr, when, nth = spec.split(":")
    owner = importlib.import_module(where)
    *parents, name = attr.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real, calls = getattr(owner, name), [0]

    def stop_here():
        open(marker, "w").close()
        while True:
            time.sleep(60)  # the test kills us here

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(nth) and when == "before":
            stop_here()
        out = real(*args, **kwargs)
        if calls[0] == int(nth) and when == "after":
            stop_here()
        return out

    setattr(owner, name, wrapped)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
NOTES_V1 = "Maintenance log, first draft.\n\nThe pump was serviced in May. The valve is due in June.\n"
NOTES = "Maintenance log.\n\nThe pump P-113 was serviced in March.\n\n" + "The filter was changed on schedule. " * 40


def _scan(size: tuple[int, int], lines: list[str]) -> Image.Image:
    page = Image.new("L", size, 255)
    draw = ImageDraw.Draw(page)
    for n, line in enumerate(lines):
        draw.text((60, 60 + 70 * n), line, fill=0, font=font(44))
    return page


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Read in this order: a scan (engine), two born-digital PDFs and a text file (no engine), a scanned PDF."""
    out = tmp_path_factory.mktemp("crash") / "library"
    out.mkdir()
    _scan((900, 300), ["Invoice INV-2024-0117", "Total due 1,250 EUR"]).save(out / "a-scan.png")
    write_pdf(out / "b-guide.pdf", ["Seekframe keeps provenance. " * 20, "The purple elephant parade. " * 20])
    write_pdf(out / "c-report.pdf", [f"Quarterly report, section {n}. " * 25 for n in range(1, 3)])
    (out / "d-notes.txt").write_text(NOTES)
    scanned = out / "e-scanned.pdf"
    _scan((850, 500), ["Quarterly maintenance report", "Boiler room inspection"]).save(out / "page.png")
    doc = pymupdf.open()
    doc.new_page(width=612, height=360).insert_image(pymupdf.Rect(0, 0, 612, 360), filename=str(out / "page.png"))
    doc.save(scanned)
    (out / "page.png").unlink()
    return out


def _command(module: str, home: Path, *args: str, spec: str = "-", marker: Path | None = None) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, spec, str(marker or home / "marker"), module, *args, "--home", str(home),
            "--embed-model", BUNDLED_EMBED_MODEL, "--engine", "ocr", "--batch-size", "1"]


def _run(module: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(module, home, *args), cwd=ROOT, capture_output=True, text=True, timeout=300)


def _kill_at(module: str, home: Path, *args: str, spec: str) -> None:
    """Run until the wrapped call is reached, then SIGKILL (what a crash or `kill -9` does)."""
    marker = home.parent / f"{home.name}.marker"
    proc = subprocess.Popen(_command(module, home, *args, spec=spec, marker=marker), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_then_kill(proc, marker.exists)


def _wait_then_kill(proc: subprocess.Popen, reached) -> None:
    deadline = time.monotonic() + 240  # a hang guard, not a timing assert
    while not reached():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (exit {proc.returncode}) before the moment to kill it:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the moment to kill the process never came")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _state(home: Path, embedder) -> dict:
    """Everything a user could notice, read by opening the store (which finishes interrupted work first)."""
    store = open_store(load_settings({"home": home, "embed_model": BUNDLED_EMBED_MODEL, "engine": "ocr"}, env={}),
                       embedder)
    try:
        sources = {r.rel: (r.sha256, r.chunks, r.status) for r in store.manifest.all()}
        expected = {chunk_id(r.path, r.sha256, n) for r in store.manifest.all() for n in range(r.chunks)}
        chroma = store._collection.get(include=[])["ids"]
        lexical = [row[0] for row in store.lexical._db.execute("SELECT id FROM chunks")]
        journal = store.manifest.cleanups()
    finally:
        store.close()
    checkpoints = home / "checkpoints"
    return {"sources": sources, "chroma": sorted(chroma), "lexical": sorted(lexical), "expected": sorted(expected),
            "journal": journal, "checkpoints": sorted(checkpoints.iterdir()) if checkpoints.exists() else []}


def _assert_consistent(state: dict) -> None:
    assert state["chroma"] == state["lexical"] == state["expected"]  # same ids, none twice, none unreachable
    assert state["journal"] == []


@pytest.fixture(scope="module")
def clean(folder, tmp_path_factory, embedder) -> dict:
    """One uninterrupted run: what every interrupted one must end up equal to."""
    home = tmp_path_factory.mktemp("clean") / "kb"
    done = _run("ingest", home, str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    state = _state(home, embedder)
    assert len(state["sources"]) == 5 and all(chunks > 0 for _, chunks, _ in state["sources"].values())
    _assert_consistent(state)
    return {"home": home, "state": state}


# Each step kills a run at a later stage than the last; the next run resumes from what the kill left.
STEPS = [
    ("reading", "ingest.pipeline:read_file:before:3"),  # the scan stored, the first PDF read but not stored
    ("engine work", "kb.engines.ocr:OCREngine.generate:after:1"),  # the scanned PDF's text made, not yet kept
    ("store commit", "kb.lexical:LexicalIndex.upsert:after:2"),  # a PDF in Chroma and the lexical index, no row
    ("seen from outside", "one more manifest row"),  # no wrapped call: wherever the process is at that time
]


def test_ingest_killed_at_each_stage_reruns_to_the_clean_result(folder, clean, tmp_path, embedder):
    home = tmp_path / "kb"
    for stage, spec in STEPS:
        if spec == "one more manifest row":
            before = _stored_sources(home)
            proc = subprocess.Popen(_command("ingest", home, str(folder)), cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            _wait_then_kill(proc, lambda before=before: _stored_sources(home) > before)
        else:
            _kill_at("ingest", home, str(folder), spec=spec)
        state = _state(home, embedder)
        _assert_consistent(state)
        # Whatever is visible after a crash is exactly what a clean run stores for that file.
        assert state["sources"].items() <= clean["state"]["sources"].items(), stage
        assert set(state["chroma"]) <= set(clean["state"]["chroma"]), stage
        if stage != "seen from outside":  # the wrapped moments come before the last file is stored
            assert len(state["sources"]) < len(clean["state"]["sources"]), stage
    done = _run("ingest", home, str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    state = _state(home, embedder)
    _assert_consistent(state)
    assert state["sources"] == clean["state"]["sources"]  # no source lost
    assert state["chroma"] == clean["state"]["chroma"]  # the same chunks, none twice
    assert state["checkpoints"] == []


def _stored_sources(home: Path) -> int:
    path = home / "manifest.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM sources").fetchone()[0]
    except sqlite3.Error:  # created but no table yet
        return 0


def _copy_of_clean(clean: dict, tmp_path: Path) -> Path:
    home = tmp_path / "kb"
    shutil.copytree(clean["home"], home)
    return home


def test_a_replace_killed_after_its_commit_leaves_no_old_chunks(folder, clean, tmp_path, embedder):
    home = _copy_of_clean(clean, tmp_path)
    notes = folder / "d-notes.txt"
    try:
        notes.write_text(NOTES_V1)
        _kill_at("ingest", home, str(folder), spec="kb.manifest:Manifest.put:after:1")
    finally:
        notes.write_text(NOTES)
    state = _state(home, embedder)  # the open cleans what the killed run left
    _assert_consistent(state)
    old = clean["state"]["sources"]["d-notes.txt"]
    assert state["sources"]["d-notes.txt"][0] != old[0]  # the new version is the one kept
    assert len(state["chroma"]) == len(clean["state"]["chroma"]) - old[1] + state["sources"]["d-notes.txt"][1]


def test_a_delete_killed_half_way_is_finished_by_the_next_open(folder, clean, tmp_path, embedder):
    home = _copy_of_clean(clean, tmp_path)
    _kill_at("kb", home, "delete", "c-report.pdf", spec="kb.store:Store._delete_where:before:1")
    state = _state(home, embedder)
    _assert_consistent(state)
    assert set(state["sources"]) == set(clean["state"]["sources"]) - {"c-report.pdf"}
    report_chunks = clean["state"]["sources"]["c-report.pdf"][1]
    assert len(state["chroma"]) == len(clean["state"]["chroma"]) - report_chunks


def test_a_delete_killed_half_way_is_finished_by_deleting_again(folder, clean, tmp_path, embedder):
    home = _copy_of_clean(clean, tmp_path)
    _kill_at("kb", home, "delete", "c-report.pdf", spec="kb.lexical:LexicalIndex.delete_source:before:1")
    again = _run("kb", home, "delete", "c-report.pdf")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "deleted c-report.pdf (finished an interrupted delete" in again.stdout
    state = _state(home, embedder)
    _assert_consistent(state)
    assert set(state["sources"]) == set(clean["state"]["sources"]) - {"c-report.pdf"}
