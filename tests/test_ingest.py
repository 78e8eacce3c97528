"""Ingest end to end with generated files: page numbers, idempotence, replacement, renames, bad inputs."""
from pathlib import Path

import pymupdf
import pytest

from ingest.pipeline import Ingestor
from kb.search import search
from tests.conftest import write_pdf

PAGES = ["Seekframe keeps provenance. " * 5, "The purple elephant parade happens on page two. " * 3,
         "Closing remarks about indexing on the last page. " * 3]


@pytest.fixture
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    folder.mkdir()
    write_pdf(folder / "guide.pdf", PAGES)
    (folder / "notes.md").write_text("# Notes\n\nThe invoice INV-2024-0117 was paid in March.\n")
    return folder


def ingest(store, settings_kw=None, *paths, prune=False):
    return Ingestor(store.settings, store).run(list(paths), prune=prune)


def test_pdf_text_layer_keeps_page_numbers(open_kb, library):
    store = open_kb()
    report = ingest(store, None, library)
    assert report.counts()["added"] == 2 and report.exit_code == 0
    top = search(store, "purple elephant parade", k=1)[0]
    assert (top.chunk.rel, top.chunk.page, top.chunk.modality) == ("guide.pdf", 2, "pdf_text")


def test_reingest_unchanged_is_a_noop(open_kb, library):
    store = open_kb()
    ingest(store, None, library)
    ids_before = sorted(store._collection.get(include=[])["ids"])
    report = ingest(store, None, library)
    assert report.counts() == {"skipped": 2}
    assert sorted(store._collection.get(include=[])["ids"]) == ids_before


def test_modified_file_replaces_its_chunks(open_kb, library):
    store = open_kb()
    ingest(store, None, library)
    (library / "notes.md").write_text("# Notes\n\nThe invoice INV-2024-0999 is overdue.\n")
    report = ingest(store, None, library)
    assert report.counts() == {"updated": 1, "skipped": 1}
    texts = [c.text for c in store.chunks_of(str((library / "notes.md").resolve()))[0]]
    assert texts and all("0999" in t for t in texts) and not any("0117" in t for t in texts)
    assert all("0117" not in h.chunk.text for h in search(store, "invoice INV-2024-0117", k=5))


def test_renamed_file_is_not_embedded_again(open_kb, library, embedder, monkeypatch):
    store = open_kb()
    ingest(store, None, library)
    (library / "guide.pdf").rename(library / "handbook.pdf")
    calls = []
    monkeypatch.setattr(embedder, "embed_documents", lambda texts, **kw: calls.append(texts) or [])
    report = ingest(store, None, library)
    assert report.counts() == {"renamed": 1, "skipped": 1} and calls == []
    assert [r.rel for r in store.manifest.all()] == ["handbook.pdf", "notes.md"]
    assert search(store, "purple elephant parade", k=1)[0].chunk.rel == "handbook.pdf"


def test_prune_removes_vanished_files(open_kb, library):
    store = open_kb()
    ingest(store, None, library)
    (library / "notes.md").unlink()
    assert "pruned" not in ingest(store, None, library).counts()
    report = ingest(store, None, library, prune=True)
    assert report.counts()["pruned"] == 1
    assert [r.rel for r in store.manifest.all()] == ["guide.pdf"]
    assert all(h.chunk.rel != "notes.md" for h in search(store, "invoice", k=5))


def _bad_inputs(folder: Path) -> dict[str, str]:
    (folder / "empty.pdf").write_bytes(b"")
    good = write_pdf(folder / "tmp.pdf", ["Some text that will be cut off halfway through the file. " * 20])
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.pdf").write_bytes(data[: len(data) // 2])
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret")
    doc.save(folder / "encrypted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="pw")
    (folder / "letter.pdf").write_text("Dear Sir, this is a plain text letter, not a PDF.")
    (folder / "photo.jpg").write_text("this is a text file renamed to .jpg")
    return {"empty.pdf": "empty", "truncated.pdf": "truncated", "encrypted.pdf": "encrypted",
            "letter.pdf": "a plain-text file, not a PDF", "photo.jpg": "a plain-text file, not an image"}


def test_bad_inputs_fail_alone_with_a_reason_and_a_fix(open_kb, library):
    store = open_kb()
    expected = _bad_inputs(library)
    report = ingest(store, None, library)
    failed = {r.rel: " ".join(r.errors) for r in report.results if r.status == "failed"}
    assert set(failed) == set(expected)
    for name, words in expected.items():
        assert name in failed[name] and words in failed[name] and "fix:" in failed[name]
    assert report.counts()["added"] == 2 and report.exit_code == 1
    assert {r.rel for r in store.manifest.all()} == {"guide.pdf", "notes.md"}


class InterruptingEngine:
    """The real engine, with the power cut after `allowed` batches (as Ctrl-C or a crash would)."""

    def __init__(self, engine, allowed: int) -> None:
        self.engine, self.allowed, self.requests = engine, allowed, 0
        self.name, self.model, self.device = engine.name, engine.model, engine.device
        self.can_caption, self.generative = engine.can_caption, engine.generative
        self.slots, self.server_batched = engine.slots, engine.server_batched

    def generate(self, requests):
        if self.allowed == 0:
            raise KeyboardInterrupt
        self.allowed -= 1
        self.requests += len(requests)
        return self.engine.generate(requests)

    def stream(self, request):
        return self.engine.stream(request)


def test_an_interrupted_video_ingest_resumes_without_redoing_or_duplicating(open_kb, tmp_path):
    from data.make_samples import make_video
    from kb.engines import load_engine

    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "lecture.mp4")
    store = open_kb(batch_size=1, video_window_min=2.0, video_window_max=3.0, video_window_frames=3)
    ocr = load_engine(store.settings)
    first = InterruptingEngine(ocr, allowed=2)
    with pytest.raises(KeyboardInterrupt):
        Ingestor(store.settings, store, engine=first).run([folder])
    assert store.manifest.all() == []  # nothing half-written is visible
    second = InterruptingEngine(ocr, allowed=100)
    report = Ingestor(store.settings, store, engine=second).run([folder])
    assert report.counts() == {"added": 1}
    chunks = store.chunks_of(str((folder / "lecture.mp4").resolve()))[0]
    windows = {(c.t_start, c.t_end) for c in chunks}
    assert second.requests == len(windows) - 2  # the two windows read before the cut were not read again
    assert len({c.id for c in chunks}) == len(chunks) and store.count() == len(chunks)
    starts = sorted(t for t, _ in windows)
    assert starts[0] == 0.0 and all(a < b for a, b in zip(starts, starts[1:]))
    checkpoints = store.settings.home / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # cleared once the file is stored
    # Deleting the source takes its key frames along.
    frames = {Path(c.keyframe).parent for c in chunks}
    assert len(frames) == 1 and next(iter(frames)).is_dir()
    store.delete_source(str((folder / "lecture.mp4").resolve()))
    assert not next(iter(frames)).exists() and store.count() == 0


