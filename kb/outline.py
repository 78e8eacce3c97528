"""Outlines: a chaptered, timestamped table of contents of a video; a sectioned outline of a document.

With a language model, videos are outlined map-reduce style (chapters per group of segments, then merged)
so a two-hour recording never has to fit one prompt. Without one (the ocr engine), chapters start where
the on-screen text changes, and documents use their bookmarks or their Markdown headings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from kb import prompts
from kb.engines import Engine
from kb.manifest import SourceRecord
from kb.paths import fs_path
from kb.store import Store
from kb.types import Chunk, Request, format_clock

GROUP_CHARS = 6000  # segment descriptions per map request: fits any Qwen3-VL context with room to answer
MAX_CHAPTERS = 20
_CHAPTER = re.compile(r"^\s*[-*]?\s*\[(?:(\d+):)?(\d{1,2}):(\d{2})\]\s*(.+?)\s*$")
_SECTION = re.compile(r"^\s*p\.\s*(\d+)\s+(.+?)\s*$")
_STAMP = re.compile(r"^\[\d+:\d{2}(?::\d{2})?\]\s*")


@dataclass
class OutlineEntry:
    title: str
    t_start: float | None = None
    page: int | None = None
    level: int = 1

    def line(self) -> str:
        indent = "  " * (self.level - 1)
        if self.t_start is not None:
            return f"{indent}[{format_clock(self.t_start, hours=True)}] {self.title}"
        return f"{indent}p. {self.page}  {self.title}"


def outline(store: Store, engine: Engine, name: str) -> list[OutlineEntry]:
    record = store.manifest.find_one(name)
    chunks = store.chunks_of(record.path)[0]
    if record.kind == "video":
        segments = sorted((c for c in chunks if c.t_start is not None), key=_start)
        return video_outline(segments, engine) if engine.generative else text_change_chapters(segments)
    return document_outline(record, chunks, engine)


# video ------------------------------------------------------------------------------------------------------
def _parse_chapters(text: str) -> list[OutlineEntry]:
    entries = []
    for line in text.splitlines():
        match = _CHAPTER.match(line)
        if match:
            h, m, s, title = match.groups()
            entries.append(OutlineEntry(title, t_start=int(h or 0) * 3600 + int(m) * 60 + int(s)))
    return entries


def _start(segment: Chunk | OutlineEntry) -> float:
    return segment.t_start or 0.0  # video segments and chapters always have one


def _end(segment: Chunk) -> float:
    return segment.t_end or _start(segment)


def _groups(segments: list[Chunk]) -> list[str]:
    groups: list[str] = []
    current = ""
    for seg in segments:
        line = f"[{format_clock(_start(seg), hours=True)}–{format_clock(_end(seg), hours=True)}] " \
               f"{' '.join(seg.text.split())[:800]}\n"
        if current and len(current) + len(line) > GROUP_CHARS:
            groups.append(current)
            current = ""
        current += line
    return groups + ([current] if current else [])


def video_outline(segments: list[Chunk], engine: Engine) -> list[OutlineEntry]:
    groups = _groups(segments)
    mapped = engine.generate([Request("outline", prompts.OUTLINE_VIDEO + g, max_new_tokens=400) for g in groups])
    chapters = [e for text in mapped for e in _parse_chapters(text)]
    if len(groups) > 1 and len(chapters) > MAX_CHAPTERS:
        listing = "\n".join(e.line() for e in chapters)
        merged = engine.generate([Request("outline", prompts.OUTLINE_MERGE.format(limit=MAX_CHAPTERS) + listing,
                                          max_new_tokens=800)])[0]
        chapters = _parse_chapters(merged) or chapters
    return _clean(chapters, segments) or text_change_chapters(segments)


def _clean(chapters: list[OutlineEntry], segments: list[Chunk]) -> list[OutlineEntry]:
    """Chapters in time order, inside the video, one per timestamp (models sometimes repeat or invent)."""
    end = max((_end(s) for s in segments), default=0.0)
    seen: set[float] = set()
    kept = []
    for entry in sorted(chapters, key=_start):
        if _start(entry) <= end + 1 and _start(entry) not in seen:
            seen.add(_start(entry))
            kept.append(entry)
    return kept


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = _STAMP.sub("", line.strip()).strip("#*- ").strip()
        if len(line) >= 3 and not line.lower().startswith(("summary:", "on-screen text:", "entities:")):
            return line[:80]
    return ""


def text_change_chapters(segments: list[Chunk]) -> list[OutlineEntry]:
    """Without a model: a chapter wherever a segment's first line of on-screen text is new."""
    chapters: list[OutlineEntry] = []
    for seg in segments:
        title = _first_line(seg.text)
        if title and (not chapters or chapters[-1].title != title):
            chapters.append(OutlineEntry(title, t_start=seg.t_start))
    return chapters


# documents --------------------------------------------------------------------------------------------------
def document_outline(record: SourceRecord, chunks: list[Chunk], engine: Engine) -> list[OutlineEntry]:
    from ingest.pdf import pdf_toc  # the one place the PDF itself is opened again

    toc = pdf_toc(fs_path(record.path)) if record.kind == "pdf" else []
    if toc:
        return [OutlineEntry(title, page=page, level=level) for level, title, page in toc]
    headings = markdown_headings(chunks)
    if headings or not engine.generative:
        return headings or [OutlineEntry(_first_line(c.text), page=c.page) for c in chunks
                            if c.page and _first_line(c.text)][:MAX_CHAPTERS]
    pages = "\n\n".join(f"--- page {c.page} ---\n{c.text[:1500]}" for c in chunks if c.page)
    text = engine.generate([Request("outline", prompts.OUTLINE_PDF + pages[:24000], max_new_tokens=600)])[0]
    entries = [OutlineEntry(m.group(2), page=int(m.group(1))) for m in map(_SECTION.match, text.splitlines()) if m]
    return entries or headings


def markdown_headings(chunks: list[Chunk]) -> list[OutlineEntry]:
    entries = []
    for chunk in chunks:
        for line in chunk.text.splitlines():
            match = re.match(r"^(#{1,4})\s+(.+?)\s*#*$", line)
            if match:
                entries.append(OutlineEntry(match.group(2), page=chunk.page, level=len(match.group(1))))
    return entries
