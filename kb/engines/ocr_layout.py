"""Reading order of a page from the text boxes OCR detected: boxes -> lines -> columns -> blocks.

Thresholds are in median text-box heights, so the same rules hold for a phone photo and a 600 dpi scan.
Regions are read top to bottom, text columns left to right, lines top to bottom; a blank line starts a block.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

GUTTER = 0.5  # empty x-range between boxes that separates columns
PARAGRAPH_GAP = 0.5  # empty y-range between lines that separates paragraphs
Span = tuple[float, float]  # an x-range


@dataclass
class Box:
    """One detected text segment, reduced to what layout needs."""

    text: str
    x0: float
    x1: float
    yc: float
    h: float  # text height along the quad's side, not the bounding box (a skewed line's box is tall)

    @property
    def top(self) -> float:
        return self.yc - self.h / 2

    @property
    def bottom(self) -> float:
        return self.yc + self.h / 2


def box_from_quad(quad: ArrayLike, text: str) -> Box:
    """A Box from a detected quadrilateral (4 x 2 corner points, clockwise from the top left) and its text."""
    q = np.asarray(quad, dtype=np.float32)
    height = max(float(np.linalg.norm(q[3] - q[0])), float(np.linalg.norm(q[2] - q[1])), 1.0)
    return Box(text=text.strip(), x0=float(q[:, 0].min()), x1=float(q[:, 0].max()),
               yc=float(q[:, 1].mean()), h=height)


def layout(boxes: list[Box]) -> list[list[str]]:
    """Blocks of lines in reading order: regions top to bottom, columns left to right, lines top to bottom."""
    if not boxes:
        return []
    unit = statistics.median(b.h for b in boxes)
    blocks: list[list[str]] = []
    for region in _regions(_bands(boxes), unit):
        for column in region:
            blocks.extend(_paragraphs(_lines(column), unit))
    return blocks


def _bands(boxes: list[Box]) -> list[list[Box]]:
    """Horizontal strips of boxes whose vertical extents overlap (a strip may hold several columns)."""
    bands: list[list[Box]] = []
    bottom = float("-inf")
    for box in sorted(boxes, key=lambda b: b.top):
        # A little slack so touching descenders/ascenders of adjacent lines do not chain a whole page together.
        if bands and box.top < bottom - 0.25 * box.h:
            bands[-1].append(box)
            bottom = max(bottom, box.bottom)
        else:
            bands.append([box])
            bottom = box.bottom
    return bands


def _free(band: list[Box]) -> list[Span]:
    """The x-ranges of a band no box covers, including the open space left and right of its text."""
    spans = sorted((b.x0, b.x1) for b in band)
    free, right = [(float("-inf"), spans[0][0])], spans[0][1]
    for x0, x1 in spans[1:]:
        if x0 > right:
            free.append((right, x0))
        right = max(right, x1)
    return free + [(right, float("inf"))]


def _gutters(band: list[Box], unit: float) -> list[Span]:
    """Empty x-ranges between the boxes of a band, wide enough to separate text columns.

    Detected boxes reach ~0.3 line heights past the ink on each side, so a half line height between boxes is
    already a clear gap in the print.
    """
    return [(g0, g1) for g0, g1 in _free(band)[1:-1] if g1 - g0 >= GUTTER * unit]


def _narrow(band: list[Box], gutters: list[Span], unit: float) -> list[Span]:
    """The parts of the region's gutters that stay empty in this band (columns drift a little line by line)."""
    kept = []
    for g0, g1 in gutters:
        parts = [(max(g0, f0), min(g1, f1)) for f0, f1 in _free(band)]
        parts = [(p0, p1) for p0, p1 in parts if p1 - p0 >= GUTTER * unit]
        if parts:
            kept.append(max(parts, key=lambda p: p[1] - p[0]))
    return kept


def _regions(bands: list[list[Box]], unit: float) -> list[list[list[Box]]]:
    """Group bands into regions; a region is a list of columns (one column when the text runs full width).

    A band joins the open column region when it leaves part of the region's gutter empty and has text on
    both sides of it, or when it continues one column at normal line spacing (uneven column ends); a
    heading after a blank line starts a new region. A region is read column by column only when every
    column is wide (>= 12 line heights) and it has 3+ bands: narrow columns are table cells, which read
    better row by row.
    """
    regions: list[tuple[list[Span], list[list[Box]]]] = []
    for band in bands:
        if regions and regions[-1][0]:
            gutters, members = regions[-1]
            kept = _narrow(band, gutters, unit)
            gap = min(b.top for b in band) - max(b.bottom for b in members[-1])
            if kept and (_two_sided(band, kept) or gap <= PARAGRAPH_GAP * unit):
                regions[-1] = (kept, members + [band])
                continue
        regions.append((_gutters(band, unit), [band]))
    out: list[list[list[Box]]] = []
    for gutters, members in regions:
        boxes = [b for band in members for b in band]
        columns = _split(boxes, gutters)
        wide = all(max(b.x1 for b in col) - min(b.x0 for b in col) >= 12 * unit for col in columns)
        if len(columns) > 1 and len(members) >= 3 and wide:
            out.append(columns)
        elif out and len(out[-1]) == 1:
            out[-1][0].extend(boxes)  # consecutive full-width strips read as one flow (keeps paragraph gaps)
        else:
            out.append([boxes])
    return out


def _two_sided(band: list[Box], gutters: list[Span]) -> bool:
    return any(any(b.x1 <= g0 for b in band) and any(b.x0 >= g1 for b in band) for g0, g1 in gutters)


def _split(boxes: list[Box], gutters: list[Span]) -> list[list[Box]]:
    edges = sorted((g0 + g1) / 2 for g0, g1 in gutters)
    columns: list[list[Box]] = [[] for _ in range(len(edges) + 1)]
    for box in boxes:
        centre = (box.x0 + box.x1) / 2
        columns[sum(centre > e for e in edges)].append(box)
    return [c for c in columns if c]


def _lines(boxes: list[Box]) -> list[list[Box]]:
    """Boxes whose vertical centres overlap form a line; lines top to bottom, boxes left to right."""
    lines: list[list[Box]] = []
    for box in sorted(boxes, key=lambda b: b.yc):
        if lines:
            line = lines[-1]
            yc = statistics.fmean(b.yc for b in line)
            if abs(box.yc - yc) <= 0.5 * min(box.h, max(b.h for b in line)):
                line.append(box)
                continue
        lines.append([box])
    return [sorted(line, key=lambda b: b.x0) for line in lines]


def _paragraphs(lines: list[list[Box]], unit: float) -> list[list[str]]:
    """Join lines into blocks, starting a new block at a blank line.

    Detected boxes of consecutive lines touch (they reach past the ink); a gap of half a line height is a
    blank line in the print.
    """
    blocks: list[list[str]] = []
    last_bottom = None
    for line in lines:
        top = min(b.top for b in line)
        if last_bottom is None or top - last_bottom > PARAGRAPH_GAP * unit:
            blocks.append([])
        blocks[-1].append(" ".join(b.text for b in line))
        last_bottom = max(b.bottom for b in line)
    return blocks
