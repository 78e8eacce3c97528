"""How much two video frames differ: features of one frame and the change between two.

A scene cut changes the colours wholesale; a new slide moves most edges; new on-screen text changes a small
area strongly (measured block by block, so one new line on a slide counts even though few pixels move).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from ingest.video_decoders import Frame, fit


@dataclass
class Features:
    thumb: NDArray[np.float32]  # small grey thumbnail, 0..1
    hist: NDArray[np.float32]  # per-channel colour histograms, each summing to 1
    grey: NDArray[np.int16]  # the analysis frame, grey, lightly blurred (int16 so differences do not wrap)
    edges: NDArray[np.bool_]  # its Canny edges
    near: NDArray[np.bool_]  # the edges dilated by one pixel: "an edge is still there" tolerates a one-pixel shift


GRID = (9, 16)  # rows, columns of blocks for the local-change test (20 x 20 px blocks at 320 x 180)
STRONG = 40  # grey-level difference (of 255) that noise and compression never reach but new text does
DILATE = np.ones((3, 3), np.uint8)


def features(frame: Frame) -> Features:
    small = cv2.resize(frame, fit(frame.shape[1], frame.shape[0], max_side=64), interpolation=cv2.INTER_AREA)
    thumb = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    hist = np.stack([np.bincount(small[..., c].ravel() // 16, minlength=16) for c in range(3)]).astype(np.float32)
    hist /= hist.sum(axis=1, keepdims=True)
    # The blur keeps sensor noise and compression ringing below STRONG; letters at 320 px survive it.
    grey = cv2.GaussianBlur(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (3, 3), 0)
    edges = cv2.Canny(grey, 100, 200) > 0
    near = cv2.dilate(edges.astype(np.uint8), DILATE) > 0
    return Features(thumb, hist, grey.astype(np.int16), edges, near)


@dataclass
class Change:
    pixels: float  # mean absolute grey difference of the thumbnails
    hist: float  # colour-histogram distance (half the L1 distance, averaged over channels)
    edges: float  # share of edges that appeared or vanished, camera motion followed (a new layout moves most)
    local: float  # the largest share of one grid block that changed strongly (new text, a subtitle, a label)


def _blocks(mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """The share of each GRID block that `mask` covers."""
    rows, cols = GRID
    h, w = mask.shape
    rows, cols = min(rows, h), min(cols, w)
    shares: NDArray[np.float64] = mask[:h // rows * rows, :w // cols * cols].reshape(
        rows, h // rows, cols, w // cols).mean(axis=(1, 3))
    return shares


def _moved_edges(a: Features, b: Features, dx: int = 0, dy: int = 0) -> float:
    """Share of edges that appeared or vanished on the overlap, where a's pixel (x + dx, y + dy) is b's (x, y)."""
    h, w = a.edges.shape
    ya, yb = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xa, xb = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    ea, na, eb, nb = a.edges[ya, xa], a.near[ya, xa], b.edges[yb, xb], b.near[yb, xb]
    total = int(ea.sum()) + int(eb.sum())
    return float(((eb & ~na) | (ea & ~nb)).sum() / total) if total else 0.0


def _pan(a: Features, b: Features) -> tuple[int, int]:
    """The whole-picture shift from `a` to `b` (a camera pan or a scrolling page), (0, 0) when there is none."""
    (dx, dy), response = cv2.phaseCorrelate(a.grey.astype(np.float32), b.grey.astype(np.float32))
    h, w = a.grey.shape
    if response < 0.1 or abs(dx) > w / 4 or abs(dy) > h / 4:
        return 0, 0
    return int(round(dx)), int(round(dy))


def compare(a: Features, b: Features) -> Change:
    edges = _moved_edges(a, b)
    if edges >= 0.3:  # maybe the camera moved: measure the layout change after following the motion
        dx, dy = _pan(a, b)
        if dx or dy:
            edges = min(edges, _moved_edges(a, b, -dx, -dy))
    strong = np.abs(a.grey - b.grey) >= STRONG
    return Change(pixels=float(np.abs(a.thumb - b.thumb).mean()),
                  hist=float(np.abs(a.hist - b.hist).sum(axis=1).mean() / 2),
                  edges=edges, local=float(_blocks(strong).max()))


