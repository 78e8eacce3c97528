"""Pixel conversions shared by the image readers and the engines: any Pillow mode to plain RGB, engine-size shrinks.

One way to turn a decoded picture into what a model reads: 16-bit and float pixels stretched over their real
range (dark-grey text on black stays text), palettes and bilevel scans expanded, transparency laid on white,
CMYK and YCbCr converted. No file decoding here (that is `ingest/image.py`).
"""
from __future__ import annotations

import math
from typing import cast

import numpy as np
from PIL import Image

# The ocr engine's longest side (RapidOCR's detector works at this size; larger only costs time).
OCR_MAX_SIDE = 2000
HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_STRIP_ROWS = 512  # 16-bit/float pixels are rescaled a strip at a time: no full-size float copy


def keep_size(width: int, height: int, max_pixels: int, max_side: int = OCR_MAX_SIDE) -> tuple[int, int]:
    """The largest size any engine reads of a `width` x `height` picture (never larger than it).

    The ocr engine shrinks to `max_side` on the longest side, the vision-language engines to `max_pixels` in
    area (KB_IMAGE_MAX_PIXELS); keeping the larger of the two serves both, and bounds what a decoded picture
    holds in memory at max(max_side², max_pixels) pixels whatever its file claims.
    """
    by_side = max_side / max(width, height, 1)
    by_area = math.sqrt(max_pixels / max(width * height, 1))
    scale = min(1.0, max(by_side, by_area))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resizable(image: Image.Image) -> Image.Image:
    """The same picture in a mode that averages well when shrunk (L, LA, RGB, RGBA, CMYK, ...).

    Palette and bilevel pixels cannot be averaged (Pillow would fall back to nearest neighbour and lose thin
    strokes); 16-bit and float pixels are stretched to 8 bits over their actual range.
    """
    if image.mode in HIGH_DEPTH_MODES:
        return _stretch_to_8bit(image)
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "PA":
        return image.convert("RGBA")
    return image


def shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at `size` (smaller). Whole-factor box reduction first, Lanczos over the last factor of 3 or less:
    cheap on a 2400 dpi scan, fair to thin strokes, and the intermediate is at most 9x the result."""
    image = resizable(image)
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Plain RGB for any Pillow mode; transparency is laid on white (text drawn on a transparent canvas)."""
    image = resizable(image)
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as err:  # LAB, HSV and other modes Pillow cannot turn into RGB directly
        raise ValueError(f"colour mode {image.mode} cannot be converted to RGB ({err})") from err


def _stretch_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit or float pixels as 8-bit grey, the darkest value black and the brightest white.

    Converting straight to 8 bits clips everything above 255 to white (a 16-bit scan turns blank); dividing by
    257 keeps text that uses only a sliver of the range (dark grey on black) nearly invisible.
    """
    low, high = cast(tuple[float, float], image.getextrema())  # one band (I;16, I, F): (lowest, highest)
    if not high > low:  # one value everywhere: nothing to read, keep its brightness
        level = 255 if high > 255 else max(0, int(high))
        return Image.new("L", image.size, level)
    scale = 255.0 / (high - low)
    out = Image.new("L", image.size)
    for top in range(0, image.height, _STRIP_ROWS):
        box = (0, top, image.width, min(image.height, top + _STRIP_ROWS))
        strip = np.asarray(image.crop(box), dtype=np.float32)
        out.paste(Image.fromarray(((strip - low) * scale + 0.5).clip(0, 255).astype(np.uint8), mode="L"), box)
    return out
