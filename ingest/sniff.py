"""What a file really is, from its first bytes: the extension is a claim, the content decides.

A PNG renamed `.mp4` is an image, an HTML page saved as `.pdf` is not a PDF. `sniff` looks only at the head of
the file (and the entry names of a ZIP), so it is cheap enough to run before every read.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

HEAD_BYTES = 8192
READABLE = ("pdf", "image", "video", "audio", "text")  # kinds Seekframe has a reader for


@dataclass(frozen=True)
class Sniffed:
    kind: str  # pdf, image, video, audio, text | html, office, archive, program, other | unknown
    name: str  # for people: "a PNG image", "an HTML page"
    fix: str = ""  # for a kind Seekframe cannot read: how to make it readable


UNKNOWN = Sniffed("unknown", "a file of unknown type")
_SAVE_AS_PDF = "open it in its application and save or export it as PDF, then ingest the PDF"
_FIXES = {
    "html": "save the page as PDF from a browser (Print → Save as PDF) and ingest the PDF",
    "office": _SAVE_AS_PDF,
    "archive": "unpack it and ingest the folder",
    "program": "this is not a document: leave it out",
    "other": _SAVE_AS_PDF,
}

# (offset, signature, kind, name), checked in order; containers with a sub-type are handled below.
_MAGIC = [
    (0, b"\x89PNG\r\n\x1a\n", "image", "a PNG image"),
    (0, b"\xff\xd8\xff", "image", "a JPEG image"),
    (0, b"GIF87a", "image", "a GIF image"),
    (0, b"GIF89a", "image", "a GIF image"),
    (0, b"II*\x00", "image", "a TIFF image"),
    (0, b"MM\x00*", "image", "a TIFF image"),
    (0, b"II+\x00", "image", "a TIFF image"),
    (0, b"MM\x00+", "image", "a TIFF image"),
    (0, b"FLV\x01", "video", "a Flash video"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "video", "a Windows Media (ASF) file"),
    (0, b"\x00\x00\x01\xba", "video", "an MPEG program stream"),
    (0, b"\x00\x00\x01\xb3", "video", "an MPEG video stream"),
    (0, b"ID3", "audio", "an MP3 audio file"),
    (0, b"fLaC", "audio", "a FLAC audio file"),
    (0, b"#!AMR", "audio", "an AMR audio file"),
    (0, b"MThd", "audio", "a MIDI file"),
    (0, b"caff", "audio", "a Core Audio file"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "office", "an old Microsoft Office file (.doc, .xls or .ppt)"),
    (0, b"{\\rtf", "office", "a rich-text (RTF) document"),
    (0, b"%!PS", "other", "a PostScript file"),
    (0, b"\x1f\x8b", "archive", "a gzip archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "archive", "a 7-Zip archive"),
    (0, b"Rar!\x1a\x07", "archive", "a RAR archive"),
    (0, b"BZh", "archive", "a bzip2 archive"),
    (0, b"\xfd7zXZ\x00", "archive", "an xz archive"),
    (0, b"\x28\xb5\x2f\xfd", "archive", "a zstd archive"),
    (257, b"ustar", "archive", "a tar archive"),
    (0, b"\x7fELF", "program", "a program (ELF)"),
    (0, b"MZ", "program", "a Windows program"),
    (0, b"SQLite format 3\x00", "other", "an SQLite database"),
]
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
_OOXML = {"word/": "a Word document (.docx)", "xl/": "an Excel workbook (.xlsx)",
          "ppt/": "a PowerPoint deck (.pptx)"}
_ODF = {"application/vnd.oasis.opendocument.text": "an OpenDocument text (.odt)",
        "application/vnd.oasis.opendocument.spreadsheet": "an OpenDocument spreadsheet (.ods)",
        "application/vnd.oasis.opendocument.presentation": "an OpenDocument presentation (.odp)",
        "application/epub+zip": "an EPUB e-book"}


def sniff(path: Path) -> Sniffed:
    """The kind of `path` from its content; `unknown` when the head matches nothing this module knows."""
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    found = sniff_bytes(head)
    if found.kind == "archive" and head.startswith(b"PK"):
        found = _zip_kind(path)
    return _with_fix(found)


def sniff_bytes(head: bytes) -> Sniffed:
    """The kind from the first bytes alone (a ZIP is only `a ZIP archive` here)."""
    if head.startswith(b"%PDF-") or (b"%PDF-" in head[:1024] and not _looks_like_text(head)):
        return Sniffed("pdf", "a PDF")  # readers accept a header within the first KB (junk before it)
    for offset, signature, kind, name in _MAGIC:
        if head[offset:offset + len(signature)] == signature:
            if len(signature) <= 3 and signature.isalnum() and _looks_like_text(head):
                continue  # "MZ", "BZh", "ID3" also begin ordinary words
            return _with_fix(Sniffed(kind, name))
    found = _container(head) or _stream(head)
    if found:
        return _with_fix(found)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _with_fix(Sniffed("archive", "a ZIP archive"))
    if _is_html(head):
        return _with_fix(Sniffed("html", "an HTML page"))
    if _looks_like_text(head):
        return Sniffed("text", "a plain-text file")
    return UNKNOWN


def _with_fix(found: Sniffed) -> Sniffed:
    if found.kind in READABLE or found.fix:
        return found
    return Sniffed(found.kind, found.name, _FIXES.get(found.kind, ""))


def _container(head: bytes) -> Sniffed | None:
    """ISO-BMFF (MP4, MOV, HEIC, M4A), RIFF (AVI, WAV, WebP), EBML (Matroska, WebM), Ogg, AIFF, BMP."""
    if head[4:8] == b"ftyp":
        size = int.from_bytes(head[:4], "big")
        brands = {head[8:12]} | {head[n:n + 4] for n in range(16, min(size, len(head)) - 3, 4)}
        if head[8:12] in _HEIF_BRANDS or (head[8:12] not in _AUDIO_BRANDS and brands & {b"heic", b"heix"}):
            return Sniffed("image", "a HEIC/HEIF photo")
        if head[8:12] in _AVIF_BRANDS:
            return Sniffed("other", "an AVIF image", "convert it to PNG or JPEG, then ingest that")
        if head[8:12] in _AUDIO_BRANDS:
            return Sniffed("audio", "an M4A/AAC audio file")
        return Sniffed("video", "an MP4/QuickTime video")
    if head[4:8] in _QUICKTIME_ATOMS and int.from_bytes(head[:4], "big") >= 8:
        return Sniffed("video", "a QuickTime video")
    if head[:4] == b"RIFF":
        return {b"AVI ": Sniffed("video", "an AVI video"), b"WAVE": Sniffed("audio", "a WAV audio file"),
                b"WEBP": Sniffed("image", "a WebP image")}.get(head[8:12], Sniffed("other", "a RIFF file"))
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return Sniffed("video", "a WebM video" if b"webm" in head[:64] else "a Matroska (MKV) video")
    if head[:4] == b"OggS":
        return Sniffed("video", "an Ogg video") if b"theora" in head else Sniffed("audio", "an Ogg audio file")
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return Sniffed("audio", "an AIFF audio file")
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return Sniffed("image", "a BMP image")
    return None


def _stream(head: bytes) -> Sniffed | None:
    """Formats without a signature, known by their framing: MPEG transport streams, MPEG/AAC audio frames."""
    for packet, start in ((188, 0), (192, 4)):  # TS, and M2TS with its 4-byte time code
        if len(head) > start + 2 * packet and all(head[start + n * packet] == 0x47 for n in range(3)):
            return Sniffed("video", "an MPEG transport stream")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 in (0xF0, 0xF2) and not _looks_like_text(head):
        return Sniffed("audio", "an MP3/AAC audio file")  # frame sync; ADTS (0xFFF1/9) or MPEG layer III (0xFFF2/3/B)
    return None


def _zip_kind(path: Path) -> Sniffed:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            mimetype = archive.read("mimetype").decode("ascii", "replace").strip() if "mimetype" in names else ""
    except (zipfile.BadZipFile, OSError, KeyError, RuntimeError):
        return Sniffed("archive", "a damaged ZIP archive", _FIXES["archive"])
    if mimetype in _ODF:
        return Sniffed("office", _ODF[mimetype], _SAVE_AS_PDF)
    if "[Content_Types].xml" in names:
        for prefix, name in _OOXML.items():
            if any(n.startswith(prefix) for n in names):
                return Sniffed("office", name, _SAVE_AS_PDF)
    return Sniffed("archive", "a ZIP archive", _FIXES["archive"])


def _is_html(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:512].lower()
    if start.startswith(b"<?xml"):
        return b"<html" in start or b"<!doctype html" in start
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _looks_like_text(head: bytes) -> bool:
    """UTF-8, UTF-16/32 with a byte-order mark, or a legacy 8-bit text: no NULs, few control characters."""
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return True
    if not head or b"\x00" in head:
        return False
    controls = sum(1 for b in head if b < 0x20 and b not in b"\t\n\r\f\x1b" or b == 0x7F)
    return controls <= len(head) // 100
