"""The `ocr` engine: RapidOCR (PP-OCR models shipped in the `rapidocr` wheel, onnxruntime, CPU, offline).

It reads text only. Pages come back in reading order (lines, paragraphs, simple text columns); pages scanned
sideways or upside down are turned upright first by a cheap orientation probe. No captions, no answers.
"""
from __future__ import annotations

import difflib
import logging
import re
import statistics
import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from kb.config import Settings
from kb.errors import EngineError
from kb.imaging import OCR_MAX_SIDE, shrink, to_rgb
from kb.types import Request, VideoClip, format_clock

log = logging.getLogger(__name__)

# Longest image side handed to RapidOCR (it would shrink to its own Global.max_side_len anyway); shrinking in
# PIL first keeps a 2400 dpi scan from ever becoming a full-size numpy array. The image reader keeps this much.
MAX_SIDE = OCR_MAX_SIDE
# Longest side text is *detected* at. Detection only finds where lines are; the recogniser reads each line cut
# from the picture at MAX_SIDE, so letters keep their full resolution. Detection's activations grow with the
# pixels it sees (~0.6 GB at 2000 x 2000, ~0.25 GB at 1280: docs/benchmarks.md, image decoding memory), and a
# 10 pt line of a letter page is still ~15 px tall at 1280: same word recall on the real scans of
# tests/test_engine_ocr.py, less time.
DET_SIDE = 1280
# The orientation probe detects lines on a copy this size and reads a few of them in each candidate turn.
PROBE_SIDE = 1024
PROBE_LINES = 6
PROBE_MAX_ASPECT = 8  # read only the first ~8 line-heights of each probe line: enough to tell, cheap
RAPID_PARAMS = {
    "Global.log_level": "error",
    "Global.max_side_len": MAX_SIDE,
    # Detect at most at DET_SIDE, smaller pictures at their own size. The default ("min" 736) blows a
    # 256 x 32 text strip up to 5888 x 736: slow, and the oversized letters are then not found at all.
    "Det.limit_type": "max",
    "Det.limit_side_len": DET_SIDE,
    # One text line per recognition call (RapidOCR's default is 6, padded to the widest): a batch of six
    # full-width lines took 160 MB more at its peak on a real page, for ~9% less CPU time (docs/benchmarks.md).
    "Rec.rec_batch_num": 1,
}
# Layout thresholds, in median text-box heights.
GUTTER = 0.5  # empty x-range between boxes that separates columns
PARAGRAPH_GAP = 0.5  # empty y-range between lines that separates paragraphs
ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
NO_MODEL_FIX = ("use KB_ENGINE=transformers (Qwen3-VL, a GPU is best) or KB_ENGINE=openai with "
                "KB_OPENAI_BASE_URL for captions, video descriptions and written answers")


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


