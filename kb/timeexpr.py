"""Moments named in a question ("at 12:30", "minute 12", "第3分15秒") -> seconds, and a window around them.

A question that names a moment is usually about a video at that moment; `search` turns the window into a
filter for video chunks only, so documents that merely mention a clock time stay eligible.
"""
from __future__ import annotations

import re

WINDOW_SECONDS = 30.0
_CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
              "九": 9}
_NUM = r"(\d{1,3}|[零〇一二两三四五六七八九十]{1,4})"

# 1:02:03 or 12:30 standing alone (not part of 12:30:45:10 or a ratio like 3:2).
_CLOCK = re.compile(r"(?<![\d:.])(\d{1,2}):([0-5]\d)(?::([0-5]\d))?(?![\d:])")
# 1h02m03s, 3m15s, 45s (compact stamps as video players and YouTube links write them).
_COMPACT = re.compile(r"(?<![\w])(?:(\d{1,2})h)?(?:(\d{1,3})m)?(?:(\d{1,3})s)?(?![\w])", re.IGNORECASE)
# "minute 12", "second 40", "at minute 3": the ordinal form names a moment, not a duration.
_ORDINAL = re.compile(r"\b(minute|second|min|sec)\s+(\d{1,3})\b", re.IGNORECASE)
# "at 12 minutes (and 30 seconds)", "around 3 min 10 s", "12 minutes in": a cue word makes it a moment.
_CUED = re.compile(r"\b(?:at|around|about|near|from|after)\s+(?:the\s+)?(\d{1,3})\s*(?:minutes?|mins?|m)\b"
                   r"(?:\s*(?:and\s+)?(\d{1,2})\s*(?:seconds?|secs?|s)\b)?"
                   r"|\b(\d{1,3})\s*(?:minutes?|mins?)(?:\s*(?:and\s+)?(\d{1,2})\s*(?:seconds?|secs?))?\s+in\b",
                   re.IGNORECASE)
_CUED_SECONDS = re.compile(r"\b(?:at|around|about|near)\s+(?:the\s+)?(\d{1,4})\s*(?:seconds?|secs?)\b", re.IGNORECASE)
# Chinese / Japanese: 1小时2分3秒, 1時間2分3秒, 第3分15秒, 3分15秒, 第3分钟, 第40秒, 在3分钟处.
_CJK = re.compile(rf"(第|在)?(?:{_NUM}\s*(?:小时|小時|時間|个小时))?\s*(?:{_NUM}\s*分(?:钟|鐘)?)?\s*(?:{_NUM}\s*秒)?")


def _cn_number(text: str) -> int:
    """'15', '十五', '二十', '三十五' -> int (the forms a time of day or video position needs)."""
    if text.isdigit():
        return int(text)
    if "十" in text:
        tens, _, ones = text.partition("十")
        return (_CN_DIGITS.get(tens, 1) if tens else 1) * 10 + (_CN_DIGITS.get(ones, 0) if ones else 0)
    value = 0
    for ch in text:
        value = value * 10 + _CN_DIGITS.get(ch, 0)
    return value


def _clock(text: str) -> list[float]:
    out: list[float] = []
    for m in _CLOCK.finditer(text):
        a, b, c = int(m.group(1)), int(m.group(2)), m.group(3)
        out.append(a * 3600 + b * 60 + int(c) if c else a * 60 + b)  # two fields in a video are mm:ss
    return out


def _compact(text: str) -> list[float]:
    out: list[float] = []
    for m in _COMPACT.finditer(text):
        h, mins, s = m.groups()
        # a bare "45s" or "3m" is too easily a size or a unit; one stamp needs two parts or an h.
        if sum(x is not None for x in (h, mins, s)) >= 2 or (h and not mins and not s):
            out.append(int(h or 0) * 3600 + int(mins or 0) * 60 + int(s or 0))
    return out


def _english(text: str) -> list[float]:
    out: list[float] = []
    for m in _ORDINAL.finditer(text):
        n = int(m.group(2))
        out.append(n * 60 if m.group(1).lower().startswith("min") else n)
    for m in _CUED.finditer(text):
        mins, secs = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        out.append(int(mins) * 60 + int(secs or 0))
    out += [int(m.group(1)) for m in _CUED_SECONDS.finditer(text)]
    return out


def _cjk(text: str) -> list[float]:
    out: list[float] = []
    for m in _CJK.finditer(text):
        cue, h, mins, s = m.groups()
        if not (h or mins or s):
            continue
        whole = m.group(0)
        # "3分钟" alone is usually a duration ("takes 3 minutes"); with 第/在, or as 分+秒, it is a moment.
        if not cue and sum(x is not None for x in (h, mins, s)) < 2:
            continue
        if mins and "分" not in whole:
            continue
        out.append(_cn_number(h or "0") * 3600 + _cn_number(mins or "0") * 60 + _cn_number(s or "0"))
    return out


def moments(text: str) -> list[float]:
    """Every moment (in seconds from the start) the text names, in no particular order."""
    return [float(t) for t in _clock(text) + _compact(text) + _english(text) + _cjk(text)]


def time_window(text: str, pad: float = WINDOW_SECONDS) -> tuple[float, float] | None:
    """The span (seconds) around the moments named in `text`, padded by `pad` on each side; None if none."""
    found = moments(text)
    if not found:
        return None
    return max(0.0, min(found) - pad), max(found) + pad
