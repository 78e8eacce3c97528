"""On-screen text of a video window without repeats: each line once, stamped where it appears.

OCR of the same line in two frames differs by a character or two, so "seen before" is a near match; numbers
must match exactly, since a changed counter, timecode or price is new text.
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable

from kb.types import format_clock

_WORD = re.compile(r"\w", re.UNICODE)
_DIGITS = re.compile(r"\d+")


def stamped_new_lines(frames: Iterable[tuple[float, list[str]]]) -> list[str]:
    """`[mm:ss] line` for each line of each (seconds, lines) frame that the previous frame did not show.

    A line also read in the previous frame (allowing small OCR differences) is not repeated; one that comes
    back later is written again with its new time.
    """
    out: list[str] = []
    previous: list[str] = []
    for seconds, lines in frames:
        keys = [_key(line) for line in lines]
        for line, key in zip(lines, keys):
            if key and not _seen(key, previous):
                out.append(f"[{format_clock(seconds)}] {line}")
        previous = [k for k in keys if k]
    return out


def _key(line: str) -> str:
    return "".join(_WORD.findall(line.lower()))


def _seen(key: str, previous: list[str]) -> bool:
    """In the previous frame, exactly or nearly (OCR of the same line differs by a character or two).

    Numbers must match exactly: "Frame = 11" after "Frame = 1" is new text (counters, timecodes, prices).
    """
    for old in previous:
        if key == old:
            return True
        if _DIGITS.findall(key) != _DIGITS.findall(old):
            continue
        matcher = difflib.SequenceMatcher(None, key, old, autojunk=False)
        if matcher.real_quick_ratio() >= 0.9 and matcher.ratio() >= 0.9:
            return True
    return False
