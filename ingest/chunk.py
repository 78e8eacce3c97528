"""Unit text -> chunks: page boundaries are kept (a chunk never spans two units) and Markdown tables stay whole
(up to a bound: a 5 MB table is cut between rows, its header repeated)."""
from __future__ import annotations

import hashlib
import re
from typing import Iterable

from kb.types import Chunk, Unit

_FILE_EXTENSION = re.compile(r"\.(pdf|docx?|xlsx?|pptx?|rtf|txt|tex|dvi|ps|indd|qxd|qxp|exe|html?|tmp)$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}")  # the |---|---| line under a Markdown table's header
TABLE_WHOLE = 8  # tables up to 8 chunks long stay one chunk: a question about a row needs the whole table


def _blocks(text: str) -> list[str]:
    """Paragraphs, with each run of table lines (`| ... |`) kept as one block."""
    blocks: list[str] = []
    current: list[str] = []
    in_table = False
    for line in text.splitlines():
        is_table = _is_table(line)
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
    """A block cut to pieces of at most `max_chars`: at sentence ends, else at spaces, else anywhere.

    Linear in the block's length (a 5 MB one-line file splits in well under a second): long runs are cut by
    position, never by slicing the rest of the text again and again.
    """
    if len(block) <= max_chars:
        return [block]
    if _is_table(block):
        return _split_table(block, max_chars)
    # _wrap: a run-on without sentence ends (OCR of a form, CJK text)
    return _pack((part for sentence in _SENTENCE_END.split(block) for part in _wrap(sentence, max_chars)),
                 max_chars, " ")


def _pack(parts: Iterable[str], max_chars: int, sep: str) -> list[str]:
    """Consecutive parts joined by `sep` into pieces of at most `max_chars` (a longer part is a piece alone)."""
    pieces: list[str] = []
    current = ""
    for part in parts:
        if current and len(current) + len(sep) + len(part) > max_chars:
            pieces.append(current)
            current = ""
        current = f"{current}{sep}{part}" if current else part
    if current:
        pieces.append(current)
    return pieces


def _wrap(text: str, max_chars: int) -> list[str]:
    """`text` in pieces of at most `max_chars`, cut at the last space of each window when there is one in its
    second half (words stay whole), else at the limit (a single 5 MB "word")."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = max(text.rfind(" ", start + max_chars // 2, end + 1), text.rfind("\n", start + max_chars // 2, end + 1))
        if cut > start:
            pieces.append(text[start:cut].strip())
            start = cut + 1
        else:
            pieces.append(text[start:end])
            start = end
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def _is_table(block: str) -> bool:
    return block.lstrip().startswith("|")


def _split_table(block: str, max_chars: int) -> list[str]:
    """A table stays whole up to TABLE_WHOLE x `max_chars`; a longer one is cut between rows, each piece
    starting with the table's header (so every piece still says what its columns are); a row longer than
    `max_chars` is cut like prose."""
    if len(block) <= TABLE_WHOLE * max_chars:
        return [block]
    rows = block.split("\n")
    head = rows[:2] if len(rows) > 1 and _SEPARATOR.match(rows[1]) else []
    header = "\n".join(head)
    if len(header) > max_chars // 2:  # a header too long to repeat: pieces go without it
        head, header = [], ""
    room = max_chars - len(header) - 1 if header else max_chars  # for the rows of a piece, after its header
    parts = (part for row in rows[len(head):] for part in _wrap(row, max_chars - len(header) - 1))
    return [f"{header}\n{body}" if header else body for body in _pack(parts, room, "\n")]


def split_text(text: str, max_chars: int) -> list[str]:
    """Pack paragraphs into pieces of at most `max_chars` (a table up to TABLE_WHOLE times that stays whole)."""
    return _pack((part for block in _blocks(text) for part in _split_long(block, max_chars)), max_chars, "\n\n")


def chunk_id(source_abs: str, sha256: str, position: int) -> str:
    """Deterministic: the same file content at the same path gives the same ids (idempotent re-ingest)."""
    return hashlib.sha1(f"{source_abs}\0{sha256}\0{position}".encode()).hexdigest()[:24]


def with_context(context: str | None, piece: str) -> str:
    """The chunk's text with its document's title and section first: a passage that never names its document
    ("revenue rose 4 %") is then found by questions that do ("3M's 2018 revenue"), by both retrievers."""
    return f"[{context}]\n{piece}" if context else piece


def is_file_code(title: str) -> bool:
    """A "title" that names a file or a filing, not what the document is about: an SEC accession number
    ("0000320193-22-000070"), a job code ("905_Precinct_NoOU"), a file name ("10811.exe", "2312.10997v5").
    Put in front of every chunk it would only add a word no question uses; the first heading says more."""
    words = title.split()
    if sum(c.isalpha() for c in title) < 3 or _FILE_EXTENSION.search(title):
        return True
    # one "word" joined by underscores, or mostly digits: a code (not "COVID-19" nor "MMDetection")
    return len(words) == 1 and ("_" in title or sum(c.isdigit() for c in title) >= 0.3 * len(title))


def make_chunks(units: Iterable[Unit], engine: str, model: str, max_chars: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for unit in units:
        text = with_speech(unit)
        if not text:
            continue
        context = unit.context
        for piece in split_text(text, max_chars - len(context or "")):
            piece = with_context(context, piece)
            src = unit.source
            chunks.append(Chunk(
                id=chunk_id(src.path, src.sha256, len(chunks)), text=piece, rel=src.rel, path=src.path,
                sha256=src.sha256, modality=unit.modality, page=unit.page, t_start=unit.t_start, t_end=unit.t_end,
                keyframe=unit.keyframe, engine=engine if unit.task else "none", model=model if unit.task else "",
                position=len(chunks), language=unit.language or None))
    return chunks


def with_speech(unit: Unit) -> str:
    """A unit's text, and for a video window what was said during it: one chunk, so a question about either
    the slide or the words finds the moment."""
    shown = (unit.text or "").strip()
    if not unit.speech:
        return shown
    return f"{shown}\n\nSpeech: {unit.speech}" if shown else f"Speech: {unit.speech}"
