"""The `ocr` engine: RapidOCR (PP-OCR models shipped in the `rapidocr` wheel, onnxruntime, CPU, offline).

It reads text only. Pages come back in reading order (lines, paragraphs, simple text columns); pages scanned
sideways or upside down are turned upright first by a cheap orientation probe. No captions, no answers.
This module is the adapter to RapidOCR; the probe is kb/engines/ocr_orientation.py, reading order
kb/engines/ocr_layout.py, the de-duplicated lines of a video window kb/engines/ocr_video_lines.py.
"""
from __future__ import annotations

import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterator, Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from kb.config import Settings
from kb.engines.ocr_layout import box_from_quad, layout
from kb.engines.ocr_orientation import page_orientation, turn
from kb.engines.ocr_video_lines import stamped_new_lines
from kb.errors import EngineError
from kb.imaging import OCR_MAX_SIDE, shrink, to_rgb
from kb.types import Request, VideoClip

# Longest image side handed to RapidOCR (it would shrink to its own Global.max_side_len anyway); shrinking in
# PIL first keeps a 2400 dpi scan from ever becoming a full-size numpy array. The image reader keeps this much.
MAX_SIDE = OCR_MAX_SIDE
# Longest side text is *detected* at. Detection only finds where lines are; the recogniser reads each line cut
# from the picture at MAX_SIDE, so letters keep their full resolution. Detection's activations grow with the
# pixels it sees (~0.6 GB at 2000 x 2000, ~0.25 GB at 1280: docs/benchmarks.md, image decoding memory), and a
# 10 pt line of a letter page is still ~15 px tall at 1280: same word recall on the real scans of
# tests/test_engine_ocr.py, less time.
DET_SIDE = 1280
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
NO_MODEL_FIX = ("use KB_ENGINE=transformers (Qwen3-VL, a GPU is best) or KB_ENGINE=openai with "
                "KB_OPENAI_BASE_URL for captions, video descriptions and written answers")


class OCREngine:
    name = "ocr"
    device = "cpu"
    can_caption = False
    generative = False
    slots = 0
    server_batched = False
    picture_pixels = 0  # RapidOCR reads small print at the page's full 200 dpi

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

    def _run(self, img: NDArray[np.uint8], det: bool = True, cls: bool = True, rec: bool = True) -> Any:
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
            img = turn(img, page_orientation(img, self._run))
        # No per-line 0/180 classifier: the page is upright now, and the classifier turns some upright lines
        # over (white-on-black text especially), which then read as garbage.
        result = self._run(np.asarray(img), cls=False)
        if not result.txts or result.boxes is None or not len(result.boxes):
            return []
        boxes = [box_from_quad(quad, text) for quad, text in zip(result.boxes, result.txts) if text.strip()]
        return layout(boxes)

    # -- video --------------------------------------------------------------------------------------------------
    def read_video(self, clip: VideoClip) -> str:
        """Distinct on-screen lines in order, each stamped `[mm:ss]` at the frame where it appears."""
        # Video frames are upright (decoders apply the rotation flag): no orientation probe.
        frames = ((seconds, [line for block in self._blocks(frame, detect_orientation=False) for line in block])
                  for frame, seconds in zip(clip.frames, clip.timestamps))
        return "\n".join(stamped_new_lines(frames))


def _enum(value: Any) -> str:
    return str(getattr(value, "value", value))


def _prepare(image: Image.Image) -> Image.Image:
    """RGB, transparency on white, longest side at most MAX_SIDE (bilevel, palette and 16-bit scans included)."""
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = shrink(image, (max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return to_rgb(image)
