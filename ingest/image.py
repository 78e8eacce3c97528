"""Image reader: every picture becomes an OCR unit and a caption unit; multi-page TIFFs give one pair per page,
animations (GIF, WebP, APNG) one pair per distinct frame.

Memory stays bounded whatever a file claims: the size in its header is checked against
KB_IMAGE_DECODE_MAX_PIXELS before a pixel is decoded, pictures are decoded one at a time (a lock), lazily when
the engine batch that reads them runs, and shrunk right away to what an engine reads (kb.imaging.keep_size), so
a batch of 8 holds 8 small pictures, never 8 full decodes.
"""
from __future__ import annotations

import io
import math
import re
import struct
import threading
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ingest.png_strips import decode_reduced, streamable
from ingest.read_result import ReadResult
from kb.config import Settings
from kb.errors import InputError
from kb.i18n import said
from kb.imaging import keep_size, shrink, to_rgb
from kb.types import FileKind, Modality, Source, Unit

try:  # HEIC/HEIF photos from phones, when pillow-heif is installed (it is in requirements.txt)
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - optional codec
    pass

ANIMATED_FORMATS = {"GIF", "WEBP", "PNG"}  # frames of one moving picture: distinct ones are read
PAGED_FORMATS = {"TIFF"}  # pages of a document: every one is read
# EXIF orientation -> the turn that makes the picture upright (as PIL.ImageOps.exif_transpose does).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
EXIF_ORIENTATION = 0x0112
# Frame comparison on small grey copies: a frame is new when enough of it changed by more than a faint flicker.
THUMB_SIDE = 256
THUMB_LEVELS = 16
THUMB_CHANGED = 1 / 2000  # of the thumbnail's pixels (~30 on 256 x 240): a short line of text is far more
RECENT_FRAMES = 8  # a blinking cursor or two alternating frames are not new each time they come back
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_DEFLATE_RATIO = 1100  # deflate's best is ~1032:1 (long runs of one byte); a little slack for zlib framing
DAMAGED_FIX = "the copy is damaged or incomplete: copy, download or export it again"
_DECODING = threading.Lock()  # one full-size decode at a time in this process, whatever runs in parallel


@dataclass(frozen=True)
class Limits:
    """What decoding may take: the pixels a file may claim, the pixels kept for the engines, frames read."""

    decode_pixels: int
    keep_pixels: int
    max_frames: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(max(1, settings.image_decode_max_pixels), settings.image_max_pixels,
                   max(1, settings.image_max_frames))


# -- errors: every way Pillow can refuse a file becomes a per-file InputError that says what to do -----------------
@contextmanager
def decoding(label: str, limits: Limits) -> Iterator[None]:
    """Pillow's own size guard (frames, tiles, GIF disposal areas) set to our limit, its warnings raised as
    errors, and every failure turned into an InputError naming the file."""
    with _DECODING, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limits.decode_pixels
        try:
            yield
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            found = re.search(r"\((\d+) pixels\)", str(err))
            raise too_large(label, None, int(found.group(1)) if found else 0, limits) from err
        except UnidentifiedImageError as err:
            raise InputError(label, "not an image (its content is not a known image format)",
                             "check the file: it may be another type with an image extension",
                             code="image.not_image") from err
        except MemoryError as err:
            raise InputError(label, "the image does not fit in memory while decoding",
                             "lower KB_IMAGE_DECODE_MAX_PIXELS so such files are refused, or downscale it") from err
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as err:
            raise InputError(label, f"the image is damaged or truncated ({err})", DAMAGED_FIX, code="image.damaged",
                             params={"detail": str(err)}) from err
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def too_large(label: str, size: tuple[int, int] | None, pixels: int, limits: Limits) -> InputError:
    """A limit reported as a limit: the file's size, the setting, the value that reads it and what it costs."""
    shown = f"{size[0]} x {size[1]} pixels ({pixels / 1e6:.0f} Mpx)" if size else f"{pixels / 1e6:.0f} Mpx"
    needed = math.ceil(pixels / 1e7) * 10_000_000
    limit, memory = f"{limits.decode_pixels / 1e6:g}", f"{needed * 4 / 2**30:.1f}"
    return InputError(label, f"the image is {shown}, above the decode limit of {limit} Mpx",
                      f"to read it, set KB_IMAGE_DECODE_MAX_PIXELS={needed} (decoding it takes up to "
                      f"{memory} GB of memory), or downscale the image", code="image.too_large",
                      params={"size": shown, "limit": limit, "needed": needed, "memory": memory})


