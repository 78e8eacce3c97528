"""Born-digital PDF ingest on CPU: `python -m bench.ingest_cpu` -> pages/s per phase (read, chunk, embed, store).

The real pipeline (`Ingestor.run`, ocr engine, bundled embedder) ingests each set into a fresh knowledge base;
the phases are timed by wrapping the functions the pipeline calls (the reader, the chunker, the embedder, the
store write without its embedding), so the end-to-end time is the pipeline's own. Sets: the MMLongBench
development documents that have a text layer (`../shared/data/qa/mmlongbench_dev`), the shared born-digital
PDFs (`../shared/data/pdfs/born_digital`), and a generated 1000-page report (PyMuPDF: headings, prose, a
ruled table every tenth page, two-column pages). `--probe` also measures the cheap "can this page hold a
table?" test against PyMuPDF's full table finder (precision, recall, time), on sampled pages of the same PDFs.
The machine's load (1-minute load average) is recorded with every row: on a shared machine it moves the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.report import BENCHMARKS_MD, markdown_table, write_section

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SEEKFRAME_TEST_DATA", ROOT.parent / "shared" / "data"))
CACHE = ROOT / ".cache" / "bench"
TITLE = "Born-digital PDF ingest on CPU (`python -m bench.ingest_cpu`)"
TARGETS = {"generated report": 20.0, "MMLongBench documents": 5.0}
PHASES = ("read", "ocr", "chunk", "embed", "store")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f}"


# the sets ------------------------------------------------------------------------------------------------------
def text_layer_share(path: Path) -> float:
    import pymupdf

    with pymupdf.open(path) as doc:
        return sum(len(page.get_text().strip()) >= 40 for page in doc) / max(1, doc.page_count)


def mmlongbench_pdfs() -> list[Path]:
    """The documents with a text layer on at least 90 % of their pages (three are slide decks of scans)."""
    documents = sorted((DATA / "qa" / "mmlongbench_dev" / "documents").glob("*.pdf"))
    return [p for p in documents if text_layer_share(p) >= 0.9]


def shared_pdfs() -> list[Path]:
    return sorted((DATA / "pdfs" / "born_digital").rglob("*.pdf"))


WORDS = ("revenue segment growth customer quarter operating margin region product service network market "
         "capital cost energy water supply contract employee safety audit policy risk research system model "
         "data report annual strategy investment portfolio asset liability cash flow tax pension program").split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 20))]
    words.insert(rng.randint(0, len(words)), f"{rng.randint(1, 9999):,}")
    return " ".join(words).capitalize() + "."


def generated_report(pages: int = 1000, path: Path | None = None) -> Path:
    """A long born-digital report written with PyMuPDF (cached): numbered sections, prose, ruled tables, columns."""
    import pymupdf

    path = path or CACHE / f"report-{pages}.pdf"
    if path.exists():
        return path
    rng = random.Random(7)
    doc = pymupdf.open()
    for number in range(1, pages + 1):
        page = doc.new_page()
        page.insert_text((50, 60), f"{number // 10 + 1}.{number % 10} Section on {rng.choice(WORDS)} "
                         f"{rng.choice(WORDS)}", fontsize=14)
        prose = "\n\n".join(" ".join(_sentence(rng) for _ in range(5)) for _ in range(4))
        if number % 10 == 0:  # a ruled table of figures under one paragraph
            page.insert_textbox(pymupdf.Rect(50, 80, 545, 330), prose[:1200], fontsize=10)
            _ruled_table(page, rng, top=350)
        elif number % 5 == 0:  # two columns
            half = len(prose) // 2
            page.insert_textbox(pymupdf.Rect(50, 80, 290, 790), prose[:half], fontsize=10)
            page.insert_textbox(pymupdf.Rect(305, 80, 545, 790), prose[half:], fontsize=10)
        else:
            page.insert_textbox(pymupdf.Rect(50, 80, 545, 790), prose, fontsize=10)
        page.insert_text((290, 820), str(number), fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    return path


def _ruled_table(page, rng: random.Random, top: float) -> None:
    columns = [50, 190, 280, 370, 460, 545]
    header = ["Region", "2022", "2023", "2024", "Change"]
    rows = [header] + [[rng.choice(WORDS).title()] + [f"{rng.randint(100, 9999):,}" for _ in range(3)]
                       + [f"{rng.uniform(-9, 9):+.1f}%"] for _ in range(8)]
    height = 20
    for r, row in enumerate(rows):
        y = top + r * height
        for c, cell in enumerate(row):
            page.insert_text((columns[c] + 4, y + 14), cell, fontsize=9)
    for r in range(len(rows) + 1):
        page.draw_line((columns[0], top + r * height), (columns[-1], top + r * height), width=0.6)
    for x in columns:
        page.draw_line((x, top), (x, top + len(rows) * height), width=0.6)


# timing the pipeline -----------------------------------------------------------------------------------------
class PhaseClock:
    """Seconds per phase, by wrapping what the pipeline calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.active: dict[str, int] = defaultdict(int)

    def wrap(self, phase: str, func):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            self.active[phase] += 1
            try:
                return func(*args, **kwargs)
            finally:
                self.active[phase] -= 1
                if not self.active[phase]:  # nested calls count once
                    self.seconds[phase] += time.perf_counter() - started
        return timed


