"""Pictures loaded ahead of the engine by worker processes (ingest/pipeline.py, `_LoadAhead`): the same chunks,
in the same file order into the store, and the same per-file errors as loading each picture on the main thread."""
from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageDraw

import ingest.pipeline as pipeline
from data.make_samples import font
from ingest.pipeline import Ingestor
from kb.store import Store
from tests.engine_inputs import scanned_pdf, two_scene_video

READ_FILE, REPLACE_SOURCES = pipeline.read_file, Store.replace_sources


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    library = tmp_path / "library"
    library.mkdir()
    scanned_pdf(library / "a-invoices.pdf", ["INVOICE 4471 PAID", "INVOICE 4472 OVERDUE"])
    scanned_pdf(library / "b-memo.pdf", ["MEMO ON PUMP TESTS"])
    scanned_pdf(library / "c-manual.pdf", ["VALVE MANUAL PAGE ONE"])
    scanned_pdf(library / "d-gone.pdf", ["THIS FILE IS REMOVED AFTER READING"])
    scanned_pdf(library / "e-cut.pdf", ["FIRST PAGE STAYS", "SECOND PAGE IS CUT"])
    two_scene_video(library / "f-clip.mp4")
    return library


def _ingest(store: Store, folder: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> tuple:
    """Ingest the folder with `workers` loading processes; after reading them, one file is removed and one is cut
    to its first page, so their pictures fail to load (in a worker, or on the main thread)."""
    monkeypatch.setattr(pipeline, "LOAD_WORKERS", workers)

    def read_then_damage(path, source, settings, **kwargs):
        result = READ_FILE(path, source, settings, **kwargs)
        if path.name == "d-gone.pdf":
            path.unlink()
        elif path.name == "e-cut.pdf":
            scanned_pdf(path, ["FIRST PAGE STAYS"])
        return result

    written: list[str] = []

    def replace_sources(self, items):
        written.extend(record.rel for record, _, _ in items)
        return REPLACE_SOURCES(self, items)

    monkeypatch.setattr(pipeline, "read_file", read_then_damage)
    monkeypatch.setattr(Store, "replace_sources", replace_sources)
    ingestor = Ingestor(store.settings, store)
    report = ingestor.run([folder])
    results = {r.rel: (r.status, r.errors) for r in report.results}
    chunks = {(c.rel, c.page, c.modality, c.text) for rec in store.manifest.all() for c in store.chunks_of(rec.path)[0]}
    return results, written, chunks, ingestor


def test_pictures_loaded_by_workers_give_the_same_store_and_errors(open_kb, folder, tmp_path, monkeypatch):
    # Two units per engine call: several calls, with the next call's pictures loading while one is read.
    alone = _ingest(open_kb(home=tmp_path / "alone", batch_size=2), folder, monkeypatch, workers=0)
    for name in ("d-gone.pdf", "e-cut.pdf"):  # the first run damaged them: make them again
        (folder / name).unlink(missing_ok=True)
    scanned_pdf(folder / "d-gone.pdf", ["THIS FILE IS REMOVED AFTER READING"])
    scanned_pdf(folder / "e-cut.pdf", ["FIRST PAGE STAYS", "SECOND PAGE IS CUT"])
    ahead = _ingest(open_kb(home=tmp_path / "ahead", batch_size=2), folder, monkeypatch, workers=2)

    results, written, chunks, ingestor = ahead
    assert ingestor._ahead.load_s > 0  # the workers loaded the pictures
    assert (results, written, chunks) == alone[:3]
    # What a user sees: the readable files stored with what their pages say, in walk order ...
    assert written == ["a-invoices.pdf", "b-memo.pdf", "c-manual.pdf", "e-cut.pdf", "f-clip.mp4"]
    texts = {(rel, page): text for rel, page, _, text in chunks}
    assert "4472" in texts[("a-invoices.pdf", 2)] and "VALVE" in texts[("c-manual.pdf", 1)]
    assert any(rel == "f-clip.mp4" and "PUMP" in text for rel, _, _, text in chunks)
    # ... the removed file failed alone, and the cut one kept its first page with the second page's error.
    status, errors = results["d-gone.pdf"]
    assert status == "failed" and errors and all("cannot render" in e for e in errors)
    status, errors = results["e-cut.pdf"]
    assert status == "partial" and len(errors) == 1 and errors[0].startswith("page 2: ")
    assert ("e-cut.pdf", 1) in texts and ("e-cut.pdf", 2) not in texts


def test_a_loader_that_cannot_be_pickled_is_loaded_on_the_main_thread():
    from kb.types import Modality, Source, Unit

    source = Source(rel="x.png", path="/x.png", sha256="0")
    pictures = [Image.new("RGB", (8, 8), (n, n, n)) for n in range(3)]
    units = [Unit(source, Modality.IMAGE_OCR, task="ocr", load_image=lambda p=p: p) for p in pictures]
    ahead = pipeline._LoadAhead(workers=2)
    try:
        ahead.add(units, limit=2)
        assert [ahead.take(u).picture for u in units] == pictures
    finally:
        ahead.close()


def _picture_unless_in_a_worker(main_pid: int, shade: int) -> Image.Image:
    """A loader that crashes the process it runs in unless that is the ingest itself (like a library crashing
    on one page)."""
    import os

    if os.getpid() != main_pid:
        os._exit(1)
    return Image.new("RGB", (8, 8), (shade, shade, shade))


def test_a_crashed_loading_process_leaves_the_pictures_to_the_main_thread():
    import os
    from functools import partial

    from kb.types import Modality, Source, Unit

    source = Source(rel="x.pdf", path="/x.pdf", sha256="0")
    units = [Unit(source, Modality.PDF_OCR, page=n + 1, task="ocr",
                  load_image=partial(_picture_unless_in_a_worker, os.getpid(), n)) for n in range(3)]
    ahead = pipeline._LoadAhead(workers=2)
    try:
        ahead.add(units, limit=3)
        shades = [ahead.take(u).picture.getpixel((0, 0))[0] for u in units]
    finally:
        ahead.close()
    assert shades == [0, 1, 2] and ahead.workers == 0


def test_pages_are_rendered_at_the_size_the_engine_reads(tmp_path):
    """A scanned letter page is rendered at 200 dpi for the ocr engine (small print), and for a vision-language
    engine straight at its pixel budget, which its processor would have scaled a 200 dpi page down to anyway."""
    from ingest.read import read_file
    from kb.config import Settings
    from kb.types import Source

    path = tmp_path / "letter.pdf"
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    picture = Image.new("L", (850, 1100), 255)
    ImageDraw.Draw(picture).text((80, 100), "QUARTERLY PUMP REPORT", fill=0, font=font(40))
    picture.save(tmp_path / "letter.png")
    page.insert_image(page.rect, filename=str(tmp_path / "letter.png"))
    doc.save(path)
    unit = next(u for u in read_file(path, Source("letter.pdf", str(path), "0"), Settings()).units if u.needs_model)
    budget = 1280 * 32 * 32
    full = pipeline.load(pipeline._loader(unit, 0)).picture
    fitted = pipeline.load(pipeline._loader(unit, budget)).picture
    assert full.size == (1700, 2200)  # 8.5 x 11 in at 200 dpi
    assert 0.97 * budget <= fitted.size[0] * fitted.size[1] <= budget
    assert abs(fitted.size[0] / fitted.size[1] - 612 / 792) < 0.01
