"""Pure helpers behind the pages (no Streamlit here): escaping, filters, highlighting, sizes, uploads.

Kept apart from the page scripts so the tests can call them directly.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image, ImageDraw

from kb.answer import keep_real_citations
from kb.errors import InputError
from kb.manifest import SourceRecord
from kb.paths import display, fs_path
from kb.search import Filters
from kb.types import Chunk, format_clock

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>:~$=&])")
GROUPS = ("documents", "images", "video", "audio")
SORTS = {"name": lambda r: display(r.rel).lower(), "newest first": lambda r: -r.ingested_at,
         "most chunks": lambda r: -r.chunks, "type": lambda r: (r.kind, display(r.rel).lower())}


# escaping -------------------------------------------------------------------------------------------------
# Streamlit's Markdown (GFM) turns bare `https://…`, `www.…` and e-mail addresses into links after parsing, so
# backslash escapes do not stop it: a zero-width space inside the pattern does (invisible, the text reads the same).
_ZWSP = "\u200b"
_AUTOLINKS = re.compile(r"(?i)(?<=https)(?=://)|(?<=http)(?=://)|(?<=www)(?=\.)|(?<=@)(?=[\w-])")
# What could turn text into a link, an image, HTML or an entity: every other Markdown mark is left alone.
_LINK_MARKS = {"\\": "\\\\", "[": "\\[", "]": "\\]", "&": "&amp;", "<": "&lt;"}
_LINK_MARK = re.compile(r"[\\\[\]&<]")
_OPEN_MARKER = re.compile(r"\[[\d,; ]*$")  # a citation marker still being streamed


def inert_autolinks(text: str) -> str:
    return _AUTOLINKS.sub(_ZWSP, text)


def md_escape(text: str) -> str:
    """Text for a Markdown context (labels, captions, headings) that shows literally: no links, images, HTML."""
    return _MD_SPECIAL.sub(r"\\\1", inert_autolinks(text.replace("\n", " ")))


def md_code(text: str) -> str:
    """`text` as an inline code span (a path, a command): shown literally, whatever backticks it holds."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text.replace(chr(10), ' ')} {fence}"


def safe_markdown(text: str, citations: int | None = None, streaming: bool = False) -> str:
    """An answer for st.markdown: its formatting (bold, lists, quotes) stays; nothing in it is live.

    Answers quote documents and models repeat what documents say, so any of it may be an attacker's: a link
    or image would make the browser show or fetch their URL, HTML would run. Brackets, `<`, `&` and `\\` are
    escaped (no link, image, reference or HTML syntax survives) and bare URLs are made inert. With
    `citations` (the number of sources), markers [n] that match no source are dropped (kb.answer); `streaming`
    holds back a marker that is not complete yet.
    """
    if streaming:
        text = _OPEN_MARKER.sub("", text)
    if citations is not None:
        text = keep_real_citations(text, citations)
    return _LINK_MARK.sub(lambda m: _LINK_MARKS[m.group()], inert_autolinks(text))


# filters --------------------------------------------------------------------------------------------------
def build_filters(sources: Sequence[str], groups: Sequence[str], seconds: tuple[float, float] | None = None,
                  full_range: tuple[float, float] | None = None) -> Filters:
    """The sidebar's choices as search Filters; a time range equal to the full range means no time filter."""
    limit = None if seconds is None or tuple(seconds) == tuple(full_range or ()) else (float(seconds[0]),
                                                                                         float(seconds[1]))
    return Filters(sources=list(sources), modalities=list(groups), seconds=limit)


def time_label(t_start: float | None, t_end: float | None) -> str:
    return f"{format_clock(t_start or 0)}–{format_clock((t_end if t_end is not None else t_start) or 0)}"


# media ----------------------------------------------------------------------------------------------------
def keyframe_paths(keyframe: str | None, home: Path) -> list[Path]:
    """Existing key-frame files of a video segment (one path, or several joined by ';'), relative to home; the
    paths come stored (kb/paths.py) and are returned as names that open."""
    if not keyframe:
        return []
    paths = [fs_path(p.strip()) for p in re.split(r"[;\n]", keyframe) if p.strip()]
    return [p if p.is_absolute() else home / p for p in paths if (p if p.is_absolute() else home / p).is_file()]