def ingest_set(name: str, files: list[Path], embed_model: str) -> dict:
    from ingest import pipeline
    from kb.config import load_settings
    from kb.store import open_store

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-cpu-"))
    settings = load_settings({"home": work / "kb", "engine": "ocr", "embed_model": embed_model}, env={})
    store = open_store(settings)
    clock = PhaseClock()
    originals = (pipeline.read_file, pipeline.make_chunks, pipeline.Ingestor._enrich, store.replace_source)
    embed_documents = store.embedder.embed_documents
    store.embedder.embed_documents = clock.wrap("embed", embed_documents)
    pipeline.read_file = clock.wrap("read", pipeline.read_file)
    pipeline.make_chunks = clock.wrap("chunk", pipeline.make_chunks)
    pipeline.Ingestor._enrich = clock.wrap("ocr", pipeline.Ingestor._enrich)
    store.replace_source = clock.wrap("store", store.replace_source)
    load_before = load()
    try:
        started = time.perf_counter()
        report = pipeline.Ingestor(settings, store).run([path.resolve() for path in files])
        seconds = time.perf_counter() - started
        pages = sum(r.pages or 0 for r in store.manifest.all())
        chunks = store.count()
    finally:
        pipeline.read_file, pipeline.make_chunks, pipeline.Ingestor._enrich, store.replace_source = originals
        store.embedder.embed_documents = embed_documents
        store.close()
    clock.seconds["store"] -= clock.seconds["embed"]  # the store write embeds inside; count that as embed
    return {"set": name, "files": len(files), "pages": pages, "chunks": chunks, "seconds": seconds,
            "ocr_pages": report.pages_read, "phases": dict(clock.seconds), "load": f"{load_before} → {load()}",
            "failed": [r.rel for r in report.failed]}


def row(result: dict) -> list:
    pages, phases = result["pages"], result["phases"]
    rate = lambda s: f"{pages / s:.1f}" if s > 0.01 else "–"  # noqa: E731
    return [result["set"], result["files"], pages, result["ocr_pages"], result["chunks"]] + \
        [rate(phases.get(p, 0.0)) for p in PHASES] + [f"{pages / result['seconds']:.2f}", f"{result['seconds']:.0f}",
                                                       result["load"]]


HEADER = ["set", "files", "pages", "OCR'd pages", "chunks"] + [f"{p} pages/s" for p in PHASES] + \
    ["end to end pages/s", "seconds", "load avg 1/5 min (before → after)"]


# the cheap table test ------------------------------------------------------------------------------------------
def probe_pages(step_long: int = 12, step: int = 3) -> list[tuple[Path, int]]:
    """Every page of the shared PDFs; every third page of the MMLongBench documents (every 12th of long ones)."""
    import pymupdf

    out = []
    for path in shared_pdfs():
        with pymupdf.open(path) as doc:
            out += [(path, i) for i in range(doc.page_count)]
    for path in sorted((DATA / "qa" / "mmlongbench_dev" / "documents").glob("*.pdf")):
        with pymupdf.open(path) as doc:
            out += [(path, i) for i in range(0, doc.page_count, step_long if doc.page_count > 100 else step)]
    return out


