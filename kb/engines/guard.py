"""Repetition guard. Qwen3-VL sometimes loops while reading a page ("| | | |", a line over and over)."""
from __future__ import annotations


def repeating_tail(tokens: list[int], ngram: int = 12, repeats: int = 4) -> bool:
    """True when the last `ngram` tokens occurred `repeats` times back to back at the end of `tokens`."""
    span = ngram * repeats
    if len(tokens) < span:
        return False
    tail = tokens[-span:]
    first = tail[:ngram]
    return all(tail[i:i + ngram] == first for i in range(ngram, span, ngram))


def trim_repetition(text: str, min_unit: int = 8, repeats: int = 4, max_unit: int = 400) -> str:
    """Cut a text that ends in a loop: a block of `min_unit`..`max_unit` chars repeated `repeats`+ times.

    Loops run until the token cap, so only the tail is examined; the first copy of the block is kept.
    """
    n = len(text)
    for size in range(min_unit, min(max_unit, n // repeats) + 1):
        span = size * repeats
        if text[n - span:n - size] != text[n - span + size:]:
            continue
        start = n - span
        while start > 0 and text[start - 1] == text[start - 1 + size]:
            start -= 1
        if text[start:start + size].strip():
            return text[:start + size].rstrip()
    return text
