"""Text-layer pages: a cheap "can this page hold a table?" test, tables as Markdown, and column-aware reading order.

PyMuPDF's table finder runs a layout model (about 1 s a page on one core); most pages of a report or a paper
hold no table, so it only runs where the page shows a table's traces: ruling lines, or words lined up in
three or more columns over several rows. A framed block of text (a manual's code listing in a box, with no
rule inside it) is no table. docs/benchmarks.md has the test's precision and recall against the
full finder on the shared PDFs and the MMLongBench documents.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

import pymupdf
from pymupdf.table import Table

# PyMuPDF's tuples: page.get_text("words") and page.get_text("blocks").
Word = tuple[float, float, float, float, str, int, int, int]  # x0, y0, x1, y1, text, block, line, word number
Block = tuple[float, float, float, float, str, int, int]  # x0, y0, x1, y1, text, block number, type (0: text)
MIN_RULE_LENGTH = 30.0  # points: shorter strokes are underlines, bullets, chart ticks
RULE_THICKNESS = 2.5  # a filled rectangle thinner than this is drawn as a line
ROW_TOLERANCE = 3.0  # words whose vertical centres are this close sit on one row
COLUMN_BIN = 4.0  # points: column edges this close are the same column
MIN_TABLE_ROWS = 3
MIN_GRID_RULES = 3  # a ruled grid: this many horizontal and this many vertical rules (outer box and one inner)
MAX_BAND_HEIGHT = 40.0  # a filled rectangle up to this tall may be a shaded table row
MIN_WORDS_IN_TABLE = 8
TOUCHING = 1.0  # points: horizontal strokes this close on one line are one rule drawn in pieces
MIN_COLUMN_RULE = 15.0  # points: a rule under one column's heading is at least this long
MIN_COLUMN_RULES = 3  # rules side by side on one line: a table of 3+ columns
GUTTER = 15.0  # points: side-by-side rules at most this far apart are cut at a column gap
BELOW_RULE = 120.0  # points under a header's rule where the table's first rows are
MARGIN_GAP = 10.0  # points of empty space across the whole page: a running header or footer starts past it
MARGIN_SHARE = 0.15  # of the page's text: a header or footer is at most this much of it
SMALL_PRINT = 0.9  # a header's or footer's lines are at most this high, of the page's usual line
MARGIN_HEIGHT = 40.0  # points: a header or footer is this tall at most (three lines of small type)
EDGE = 2.0  # points: a box's edge drawn this near its side or corner is that edge (line widths, fills)
SHORT_CELL = 0.15  # of the page width: a cell this narrow holds a number or a label, not a line of prose


@dataclass
class TableSignals:
    """What the cheap test saw on a page (kept for the benchmark that measures the test)."""

    horizontal_rules: int  # most horizontal rules sharing their left and right ends
    vertical_rules: int  # distinct x positions of vertical rules
    aligned_rows: int  # rows split into 3+ cells by wide gaps
    shared_edges: int  # column edges shared by 3+ of those rows
    column_rules: int = 0  # most horizontal rules side by side on one line, a gutter apart (a header's rule)

    @property
    def may_hold_table(self) -> bool:
        ruled = self.horizontal_rules >= 3 or (self.horizontal_rules >= 2 and self.vertical_rules >= 2)
        aligned = self.aligned_rows >= MIN_TABLE_ROWS and self.shared_edges >= 3
        return ruled or aligned or self.column_rules >= MIN_COLUMN_RULES

    @property
    def ruled_grid(self) -> bool:
        """Rules in both directions bound every cell: PyMuPDF's line finder reads the grid without a layout model."""
        return self.horizontal_rules >= MIN_GRID_RULES and self.vertical_rules >= MIN_GRID_RULES


