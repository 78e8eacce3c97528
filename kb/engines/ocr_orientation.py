"""Which way up a page is: a cheap probe run before OCR reads a page scanned sideways or upside down.

Lines are detected once on a small copy: tall boxes mean the page lies on its side (90/270), wide ones that it
is upright or upside down (0/180). A few of the longest lines are then read, cut from the full image, in both
candidate turns; the turn with more confident characters wins. Cost: one small detection and 2 x PROBE_LINES
short recognitions, about 10% of reading a full page.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

log = logging.getLogger(__name__)

PROBE_SIDE = 1024  # lines are detected on a copy this size
PROBE_LINES = 6  # and this many of the longest are read in each candidate turn
PROBE_MAX_ASPECT = 8  # read only the first ~8 line-heights of each probe line: enough to tell, cheap
ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
_WORD_CHAR = re.compile(r"\w", re.UNICODE)


class RunOCR(Protocol):
    """One call of the OCR model: detection, line-direction classifier and recognition, each switchable.

    It returns RapidOCR's output object (untyped): `boxes` (quads) after detection, `txts` and `scores` after
    recognition.
    """

    def __call__(self, img: NDArray[np.uint8], det: bool = True, cls: bool = True, rec: bool = True) -> Any: ...


def page_orientation(img: Image.Image, run: RunOCR) -> int:
    """Degrees (counter-clockwise: 0, 90, 180 or 270) that turn the page upright."""
    scale = min(1.0, PROBE_SIDE / max(img.size))
    small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                       Image.Resampling.BILINEAR) if scale < 1 else img
    found = getattr(run(np.asarray(small), det=True, cls=False, rec=False), "boxes", None)
    if found is None or not len(found):
        return 0
    quads = np.asarray(found, dtype=np.float32) / scale
    widths = np.linalg.norm(quads[:, 1] - quads[:, 0], axis=1)
    heights = np.linalg.norm(quads[:, 3] - quads[:, 0], axis=1)
    sideways = heights[heights > widths].sum() > widths[widths >= heights].sum()
    candidates = (90, 270) if sideways else (0, 180)
    longest = np.argsort(-np.maximum(widths, heights))[:PROBE_LINES]
    crops = [_crop(img, quads[i]) for i in longest]
    scores = {angle: sum(_legibility(crop, angle, run) for crop in crops) for angle in candidates}
    log.debug("orientation scores %s", scores)
    best = max(candidates, key=lambda a: scores[a])
    return best if scores[best] > 0 else 0


def turn(img: Image.Image, angle: int) -> Image.Image:
    """The image turned `angle` degrees counter-clockwise (0: itself)."""
    return img.transpose(ROTATIONS[angle]) if angle else img


def _legibility(crop: Image.Image, angle: int, run: RunOCR) -> float:
    """Confidence x characters read from a line crop turned by `angle`: high only for upright text."""
    crop = turn(crop, angle)
    if crop.height < 4 or crop.width < 4:
        return 0.0
    crop = crop.crop((0, 0, min(crop.width, PROBE_MAX_ASPECT * crop.height), crop.height))
    out = run(np.asarray(crop), det=False, cls=False, rec=True)
    texts, confs = getattr(out, "txts", None) or (), getattr(out, "scores", None) or ()
    return float(sum(conf * len(_WORD_CHAR.findall(text)) for text, conf in zip(texts, confs)))


def _crop(img: Image.Image, quad: NDArray[np.float32]) -> Image.Image:
    x0, y0 = np.floor(quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int)
    return img.crop((max(0, x0), max(0, y0), min(img.width, x1), min(img.height, y1)))