class OCREngine:
    name = "ocr"
    device = "cpu"
    can_caption = False
    generative = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            import rapidocr  # noqa: F401  (fail at load time, not on the first page)
        except ImportError as err:
            raise EngineError("the ocr engine needs the rapidocr package",
                              "pip install rapidocr onnxruntime (or pip install -r requirements.txt)") from err
        self._rapid: Any = None
        self._init_lock = threading.Lock()
        # RapidOCR keeps per-call flags on the object and onnxruntime already uses every core: one call at a time.
        self._run_lock = threading.Lock()

    # -- the RapidOCR object ------------------------------------------------------------------------------------
    def _ocr(self) -> Any:
        if self._rapid is None:
            with self._init_lock:
                if self._rapid is None:
                    from rapidocr import RapidOCR

                    # Constructing only parses the config; the ONNX sessions load on the first call.
                    self._rapid = RapidOCR(params=RAPID_PARAMS)
        return self._rapid

    @property
    def model(self) -> str:
        cfg = self._ocr().cfg
        det, rec = cfg.Det, cfg.Rec
        try:
            pkg = version("rapidocr")
        except PackageNotFoundError:
            pkg = "?"
        return (f"RapidOCR {pkg} ({_enum(det.ocr_version)} det {_enum(det.model_type)}, "
                f"{_enum(rec.ocr_version)} rec {_enum(rec.model_type)}, {_enum(rec.lang_type)})")

    def _run(self, img: np.ndarray, det: bool = True, cls: bool = True, rec: bool = True) -> Any:
        # Every flag is passed each time: RapidOCR remembers the last call's flags.
        with self._run_lock:
            try:
                return self._ocr()(img, use_det=det, use_cls=cls, use_rec=rec)
            except Exception as err:  # onnxruntime / opencv failures carry no advice of their own
                raise EngineError(f"RapidOCR failed: {err}",
                                  "check the image is readable; reinstall rapidocr and onnxruntime") from err

    # -- the Engine protocol ------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[str]:
        for request in requests:  # refuse the whole batch before spending minutes on part of it
            if request.task not in ("ocr", "video"):
                raise EngineError(f"the ocr engine has no language model and cannot do task {request.task!r}",
                                  NO_MODEL_FIX)
        return [self._answer(request) for request in requests]

    def stream(self, request: Request) -> Iterator[str]:
        yield self.generate([request])[0]

    def _answer(self, request: Request) -> str:
        if request.task == "video" and request.video is not None:
            return self.read_video(request.video)
        return "\n\n".join(text for text in (self.read_page(img) for img in request.images) if text)

    # -- pages --------------------------------------------------------------------------------------------------
    def read_page(self, image: Image.Image, detect_orientation: bool = True) -> str:
        """The text of one page or photo in reading order: lines, blank lines between blocks."""
        blocks = self._blocks(image, detect_orientation)
        return "\n\n".join("\n".join(lines) for lines in blocks)

    def _blocks(self, image: Image.Image, detect_orientation: bool) -> list[list[str]]:
        img = _prepare(image)
        if detect_orientation:
            angle = self.page_orientation(img)
            if angle:
                img = img.transpose(ROTATIONS[angle])
        # No per-line 0/180 classifier: the page is upright now, and the classifier turns some upright lines
        # over (white-on-black text especially), which then read as garbage.
        result = self._run(np.asarray(img), cls=False)
        if not result.txts or result.boxes is None or not len(result.boxes):
            return []
        boxes = [_box(quad, text) for quad, text in zip(result.boxes, result.txts) if text.strip()]
        return layout(boxes)

    def page_orientation(self, img: Image.Image) -> int:
        """Degrees (counter-clockwise: 0, 90, 180 or 270) that turn the page upright.

        Lines are detected once on a small copy: tall boxes mean the page lies on its side (90/270), wide ones
        that it is upright or upside down (0/180). A few of the longest lines are then read, cut from the full
        image, in both candidate turns; the turn with more confident characters wins. Cost: one small
        detection and 2 x PROBE_LINES short recognitions, about 10% of reading a full page.
        """
        scale = min(1.0, PROBE_SIDE / max(img.size))
        small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                           Image.Resampling.BILINEAR) if scale < 1 else img
        det = self._run(np.asarray(small), det=True, cls=False, rec=False)
        quads = getattr(det, "boxes", None)
        if quads is None or not len(quads):
            return 0
        quads = np.asarray(quads, dtype=np.float32) / scale
        widths = np.linalg.norm(quads[:, 1] - quads[:, 0], axis=1)
        heights = np.linalg.norm(quads[:, 3] - quads[:, 0], axis=1)
        sideways = heights[heights > widths].sum() > widths[widths >= heights].sum()
        candidates = (90, 270) if sideways else (0, 180)
        longest = np.argsort(-np.maximum(widths, heights))[:PROBE_LINES]
        crops = [_crop(img, quads[i]) for i in longest]
        scores = {angle: sum(self._legibility(crop, angle) for crop in crops) for angle in candidates}
        log.debug("orientation scores %s", scores)
        best = max(candidates, key=lambda a: scores[a])
        return best if scores[best] > 0 else 0

    def _legibility(self, crop: Image.Image, angle: int) -> float:
        """Confidence x characters read from a line crop turned by `angle`: high only for upright text."""
        if angle:
            crop = crop.transpose(ROTATIONS[angle])
        if crop.height < 4 or crop.width < 4:
            return 0.0
        crop = crop.crop((0, 0, min(crop.width, PROBE_MAX_ASPECT * crop.height), crop.height))
        out = self._run(np.asarray(crop), det=False, cls=False, rec=True)
        texts, confs = getattr(out, "txts", None) or (), getattr(out, "scores", None) or ()
        return float(sum(conf * len(_WORD.findall(text)) for text, conf in zip(texts, confs)))

    # -- video --------------------------------------------------------------------------------------------------
    def read_video(self, clip: VideoClip) -> str:
        """Distinct on-screen lines in order, each stamped `[mm:ss]` at the frame where it appears.

        A line also read in the previous frame (allowing small OCR differences) is not repeated; one that
        comes back later is written again with its new time.
        """
        out: list[str] = []
        previous: list[str] = []
        for frame, seconds in zip(clip.frames, clip.timestamps):
            # Video frames are upright (decoders apply the rotation flag): no orientation probe.
            lines = [line for block in self._blocks(frame, detect_orientation=False) for line in block]
            keys = [_key(line) for line in lines]
            for line, key in zip(lines, keys):
                if key and not _seen(key, previous):
                    out.append(f"[{format_clock(seconds)}] {line}")
            previous = [k for k in keys if k]
        return "\n".join(out)