def test_force_reads_unchanged_files_again_without_duplicates(open_kb, library):
    store = open_kb()
    ingest(store, None, library)
    ids_before = sorted(store._collection.get(include=[])["ids"])
    (library / "copy.md").write_text((library / "notes.md").read_text())  # a twin would normally be copied
    report = Ingestor(store.settings, store).run([library], force=True)
    assert report.counts() == {"updated": 2, "added": 1}
    ids_after = sorted(store._collection.get(include=[])["ids"])
    assert set(ids_before) < set(ids_after) and len(ids_after) == len(set(ids_after))


def test_links_named_directly_become_results_not_an_abort(open_kb, library, tmp_path):
    import os

    os.symlink(tmp_path / "gone.pdf", tmp_path / "dangling.pdf")
    os.symlink("loop-b.md", tmp_path / "loop-a.md")
    os.symlink("loop-a.md", tmp_path / "loop-b.md")
    store = open_kb()
    report = ingest(store, None, tmp_path / "dangling.pdf", tmp_path / "loop-a.md", library / "notes.md")
    outcome = {r.rel: (r.status, " ".join(r.errors), r.fix) for r in report.results}
    assert outcome["dangling.pdf"][:2] == ("failed", f"dangling.pdf: a broken link: it points to {tmp_path}/gone.pdf,"
                                                     " which does not exist")
    assert outcome["loop-a.md"][0] == "failed" and "loops" in outcome["loop-a.md"][1] and outcome["loop-a.md"][2]
    assert outcome["notes.md"][0] == "added" and report.exit_code == 1


def test_a_name_that_is_not_utf8_goes_in_is_skipped_unchanged_and_pruned_when_gone(open_kb, library):
    import os

    from kb.paths import display, to_stored

    name = os.fsdecode(b"r\xe9sum\xe9 2019.md")  # a Latin-1 name from an old archive
    (library / name).write_text("The zeppelin hangar was rebuilt in 2019.\n")
    store = open_kb()
    first = ingest(store, None, library)
    assert {r.shown: r.status for r in first.results}["r\ufffdsum\ufffd 2019.md"] == "added"
    hit = search(store, "zeppelin hangar", k=1)[0]
    assert hit.chunk.rel == to_stored(name) and display(hit.chunk.rel) == "r\ufffdsum\ufffd 2019.md"
    assert ingest(store, None, library).counts() == {"skipped": 3}
    (library / name).unlink()
    assert ingest(store, None, library, prune=True).counts() == {"skipped": 2, "pruned": 1}
    assert {r.rel for r in store.manifest.all()} == {"guide.pdf", "notes.md"}


def test_progress_bars_work_when_tqdm_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """TQDM_DISABLE=1 (CI logs, scripts) makes disabled bars, which lack `desc`: the ingest must still run."""
    import functools

    from tqdm import tqdm

    import ingest.__main__ as cli
    from kb.types import Progress, Stage

    monkeypatch.setattr(cli, "tqdm", functools.partial(tqdm, disable=True))
    bars = cli.ProgressBars()
    for event in (Progress(Stage.PLAN, 1, 2, "files", "a.pdf"), Progress(Stage.READ, 1, 2, "files", "a.pdf"),
                  Progress(Stage.READ, 2, 2, "files", "b.pdf"), Progress(Stage.SPEECH, 5, 60, "s", "talk.mp3"),
                  Progress(Stage.SPEECH, 3, 30, "s", "other.mp3"), Progress(Stage.MODEL, 4, 0, "pages", "ocr")):
        bars(event)
    assert bars.files_label == Stage.READ and bars.speech_label == "speech other.mp3"
    bars.close()