def _rules(page: pymupdf.Page, words: list[Word]) -> tuple[int, int, int]:
    """(most horizontal rules of one width around text, vertical rules among them, most rule pieces side by side).

    A table's rules share their left and right ends and hold words between them (a chart's grid holds few).

    Horizontal rules are stroked lines, hairline filled rectangles, the top and bottom of a stroked box, or
    the top of a shaded band (zebra rows); grouped by their (left, right) ends so that underlines, a header
    rule and a footnote rule of different widths do not add up to a table. Pieces that touch on one line are
    one rule: HTML-to-PDF converters (SEC filings) draw a rule as a run of short filled rectangles, one a cell.
    The edges of framed blocks of text do not count (`_without_framed_blocks`).
    """
    pieces: list[tuple[float, float, float]] = []  # (left, right, y) of every horizontal stroke, however short
    uprights: list[tuple[float, float, float]] = []  # (x, top, bottom) of every vertical stroke
    outlines: list[tuple[float, float, float, float]] = []  # stroked rectangles: boxes drawn in one piece
    for path in page.get_cdrawings():
        filled = path.get("type", "") == "f"
        for item in path["items"]:
            if item[0] == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
            elif item[0] == "re":
                x0, y0, x1, y1 = item[1]
            else:
                continue
            width, height = abs(x1 - x0), abs(y1 - y0)
            left, right, top, bottom = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
            if height <= RULE_THICKNESS:
                pieces.append((left, right, (y0 + y1) / 2))
            elif width <= RULE_THICKNESS:
                if height >= MIN_RULE_LENGTH / 3:
                    uprights.append(((x0 + x1) / 2, top, bottom))
            elif item[0] == "re" and (not filled or height <= MAX_BAND_HEIGHT):
                pieces.append((left, right, top))
                if not filled:
                    pieces.append((left, right, bottom))
                    uprights += [(left, top, bottom), (right, top, bottom)]
                    outlines.append((left, top, right, bottom))
    pieces, uprights = _without_framed_blocks(pieces, uprights, outlines, words, page.rect.width)
    vertical = {round(x / 2) for x, _, _ in uprights}
    horizontal: dict[tuple[int, int], set[int]] = {}
    side_by_side = 0
    for y, runs in _joined_rules(pieces).items():
        for x0, x1 in runs:
            if x1 - x0 >= MIN_RULE_LENGTH:
                horizontal.setdefault((round(x0 / 6), round(x1 / 6)), set()).add(y)
        side_by_side = max(side_by_side, _column_rules(runs, y, words))
    best, best_vertical = 0, 0
    for (left, right), heights in horizontal.items():
        if len(heights) < 2 or len(heights) <= best:
            continue
        top, bottom, x0, x1 = 2 * min(heights), 2 * max(heights), 6 * left, 6 * right
        inside = sum(1 for w in words if x0 - 3 <= w[0] and w[2] <= x1 + 3 and top < (w[1] + w[3]) / 2 < bottom)
        if inside >= MIN_WORDS_IN_TABLE:
            best = len(heights)
            best_vertical = sum(1 for x in vertical if x0 - 6 <= 2 * x <= x1 + 6)
    return best, best_vertical, side_by_side


def _without_framed_blocks(pieces: list[tuple[float, float, float]], uprights: list[tuple[float, float, float]],
                           outlines: list[tuple[float, float, float, float]], words: list[Word], page_width: float
                           ) -> tuple[list[tuple[float, float, float]], list[tuple[float, float, float]]]:
    """The rules less the edges of framed blocks: a box around a code listing or a note, with no rule inside it,
    no other box touching it and no aligned cells in it, is no table (a software manual's stacked code boxes sent
    129 of its 468 pages to the table finder). A grid's outer frame holds its inner rules, and a grid drawn cell by
    cell or row by row is boxes that touch, so both keep their rules."""
    boxes = outlines + _boxes_of_lines(pieces, uprights)
    framed = [box for box in boxes if _is_framed_block(box, boxes, pieces, uprights, words, page_width)]
    if not framed:
        return pieces, uprights

    def edge_of_frame(x0: float, x1: float, y: float) -> bool:  # a top or bottom edge, or a fill's top, of one
        return any(abs(y - top) <= EDGE or abs(y - bottom) <= EDGE for left, top, right, bottom in framed
                   if x0 >= left - EDGE and x1 <= right + EDGE)

    def side_of_frame(x: float, y0: float, y1: float) -> bool:
        return any((abs(x - left) <= EDGE or abs(x - right) <= EDGE) and y0 >= top - EDGE and y1 <= bottom + EDGE
                   for left, top, right, bottom in framed)

    return ([p for p in pieces if not edge_of_frame(*p)], [u for u in uprights if not side_of_frame(*u)])


def _boxes_of_lines(pieces: list[tuple[float, float, float]], uprights: list[tuple[float, float, float]]
                    ) -> list[tuple[float, float, float, float]]:
    """Rectangles drawn as four lines (Sphinx's code boxes): two sides of one height, a rule across their tops and
    one across their bottoms."""
    boxes = []
    of_one_height: dict[tuple[int, int], list[tuple[float, float, float]]] = {}  # pairs looked for only within
    for side in sorted(uprights):  # one height: a chart's hundreds of ticks would make all pairs slow
        of_one_height.setdefault((round(side[1] / EDGE), round(side[2] / EDGE)), []).append(side)
    for sides in of_one_height.values():
        boxes += _boxes_between(sides, pieces)
    return boxes


