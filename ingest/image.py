"""Image reader: every picture becomes an OCR unit and a caption unit; multi-page TIFFs give one pair per page."""
from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from ingest.read import ReadResult
from kb.config import Settings
from kb.errors import InputError
from kb.types import Source, Unit

try:  # HEIC/HEIF photos from phones, when pillow-heif is installed (it is in requirements.txt)
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - optional codec
    pass

Image.MAX_IMAGE_PIXELS = 300_000_000  # scans at 2400 dpi are large but legitimate


def load_frame(path: str, frame: int = 0) -> Image.Image:
    """Open one frame of an image as upright RGB (EXIF rotation applied, transparency on white)."""
    with Image.open(path) as img:
        img.seek(frame)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, "white")
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return img.convert("RGB")


def _frame_count(path: Path, label: str) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.verify()
            with Image.open(path) as img:
                count = sum(1 for _ in ImageSequence.Iterator(img)) if img.format == "TIFF" else 1
                img.seek(0)
                img.load()  # verify() does not decode pixels; a truncated file fails here
    except UnidentifiedImageError as err:
        raise InputError(label, "not an image (its content is not a known image format)",
                         "check the file: it may be another type with an image extension") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(label, f"the image is too large to read safely ({err})", "downscale it first") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(label, f"the image is damaged or truncated ({err})", "copy or export it again") from err
    return count


def read_image(path: Path, source: Source, settings: Settings) -> ReadResult:
    frames = _frame_count(path, source.rel)
    result = ReadResult(kind="image", pages=frames if frames > 1 else None)
    for frame in range(frames):
        page = frame + 1 if frames > 1 else None
        loader = partial(load_frame, str(path), frame)
        result.units.append(Unit(source, "image_ocr", page=page, task="ocr", load_image=loader))
        result.units.append(Unit(source, "image_caption", page=page, task="caption", load_image=loader))
    return result
