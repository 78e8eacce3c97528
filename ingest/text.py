"""Plain-text and Markdown reader: the file is one text unit (no model needed).

Encodings: UTF-8 (with or without BOM), UTF-16 and UTF-32 with a BOM, UTF-16 without one (every other byte
zero), else Windows-1252/Latin-1, said in a note. Bytes that decode to many control characters are binary data
with a text name, reported as such. Files above KB_TEXT_MAX_BYTES are refused: chunking is linear, but every
1.2 kB becomes a chunk to embed, and a 50 MB log is no document.
"""
from __future__ import annotations

import codecs
from pathlib import Path

from ingest.read_result import ReadResult
from kb.config import Settings
from kb.errors import InputError
from kb.i18n import said
from kb.types import FileKind, Modality, Source, Unit

# Longest BOMs first: the UTF-32 LE mark starts with the UTF-16 LE one.
BOMS = [(codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
        (codecs.BOM_UTF8, "utf-8", ""), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16")]
TEXT_CONTROLS = set("\t\n\r\f\v\x1b")  # tabs, line ends, form feeds and terminal colour escapes occur in text
MAX_CONTROL_SHARE = 0.01  # random bytes give ~10% control characters; text almost none
NOT_TEXT_FIX = "check what the file is (e.g. `file NAME`): it is binary data with a text extension"


def read_text(path: Path, source: Source, settings: Settings) -> ReadResult:
    size = path.stat().st_size
    if size > settings.text_max_bytes:
        megabytes, limit = f"{size / 1e6:.1f}", f"{settings.text_max_bytes / 1e6:g}"
        chunks = size // settings.chunk_chars
        raise InputError(source.rel, f"the text file is {megabytes} MB, above the limit of {limit} MB for one "
                         "text file",
                         f"split it into smaller files, or set KB_TEXT_MAX_BYTES={size} to read it whole (about "
                         f"{chunks} chunks to embed)", code="text.too_big",
                         params={"size": megabytes, "limit": limit, "bytes": size, "chunks": chunks})
    text, encoding = decode_text(path.read_bytes(), source.rel)
    notes: list[str] = []
    if encoding:
        notes.append(said(f"not UTF-8: read as {encoding}", "said.text.not_utf8", encoding=encoding))
    return ReadResult(kind=FileKind.TEXT, units=[Unit(source, Modality.TEXT, text=text)], notes=notes)


def decode_text(data: bytes, label: str) -> tuple[str, str]:
    """(text, the encoding when it is not UTF-8, else ""); InputError when the bytes are not text."""
    text, encoding = _decode(data)
    if text is None or _control_share(text) > MAX_CONTROL_SHARE:
        raise InputError(label, "not text: its bytes are binary data, not characters", NOT_TEXT_FIX, code="text.binary")
    return text, encoding


def _decode(data: bytes) -> tuple[str | None, str]:
    for bom, codec, name in BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(codec), name
            except UnicodeDecodeError:
                return None, ""
    codec = _bomless_utf16(data)
    if codec:
        try:
            return data.decode(codec), "UTF-16"
        except UnicodeDecodeError:
            pass
    if b"\x00" in data:
        return None, ""
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "Windows-1252 (Latin-1)"
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined: Latin-1 proper
        return data.decode("latin-1"), "Latin-1"


def _bomless_utf16(data: bytes) -> str:
    """utf-16-le/-be for text written without a BOM (Windows tools do): mostly ASCII, so one byte of each pair
    is zero and the other almost never is."""
    sample = data[:4096]
    if len(sample) < 4 or len(sample) % 2:
        return ""
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) // 2
    if odd > 0.4 * half and even < 0.05 * half:
        return "utf-16-le"
    if even > 0.4 * half and odd < 0.05 * half:
        return "utf-16-be"
    return ""


def _control_share(text: str) -> float:
    sample = text[:65536]
    if not sample:
        return 0.0
    controls = sum(1 for ch in sample if (ch < " " or "\x7f" <= ch < "\xa0") and ch not in TEXT_CONTROLS)
    return controls / len(sample)
