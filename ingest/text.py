"""Plain-text and Markdown reader: the file is one text unit (no model needed)."""
from __future__ import annotations

from pathlib import Path

from ingest.read import ReadResult
from kb.config import Settings
from kb.errors import InputError
from kb.types import Source, Unit


def read_text(path: Path, source: Source, settings: Settings) -> ReadResult:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(source.rel, f"not UTF-8 text (byte {err.start} cannot be decoded)",
                         "convert it to UTF-8, e.g. `iconv -f LATIN1 -t UTF-8 in.txt > out.txt`") from err
    if "\x00" in text:
        raise InputError(source.rel, "a binary file with a text extension", "check the file type")
    return ReadResult(kind="text", units=[Unit(source, "text", text=text)])