def _boxes_between(sides: list[tuple[float, float, float]], pieces: list[tuple[float, float, float]]
                   ) -> list[tuple[float, float, float, float]]:
    """Each side with the nearest side of the same height to its right that rules join at the top and bottom."""
    boxes = []
    for n, (x0, top, bottom) in enumerate(sides):
        for x1, top1, bottom1 in sides[n + 1:]:
            if x1 - x0 < MIN_RULE_LENGTH or abs(top1 - top) > EDGE or abs(bottom1 - bottom) > EDGE:
                continue
            spans = [y for left, right, y in pieces if left <= x0 + EDGE and right >= x1 - EDGE]
            if any(abs(y - top) <= EDGE for y in spans) and any(abs(y - bottom) <= EDGE for y in spans):
                boxes.append((x0, top, x1, bottom))
                break
    return boxes


def _is_framed_block(box: tuple[float, float, float, float], boxes: list[tuple[float, float, float, float]],
                     pieces: list[tuple[float, float, float]], uprights: list[tuple[float, float, float]],
                     words: list[Word], page_width: float) -> bool:
    left, top, right, bottom = box
    inner = (left + EDGE, top + EDGE, right - EDGE, bottom - EDGE)
    if any(inner[1] < y < inner[3] and x1 > inner[0] and x0 < inner[2] and x1 - x0 >= MIN_COLUMN_RULE
           for x0, x1, y in pieces):
        return False  # a rule across its inside: rows
    if any(inner[0] < x < inner[2] and y1 > inner[1] and y0 < inner[3] for x, y0, y1 in uprights):
        return False  # a rule down its inside: columns
    if any(other != box and other[0] <= right + EDGE and other[2] >= left - EDGE
           and other[1] <= bottom + EDGE and other[3] >= top - EDGE for other in boxes):
        return False  # another box touches or holds it: a cell of a grid drawn box by box
    inside = [w for w in words if left <= w[0] and w[2] <= right and top <= w[1] and w[3] <= bottom]
    aligned, shared = _aligned_columns(inside, page_width)
    return not (aligned >= MIN_TABLE_ROWS and shared >= 3)


def _joined_rules(pieces: list[tuple[float, float, float]]) -> dict[int, list[tuple[float, float]]]:
    """Horizontal strokes by height (2-point steps), touching or overlapping ones joined, left to right."""
    by_height: dict[int, list[tuple[float, float]]] = {}
    for x0, x1, y in sorted(pieces):
        runs = by_height.setdefault(round(y / 2), [])
        if runs and x0 <= runs[-1][1] + TOUCHING:
            runs[-1] = (runs[-1][0], max(runs[-1][1], x1))
        else:
            runs.append((x0, x1))
    return by_height


def _column_rules(runs: list[tuple[float, float]], y: int, words: list[Word]) -> int:
    """The most rules side by side on one line, a gutter's width apart, with words under them: a table header's
    rule cut at the column gaps (financial statements draw one under each column's heading)."""
    best, chain = 0, 0
    for n, (x0, x1) in enumerate(runs):
        if x1 - x0 < MIN_COLUMN_RULE:
            chain = 0
            continue
        previous = runs[n - 1] if n else None
        joined = previous is not None and previous[1] - previous[0] >= MIN_COLUMN_RULE and x0 - previous[1] <= GUTTER
        chain = chain + 1 if joined else 1
        if chain > best:
            left = runs[n - chain + 1][0]
            under = sum(1 for w in words if left - 3 <= w[0] and w[2] <= x1 + 3 and 0 < w[1] - 2 * y < BELOW_RULE)
            if under >= MIN_WORDS_IN_TABLE:
                best = chain
    return best


def _aligned_columns(words: list[Word], page_width: float) -> tuple[int, int]:
    """(rows with 3+ cells, 2 of them short, column edges shared by 3+ such rows): a table's rows, ruled or not.

    Short cells (numbers, labels) tell a table row from a line of multi-column text, whose cells are wide.
    """
    rows: dict[int, list[Word]] = {}
    for word in words:
        rows.setdefault(round((word[1] + word[3]) / 2 / ROW_TOLERANCE), []).append(word)
    aligned = 0
    edges: Counter[int] = Counter()
    for row in rows.values():
        row.sort(key=lambda w: w[0])
        height = max(w[3] - w[1] for w in row)
        cells = [[row[0][0], row[0][2]]]
        for word in row[1:]:
            if word[0] - cells[-1][1] > max(height, 6.0):  # a gap wider than a word space: a new cell
                cells.append([word[0], word[2]])
            else:
                cells[-1][1] = word[2]
        short = sum(1 for x0, x1 in cells if x1 - x0 < SHORT_CELL * page_width)
        if len(cells) >= 3 and short >= 2:
            aligned += 1
            # left edges (text columns) and right edges (numbers are right-aligned), counted once per row
            edges.update({round(x / COLUMN_BIN) for cell in cells for x in cell})
    return aligned, sum(1 for count in edges.values() if count >= MIN_TABLE_ROWS)


