"""Unit text -> chunks: page boundaries are kept (a chunk never spans two units) and Markdown tables stay whole."""
from __future__ import annotations

import hashlib
import re
from typing import Iterable

from kb.types import Chunk, Unit

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def _blocks(text: str) -> list[str]:
    """Paragraphs, with each run of table lines (`| ... |`) kept as one block."""
    blocks: list[str] = []
    current: list[str] = []
    in_table = False
    for line in text.splitlines():
        is_table = line.lstrip().startswith("|")
        if current and (not line.strip() or is_table != in_table):
            blocks.append("\n".join(current))
            current = []
        if line.strip():
            current.append(line)
            in_table = is_table
    if current:
        blocks.append("\n".join(current))
    return blocks


def _split_long(block: str, max_chars: int) -> list[str]:
    if len(block) <= max_chars or block.lstrip().startswith("|"):
        return [block]
    pieces, current = [], ""
    for sentence in _SENTENCE_END.split(block):
        while len(sentence) > max_chars:  # a run-on without sentence ends (OCR of a form, CJK text)
            pieces.append((current + " " + sentence[:max_chars - len(current)]).strip())
            sentence, current = sentence[max_chars - len(current):], ""
        if current and len(current) + len(sentence) + 1 > max_chars:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


def split_text(text: str, max_chars: int) -> list[str]:
    """Pack paragraphs into pieces of at most `max_chars` (a table longer than that stays whole)."""
    pieces, current = [], ""
    for block in _blocks(text):
        for part in _split_long(block, max_chars):
            if current and len(current) + len(part) + 2 > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current}\n\n{part}" if current else part
    if current:
        pieces.append(current)
    return pieces


def chunk_id(source_abs: str, sha256: str, position: int) -> str:
    """Deterministic: the same file content at the same path gives the same ids (idempotent re-ingest)."""
    return hashlib.sha1(f"{source_abs}\0{sha256}\0{position}".encode()).hexdigest()[:24]


def with_context(context: str | None, piece: str) -> str:
    """The chunk's text with its document's title and section first: a passage that never names its document
    ("revenue rose 4 %") is then found by questions that do ("3M's 2018 revenue"), by both retrievers."""
    return f"[{context}]\n{piece}" if context else piece


def make_chunks(units: Iterable[Unit], engine: str, model: str, max_chars: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for unit in units:
        if not unit.text or not unit.text.strip():
            continue
        context = unit.context
        for piece in split_text(unit.text, max_chars - len(context or "")):
            piece = with_context(context, piece)
            src = unit.source
            chunks.append(Chunk(
                id=chunk_id(src.abs, src.sha256, len(chunks)), text=piece, source=src.rel, source_abs=src.abs,
                sha256=src.sha256, modality=unit.modality, page=unit.page, t_start=unit.t_start, t_end=unit.t_end,
                keyframe=unit.keyframe, engine=engine if unit.task else "none", model=model if unit.task else "",
                position=len(chunks)))
    return chunks
