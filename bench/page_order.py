"""Would feeding pages longest first shorten the bulk loop's drained tail? A simulation on real page lengths (CPU).

The 1,200-page GPU runs spend ~13 s of ~155 in their tail: the last pages to join decode with few rows left
(docs/benchmarks.md, run Q). Ordering the queue longest first (LPT scheduling) shortens such tails, if a page's
output length can be told before it is decoded. For a scan only its picture is known, so this measures two cheap
predictors against the truth on the development PDFs (`../shared/data/qa/mmlongbench_dev`): the share of dark
pixels ("ink") and of strong horizontal edges (text strokes), each rendered at 50 dpi, against the page's text
layer in tokens (bench/engine_gpu.py's tokenizer-free estimate). Then it simulates the loop on those lengths: 128
slots, groups of 16 pages joining when 16 are free (0.6 s a group's prefill), 16 steps between looks, a step
costing 3.7 ms + 8.1 ms x rows / 128 (H200 runs I and X: 3.7 ms at one row, 11.8 at 128).

usage: python -m bench.page_order [--data DIR] [--write]
"""
from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

import fitz
import numpy as np
from scipy.stats import spearmanr

from bench.report import markdown_table, write_section

SLOTS, GROUP, STEPS_PER_LOOK, PREFILL_S = 128, 16, 16, 0.6


def text_tokens(text: str) -> int:
    """bench/engine_gpu.py's estimate of Qwen's tokens: a word per 8 letters, a token per digit and punctuation
    mark; capped at the engine's 2,048-token page limit."""
    pieces = re.findall(r"[A-Za-z]+|\d|[^\sA-Za-z\d]", text)
    return min(sum(math.ceil(len(p) / 8) if p[0].isalpha() else 1 for p in pieces), 2048)


def measure_pages(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each page's text-layer tokens (at least 14: a page with no text still gets a caption), ink and edge share."""
    tokens, ink, edges = [], [], []
    for path in sorted(folder.glob("*.pdf")):
        with fitz.open(path) as doc:
            for page in doc:
                tokens.append(max(text_tokens(page.get_text()), 14))
                pix = page.get_pixmap(dpi=50, colorspace=fitz.csGRAY)
                gray = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width).astype(np.int16)
                ink.append(float((gray < 128).mean()))
                edges.append(float((np.abs(np.diff(gray, axis=1)) > 60).mean()))
    return np.array(tokens), np.array(ink), np.array(edges)


def step_s(rows: int) -> float:
    return (3.7 + 8.1 * rows / SLOTS) / 1e3


def simulate(lengths: np.ndarray, order: np.ndarray) -> tuple[float, float]:
    """Seconds for the whole queue and for its tail (the steps after the last page joined)."""
    queue = [int(lengths[i]) for i in order]
    live: list[int] = []
    total = tail = 0.0
    while queue or live:
        while queue and (SLOTS - len(live) >= GROUP or not live):
            live += queue[:GROUP]
            queue = queue[GROUP:]
            total += PREFILL_S
        for _ in range(STEPS_PER_LOOK):
            if not live:
                break
            total += step_s(len(live))
            tail += 0 if queue else step_s(len(live))
            live = [left - 1 for left in live if left > 1]
    return total, tail


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("SEEKFRAME_TEST_DATA", "../shared/data")) / "qa/mmlongbench_dev")
    parser.add_argument("--write", action="store_true", help="keep the table in docs/benchmarks.md")
    args = parser.parse_args()
    tokens, ink, edges = measure_pages(args.data / "documents")
    orders = {"document order": np.arange(len(tokens)),
              "random": np.random.default_rng(0).permutation(len(tokens)),
              "longest first by ink": np.argsort(-ink, kind="stable"),
              "longest first by edge share": np.argsort(-edges, kind="stable"),
              "longest first by the true length (an oracle)": np.argsort(-tokens, kind="stable")}
    rows = []
    for name, order in orders.items():
        total, tail = simulate(tokens, order)
        rows.append([name, round(total, 1), round(tail, 1), round(len(tokens) / total * 60)])
    body = (f"{len(tokens)} pages; Spearman correlation with the text layer's tokens: ink "
            f"{spearmanr(ink, tokens).statistic:.2f}, edge share {spearmanr(edges, tokens).statistic:.2f}.\n\n"
            + markdown_table(["queue order", "simulated s", "tail s", "pages/min (simulated)"], rows))
    print(body)
    if args.write:
        write_section("Page order and the bulk loop's tail (`python -m bench.page_order`, simulated)", body)


if __name__ == "__main__":
    main()