def table_signals(page: pymupdf.Page, words: list[Word] | None = None) -> TableSignals:
    words = words if words is not None else page.get_text("words")
    horizontal, vertical, side_by_side = _rules(page, words)
    aligned, shared = _aligned_columns(words, page.rect.width)
    return TableSignals(horizontal, vertical, aligned, shared, side_by_side)


def find_tables(page: pymupdf.Page) -> list[Table]:
    """The page's tables, or none when the cheap test rules them out.

    A ruled grid is read from its lines alone (0.1 CPU-s a page instead of 0.7-0.8 with the layout model, same
    Markdown: tests/test_pdf_fast.py); tables without such rulings need PyMuPDF's layout model to find them.
    """
    signals = table_signals(page)
    if not signals.may_hold_table:
        return []
    try:
        tables: list[Table] = page.find_tables(use_layout=not signals.ruled_grid).tables
        return tables
    except Exception:  # table detection is best effort; the text is still there
        return []


def reading_order(blocks: list[Block], page_width: float) -> list[Block]:
    """Text blocks in reading order: on a two-column page, the left column before the right one.

    Blocks that cross the page's middle (a title, an abstract, a wide figure caption) cut the page into bands;
    within a band the left column is read before the right one. PyMuPDF's own sort is by line height only,
    which interleaves the two columns of a paper. A running header or footer (an address line at the foot of the
    page, a journal name at its head) is a band of its own, read before or after both columns, not inside the
    left one.
    """
    middle = page_width / 2
    ordered = sorted(blocks, key=lambda b: (b[1], b[0]))
    left = sum(len(b[4]) for b in ordered if b[2] <= middle + 2)
    right = sum(len(b[4]) for b in ordered if b[0] >= middle - 2)
    total = sum(len(b[4]) for b in ordered) or 1
    if min(left, right) < 0.25 * total:  # one column (a short line or a number at the right is no column)
        return ordered
    head, body, foot = _margin_bands(ordered, total, middle)
    return _column_order(head, middle) + _column_order(body, middle) + _column_order(foot, middle)


def _column_order(ordered: list[Block], middle: float) -> list[Block]:
    out: list[Block] = []
    band: list[Block] = []
    for block in ordered:
        if block[0] < middle - 2 and block[2] > middle + 2:  # crosses the gutter: ends the band
            out += _band_order(band, middle) + [block]
            band = []
        else:
            band.append(block)
    return out + _band_order(band, middle)


def _margin_bands(ordered: list[Block], total: int, middle: float) -> tuple[list[Block], list[Block], list[Block]]:
    """(header, body, footer) of blocks sorted top to bottom: the header is what lies above the first gap that
    runs across the whole page, the footer what lies below the last one, each only when it is short (a few
    lines of smaller type than the page's, MARGIN_HEIGHT tall at most: a running head, an address, a page's
    ISSN) and has text in both halves of the page. Otherwise it is part of the body: a column's last reference
    or section under a figure, or a column that starts higher than the other, also lies past such a gap."""
    cuts = []  # indices i where blocks[:i] all end at least MARGIN_GAP above the top of blocks[i:]
    lowest = float("-inf")
    for index, block in enumerate(ordered):
        if index and block[1] - lowest >= MARGIN_GAP:
            cuts.append(index)
        lowest = max(lowest, block[3])

    body_line = statistics.median(_line_height(b) for b in ordered)

    def margin(part: list[Block]) -> bool:
        return (sum(len(b[4]) for b in part) <= MARGIN_SHARE * total
                and max(_line_height(b) for b in part) < SMALL_PRINT * body_line
                and max(b[3] for b in part) - min(b[1] for b in part) <= MARGIN_HEIGHT
                and any(b[2] <= middle + 2 for b in part) and any(b[0] >= middle - 2 for b in part))

    head_end = cuts[0] if cuts and margin(ordered[:cuts[0]]) else 0
    foot_start = cuts[-1] if cuts and cuts[-1] > head_end and margin(ordered[cuts[-1]:]) else len(ordered)
    return ordered[:head_end], ordered[head_end:foot_start], ordered[foot_start:]


def _line_height(block: Block) -> float:
    return (block[3] - block[1]) / (block[4].strip().count("\n") + 1)


def _band_order(band: list[Block], middle: float) -> list[Block]:
    return ([b for b in band if b[2] <= middle + 2] + [b for b in band if b[2] > middle + 2])
