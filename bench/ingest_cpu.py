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

from bench.report import markdown_table, write_section

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
    """Wall and CPU seconds per phase, by wrapping what the pipeline calls. A phase's time excludes the wrapped
    calls inside it (the store write that runs before an engine batch is store time, not ocr time). CPU is this
    process's, all threads (the embedder's included); reader processes are counted apart (`reader_cpu`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [phase, wall started, cpu started, wall inside, cpu inside]

    def wrap(self, phase: str, func):
        def timed(*args, **kwargs):
            self._stack.append([phase, time.perf_counter(), time.process_time(), 0.0, 0.0])
            try:
                return func(*args, **kwargs)
            finally:
                _, started, cpu_started, inner, inner_cpu = self._stack.pop()
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                self.seconds[phase] += elapsed - inner
                self.cpu[phase] += cpu - inner_cpu
                if self._stack:
                    self._stack[-1][3] += elapsed
                    self._stack[-1][4] += cpu
        return timed


def reader_cpu() -> float:
    """CPU seconds of the reader processes that have ended so far: the fork server's reaped children."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # noqa: SLF001 - a benchmark's look inside
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


def ingest_set(name: str, files: list[Path], embed_model: str) -> dict:
    from ingest import pipeline
    from kb.config import load_settings
    from kb.store import open_store

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-cpu-"))
    settings = load_settings({"home": work / "kb", "engine": "ocr", "embed_model": embed_model}, env={})
    store = open_store(settings)
    clock = PhaseClock()
    originals = (pipeline.read_file, pipeline.make_chunks, pipeline.Ingestor._enrich, store.replace_sources)
    embed_documents = store.embedder.embed_documents
    store.embedder.embed_documents = clock.wrap("embed", embed_documents)
    pipeline.read_file = clock.wrap("read", pipeline.read_file)
    pipeline.make_chunks = clock.wrap("chunk", pipeline.make_chunks)
    pipeline.Ingestor._enrich = clock.wrap("ocr", pipeline.Ingestor._enrich)
    store.replace_sources = clock.wrap("store", store.replace_sources)
    load_before = load()
    try:
        readers_before, cpu_started, started = reader_cpu(), time.process_time(), time.perf_counter()
        report = pipeline.Ingestor(settings, store).run([path.resolve() for path in files])
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        readers = reader_cpu() - readers_before  # the run's readers have ended with it
        pages = sum(r.pages or 0 for r in store.manifest.all())
        chunks = store.count()
    finally:
        pipeline.read_file, pipeline.make_chunks, pipeline.Ingestor._enrich, store.replace_sources = originals
        store.embedder.embed_documents = embed_documents
        store.close()
    return {"set": name, "files": len(files), "pages": pages, "chunks": chunks, "seconds": seconds,
            "ocr_pages": report.pages_read, "phases": dict(clock.seconds), "load": f"{load_before} → {load()}",
            "cpu": cpu, "reader_cpu": readers, "phase_cpu": dict(clock.cpu), "failed": [r.rel for r in report.failed]}


def row(result: dict) -> list:
    pages, phases = result["pages"], result["phases"]
    rate = lambda s: f"{pages / s:.1f}" if s > 0.01 else "–"  # noqa: E731
    return [result["set"], result["files"], pages, result["ocr_pages"], result["chunks"]] + \
        [rate(phases.get(p, 0.0)) for p in PHASES] + [f"{pages / result['seconds']:.2f}", f"{result['seconds']:.0f}",
                                                       result["load"]]


def cpu_row(result: dict, cores: int) -> list:
    """CPU seconds per phase (read: this process and the reader processes), and the pages/s the run's CPU seconds
    allow when all `cores` are the run's alone: a ceiling that the machine's load does not move."""
    phase_cpu, pages = dict(result["phase_cpu"]), result["pages"]
    phase_cpu["read"] = phase_cpu.get("read", 0.0) + result["reader_cpu"]
    total = result["cpu"] + result["reader_cpu"]
    return [result["set"], pages, result["chunks"]] + [f"{phase_cpu.get(p, 0.0):.1f}" for p in PHASES] + \
        [f"{total:.0f}", f"{1000 * total / pages:.0f}", f"{pages / (total / cores):.1f}"]


CPU_HEADER = ["set", "pages", "chunks"] + [f"{p} CPU s" for p in PHASES] + \
    ["CPU s in all", "CPU ms per page", "pages/s if the cores were the run's alone"]
HEADER = ["set", "files", "pages", "OCR'd pages", "chunks"] + [f"{p} pages/s" for p in PHASES] + \
    ["end to end pages/s", "seconds", "load avg 1/5 min (before → after)"]


# the embedder alone -------------------------------------------------------------------------------------------
def chunk_texts(files: list[Path], limit: int) -> list[str]:
    """Chunk texts as ingest makes them (title and section header included), from the first files, up to `limit`."""
    from ingest.chunk import make_chunks
    from ingest.read import read_file
    from kb.config import load_settings
    from kb.types import Source

    settings = load_settings({"home": Path(tempfile.mkdtemp(prefix="bench-chunks-")), "engine": "ocr"}, env={})
    texts: list[str] = []
    for path in files:
        read = read_file(path, Source(rel=path.name, path=str(path), sha256="0" * 64), settings)
        texts += [c.text for c in make_chunks([u for u in read.units if u.text], "none", "", settings.chunk_chars)]
        if len(texts) >= limit:
            break
    return texts[:limit]