def highlight_boxes(pdf_path: str | Path, page: int, quote: str) -> list[tuple[float, float, float, float]]:
    """Where `quote` is on the page, as fractions of the page size; [] when the page has no text layer.
    `pdf_path` is the name that opens (internal form), not the stored one."""
    from ingest.pdf import open_document

    quote = quote.replace("…", "").strip()
    if len(quote) < 4:
        return []
    with open_document(pdf_path) as doc:
        pdf_page = doc[page - 1]
        width, height = pdf_page.rect.width, pdf_page.rect.height
        rects = pdf_page.search_for(quote[:80]) or pdf_page.search_for(quote[:40])
    return [(r.x0 / width, r.y0 / height, r.x1 / width, r.y1 / height) for r in rects]


def draw_boxes(image: Image.Image, boxes: Sequence[tuple[float, float, float, float]]) -> Image.Image:
    """A copy of the page image with translucent yellow boxes over the cited text."""
    if not boxes:
        return image
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = base.size
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0 * w - 2, y0 * h - 2, x1 * w + 2, y1 * h + 2), fill=(255, 221, 0, 90),
                       outline=(230, 140, 0, 255), width=2)
    return Image.alpha_composite(base, layer).convert("RGB")


# library --------------------------------------------------------------------------------------------------
def source_rows(records: Sequence[SourceRecord], query: str = "", sort: str = "name") -> list[SourceRecord]:
    """Records whose path (as shown), type, status or model contain `query` (any case), in the chosen order."""
    words = query.lower().split()
    shown = {id(r): f"{display(r.rel)} {r.kind} {r.status} {r.engine} {r.model}".lower() for r in records}
    kept = [r for r in records if all(w in shown[id(r)] for w in words)]
    return sorted(kept, key=SORTS.get(sort, SORTS["name"]))


def chunks_by_page(chunks: Sequence[Chunk]) -> dict[int, list[Chunk]]:
    pages: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        pages.setdefault(chunk.page or 1, []).append(chunk)
    return dict(sorted(pages.items()))


def segments(chunks: Sequence[Chunk]) -> list[Chunk]:
    """Video segments in time order."""
    return sorted((c for c in chunks if c.t_start is not None), key=lambda c: (c.t_start, c.position))


# add content ----------------------------------------------------------------------------------------------
def save_upload(name: str, data: bytes, folder: Path, extensions: Iterable[str]) -> Path:
    """Write one uploaded file as `folder/<content hash>/<its name>`; raises InputError for a type the ingest
    cannot read or no bytes.

    The hash folder keeps two different files of the same name apart (both stay searchable), while the same
    file uploaded again lands on the same path, which the ingest skips as unchanged.
    """
    clean = Path(name.replace("\\", "/")).name.strip()
    if not clean or clean.startswith("."):
        raise InputError(name or "(no name)", "the file has no usable name", "rename it and upload it again",
                         code="upload.no_name")
    allowed = sorted(extensions)
    if Path(clean).suffix.lower() not in allowed:
        suffix = Path(clean).suffix or "(no extension)"
        raise InputError(clean, f"unsupported file type {suffix}", f"Seekframe reads {', '.join(allowed)}",
                         code="upload.unsupported", params={"suffix": suffix, "extensions": ", ".join(allowed)})
    if not data:
        raise InputError(clean, "the file is empty (0 bytes)", "upload the complete file", code="upload.empty")
    target = folder / hashlib.sha256(data).hexdigest()[:16] / clean
    if target.is_file() and target.stat().st_size == len(data):
        return target  # this very file was uploaded before
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{clean}.part")
    partial.write_bytes(data)
    os.replace(partial, target)  # a half-written upload is never seen by an ingest
    return target


# system ---------------------------------------------------------------------------------------------------
def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # a file removed while counting
                continue
    return total


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def gpu_info() -> list[dict]:
    """Name and memory of each NVIDIA GPU (all processes), from nvidia-smi; [] when there is none.

    nvidia-smi rather than torch: only kb/engines may import torch, and the page should not load CUDA.
    """
    if not shutil.which("nvidia-smi"):
        return []
    query = ["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total,utilization.gpu",
             "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            gpus.append({"gpu": parts[0], "name": parts[1], "memory_used": f"{parts[2]} MiB",
                         "memory_total": f"{parts[3]} MiB", "utilization": f"{parts[4]} %"})
    return gpus
