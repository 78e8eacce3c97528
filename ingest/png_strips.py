"""Big PNGs decoded a strip of rows at a time and shrunk on the way: memory holds a strip, never the picture.

Pillow decodes a PNG in one piece, at 4 bytes per pixel for RGB (a 16000 x 16000 scan: 1 GB). Here the file's
zlib stream is inflated a strip at a time; each strip, preceded by the last row of the strip before it as an
unfiltered row (PNG row filters refer to the row above), goes through Pillow's own PNG row decoder (the
unfiltering stays in C), is reduced by a whole factor (box average: strips whose height is a multiple of the
factor give exactly the picture a whole-image reduction would) and pasted into the reduced picture.

Handles the common kinds, not interlaced: 8 bits per channel (grey, RGB, grey+alpha, RGBA), palettes of 1-8
bits, 1-bit grey. Others are decoded whole by Pillow, within the decode limit.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from PIL import Image

from kb.imaging import resizable

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (PNG colour type, bit depth) -> Pillow mode and raw mode: 8-bit grey/RGB/grey+alpha/RGBA, palettes of any
# depth, and 1-bit grey (big bilevel scans and drawings).
RAW = {(0, 8): ("L", "L"), (0, 1): ("1", "1"), (2, 8): ("RGB", "RGB"), (4, 8): ("LA", "LA"), (6, 8): ("RGBA", "RGBA"),
       (3, 8): ("P", "P"), (3, 4): ("P", "P;4"), (3, 2): ("P", "P;2"), (3, 1): ("P", "P;1")}
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
STRIP_BYTES = 16 << 20  # inflated bytes per strip: the transient memory is a few times this
MIN_PIXELS = 16_000_000  # below this a whole decode is small anyway (64 MB at 4 bytes per pixel)


@dataclass
class PngHeader:
    width: int
    height: int
    colour: int
    depth: int
    palette: bytes = b""
    transparency: bytes = b""
    data_at: int = 0  # file offset of the first IDAT chunk

    @property
    def mode(self) -> str:
        return RAW[self.colour, self.depth][0]

    @property
    def rawmode(self) -> str:
        return RAW[self.colour, self.depth][1]

    @property
    def row_bytes(self) -> int:
        return 1 + math.ceil(self.width * CHANNELS[self.colour] * self.depth / 8)  # a filter byte, then pixels


def streamable(path: str | Path) -> PngHeader | None:
    """The header of a PNG this module decodes (big, 8-bit, not interlaced, one frame), else None."""
    with open(path, "rb") as fh:
        if fh.read(8) != SIGNATURE:
            return None
        header = None
        for kind, data, offset in _chunks(fh, payload={b"IHDR", b"PLTE", b"tRNS"}):
            if kind == b"IHDR":
                width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[:13])
                if interlace or (colour, depth) not in RAW or width * height < MIN_PIXELS:
                    return None
                header = PngHeader(width, height, colour, depth)
            elif header is None or kind == b"acTL":  # an animated PNG: its frames are read by Pillow
                return None
            elif kind == b"PLTE":
                header.palette = data
            elif kind == b"tRNS":
                header.transparency = data
            elif kind == b"IDAT":
                header.data_at = offset
                return header
    return None


def decode_reduced(path: str | Path, header: PngHeader, factor: int) -> Image.Image:
    """The picture box-reduced by `factor` (a whole number), decoded strip by strip."""
    rows_per_strip = max(factor, STRIP_BYTES // header.row_bytes // factor * factor)
    out: Image.Image | None = None
    previous = b""  # the last decoded row of the previous strip, in PNG's raw pixel layout
    with open(path, "rb") as fh:
        fh.seek(header.data_at)
        inflated = _Inflater(_idat_payloads(fh))
        for top in range(0, header.height, rows_per_strip):
            rows = min(rows_per_strip, header.height - top)
            raw = inflated.read(rows * header.row_bytes)
            if len(raw) < rows * header.row_bytes:
                raise OSError(f"image file is truncated (pixel data ends at row {top + len(raw) // header.row_bytes}"
                              f" of {header.height})")
            strip = _decode_rows(header, (b"\x00" + previous if previous else b"") + raw, rows + bool(previous))
            if previous:
                strip = strip.crop((0, 1, header.width, strip.height))
            previous = _raw_row(strip, strip.height - 1, header.rawmode)
            reduced = resizable(_with_palette(strip, header)).reduce(factor)
            if out is None:
                out = Image.new(reduced.mode, (math.ceil(header.width / factor), math.ceil(header.height / factor)))
            out.paste(reduced, (0, top // factor))
    assert out is not None
    return out


def _decode_rows(header: PngHeader, filtered: bytes, rows: int) -> Image.Image:
    """Pillow's PNG row decoder ("zip": inflate + unfilter) on rows wrapped in an uncompressed zlib stream."""
    return Image.frombytes(header.mode, (header.width, rows), zlib.compress(filtered, 0), "zip", header.rawmode)


def _raw_row(strip: Image.Image, y: int, rawmode: str) -> bytes:
    return strip.crop((0, y, strip.width, y + 1)).tobytes("raw", rawmode)


def _with_palette(strip: Image.Image, header: PngHeader) -> Image.Image:
    if header.colour != 3:
        return strip
    strip.putpalette(header.palette)
    if header.transparency:  # alpha per palette entry
        strip.info["transparency"] = header.transparency
    return strip


class _Inflater:
    """Inflates the IDAT stream on demand, never more than asked for (a small chunk can inflate to gigabytes)."""

    def __init__(self, payloads: Iterator[bytes]) -> None:
        self._payloads = payloads
        self._zlib = zlib.decompressobj()
        self._pending = b""

    def read(self, size: int) -> bytes:
        out = bytearray(self._pending)
        while len(out) < size:
            data = self._zlib.unconsumed_tail or next(self._payloads, b"")
            if not data:
                break
            out += self._zlib.decompress(data, size - len(out))
        self._pending = bytes(out[size:])
        return bytes(out[:size])


def _idat_payloads(fh: BinaryIO) -> Iterator[bytes]:
    for kind, data, _ in _chunks(fh, payload={b"IDAT"}):
        if kind == b"IDAT":
            yield data
        elif kind == b"IEND":
            return


def _chunks(fh: BinaryIO, payload: set[bytes]) -> Iterator[tuple[bytes, bytes, int]]:
    """(type, data if the type is in `payload` else b"", offset) for each chunk from the current position."""
    while True:
        offset = fh.tell()
        head = fh.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        data = fh.read(length) if kind in payload else b""
        if kind not in payload:
            fh.seek(length, 1)
        fh.seek(4, 1)  # CRC: checked by Image.verify() when the file was read
        yield kind, data, offset