def embed_speed(texts: list[str]) -> list[str]:
    """chunks/s and CPU per chunk of the bundled model through sentence-transformers (torch, what ran before)
    and through ONNX Runtime (what runs now on a CPU), on the same chunks; cosine of each vector to torch's."""
    import numpy as np

    from kb.config import BUNDLED_EMBED_MODEL
    from kb.embed import Embedder

    embedder = Embedder(BUNDLED_EMBED_MODEL, "cpu")
    embedder.load()
    backends = {"sentence-transformers (torch)": lambda batch: embedder.model.encode_document(
        batch, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)}
    if embedder.onnx is not None:
        backends["ONNX Runtime, int8 (kb/embed.py)"] = lambda batch: embedder.onnx.encode(batch)
    rows, reference = [], None
    for name, encode in backends.items():
        encode(texts[:16])  # warm-up
        load_before, wall, cpu = load(), time.perf_counter(), time.process_time()
        vectors = np.asarray(encode(texts))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        reference = vectors if reference is None else reference
        cosines = (vectors * reference).sum(axis=1)
        rows.append([name, len(texts), f"{len(texts) / wall:.1f}", f"{1000 * cpu / len(texts):.1f}",
                     f"{cosines.min():.4f}", f"{cosines.mean():.4f}", f"{load_before} → {load()}"])
    return [markdown_table(["embedder", "chunks", "chunks/s", "CPU ms per chunk", "cosine to torch, min",
                            "cosine to torch, mean", "load avg 1/5 min"], rows)]


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


def section(embed_model: str, cores: int, rows: list[list], cpu_rows: list[list], notes: list[str]) -> list[str]:
    return [f"ocr engine, embedder `{embed_model}`, {cores} cores; pages/s per phase is pages of the set over the "
            "wall seconds spent in that phase (read: text layers, tables, figure positions, in reader processes for "
            "long files; ocr: RapidOCR on pages without a text layer; store: Chroma, lexical index and manifest "
            "without the embedding). The MMLongBench set is its documents with a text layer on at least 90 % of the "
            "pages.", "", markdown_table(HEADER, rows), "", "CPU seconds per phase (read: this process and its "
            "reader processes; embed: all threads of ONNX Runtime), and the pages/s those CPU seconds allow on "
            f"{cores} cores that run nothing else (a ceiling: it assumes the phases keep every core busy):", "",
            markdown_table(CPU_HEADER, cpu_rows), ""] + notes


def main(argv: list[str] | None = None) -> int:
    from kb.config import BUNDLED_EMBED_MODEL

    parser = argparse.ArgumentParser(prog="python -m bench.ingest_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="report,mmlongbench,shared", help="comma-separated: report, mmlongbench, "
                        "shared")
    parser.add_argument("--report-pages", type=int, default=1000)
    parser.add_argument("--embed-model", default=BUNDLED_EMBED_MODEL)
    parser.add_argument("--probe", action="store_true", help="also measure the cheap table test (slow the first "
                        "time: the reference finder runs on every sampled page; cached in .cache/bench)")
    parser.add_argument("--embed-speed", type=int, default=0, metavar="N", help="also time the embedder alone, "
                        "torch against ONNX Runtime, on N chunks of the MMLongBench documents")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/benchmarks.md")
    args = parser.parse_args(argv)
    sets = {"report": lambda: ("generated report", [generated_report(args.report_pages)]),
            "mmlongbench": lambda: ("MMLongBench documents", mmlongbench_pdfs()),
            "shared": lambda: ("shared born-digital PDFs", shared_pdfs())}
    cores = len(os.sched_getaffinity(0))
    rows: list[list] = []
    cpu_rows: list[list] = []
    notes: list[str] = []
    extra: list[str] = []
    for key in filter(None, args.sets.split(",")):
        name, files = sets[key.strip()]()
        result = ingest_set(name, files, args.embed_model)
        rows.append(row(result))
        cpu_rows.append(cpu_row(result, cores))
        target = TARGETS.get(name)
        if target:
            rate, ceiling = result["pages"] / result["seconds"], float(cpu_rows[-1][-1])
            verdict = "met" if rate >= target else "met only on idle cores" if ceiling >= target else "NOT met"
            notes.append(f"{name}: {rate:.2f} pages/s end to end under the load shown, {ceiling:.1f} pages/s if the "
                         f"{cores} cores were the run's alone; target ≥ {target:g}: {verdict}.")
        if result["failed"]:
            notes.append(f"{name}: failed or partial: {', '.join(result['failed'])}")
        print(markdown_table(HEADER, [rows[-1]]), markdown_table(CPU_HEADER, [cpu_rows[-1]]), sep="\n", flush=True)
        if args.write:  # after each set: a long run interrupted later keeps what it measured
            write_section(TITLE, "\n".join(section(args.embed_model, cores, rows, cpu_rows, notes)))
    if args.embed_speed:
        table = embed_speed(chunk_texts(mmlongbench_pdfs(), args.embed_speed))
        print("\n".join(table), flush=True)
        extra += ["", "### The embedder alone", "", f"The bundled all-MiniLM-L6-v2 on {args.embed_speed} chunks of the "
                  "MMLongBench documents (as ingest makes them, 1200 characters with their title header: about 245 "
                  "tokens, a third past the model's 256 and truncated), batches of 32 sorted by length, "
                  f"{cores} cores. CPU ms per chunk moves less with the machine's load than chunks/s.", ""] + table
    if args.probe:
        table = probe()
        print("\n".join(table))
        extra += ["", "### The cheap table test", "", "Reference: PyMuPDF's `find_tables()` with its layout model "
                  "(what every page paid before). Pages: every page of the shared born-digital PDFs, every third "
                  "page of the MMLongBench documents (every twelfth of those over 100 pages), text-layer pages only. "
                  "A missed table is still read, as text in reading order; a false alarm costs the full finder's "
                  "time on that page.", ""] + table
    lines = section(args.embed_model, cores, rows, cpu_rows, notes) + extra
    if args.write:
        write_section(TITLE, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
