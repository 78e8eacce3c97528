"""File names as Linux has them (bytes), as Seekframe stores them (valid UTF-8 text) and as it shows them.

Three forms of one name:
- internal: a `str` from `os.fsdecode` (what `Path`, `os.walk` and `sys.argv` give). A byte that is not valid
  UTF-8 becomes a lone surrogate U+DC80..U+DCFF ("surrogateescape"); `open()` turns it back into that byte.
- stored: what goes into the manifest, Chroma and the lexical index, which all need valid UTF-8. Each lone
  surrogate is mapped to a private-use code point of plane 16 (U+10FF80..U+10FFFF), so the mapping is
  exact and reversible. A name that truly contains one of those 128 code points (never assigned, not
  typeable) would read back as the bytes they stand for: `storable` says so, and ingest refuses it.
- display: for people; every undecodable byte is shown as U+FFFD (the replacement character).

A name made only of valid UTF-8 is the same in all three forms, so existing knowledge bases need no migration.
"""
from __future__ import annotations

import os
from pathlib import Path

_SURROGATE_LOW = 0xDC80  # surrogateescape puts byte 0x80 + n at U+DC80 + n (bytes < 0x80 are always valid)
_PRIVATE_LOW = 0x10FF80
_SPAN = 0x80
_TO_STORED = {_SURROGATE_LOW + n: _PRIVATE_LOW + n for n in range(_SPAN)}
_FROM_STORED = {_PRIVATE_LOW + n: _SURROGATE_LOW + n for n in range(_SPAN)}
_TO_DISPLAY = {code: "\ufffd" for code in (*_TO_STORED, *_FROM_STORED)}


def to_stored(name: str) -> str:
    """Internal (surrogate-escaped) name -> valid UTF-8 text that round-trips through `from_stored`."""
    return name.translate(_TO_STORED)


def from_stored(text: str) -> str:
    """Stored text -> the internal name, ready for `open()`, `Path` and `os.fsencode`."""
    return text.translate(_FROM_STORED)


def display(name: str) -> str:
    """Either form -> text for a person: undecodable bytes shown as U+FFFD, nothing else changed."""
    return name.translate(_TO_DISPLAY)


def storable(name: str) -> bool:
    """False for the (theoretical) name whose real characters collide with the stored form's escapes."""
    return not any(ord(ch) in _FROM_STORED for ch in name)


def stored_path(path: Path | str) -> str:
    """A filesystem path as stored text (absolute paths in the manifest are stored this way)."""
    return to_stored(os.fspath(path))


def fs_path(stored: str) -> Path:
    """A stored path back as a `Path` that opens the real file."""
    return Path(from_stored(stored))
