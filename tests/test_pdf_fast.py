"""Born-digital PDF reading: table detection only where a table can be, tables whole as Markdown, columns in
reading order, long files read by several processes with the pages still in order."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymupdf
import pytest

from ingest import pdf
from ingest.pdf import page_markdown, read_pages, read_pdf
from ingest.pdf_tables import find_tables, table_signals
from kb.types import Source
from tests.conftest import write_pdf

ROOT = Path(__file__).resolve().parent.parent

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


TABLE_ROWS = [["Region", "2022", "2023", "2024", "Change"],
              ["North", "1,204", "1,377", "1,512", "+9.8%"],
              ["South", "2,915", "2,804", "3,020", "+7.7%"],
              ["East", "640", "702", "688", "-2.0%"],
              ["West", "4,118", "4,260", "4,391", "+3.1%"]]


def _ruled_table_page(doc: pymupdf.Document) -> pymupdf.Page:
    """A page of prose with a ruled grid under it, every cell bounded by lines (a generated report's table)."""
    page = doc.new_page()
    page.insert_textbox(pymupdf.Rect(50, 50, 550, 300), PROSE * 4, fontsize=11)
    _draw_grid(page, TABLE_ROWS, [50, 190, 280, 370, 460, 545], top=350)
    return page


def _draw_grid(page: pymupdf.Page, rows: list[list[str]], columns: list[int], top: int, height: int = 20) -> None:
    """`rows` written into a grid whose every cell is bounded by lines, `columns` its x positions."""
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            page.insert_text((columns[c] + 4, top + r * height + 14), cell, fontsize=9)
    for r in range(len(rows) + 1):
        page.draw_line((columns[0], top + r * height), (columns[-1], top + r * height), width=0.6)
    for x in columns:
        page.draw_line((x, top), (x, top + len(rows) * height), width=0.6)


def test_a_ruled_grid_is_read_without_the_layout_model_and_keeps_its_markdown(monkeypatch):
    doc = pymupdf.open()
    page = _ruled_table_page(doc)
    with_layout = [t.to_markdown().strip() for t in page.find_tables(use_layout=True).tables]
    finder = pymupdf.Page.find_tables
    calls: list[dict[str, object]] = []

    def spy(self: pymupdf.Page, **kw: object) -> object:
        calls.append(kw)
        return finder(self, **kw)

    monkeypatch.setattr(pymupdf.Page, "find_tables", spy)
    text = page_markdown(page)
    assert calls == [{"use_layout": False}]
    expected = "\n".join(["|" + "|".join(TABLE_ROWS[0]) + "|", "|---|---|---|---|---|"]
                         + ["|" + "|".join(row) + "|" for row in TABLE_ROWS[1:]])
    assert with_layout == [expected]  # the layout model's Markdown: the whole table, header row first
    assert expected in text  # the same Markdown, found from the rulings alone
    assert text.count("4,391") == 1 and "ordinary running text" in text


def test_each_table_of_a_page_keeps_its_own_cells(test_data):
    """The tables of a page are written from one extraction of the page's text (PyMuPDF's own `to_markdown` extracts
    it again per cell): each table's Markdown is still exactly what PyMuPDF writes for it, its own cells only."""
    doc = pymupdf.open()
    page = _ruled_table_page(doc)
    second = [["Plant", "Output", "Staff"], ["Lyon", "9,310", "212"], ["Porto", "7,045", "187"]]
    _draw_grid(page, second, [50, 250, 400, 545], top=500)
    camelot = pymupdf.open(test_data / "pdfs" / "born_digital" / "camelot" / "foo.pdf")
    for sample in (page, camelot[0]):
        own = [t.to_markdown().strip() for t in find_tables(sample)]  # PyMuPDF's own, text extracted per cell
        text = page_markdown(sample)
        assert own and all(text.count(table) == 1 for table in own)
    assert len(own_two := [t.to_markdown().strip() for t in find_tables(page)]) == 2
    assert "Porto" in own_two[1] and "Porto" not in own_two[0] and "4,391" not in own_two[1]


def test_a_table_without_rulings_still_uses_the_layout_model(monkeypatch):
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(pymupdf.Page, "find_tables", lambda self, **kw: calls.append(kw) or
                        type("Found", (), {"tables": []})())
    doc = pymupdf.open()
    page = doc.new_page()
    for r, row in enumerate(TABLE_ROWS):  # the same figures in aligned columns, no line drawn
        for c, cell in enumerate(row):
            page.insert_text(([50, 190, 280, 370, 460][c] + 4, 100 + r * 20), cell, fontsize=9)
    assert not table_signals(page).ruled_grid and table_signals(page).may_hold_table
    page_markdown(page)
    assert calls == [{"use_layout": True}]


EXHIBITS = [("31.1*", "Rule 13a-14(a) / 15d-14(a) Certification of Chief Executive Officer."),
            ("32.1**", "Section 1350 Certifications of Chief Executive Officer and Chief Financial Officer."),
            ("101*", "Inline XBRL Document Set for the condensed consolidated financial statements."),
            ("104*", "Inline XBRL for the cover page of this Quarterly Report on Form 10-Q.")]


def _exhibit_page(doc: pymupdf.Document, rules: bool) -> pymupdf.Page:
    """A 10-Q's exhibit list: two filled cells a row, and under the header a rule cut at each column's gap, drawn
    (as EDGAR's HTML converter does) as a run of 6-point filled rectangles."""
    page = doc.new_page()
    columns = [(18, 75), (80, 443), (449, 486), (491, 532), (537, 594)]
    for (x0, _), heading in zip(columns, ["Number", "Exhibit Description", "Form", "Exhibit", "Date"]):
        page.insert_text((x0 + 1, 300), heading, fontsize=8)
    for x0, x1 in columns if rules else []:
        for x in range(x0, x1, 6):
            page.draw_rect(pymupdf.Rect(x, 306, min(x + 6, x1), 307.3), color=None, fill=(0, 0, 0), width=0)
    for n, (number, text) in enumerate(EXHIBITS):
        page.insert_text((19, 320 + 14 * n), number, fontsize=8)
        page.insert_text((81, 320 + 14 * n), text, fontsize=8)
    return page


def test_a_header_rule_drawn_in_pieces_is_a_table_kept_whole(monkeypatch):
    """The 10-Q's exhibit table was read as loose lines, and one of them outranked the cover page in search."""
    doc = pymupdf.open()
    text = page_markdown(_exhibit_page(doc, rules=True))
    assert "|31.1*|Rule 13a-14(a) / 15d-14(a) Certification of Chief Executive Officer.|" in text
    assert "|104*|Inline XBRL for the cover page" in text
    calls: list[int] = []  # without the rules the same words are two columns of text: no table finder
    monkeypatch.setattr(pymupdf.Page, "find_tables", lambda self, **kw: calls.append(self.number))
    page_markdown(_exhibit_page(doc, rules=False))
    assert calls == []


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


def test_a_two_column_pages_footer_is_read_after_both_columns():
    """A Korean policy brief's address line at the foot of the left column was read between the columns, so it
    fell into a long chunk with half the page; a footer is read last."""
    doc = pymupdf.open()
    _two_column_page(doc)
    page = doc[0]
    page.insert_text((65, 815), "07233 Seoul, Uisadang-daero 1", fontsize=8)
    page.insert_text((65, 830), "Tel. 02-788-4510", fontsize=8)
    page.insert_text((360, 815), "ISSN 2005-744X", fontsize=8)
    text = page_markdown(page)
    assert text.index("right29") < text.index("07233 Seoul") < text.index("Tel. 02-788-4510")
    assert text.index("left29") < text.index("right0")  # the columns themselves are still read one by one


def test_the_last_lines_of_both_columns_are_no_footer():
    """A paper's reference list: each column's last entry, in the body's type, sits past a gap at the foot of
    the page. The left one is still read before the right column."""
    doc = pymupdf.open()
    _two_column_page(doc)
    page = doc[0]
    entries = {50: "Rashkin and Aroyo. 2021. Measuring attribution in natural language generation models.",
               310: "Williams and Bowman. 2018. A broad-coverage challenge corpus for sentence understanding."}
    for x, entry in entries.items():
        page.insert_textbox(pymupdf.Rect(x, 760, x + 240, 800), entry, fontsize=10)
    text = page_markdown(page)
    assert text.index("left29") < text.index("Rashkin") < text.index("right0") < text.index("Williams")


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


def test_long_files_of_one_run_share_their_reader_processes(open_kb, tmp_path, reader_pools):
    """Reader processes start once per ingest run, not once per long file, and are gone after it."""
    from ingest.pipeline import Ingestor

    library = tmp_path / "library"
    library.mkdir()
    for name in ("a", "b"):
        write_pdf(library / f"{name}.pdf", [f"{name} page {n}. " + PROSE for n in range(1, 31)])
    started = reader_pools
    store = open_kb()
    report = Ingestor(store.settings, store).run([library])
    assert [(r.rel, r.status) for r in report.results] == [("a.pdf", "added"), ("b.pdf", "added")]
    assert len(started) == 1
    assert started[0]._shutdown_thread  # shut down when the run ended
    for record in store.manifest.all():  # every page, in order, under its own number
        chunks, _ = store.chunks_of(record.path)
        assert [c.page for c in chunks] == list(range(1, 31))
        assert all(f"{record.rel[0]} page {c.page}." in c.text for c in chunks)


def test_shared_readers_start_again_when_a_file_asks_for_more_processes():
    """A video's slices after a long PDF's ranges get the processes they ask for (the PDF takes fewer), and a file
    asking for fewer uses the larger set."""
    with pdf.reader_processes() as readers:
        pdf_pool = readers.get(1)
        assert readers.get(1) is pdf_pool
        video_pool = readers.get(2)
        assert video_pool is not pdf_pool and pdf_pool._shutdown_thread
        assert readers.get(1) is video_pool
        with pdf.reader_processes() as inner:  # a run inside a worker's block: the worker's processes
            assert inner is readers
    assert video_pool._shutdown_thread


def test_shared_readers_start_again_after_a_reader_process_died():
    """A reader killed mid-way (a library crash on an odd file, the OOM killer) breaks its pool; the next long file
    of the run, or the worker's next job, gets new processes instead of falling back to one."""
    from concurrent.futures.process import BrokenProcessPool

    with pdf.reader_processes() as readers:
        broken = readers.get(1)
        pid = broken.submit(os.getpid).result()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            broken.submit(time.sleep, 5).result(timeout=30)
        fresh = readers.get(1)
        assert fresh is not broken
        assert fresh.submit(os.getpid).result(timeout=30) != pid


def test_reader_processes_yield_the_cores_to_the_ingest_process():
    """Readers run below the ingest process's priority: its threads (the engine's processor, the store) are not
    starved by the processes reading ahead of them."""
    with pdf.process_pool(1) as pool:
        reader_niceness = pool.submit(os.nice, 0).result()
    assert reader_niceness == min(19, os.nice(0) + pdf.READER_NICENESS)  # 19: the lowest priority there is


def test_a_short_file_is_read_in_process(tmp_path, monkeypatch, make_settings):
    """Short files never start reader processes (their start-up would cost more than the reading)."""
    path = tmp_path / "short.pdf"
    doc = pymupdf.open()
    for n in range(3):
        doc.new_page().insert_textbox(pymupdf.Rect(50, 50, 550, 800), f"Short {n}. " + PROSE, fontsize=11)
    doc.save(path)
    monkeypatch.setattr(pdf, "ProcessPoolExecutor", None)  # any attempt to start processes would fail
    assert [u.page for u in read_pdf(path, _source(path), make_settings()).units] == [1, 2, 3]


def test_born_digital_files_are_written_together_in_bounded_groups(open_kb, tmp_path, monkeypatch):
    """Files that need no engine are written several at a time (one embedding call, one index commit), at most
    STORE_BATCH_FILES per write, so memory stays bounded and a crash loses at most one group's reading."""
    from ingest import pipeline

    library = tmp_path / "library"
    library.mkdir()
    for name in "abcde":
        write_pdf(library / f"{name}.pdf", [f"{name} first page. " + PROSE, f"{name} second page. " + PROSE])
    store = open_kb()
    writes: list[list[str]] = []
    real = store.replace_sources
    monkeypatch.setattr(store, "replace_sources", lambda items: (writes.append([r.rel for r, _, _ in items]),
                                                                 real(items))[1])
    monkeypatch.setattr(pipeline, "STORE_BATCH_FILES", 2)
    report = pipeline.Ingestor(store.settings, store).run([library])
    assert writes == [["a.pdf", "b.pdf"], ["c.pdf", "d.pdf"], ["e.pdf"]]
    assert [(r.rel, r.status) for r in report.results] == [(f"{n}.pdf", "added") for n in "abcde"]
    assert {r.rel: r.chunks for r in store.manifest.all()} == {f"{n}.pdf": 2 for n in "abcde"}
    hit = store.query(store.embedder.embed_query("c second page"), k=1)[0]
    assert (hit.chunk.rel, hit.chunk.page) == ("c.pdf", 2)


def test_a_file_the_store_refuses_fails_alone(open_kb, tmp_path, monkeypatch):
    from ingest.pipeline import Ingestor

    library = tmp_path / "library"
    library.mkdir()
    for name in "abc":
        write_pdf(library / f"{name}.pdf", [f"{name} " + PROSE])
    store = open_kb()
    real = store.replace_sources

    def refuse_b(items):
        if any(r.rel == "b.pdf" for r, _, _ in items):
            raise OSError("disk full while writing b.pdf")
        return real(items)

    monkeypatch.setattr(store, "replace_sources", refuse_b)
    report = Ingestor(store.settings, store).run([library])
    assert {r.rel: r.status for r in report.results} == {"a.pdf": "added", "b.pdf": "failed", "c.pdf": "added"}
    assert "cannot store: disk full" in report.failed[0].errors[-1]
    assert {r.rel for r in store.manifest.all()} == {"a.pdf", "c.pdf"}


def _descendants(pid: int) -> dict[int, int]:
    """Process id -> generation (1: a child) of every process under `pid`."""
    children: dict[int, set[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while listed
            continue
        children.setdefault(int(fields[1]), set()).add(int(stat.parent.name))
    found: dict[int, int] = {}
    todo = [(pid, 0)]
    while todo:
        parent, generation = todo.pop()
        for child in children.get(parent, set()) - set(found):
            found[child] = generation + 1
            todo.append((child, generation + 1))
    return found


def _running(pid: int) -> bool:
    try:  # a zombie has ended; only its parent's reaping is left
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_ingest_leaves_no_reader_process_behind(tmp_path, make_settings):
    """kill -9 of `python -m ingest` while reader processes read a long PDF: none of them keeps running."""
    path = tmp_path / "long.pdf"
    write_pdf(path, [f"Page {n}. " + PROSE * 4 for n in range(1, 1201)])
    settings = make_settings()
    proc = subprocess.Popen([sys.executable, "-m", "ingest", str(path), "--home", str(settings.home), "--engine",
                             "ocr", "--embed-model", settings.embed_model], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240  # a hang guard, not a timing assert
        family = _descendants(proc.pid)
        while not any(generation == 2 for generation in family.values()):  # readers, under the fork server
            assert proc.poll() is None, "ingest ended before its reader processes were seen"
            assert time.monotonic() < deadline, "no reader processes were started"
            time.sleep(0.05)
            family = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(_running(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in family if _running(p)]
    finally:
        if proc.poll() is None:
            proc.kill()


CODE_LINES = ["python tools/test.py \\", "    configs/faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py \\",
              "    checkpoints/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth \\", "    --show"]


def _code_box(page: pymupdf.Page, top: float, in_one_piece: bool) -> float:
    """A manual's framed code listing (Sphinx draws a white fill and four lines around it); returns its bottom."""
    box = pymupdf.Rect(94, top, 543, top + 14 * len(CODE_LINES) + 12)
    if in_one_piece:
        page.draw_rect(box, color=(0, 0, 0), width=0.4)
    else:
        page.draw_rect(box, color=None, fill=(1, 1, 1), width=0)
        for start, end in [(box.tl, box.tr), (box.bl, box.br), (box.tl, box.bl), (box.tr, box.br)]:
            page.draw_line(start, end, width=0.4)
    for n, line in enumerate(CODE_LINES):
        page.insert_text((98, top + 16 + 14 * n), line, fontsize=8, fontname="cour")
    return box.y1


def _manual_page(doc: pymupdf.Document) -> pymupdf.Page:
    """A page of stacked code boxes under numbered steps, between a running header's rule and a footer's rule."""
    page = doc.new_page()
    page.draw_line((72, 47), (540, 47), width=0.4)
    page.insert_text((404, 44), "MMDetection, Release 2.18.0", fontsize=9)
    top = 70.0
    for step in range(1, 6):
        page.insert_text((84, top + 12), f"{step}. Test Faster R-CNN and visualize the results.", fontsize=10)
        top = _code_box(page, top + 22, in_one_piece=step % 2 == 0) + 30
    page.draw_line((72, 738), (540, 738), width=0.4)
    page.insert_text((72, 750), "5.2. Test existing models on standard datasets", fontsize=9)
    return page


def test_stacked_code_boxes_are_no_table_and_skip_the_table_finder(monkeypatch):
    """A software manual's pages of framed code listings went to the table finder (197 of 468 pages), for nothing."""
    calls: list[int] = []
    monkeypatch.setattr(pymupdf.Page, "find_tables", lambda self, **kw: calls.append(self.number))
    doc = pymupdf.open()
    page = _manual_page(doc)
    assert not table_signals(page).may_hold_table
    text = page_markdown(page)
    assert calls == [] and text.count("faster_rcnn_r50_fpn_1x_coco.py") == 5


def test_a_ruled_grid_beside_code_boxes_or_drawn_cell_by_cell_is_still_a_table():
    doc = pymupdf.open()
    page = _ruled_table_page(doc)  # the grid's outer frame holds inner rules: not a framed block of text
    _code_box(page, 500, in_one_piece=False)
    _code_box(page, 600, in_one_piece=True)
    assert table_signals(page).ruled_grid
    assert "|North|1,204|1,377|1,512|+9.8%|" in page_markdown(page)
    cells = doc.new_page()  # every cell its own stroked rectangle: boxes that touch are a grid
    columns, top, height = [50, 190, 280, 370, 460, 545], 350, 20
    for r, row in enumerate(TABLE_ROWS):
        for c, cell in enumerate(row):
            cells.draw_rect(pymupdf.Rect(columns[c], top + r * height, columns[c + 1], top + (r + 1) * height),
                            color=(0, 0, 0), width=0.6)
            cells.insert_text((columns[c] + 4, top + r * height + 14), cell, fontsize=9)
    assert table_signals(cells).ruled_grid
    assert "|West|4,118|4,260|4,391|+3.1%|" in page_markdown(cells)
