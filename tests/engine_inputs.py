"""Inputs for the transformers engine's tests on the tiny random-weight Qwen3-VL (tests/tiny_qwen3vl.py)."""
from __future__ import annotations

from concurrent.futures import wait
from pathlib import Path

import cv2
import numpy as np
import pymupdf
import pytest
from PIL import Image, ImageDraw

from kb.config import VISUAL_TOKEN_PIXELS

# Small pixel budgets keep each image at 4..16 visual tokens, so a CPU batch takes about a second.
BUDGET = {"image_min_pixels": 4 * VISUAL_TOKEN_PIXELS, "image_max_pixels": 16 * VISUAL_TOKEN_PIXELS,
          "video_max_pixels": 16 * VISUAL_TOKEN_PIXELS}


def noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A picture of random pixels (width, height): every seed a different prompt for the vision tower."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def two_scene_video(path: Path) -> Path:
    """Four seconds of 320x240 at 10 fps: two scenes, each with a line of text ("VALVE 7", then "PUMP 12")."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for n in range(40):
        frame = np.full((240, 320, 3), 255 if n < 20 else 200, np.uint8)
        cv2.putText(frame, "VALVE 7" if n < 20 else "PUMP 12", (40, 130), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 0, 0), 3)
        writer.write(frame)
    writer.release()
    return path


def scanned_pdf(path: Path, lines: list[str]) -> Path:
    """An image-only PDF, one page per line of text (what a scanner makes: no text layer)."""
    from data.make_samples import font

    doc = pymupdf.open()
    for line in lines:
        picture = Image.new("L", (900, 300), 255)
        ImageDraw.Draw(picture).text((40, 110), line, fill=0, font=font(48))
        png = path.with_suffix(".png")
        picture.save(png)
        page = doc.new_page(width=324, height=108)
        page.insert_image(page.rect, filename=str(png))
        png.unlink()
    doc.save(path)
    return path


def prepared_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every group the bulk loop asks its processor threads for is ready before the loop comes to take it, as a GPU
    host's threads, a wave ahead, have them: where and when rows join then depends on no timing (on a loaded CI
    machine a group can otherwise still be in preparation, and the loop decodes on without it)."""
    from kb.engines.transformers_qwen import _Refill

    ahead = _Refill._prepare_ahead

    def in_time(refill: _Refill, rows_wanted: int) -> None:
        ahead(refill, rows_wanted)
        wait([future for *_, future in refill.prepared])

    monkeypatch.setattr(_Refill, "_prepare_ahead", in_time)
