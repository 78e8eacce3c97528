"""PDF reader: a text layer becomes text units (tables as Markdown); scanned pages and figures become image units.

Page images are rendered lazily, when the engine batch that reads them runs, and never stored.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import select
import sys
import threading
import time
from collections import deque
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pymupdf
from PIL import Image

from ingest.chunk import is_file_code
from ingest.pdf_tables import find_tables, reading_order
from ingest.read_result import ReadResult
from kb.config import Settings
from kb.errors import InputError
from kb.types import FileKind, Modality, Source, Unit

log = logging.getLogger(__name__)
pymupdf.TOOLS.mupdf_display_errors(False)  # damaged files are reported per file, not on stderr
OCR_DPI = 200
FIGURE_DPI = 150
MAX_RENDER_SIDE = 3000  # a page rendered beyond this gains nothing for OCR and costs memory
PARALLEL_MIN_PAGES = 24  # below this, starting reader processes costs more than it saves
PAGES_PER_TASK = 8  # pages one reader process reads per task (small: results come back in page order)
MAX_READ_WORKERS = 8
# Reader processes (long PDFs' page ranges, video slices, pictures loaded ahead) run at this lower priority. They
# read ahead of the ingest process, whose threads turn what they read into engine input. While 14 video slices were
# sampled on the 16-core GPU host, the engine waited 6.2 s of an hour's video for its processor threads; with the
# readers niced 3.3 s, though the sampling ended later and the run took as long (65.8 against 66.4 s:
# docs/benchmarks.md, run O). Reading still takes every core nothing else wants. 0: the same priority.
READER_NICENESS = 10
MAX_TITLE_CHARS = 120
SCAN_COVER = 0.9  # an image over 90 % of the page is a scan of it
STAMP_TEXT_COVER = 0.1  # a scan's text layer below 10 % of the page is a stamp on it, not the page's text


def open_document(path: str | Path, **options: str) -> pymupdf.Document:
    """pymupdf.open for any file name. MuPDF takes a name as UTF-8 text, so a name that is not valid UTF-8 (an
    undecodable byte, surrogate-escaped: kb/paths.py) is opened through /proc/self/fd, which names the same file
    (only Linux has such names: other systems keep names in Unicode)."""
    name = os.fspath(path)
    try:
        name.encode()
    except UnicodeEncodeError:
        with open(name, "rb") as fh:  # MuPDF opens the file again by this name and keeps its own handle
            return pymupdf.open(f"/proc/self/fd/{fh.fileno()}", **{**options, "filetype": "pdf"})
    return pymupdf.open(name, **options)


def open_pdf(path: Path, label: str) -> pymupdf.Document:
    """Open a PDF or raise InputError that says what is wrong with it and what to do."""
    try:
        doc = open_document(path, filetype="pdf")
    except Exception as err:
        raise InputError(label, f"not a readable PDF ({err})", "check that it really is a PDF (not another type "
                         "renamed to .pdf); re-export or re-download it", code="pdf.unreadable",
                         params={"detail": str(err)}) from err
    if doc.needs_pass:
        doc.close()
        raise InputError(label, "the PDF is encrypted with a password", "decrypt it first, e.g. "
                         "`qpdf --decrypt --password=PASSWORD in.pdf out.pdf`, and ingest the copy",
                         code="pdf.encrypted")
    if doc.page_count == 0:
        doc.close()
        raise InputError(label, "the PDF has no readable pages (damaged or truncated)", "re-download or re-export it",
                         code="pdf.no_pages")
    if doc.is_repaired and not _has_eof_marker(path):
        doc.close()
        raise InputError(label, "the PDF is truncated (it ends before its %%EOF marker)",
                         "the copy is incomplete: download or copy it again", code="pdf.truncated")
    return doc


def _has_eof_marker(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 2048))
        return b"%%EOF" in fh.read()


def render_page(path: str | Path, page: int, dpi: int = OCR_DPI, clip: tuple[float, ...] | None = None,
                max_pixels: int = 0) -> Image.Image:
    """Render page `page` (1-based) of a PDF as an RGB image; also used by the app to show cited pages.
    `max_pixels` (0: none) lowers the resolution to what the engine reads (`PageRender`)."""
    with open_document(path) as doc:
        pdf_page = doc[page - 1]
        area = pymupdf.Rect(clip) if clip else pdf_page.rect
        zoom = min(dpi / 72, MAX_RENDER_SIDE / max(area.width, area.height, 1))
        if max_pixels:
            zoom = min(zoom, _fit_zoom(area.width, area.height, max_pixels))
        pix = pdf_page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=area, alpha=False,
                                  colorspace=pymupdf.csRGB)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


def _fit_zoom(width: float, height: float, max_pixels: int) -> float:
    """The zoom that renders a `width` x `height` point area in at most `max_pixels` (MuPDF rounds sides up)."""
    zoom = math.sqrt(max_pixels / max(width * height, 1))
    while zoom > 0.01 and math.ceil(width * zoom) * math.ceil(height * zoom) > max_pixels:
        zoom *= 0.998
    return zoom


@dataclass(frozen=True)
class PageRender:
    """A page's (or a figure's) `Unit.load_image`: rendered where it is loaded (a loading process)."""

    path: str
    page: int
    dpi: int
    clip: tuple[float, ...] | None = None
    max_pixels: int = 0  # set by the pipeline for an engine that reads pictures at a pixel budget

    def __call__(self) -> Image.Image:
        return render_page(self.path, self.page, self.dpi, self.clip, self.max_pixels)


def page_markdown(page: pymupdf.Page, textpage: pymupdf.TextPage | None = None) -> str:
    """The page's text layer in reading order (columns kept apart), with each table written once, whole, as Markdown.

    Table detection only runs on pages that can hold a table (ingest/pdf_tables.py): the slow part of reading
    a born-digital page. `textpage`: the page's text, when the caller has extracted it already.
    """
    tables = find_tables(page)
    if tables:
        shared = _RawDictOnce(tables[0].textpage)  # the tables of one page share one text page
        for table in tables:
            table.textpage = shared
    table_rects = [pymupdf.Rect(t.bbox) for t in tables]
    emitted: set[int] = set()
    parts: list[str] = []
    blocks = [b for b in page.get_text("blocks", textpage=textpage) if b[6] == 0]
    for x0, y0, x1, y1, text, _no, _type in reading_order(blocks, page.rect.width):
        rect = pymupdf.Rect(x0, y0, x1, y1)
        inside = next((n for n, t in enumerate(table_rects)
                       if t.contains(rect) or (t & rect).get_area() > 0.6 * rect.get_area()), None)
        if inside is None:
            parts.append(text.strip())
        elif inside not in emitted:
            emitted.add(inside)
            parts.append(tables[inside].to_markdown().strip())
    parts += [t.to_markdown().strip() for n, t in enumerate(tables) if n not in emitted]
    return "\n\n".join(p for p in parts if p)


class _RawDictOnce:
    """A table's text page whose raw dictionary is built once. PyMuPDF's `Table.to_markdown` asks for the whole
    page's raw dictionary again for every cell (cells x characters): on the MMLongBench documents that was half
    of all reading time. The same dictionary, so the same Markdown."""

    def __init__(self, textpage: Any) -> None:
        self._textpage = textpage
        self._raw: dict[str, Any] | None = None

    def extractRAWDICT(self) -> dict[str, Any]:  # noqa: N802 - PyMuPDF's name
        if self._raw is None:
            self._raw = self._textpage.extractRAWDICT()
        return self._raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._textpage, name)


def _figure_rects(page: pymupdf.Page, min_side_pt: float,
                  image_info: list[dict[str, Any]] | None = None) -> list[pymupdf.Rect]:
    page_area = page.rect.get_area()
    rects: list[pymupdf.Rect] = []
    for info in image_info if image_info is not None else page.get_image_info():
        rect = pymupdf.Rect(info["bbox"]) & page.rect
        if min(rect.width, rect.height) < min_side_pt or rect.get_area() > 0.9 * page_area:
            continue  # icons and rules are too small to describe; a full-page image is a scan, read as a page
        if not any((rect & r).get_area() > 0.8 * rect.get_area() for r in rects):  # & keeps rect
            rects.append(rect)
    return rects


def is_stamped_scan(page: pymupdf.Page, image_info: list[dict[str, Any]] | None = None,
                    textpage: pymupdf.TextPage | None = None) -> bool:
    """A page image that fills the page, with a text layer covering a tenth of it at most: a scan with a line
    stamped on it (a court filing's "Case 2:18-cv-… Page 15 of 16" header, a fax banner). Its text layer says
    nothing of what the page shows. A searchable scan's hidden OCR text covers the page, so it stays as text.
    `image_info` and `textpage`: what the caller has extracted from the page already."""
    width, height = float(page.rect.width), float(page.rect.height)

    def cover(bbox: tuple[float, ...]) -> float:  # the part of the page a box covers, clipped to the page
        x0, y0, x1, y1 = (float(v) for v in bbox[:4])
        return max(0.0, min(x1, width) - max(x0, 0.0)) * max(0.0, min(y1, height) - max(y0, 0.0)) / (width * height)

    images = image_info if image_info is not None else page.get_image_info()
    if not any(cover(info["bbox"]) > SCAN_COVER for info in images):
        return False
    blocks = page.get_text("blocks", textpage=textpage)
    return sum(cover(block) for block in blocks if block[6] == 0) < STAMP_TEXT_COVER


@dataclass
class PageRead:
    """One page's text layer and figure positions, as a reader process hands it back (small, picklable)."""

    number: int
    text: str = ""
    figures: list[tuple[float, float, float, float]] = field(default_factory=list)
    error: str = ""
    stamped_scan: bool = False  # a scanned page whose text layer is only a stamp on it: read by OCR


def read_pages(path: str, start: int, stop: int, min_side_pt: float) -> list[PageRead]:
    """Pages start..stop-1 (0-based) of a PDF; a damaged page becomes its error, the others are still read."""
    out = []
    with open_document(path, filetype="pdf") as doc:
        for index in range(start, stop):
            try:
                page = doc[index]
                # one text page and one image list for the text, the figures and the scan test (each call without
                # them parses the page's content again)
                textpage = page.get_textpage(flags=pymupdf.TEXTFLAGS_BLOCKS)
                images = page.get_image_info()
                out.append(PageRead(index + 1, page_markdown(page, textpage),
                                    [(r.x0, r.y0, r.x1, r.y1) for r in _figure_rects(page, min_side_pt, images)],
                                    stamped_scan=is_stamped_scan(page, images, textpage)))
            except Exception as err:  # one damaged page must not lose the file
                out.append(PageRead(index + 1, error=f"page {index + 1}: cannot read the page ({err})"))
    return out


_replaced_layout_models: list[object] = []


def _layout_model_on_one_thread() -> None:
    """Rebuild PyMuPDF's layout model (its table finder's) with ONNX Runtime sessions of one thread that does not
    spin. `import pymupdf` builds them with a thread per core, spinning between runs; pages are read by one process
    per core already, so those threads only wait for each other: the same table pages cost 0.70 CPU s each that way
    and 0.45 on one thread (docs/benchmarks.md). Done when this module is imported, so the reader processes' fork
    server hands the rebuilt model to every reader. Sessions are made by `onnxruntime.InferenceSession` only while
    the model is rebuilt, which is what is wrapped. The replaced model is kept, never freed: in a process forked
    from one that built it, freeing its sessions waits forever on thread-pool state whose threads a fork leaves
    behind."""
    layout = sys.modules.get("pymupdf.layout")
    previous = getattr(pymupdf, "_get_layout", None)
    if layout is None or not callable(previous):
        return
    import onnxruntime as ort

    original = ort.InferenceSession

    def one_thread(path: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> Any:
        options = sess_options if sess_options is not None else ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return original(path, options, *args, **kwargs)

    _replaced_layout_models.append(previous)
    ort.InferenceSession = one_thread
    try:
        pymupdf._get_layout = None
        layout.activate()
    except Exception as err:  # the model as PyMuPDF built it: slower, never wrong
        log.warning("PyMuPDF's layout model keeps its default threads (%s: %s)", type(err).__name__, err)
        pymupdf._get_layout = previous
    finally:
        ort.InferenceSession = original


_layout_model_on_one_thread()


def _start_reader(ingest_pid: int) -> None:
    """Reader-process initializer: yield the cores to the ingest process (READER_NICENESS), and end as soon as
    the ingest process `ingest_pid` has ended, however it ended (kill -9 too), instead of reading pages for nobody.
    Its parent is multiprocessing's fork server, which waits for its children before it exits itself, so nothing
    else would end them: a thread waits on the ingest process (a pidfd, Linux; elsewhere polled every second)."""
    if READER_NICENESS and hasattr(os, "nice"):
        os.nice(READER_NICENESS)
    try:
        handle = os.pidfd_open(ingest_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here: poll
        handle = -1
    threading.Thread(target=_exit_when_gone, args=(ingest_pid, handle), daemon=True, name="die-with-ingest").start()


def _exit_when_gone(ingest_pid: int, handle: int) -> None:
    if handle >= 0:
        select.select([handle], [], [])  # readable once the process has ended
    else:
        while True:
            time.sleep(1.0)
            try:
                os.kill(ingest_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:  # alive, as another user
                continue
    os._exit(1)


def _read_workers() -> int:
    return max(1, min(MAX_READ_WORKERS, len(os.sched_getaffinity(0))))


class SharedReaders:
    """Reader processes kept for every long PDF and sampled video of an ingest run (or of a worker's jobs): started
    once, not once per file (starting them takes seconds: docs/benchmarks.md, run T)."""

    def __init__(self) -> None:
        self.pool: ProcessPoolExecutor | None = None
        self.size = 0

    def get(self, workers: int) -> ProcessPoolExecutor:
        # Started again when a file wants more (a video's slices after a PDF's fewer readers), or when a process
        # died (a library crashed on an earlier file): a worker's later jobs must not all fall back to one process.
        if self.pool is not None and (self.size < workers or not _takes_tasks(self.pool)):
            self.close()
        if self.pool is None:
            self.pool, self.size = process_pool(workers), workers
        return self.pool

    def close(self) -> None:
        """End the processes (the next `get` starts new ones)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _takes_tasks(pool: ProcessPoolExecutor) -> bool:
    """Whether the pool still runs tasks: a broken one refuses new ones (`BrokenExecutor`, as documented), so a
    trivial task tells without reading the executor's private state."""
    try:
        pool.submit(int)
    except BrokenExecutor:
        return False
    return True


_run = threading.local()  # the shared readers of the ingest run in this thread, if one is open


@contextmanager
def reader_processes() -> Iterator[SharedReaders]:
    """Long PDFs and videos read inside (in this thread) share one set of reader processes, ended when the block
    ends. Outside such a block each long file starts and ends its own. A block inside another uses the outer
    one's: an ingest run inside a worker's block (ingest/worker.py) finds the processes of its jobs before."""
    outer: SharedReaders | None = getattr(_run, "readers", None)
    if outer is not None:
        yield outer
        return
    _run.readers = readers = SharedReaders()
    try:
        yield readers
    finally:
        readers.close()
        _run.readers = None


def shared_pool(workers: int) -> ProcessPoolExecutor | None:
    """The ingest run's shared reader processes, when a `reader_processes` block is open in this thread."""
    shared: SharedReaders | None = getattr(_run, "readers", None)
    return shared.get(workers) if shared is not None else None


def process_pool(workers: int) -> ProcessPoolExecutor:
    """New worker processes that end with this one (the readers of long PDFs, video slices, pictures ahead)."""
    # forkserver, not fork: the caller may hold threads (the app, the embedder) that a fork copies mid-way.
    # Its default preload re-imports the caller's __main__ in the fork server: in the web app that is the app
    # script, which would open the store there (and die on its lock), breaking every reader process. Preload
    # this module instead: the readers need nothing else, and start without importing PyMuPDF each.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_start_reader, initargs=(os.getpid(),))


def iter_pages(path: Path, page_count: int, min_side_pt: float) -> Iterator[PageRead]:
    """Every page, in page order. A long file is read by several processes, range by range, with at most two
    ranges per process in flight, so memory stays bounded whatever the file's length."""
    workers = _read_workers()
    ranges = deque((start, min(start + PAGES_PER_TASK, page_count)) for start in range(0, page_count, PAGES_PER_TASK))
    if page_count >= PARALLEL_MIN_PAGES and workers > 1:
        try:
            with ExitStack() as stack:  # the run's shared readers (the next file gets new ones if these broke)
                pool = shared_pool(workers) or stack.enter_context(process_pool(workers))
                yield from _read_in_processes(pool, str(path), ranges, workers, min_side_pt)
        except BrokenProcessPool as err:
            # e.g. a script without `if __name__ == "__main__":` calls this: its processes cannot start
            log.warning("reading %s in one process: reader processes failed (%s)", path, err)
    for start, stop in ranges:  # the ranges no process has read
        yield from read_pages(str(path), start, stop, min_side_pt)


def _read_in_processes(pool: ProcessPoolExecutor, path: str, ranges: deque[tuple[int, int]], workers: int,
                       min_side_pt: float) -> Iterator[PageRead]:
    """Pops each range from `ranges` once its pages are handed on, so the caller can finish what is left."""
    in_flight: deque[Future[list[PageRead]]] = deque()
    pending = iter(list(ranges))
    for start, stop in pending:
        in_flight.append(pool.submit(read_pages, path, start, stop, min_side_pt))
        if len(in_flight) >= 2 * workers:
            break
    try:
        while in_flight:
            pages = in_flight.popleft().result()
            ranges.popleft()
            next_range = next(pending, None)
            if next_range:
                start, stop = next_range
                in_flight.append(pool.submit(read_pages, path, start, stop, min_side_pt))
            yield from pages
    finally:  # left early (an error, a consumer that stopped): a shared pool must not keep reading this file
        for future in in_flight:
            future.cancel()


def read_pdf(path: Path, source: Source, settings: Settings) -> ReadResult:
    result = ReadResult(kind=FileKind.PDF)
    with open_pdf(path, source.rel) as doc:
        result.pages = doc.page_count
        contexts = page_contexts(doc, path)
    for page in iter_pages(path, result.pages, settings.figure_min_side * 72 / FIGURE_DPI):
        number = page.number
        if page.error:
            result.errors.append(page.error)
        elif len(page.text.strip()) >= settings.pdf_min_text_chars and not page.stamped_scan:
            result.units.append(Unit(source, Modality.PDF_TEXT, page=number, text=page.text, context=contexts[number]))
            for rect in page.figures:
                result.units.append(Unit(source, Modality.PDF_FIGURE, page=number, task="caption",
                                         load_image=PageRender(str(path), number, FIGURE_DPI, tuple(rect))))
        else:
            result.units.append(Unit(source, Modality.PDF_OCR, page=number, task="ocr", context=contexts[number],
                                     load_image=PageRender(str(path), number, OCR_DPI)))
    return result


def document_title(doc: pymupdf.Document, path: Path) -> str:
    """The title the PDF declares, else the largest text on its first page, else the file name."""
    declared = " ".join((doc.metadata or {}).get("title", "").split())
    if len(declared) >= 4 and not declared.lower().startswith(("microsoft word", "untitled")) \
            and not is_file_code(declared):  # an accession number or a file name is no title
        return declared[:MAX_TITLE_CHARS]
    try:  # horizontal lines with words only: not arXiv's margin stamp, not a transcript's line numbers
        lines = [line["spans"] for b in doc[0].get_text("dict")["blocks"] for line in b.get("lines", [])
                 if abs(line["dir"][1]) < 0.1 and any(c.isalpha() for s in line["spans"] for c in s["text"])]
    except Exception:  # the title is a search aid; a page that cannot be parsed still gets the file name
        lines = []
    if lines:
        largest = max(s["size"] for spans in lines for s in spans if s["text"].strip())
        # whole lines that hold the largest type (small capitals are set in smaller spans of the same line)
        title = " ".join(" ".join("".join(s["text"] for s in spans).split()) for spans in lines
                         if any(s["size"] >= largest - 0.5 and s["text"].strip() for s in spans))
        if len(title) >= 4 and not is_file_code(title):
            return title[:MAX_TITLE_CHARS]
    return path.stem.replace("_", " ").replace("-", " ")


def page_contexts(doc: pymupdf.Document, path: Path) -> dict[int, str]:
    """Page number -> "Title › Section" from the title and the bookmarks: what the page's chunks are about.

    The section is the first bookmark on the page, else the last one before it (the page continues it).
    """
    title = document_title(doc, path)
    try:
        toc = [(page, " ".join(name.split())) for _level, name, page in doc.get_toc(simple=True) if name.strip()]
    except Exception:  # damaged outline: the title alone
        toc = []
    contexts, current = {}, ""
    for number in range(1, doc.page_count + 1):
        here = [name for page, name in toc if page == number]
        section = here[0] if here else current
        current = here[-1] if here else current
        contexts[number] = f"{title} › {section}" if section and section != title else title
    return contexts


def pdf_toc(path: str | Path) -> list[tuple[int, str, int]]:
    """The PDF's own bookmarks as (level, title, page); empty when it has none or cannot be opened."""
    try:
        with open_document(path) as doc:
            return [(level, title.strip(), page) for level, title, page in doc.get_toc(simple=True) if title.strip()]
    except Exception:  # the outline falls back to headings in the stored text
        return []
