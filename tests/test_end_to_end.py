"""End to end: files -> engine -> chunks in Chroma -> search/ask, through the real engines and the real CLIs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageDraw

from ingest.pipeline import Ingestor
from kb.answer import ask
from kb.engines import load_engine

ROOT = Path(__file__).resolve().parent.parent


def _scanned_pdf(path: Path) -> Path:
    """An image-only page, like a scanner makes: no text layer at all."""
    page_image = Image.new("L", (850, 1100), 255)
    ImageDraw.Draw(page_image).text((80, 100), "Quarterly maintenance report", fill=0)
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    png = path.with_suffix(".png")
    page_image.save(png)
    page.insert_image(page.rect, filename=str(png))
    png.unlink()
    doc.save(path)
    return path


def _pdf_with_figure(path: Path) -> Path:
    """A born-digital page: a text layer and an embedded photo large enough to be worth a caption."""
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    page.insert_textbox(pymupdf.Rect(72, 72, 540, 200), "Figure 1 shows the test rig used for the trials. " * 3)
    photo = path.with_suffix(".jpg")
    Image.new("RGB", (400, 300), (90, 140, 200)).save(photo)
    page.insert_image(pymupdf.Rect(72, 260, 472, 560), filename=str(photo))
    photo.unlink()
    doc.save(path)
    return path


def test_tiny_qwen3vl_reads_an_image_and_a_scanned_page_into_chroma(tmp_path, tiny_model_writer, open_kb):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (320, 200), "white").save(folder / "photo.png")
    _scanned_pdf(folder / "scan.pdf")
    _pdf_with_figure(folder / "report.pdf")
    store = open_kb(engine="transformers", model=str(tiny_model_writer), device="cpu", batch_size=4,
                    image_min_pixels=4 * 1024, image_max_pixels=64 * 1024, max_page_tokens=24, max_caption_tokens=12)
    report = Ingestor(store.settings, store).run([folder])
    assert report.counts() == {"added": 3}, report.results
    # The scanned page, the photo's OCR and caption, the report's figure: one engine batch across files.
    assert report.pages_read == 4
    by_source = {r.rel: r for r in store.manifest.all()}
    assert by_source["scan.pdf"].engine == "transformers" and by_source["scan.pdf"].model == str(tiny_model_writer)
    chunks = [c for r in by_source.values() for c in store.chunks_of(r.path)[0] if c.engine != "none"]
    assert chunks, "the engine returned no text for any unit"
    # The tiny model's words are noise; what must hold is where each chunk came from and who read it.
    for chunk in chunks:
        assert (chunk.engine, chunk.model) == ("transformers", str(tiny_model_writer))
    assert {(c.rel, c.modality, c.page) for c in chunks} == {("scan.pdf", "pdf_ocr", 1),
                                                                ("photo.png", "image_ocr", None),
                                                                ("photo.png", "image_caption", None),
                                                                ("report.pdf", "pdf_figure", 1)}


def test_ocr_engine_answers_extractively_with_citations(tmp_path, open_kb):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.md").write_text("The warranty lasts 24 months from the date of purchase.\n\nReturns are free.")
    store = open_kb()
    Ingestor(store.settings, store).run([folder])
    answer = ask("How long does the warranty last?", store, load_engine(store.settings), k=3)
    assert "24 months" in answer.text and "[1]" in answer.text
    assert answer.citations[0].chunk.rel == "a.md"


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KB_HOME": str(home), "KB_ENGINE": "ocr", "KB_EMBED_MODEL": "bundled:all-MiniLM-L6-v2",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_cli_ingest_then_search_finds_the_scanned_linnsequencer_page(test_data, tmp_path):
    home = tmp_path / "kb"
    scanned = test_data / "pdfs" / "scanned" / "ocrmypdf" / "linn.pdf"
    broken = tmp_path / "broken.pdf"
    broken.write_text("not a pdf")
    done = _cli("ingest", str(scanned), str(broken), home=home)
    assert done.returncode == 1, done.stderr  # one file failed: exit 1, the other went in
    assert "broken.pdf" in done.stderr and "fix:" in done.stderr
    assert "added" in done.stdout and "failed" in done.stdout
    done = _cli("kb", "search", "--json", "LinnSequencer", home=home)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert set(hits[0]) == {"id", "text", "score", "source", "page", "t_start", "t_end", "modality", "keyframe",
                            "source_path"}
    assert (hits[0]["source"], hits[0]["page"], hits[0]["modality"]) == ("linn.pdf", 1, "pdf_ocr")
    done = _cli("kb", "ask", "--json", "What is the LinnSequencer?", home=home)
    answer = json.loads(done.stdout)
    assert "[1]" in answer["answer"] and answer["citations"][0]["source"] == "linn.pdf"


@pytest.mark.parametrize("args", [("ingest", "/no/such/folder"), ("kb", "search")])
def test_cli_usage_errors_exit_2(args, tmp_path):
    assert _cli(*args, home=tmp_path / "kb").returncode == 2