# -- helpers ----------------------------------------------------------------------------------------------------
_WORD = re.compile(r"\w", re.UNICODE)


def _enum(value: Any) -> str:
    return str(getattr(value, "value", value))


def _prepare(image: Image.Image) -> Image.Image:
    """RGB, transparency on white, longest side at most MAX_SIDE (bilevel, palette and 16-bit scans included)."""
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = shrink(image, (max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return to_rgb(image)


def _crop(img: Image.Image, quad: np.ndarray) -> Image.Image:
    x0, y0 = np.floor(quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int)
    return img.crop((max(0, x0), max(0, y0), min(img.width, x1), min(img.height, y1)))


def _box(quad: Any, text: str) -> Box:
    q = np.asarray(quad, dtype=np.float32)
    height = float(max(np.linalg.norm(q[3] - q[0]), np.linalg.norm(q[2] - q[1]), 1.0))
    return Box(text=text.strip(), x0=float(q[:, 0].min()), x1=float(q[:, 0].max()),
               yc=float(q[:, 1].mean()), h=height)


_DIGITS = re.compile(r"\d+")


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


# -- layout: boxes -> lines -> blocks -----------------------------------------------------------------------------
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


def _free(band: list[Box]) -> list[tuple[float, float]]:
    """The x-ranges of a band no box covers, including the open space left and right of its text."""
    spans = sorted((b.x0, b.x1) for b in band)
    free, right = [(float("-inf"), spans[0][0])], spans[0][1]
    for x0, x1 in spans[1:]:
        if x0 > right:
            free.append((right, x0))
        right = max(right, x1)
    return free + [(right, float("inf"))]


def _gutters(band: list[Box], unit: float) -> list[tuple[float, float]]:
    """Empty x-ranges between the boxes of a band, wide enough to separate text columns.

    Detected boxes reach ~0.3 line heights past the ink on each side, so a half line height between boxes is
    already a clear gap in the print.
    """
    return [(g0, g1) for g0, g1 in _free(band)[1:-1] if g1 - g0 >= GUTTER * unit]


def _narrow(band: list[Box], gutters: list[tuple[float, float]], unit: float) -> list[tuple[float, float]]:
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
    regions: list[tuple[list[tuple[float, float]], list[list[Box]]]] = []
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


def _two_sided(band: list[Box], gutters: list[tuple[float, float]]) -> bool:
    return any(any(b.x1 <= g0 for b in band) and any(b.x0 >= g1 for b in band) for g0, g1 in gutters)


def _split(boxes: list[Box], gutters: list[tuple[float, float]]) -> list[list[Box]]:
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
