"""PDF reader: a text layer becomes text units (tables as Markdown); scanned pages and figures become image units.

Page images are rendered lazily, when the engine batch that reads them runs, and never stored.
"""
from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import pymupdf
from PIL import Image

from ingest.read import ReadResult
from kb.config import Settings
from kb.errors import InputError
from kb.types import Source, Unit

log = logging.getLogger(__name__)
pymupdf.TOOLS.mupdf_display_errors(False)  # damaged files are reported per file, not on stderr
OCR_DPI = 200
FIGURE_DPI = 150
MAX_RENDER_SIDE = 3000  # a page rendered beyond this gains nothing for OCR and costs memory


def open_document(path: str | Path, **options) -> pymupdf.Document:
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
                         "renamed to .pdf); re-export or re-download it") from err
    if doc.needs_pass:
        doc.close()
        raise InputError(label, "the PDF is encrypted with a password", "decrypt it first, e.g. "
                         "`qpdf --decrypt --password=PASSWORD in.pdf out.pdf`, and ingest the copy")
    if doc.page_count == 0:
        doc.close()
        raise InputError(label, "the PDF has no readable pages (damaged or truncated)", "re-download or re-export it")
    if doc.is_repaired and not _has_eof_marker(path):
        doc.close()
        raise InputError(label, "the PDF is truncated (it ends before its %%EOF marker)",
                         "the copy is incomplete: download or copy it again")
    return doc


def _has_eof_marker(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 2048))
        return b"%%EOF" in fh.read()


def render_page(path: str | Path, page: int, dpi: int = OCR_DPI, clip: tuple[float, ...] | None = None) -> Image.Image:
    """Render page `page` (1-based) of a PDF as an RGB image; also used by the app to show cited pages."""
    with open_document(path) as doc:
        pdf_page = doc[page - 1]
        area = pymupdf.Rect(clip) if clip else pdf_page.rect
        zoom = min(dpi / 72, MAX_RENDER_SIDE / max(area.width, area.height, 1))
        pix = pdf_page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=area, alpha=False,
                                  colorspace=pymupdf.csRGB)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


def page_markdown(page: pymupdf.Page) -> str:
    """The page's text layer in reading order, with each table written once, whole, as Markdown."""
    try:
        tables = page.find_tables().tables
    except Exception:  # table detection is best effort; the text is still there
        tables = []
    emitted: set[int] = set()
    parts: list[str] = []
    for x0, y0, x1, y1, text, _no, block_type in page.get_text("blocks", sort=True):
        if block_type != 0:
            continue
        inside = next((n for n, t in enumerate(tables) if pymupdf.Rect(t.bbox).contains(pymupdf.Rect(x0, y0, x1, y1))
                       or pymupdf.Rect(t.bbox).intersect(pymupdf.Rect(x0, y0, x1, y1)).get_area()
                       > 0.6 * pymupdf.Rect(x0, y0, x1, y1).get_area()), None)
        if inside is None:
            parts.append(text.strip())
        elif inside not in emitted:
            emitted.add(inside)
            parts.append(tables[inside].to_markdown().strip())
    parts += [t.to_markdown().strip() for n, t in enumerate(tables) if n not in emitted]
    return "\n\n".join(p for p in parts if p)


def _figure_rects(page: pymupdf.Page, min_side_pt: float) -> list[pymupdf.Rect]:
    page_area = page.rect.get_area()
    rects = []
    for info in page.get_image_info():
        rect = pymupdf.Rect(info["bbox"]) & page.rect
        if min(rect.width, rect.height) < min_side_pt or rect.get_area() > 0.9 * page_area:
            continue  # icons and rules are too small to describe; a full-page image is a scan, read as a page
        if not any(rect.intersect(r).get_area() > 0.8 * rect.get_area() for r in rects):
            rects.append(rect)
    return rects


def read_pdf(path: Path, source: Source, settings: Settings) -> ReadResult:
    result = ReadResult(kind="pdf")
    doc = open_pdf(path, source.rel)
    min_side_pt = settings.figure_min_side * 72 / FIGURE_DPI
    with doc:
        result.pages = doc.page_count
        for index in range(doc.page_count):
            number = index + 1
            try:
                page = doc[index]
                text = page_markdown(page)
            except Exception as err:  # one damaged page must not lose the file
                result.errors.append(f"page {number}: cannot read the page ({err})")
                continue
            if len(text.strip()) >= settings.pdf_min_text_chars:
                result.units.append(Unit(source, "pdf_text", page=number, text=text))
                for rect in _figure_rects(page, min_side_pt):
                    result.units.append(Unit(source, "pdf_figure", page=number, task="caption",
                                             load_image=partial(render_page, str(path), number, FIGURE_DPI,
                                                                tuple(rect))))
            else:
                result.units.append(Unit(source, "pdf_ocr", page=number, task="ocr",
                                         load_image=partial(render_page, str(path), number, OCR_DPI)))
    return result


def pdf_toc(path: str | Path) -> list[tuple[int, str, int]]:
    """The PDF's own bookmarks as (level, title, page); empty when it has none or cannot be opened."""
    try:
        with open_document(path) as doc:
            return [(level, title.strip(), page) for level, title, page in doc.get_toc(simple=True) if title.strip()]
    except Exception:  # the outline falls back to headings in the stored text
        return []