def _checked(img: ImageFile.ImageFile, label: str, limits: Limits) -> ImageFile.ImageFile:
    width, height = img.size
    if width * height > limits.decode_pixels:
        raise too_large(label, (width, height), width * height, limits)
    return img


@contextmanager
def _opened(path: str | Path, label: str, limits: Limits) -> Iterator[ImageFile.ImageFile]:
    """The file opened (header only) with its claimed size checked; call inside `decoding`."""
    Image.MAX_IMAGE_PIXELS = None  # checked just below, where the message can give the width and height
    try:
        img = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limits.decode_pixels
    with img:
        yield _checked(img, label, limits)


def _verify(path: Path, label: str) -> None:
    """The file's structure (chunk lengths and checksums for PNG) without decoding a pixel: a 16000 x 16000 PNG
    that is mostly missing is found truncated here, whatever its header claims."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as img:
            img.verify()
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with path.open("rb") as fh:
        if fh.read(8) == PNG_SIGNATURE:
            _check_png_data(fh, label)


def _check_png_data(fh: BinaryIO, label: str) -> None:
    """A PNG whose compressed pixel data is too short to hold what its header claims (deflate packs at most
    ~1032:1) is truncated: said before decoding, which would allocate the full claimed size first."""
    header, compressed, animated = b"", 0, False
    while chunk := fh.read(8):
        if len(chunk) < 8:
            return  # verify() already judged the structure
        length, kind = struct.unpack(">I4s", chunk)
        if kind == b"IHDR":
            header = fh.read(length)
            fh.seek(4, io.SEEK_CUR)
        else:
            fh.seek(length + 4, io.SEEK_CUR)
        compressed += length if kind == b"IDAT" else 0
        animated |= kind == b"acTL"
    if len(header) < 13 or animated:
        return
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4)
    raw = height * (1 + math.ceil(width * channels * depth / 8))
    if compressed * MAX_DEFLATE_RATIO < raw:
        raise InputError(label, f"the image is truncated: its header claims {width} x {height} pixels, but its "
                         f"pixel data ({compressed} bytes) holds only a small part of them", DAMAGED_FIX)


# -- reading ------------------------------------------------------------------------------------------------------
def read_image(path: Path, source: Source, settings: Settings) -> ReadResult:
    limits = Limits.of(settings)
    with decoding(source.rel, limits):
        _verify(path, source.rel)
        with _opened(path, source.rel, limits) as img:
            count: int = getattr(img, "n_frames", 1)  # only multi-frame formats have it
            if img.format in ANIMATED_FORMATS and count > 1:
                return _read_animation(img, count, source, limits)
            if img.format not in PAGED_FORMATS:
                count = 1
            for page in range(1, count):  # each TIFF page has its own size
                img.seek(page)
                _checked(img, f"{source.rel} page {page + 1}", limits)
    result = ReadResult(kind=FileKind.IMAGE, pages=count if count > 1 else None)
    for frame in range(count):
        loader = partial(load_frame, str(path), frame, source.rel, limits)
        _add_units(result, source, frame + 1 if count > 1 else None, loader)
    return result


def _add_units(result: ReadResult, source: Source, page: int | None, loader: Callable[[], Image.Image]) -> None:
    result.units.append(Unit(source, Modality.IMAGE_OCR, page=page, task="ocr", load_image=loader))
    result.units.append(Unit(source, Modality.IMAGE_CAPTION, page=page, task="caption", load_image=loader))


def load_frame(path: str, frame: int, label: str, limits: Limits) -> Image.Image:
    """One frame or page, upright RGB at the size the engines read: decoded, shrunk at once, full size dropped."""
    with decoding(label, limits), _opened(path, label, limits) as img:
        if frame:
            img.seek(frame)
            _checked(img, label, limits)
        size = keep_size(*img.size, limits.keep_pixels)
        pixels = _decoded(img, path, frame, size)
        # Pillow's PNG getexif() loads the whole picture to look for an eXIf chunk after the pixels (1 GB for a
        # 16000² PNG): a PNG decoded strip by strip (still unloaded) only has the eXIf placed before them.
        exif = img.getexif() if img.format != "PNG" or not img.tile or "exif" in img.info else {}
        turn = UPRIGHT.get(exif.get(EXIF_ORIENTATION, 1))
        small = to_rgb(shrink(pixels, size))
    return small.transpose(turn) if turn is not None else small


def _decoded(img: ImageFile.ImageFile, path: str, frame: int, size: tuple[int, int]) -> Image.Image:
    """The pixels, as small as the decoder allows: a big PNG strip by strip and box-reduced on the way (to at
    most twice `size`), a JPEG at 1/2, 1/4 or 1/8 scale straight from its DCT, anything else whole."""
    factor = min(img.width // size[0], img.height // size[1]) // 2
    header = streamable(path) if img.format == "PNG" and frame == 0 and factor >= 2 else None
    if header is not None:
        return decode_reduced(path, header, factor)
    if img.format == "JPEG":
        img.draft(None, size)
    img.load()
    return img


# -- animations: distinct frames, spread over the whole --------------------------------------------------------------
@dataclass
class _Kept:
    rank: int  # its place among the distinct frames
    index: int  # frame number in the file, from 0
    png: bytes  # the frame at engine size, PNG-encoded: small, decoded again when its batch runs


def _read_animation(img: ImageFile.ImageFile, count: int, source: Source, limits: Limits) -> ReadResult:
    """Distinct frames of a GIF/WebP/APNG as pages (page = frame number).

    Frames are decoded once, in order (later frames are drawn over earlier ones, so none can be skipped), each
    shrunk to engine size at once. Identical or nearly identical frames are dropped; when more than
    `max_frames` remain, `max_frames` are read spread evenly over the animation, first and last included, and a
    note says so. At most 2 x `max_frames` shrunk frames are held (halved by keeping every other one).
    """
    result = ReadResult(kind=FileKind.IMAGE, pages=count)
    kept: list[_Kept] = []
    recent: deque[np.ndarray] = deque(maxlen=RECENT_FRAMES)
    stride, distinct, last = 1, 0, None
    for index in range(count):
        try:
            img.seek(index)
            _checked(img, source.rel, limits)
            img.load()
        except (OSError, EOFError, ValueError, SyntaxError) as err:
            if index == 0:
                raise
            result.errors.append(f"frames {index + 1}-{count}: cannot be decoded ({err})")
            break
        small = to_rgb(shrink(img, keep_size(*img.size, limits.keep_pixels)))
        thumb = _thumbnail(small)
        if any(not _differs(thumb, old) for old in recent):
            continue
        recent.append(thumb)
        last = (distinct, index, small)
        if distinct % stride == 0:
            kept.append(_Kept(distinct, index, _encode(small)))
            if len(kept) > 2 * limits.max_frames:
                stride *= 2
                kept = [k for k in kept if k.rank % stride == 0]
        distinct += 1
    if last is not None and (not kept or kept[-1].rank != last[0]):
        kept.append(_Kept(last[0], last[1], _encode(last[2])))
    chosen = _spread(kept, limits.max_frames)
    if len(chosen) < distinct:
        result.notes.append(said(f"an animation of {count} frames with {distinct} distinct ones: {len(chosen)} of "
                                 f"them read, spread over it (KB_IMAGE_MAX_FRAMES={limits.max_frames}; raise it to "
                                 "read more)", "said.image.animation", count=count, distinct=distinct,
                                 read=len(chosen), limit=limits.max_frames))
    for frame in chosen:
        _add_units(result, source, frame.index + 1, partial(_decode_png, frame.png))
    return result


def _spread(kept: list[_Kept], limit: int) -> list[_Kept]:
    if len(kept) <= limit:
        return kept
    picks = sorted({round(i * (len(kept) - 1) / (limit - 1)) for i in range(limit)}) if limit > 1 else [0]
    return [kept[i] for i in picks]


def _thumbnail(frame: Image.Image) -> np.ndarray:
    size = keep_size(*frame.size, 0, THUMB_SIDE)
    return np.asarray(frame.convert("L").resize(size, Image.Resampling.BOX), dtype=np.int16)


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return True
    return bool(np.count_nonzero(np.abs(a - b) > THUMB_LEVELS) > a.size * THUMB_CHANGED)


def _encode(frame: Image.Image) -> bytes:
    out = io.BytesIO()
    frame.save(out, format="PNG", compress_level=3)
    return out.getvalue()


def _decode_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")
