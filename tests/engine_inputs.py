"""Inputs for the transformers engine's tests on the tiny random-weight Qwen3-VL (tests/tiny_qwen3vl.py)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from kb.config import VISUAL_TOKEN_PIXELS

# Small pixel budgets keep each image at 4..16 visual tokens, so a CPU batch takes about a second.
BUDGET = {"image_min_pixels": 4 * VISUAL_TOKEN_PIXELS, "image_max_pixels": 16 * VISUAL_TOKEN_PIXELS,
          "video_max_pixels": 16 * VISUAL_TOKEN_PIXELS}


def noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A picture of random pixels (width, height): every seed a different prompt for the vision tower."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)