def probe(cache: Path = CACHE / "table_reference.json") -> list[str]:
    """The cheap test against PyMuPDF's full finder (layout model on), which is the reference; cached per page."""
    import pymupdf

    from ingest.pdf_tables import table_signals

    reference = json.loads(cache.read_text()) if cache.exists() else {}
    counts = defaultdict(int)
    test_s = finder_s = 0.0
    for n, (path, index) in enumerate(probe_pages()):
        key = f"{path.relative_to(DATA)}#{index + 1}"
        with pymupdf.open(path) as doc:
            page = doc[index]
            if len(page.get_text().strip()) < 40:
                continue  # a scan: read by OCR, no text layer to test
            if key not in reference:
                started = time.perf_counter()
                reference[key] = [len(page.find_tables().tables), time.perf_counter() - started]
                if n % 20 == 0:
                    cache.write_text(json.dumps(reference))
            started = time.perf_counter()
            predicted = table_signals(page).may_hold_table
            test_s += time.perf_counter() - started
        has_table, finder_s = reference[key][0] > 0, finder_s + reference[key][1]
        counts[(has_table, predicted)] += 1
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(reference))
    tp, fp, fn = counts[(True, True)], counts[(False, True)], counts[(True, False)]
    total = sum(counts.values())
    return [markdown_table(["pages tested", "with a table (reference)", "flagged by the test", "precision", "recall",
                            "test ms/page", "full finder ms/page"],
                           [[total, tp + fn, tp + fp, f"{tp / max(1, tp + fp):.3f}", f"{tp / max(1, tp + fn):.3f}",
                             f"{1000 * test_s / max(1, total):.1f}", f"{1000 * finder_s / max(1, total):.0f}"]])]


def main(argv: list[str] | None = None) -> int:
    from kb.config import BUNDLED_EMBED_MODEL

    parser = argparse.ArgumentParser(prog="python -m bench.ingest_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="report,mmlongbench,shared", help="comma-separated: report, mmlongbench, "
                        "shared")
    parser.add_argument("--report-pages", type=int, default=1000)
    parser.add_argument("--embed-model", default=BUNDLED_EMBED_MODEL)
    parser.add_argument("--probe", action="store_true", help="also measure the cheap table test (slow the first "
                        "time: the reference finder runs on every sampled page; cached in .cache/bench)")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/benchmarks.md")
    args = parser.parse_args(argv)
    sets = {"report": lambda: ("generated report", [generated_report(args.report_pages)]),
            "mmlongbench": lambda: ("MMLongBench documents", mmlongbench_pdfs()),
            "shared": lambda: ("shared born-digital PDFs", shared_pdfs())}
    rows, notes = [], []
    for key in args.sets.split(","):
        name, files = sets[key.strip()]()
        result = ingest_set(name, files, args.embed_model)
        rows.append(row(result))
        target = TARGETS.get(name)
        if target:
            rate = result["pages"] / result["seconds"]
            notes.append(f"{name}: {rate:.2f} pages/s end to end, target ≥ {target:g}: "
                         f"{'met' if rate >= target else 'NOT met'}.")
        if result["failed"]:
            notes.append(f"{name}: failed or partial: {', '.join(result['failed'])}")
        print(markdown_table(HEADER, [rows[-1]]), flush=True)
    lines = [f"ocr engine, embedder `{args.embed_model}`, {len(os.sched_getaffinity(0))} cores; pages/s per phase is "
             "pages of the set over the seconds spent in that phase (read: text layers, tables, figure positions, "
             "in reader processes for long files; ocr: RapidOCR on pages without a text layer; store: Chroma, "
             "lexical index and manifest without the embedding). The MMLongBench set is its documents with a text "
             "layer on at least 90 % of the pages.", "", markdown_table(HEADER, rows), ""] + notes
    if args.probe:
        table = probe()
        print("\n".join(table))
        lines += ["", "### The cheap table test", "", "Reference: PyMuPDF's `find_tables()` with its layout model "
                  "(what every page paid before). Pages: every page of the shared born-digital PDFs, every third "
                  "page of the MMLongBench documents (every twelfth of those over 100 pages), text-layer pages only. "
                  "A missed table is still read, as text in reading order; a false alarm costs the full finder's "
                  "time on that page.", ""] + table
    if args.write:
        write_section(TITLE, "\n".join(lines))
        print(f"written to {BENCHMARKS_MD}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    sys.exit(main())
