"""Which reader handles which file (what a reader returns is ingest/read_result.py).

The extension says which reader a file claims; its content (ingest/sniff.py) decides. A file whose content is
another binary kind Seekframe reads (a PNG named .mp4) is read as that kind, with a note; one whose content it
cannot read fails with what the file really is and how to convert it. Plain text under a PDF, image or video
name is reported, not read: it is usually a failed download's error message, and renaming it is the user's call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ingest.read_result import ReadResult
from ingest.sniff import READABLE, Sniffed, sniff
from kb.config import Settings
from kb.errors import InputError
from kb.i18n import said
from kb.types import Source, Unit

Reader = Callable[[Path, Source, Settings], ReadResult]
PDF_EXTENSIONS = {".pdf"}
TEXT_EXTENSIONS = {".txt", ".md", ".markdown"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"}
CLAIMED = {"pdf": "a PDF", "image": "an image", "video": "a video", "audio": "an audio file", "text": "a text file"}
READ_AS = {"pdf": "a PDF", "image": "an image", "video": "a video", "audio": "audio", "text": "text"}


def _readers() -> dict[str, Reader]:
    """Reader per kind (imported late: each pulls in heavy libraries)."""
    from ingest.audio import read_audio
    from ingest.image import read_image
    from ingest.pdf import read_pdf
    from ingest.text import read_text
    from ingest.video import read_video

    return {"pdf": read_pdf, "image": read_image, "text": read_text, "video": read_video,
            "audio": read_audio}


def kinds_by_extension() -> dict[str, str]:
    from ingest.audio import AUDIO_EXTENSIONS
    from ingest.video import VIDEO_EXTENSIONS

    table = {ext: "pdf" for ext in PDF_EXTENSIONS}
    table.update({ext: "image" for ext in IMAGE_EXTENSIONS})
    table.update({ext: "text" for ext in TEXT_EXTENSIONS})
    table.update({ext: "video" for ext in VIDEO_EXTENSIONS})
    table.update({ext: "audio" for ext in AUDIO_EXTENSIONS})
    return table


def supported_extensions() -> set[str]:
    return set(kinds_by_extension())


def read_file(path: Path, source: Source, settings: Settings, on_unit: Callable[[Unit], None] | None = None
              ) -> ReadResult:
    """Read `path` (its real name on disk) with the reader its content calls for; InputError when none fits.
    `on_unit` gets a video's units as its windows close, while the rest is still sampled (the other readers are
    quick next to the engine: their units come with the result)."""
    if path.stat().st_size == 0:
        raise InputError(source.rel, "the file is empty (0 bytes)", "copy or download it again", code="read.empty")
    claimed = kinds_by_extension().get(path.suffix.lower())
    kind, note = choose_reader(claimed, sniff(path), source.rel, path.suffix)
    if kind == "video" and on_unit is not None:
        from ingest.video import read_video

        result = read_video(path, source, settings, on_unit=on_unit)
    else:
        result = _readers()[kind](path, source, settings)
    if note:
        result.notes.insert(0, note)
    return result


def choose_reader(claimed: str | None, found: Sniffed, label: str, suffix: str) -> tuple[str, str]:
    """(kind to read it as, note for the user) for a file whose name claims `claimed` and whose content is `found`."""
    if claimed is None:  # only a file named on the command line gets here; a folder walk counts it instead
        if found.kind in READABLE and found.kind != "text":
            extension = suffix or "(none)"
            return found.kind, said(f"this is {found.name} (its extension {extension} is not one Seekframe knows): "
                                    f"read as {READ_AS[found.kind]}", "said.read.unknown_extension",
                                    what=found.name, extension=extension, read_as=READ_AS[found.kind])
        what = f" ({found.name})" if found.kind != "unknown" else ""
        raise InputError(label, f"unsupported file type {suffix or '(no extension)'}{what}",
                         found.fix or f"Seekframe reads {', '.join(sorted(supported_extensions()))}")
    if found.kind in (claimed, "unknown"):
        return claimed, ""  # the reader itself reports a damaged file of its kind
    if claimed == "audio" and found.kind == "video":
        return "audio", ""  # an .m4a is an MP4 container, often with a video brand: its sound is what is read
    if claimed == "text" and found.kind == "html":
        return "text", ""  # Markdown may start with HTML; it is still text to read
    if found.kind == "text":  # most often the error message of a failed download: not stored as a document
        raise InputError(label, f"this is a plain-text file, not {CLAIMED[claimed]}",
                         "download or copy it again (a failed download saves its error message); if it is meant "
                         "as text, rename it to .txt", code=f"read.text_not_{claimed}")
    if found.kind in READABLE:
        return found.kind, said(f"this is {found.name}, not {CLAIMED[claimed]}: read as {READ_AS[found.kind]}",
                                "said.read.read_as", what=found.name, claimed=CLAIMED[claimed],
                                read_as=READ_AS[found.kind])
    raise InputError(label, f"this is {found.name}, not {CLAIMED[claimed]}", found.fix, code="read.not_claimed",
                     params={"what": found.name, "claimed": CLAIMED[claimed], "fix": found.fix})
