"""Born-digital PDF reading: table detection only where a table can be, tables whole as Markdown, columns in
reading order, long files read by several processes with the pages still in order."""
from __future__ import annotations

import csv
from pathlib import Path

import pymupdf

from ingest import pdf
from ingest.pdf import page_markdown, read_pages, read_pdf
from ingest.pdf_tables import table_signals
from kb.types import Source
from tests.conftest import write_pdf

PROSE = ("Seekframe reads the text layer of each page and keeps every paragraph with the page it came from. "
         "Nothing on this page is laid out in rows and columns; it is ordinary running text. ")


def _source(path: Path) -> Source:
    return Source(rel=path.name, path=str(path), sha256="0" * 64)


def test_a_real_ruled_table_is_kept_whole_as_markdown(test_data):
    """camelot's sample report page: its ruled table's cells come out as Markdown rows, once."""
    folder = test_data / "pdfs" / "born_digital" / "camelot"
    with pymupdf.open(folder / "foo.pdf") as doc:
        page = doc[0]
        assert table_signals(page).may_hold_table
        text = page_markdown(page)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    expected = list(csv.reader((folder / "foo.expected.csv").read_text().splitlines()))
    for cycle, ki, distance, *savings in expected[2:]:
        row = next(r for r in rows if cycle in r)  # one Markdown row holds the whole table row
        assert [ki, distance, *savings] == [c for c in row.strip("|").split("|")[1:] if c]
    assert text.count("2012_2") == 1  # the table is not also written as loose text


def test_prose_pages_skip_table_detection(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pymupdf.Page, "find_tables", lambda self, **kw: calls.append(self.number))
    doc = pymupdf.open()
    doc.new_page().insert_textbox(pymupdf.Rect(50, 50, 550, 800), PROSE * 12, fontsize=11)
    text = page_markdown(doc[0])
    assert "ordinary running text" in text and calls == []


def _two_column_page(doc: pymupdf.Document) -> None:
    page = doc.new_page()
    page.insert_textbox(pymupdf.Rect(50, 40, 550, 80), "A Study of Column Order", fontsize=16)
    left = " ".join(f"left{n} words of the first column" for n in range(30))
    right = " ".join(f"right{n} words of the second column" for n in range(30))
    page.insert_textbox(pymupdf.Rect(50, 100, 290, 800), left, fontsize=10)
    page.insert_textbox(pymupdf.Rect(310, 100, 550, 800), right, fontsize=10)


def test_two_columns_are_read_one_after_the_other():
    doc = pymupdf.open()
    _two_column_page(doc)
    text = page_markdown(doc[0])
    assert text.index("A Study of Column Order") < text.index("left0")
    assert text.index("left29") < text.index("right0")  # the whole left column before the right one


def test_a_long_file_read_in_processes_gives_the_pages_in_order(tmp_path, monkeypatch, make_settings):
    path = tmp_path / "long.pdf"
    doc = pymupdf.open()
    for n in range(1, 31):
        page = doc.new_page()
        page.insert_textbox(pymupdf.Rect(50, 50, 550, 800), f"Page marker {n}. " + PROSE * 3, fontsize=11)
    doc.save(path)
    monkeypatch.setattr(pdf, "PAGES_PER_TASK", 4)
    monkeypatch.setattr(pdf, "_read_workers", lambda: 2)
    units = read_pdf(path, _source(path), make_settings()).units
    assert [u.page for u in units] == list(range(1, 31))
    assert [u.text for u in units] == [p.text for p in read_pages(str(path), 0, 30, 100.0)]
    assert all(f"Page marker {u.page}." in u.text for u in units)


def test_a_short_file_is_read_in_process(tmp_path, monkeypatch, make_settings):
    """Short files never start reader processes (their start-up would cost more than the reading)."""
    path = tmp_path / "short.pdf"
    doc = pymupdf.open()
    for n in range(3):
        doc.new_page().insert_textbox(pymupdf.Rect(50, 50, 550, 800), f"Short {n}. " + PROSE, fontsize=11)
    doc.save(path)
    monkeypatch.setattr(pdf, "ProcessPoolExecutor", None)  # any attempt to start processes would fail
    assert [u.page for u in read_pdf(path, _source(path), make_settings()).units] == [1, 2, 3]


def test_each_born_digital_file_is_stored_before_the_next_is_read(open_kb, tmp_path):
    """Nothing waits for the engine, so nothing piles up in memory: a crash keeps the files already read."""
    from ingest.pipeline import Ingestor

    library = tmp_path / "library"
    library.mkdir()
    for name in ("a.pdf", "b.pdf", "c.pdf"):
        write_pdf(library / name, [f"{name} " + PROSE])
    store = open_kb()
    stored_when_read: dict[str, set[str]] = {}

    def progress(event) -> None:
        if event.stage == "read":
            stored_when_read[event.detail] = {r.rel for r in store.manifest.all()}

    Ingestor(store.settings, store, progress=progress).run([library])
    assert stored_when_read == {"a.pdf": set(), "b.pdf": {"a.pdf"}, "c.pdf": {"a.pdf", "b.pdf"}}
