"""A folder of odd files next to good ones, as real archives hold them, ingested in ONE `python -m ingest --json` run.

Every odd file gets its own outcome (a status, and words of its message), every good file goes in and is
searchable, nothing odd stops the folder, and the run exits 1 because some files failed. The corpus is generated
at test time (PyMuPDF writes PDFs, PIL draws text, OpenCV writes videos); images are small so the `ocr` engine
reads them in seconds on a CPU.
"""
from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import wave
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image, ImageDraw

from data.make_samples import font
from kb.config import BUNDLED_EMBED_MODEL, load_settings
from kb.paths import display, from_stored, to_stored

ROOT = Path(__file__).resolve().parent.parent
NON_UTF8 = os.fsdecode(b"caf\xe9 menu.md")  # a Latin-1 name: byte 0xE9 is not UTF-8 on its own
LONG_NAME = "a-very-long-file-name-" + "x" * 200 + ".md"
# Limits lowered for the run so a small file meets them (a real 16000 x 16000 PNG takes long to write).
TEXT_MAX_BYTES = 1_000_000
DECODE_MAX_PIXELS = 1_000_000


@dataclass
class Expect:
    status: str | tuple[str, ...]  # the file's status in the --json output (one of, when a tuple)
    words: tuple[str, ...] = ()  # all must appear in its errors + notes + fix (case-insensitive)
    find: str = ""  # a word on it that search must find, with this file as the source


# ------------------------------------------------------------------------------------------- the corpus ----
def text_image(word: str, size: tuple[int, int] = (360, 90), ink=(0, 0, 0), paper=(255, 255, 255)) -> Image.Image:
    img = Image.new("RGB", size, paper)
    ImageDraw.Draw(img).text((16, size[1] // 2 - 22), word, font=font(40, "bold"), fill=ink)
    return img


def image_bytes(img: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def pdf_bytes(pages: list[str], size: tuple[int, int] = (300, 200)) -> bytes:
    """Small pages (an OCR'd blank page renders small); an empty string is a blank page."""
    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page(width=size[0], height=size[1])
        if text:
            page.insert_textbox(pymupdf.Rect(20, 20, size[0] - 20, size[1] - 20), text, fontsize=11)
    data = doc.tobytes()
    doc.close()
    return data


def docx_bytes(text: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                                          'package/2006/content-types"/>')
        z.writestr("word/document.xml", f"<w:document><w:body><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:body>"
                                        "</w:document>")
    return out.getvalue()


def wav_bytes() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(800, dtype=np.int16).tobytes())
    return out.getvalue()


def mp3_bytes() -> bytes:
    frame = b"\xff\xfb\x90\x64" + bytes(413)  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz: 417-byte frames of silence
    return b"ID3\x03\x00\x00\x00\x00\x00\x00" + frame * 8


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims width×height, with the pixel data of only a few rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def gray16_png(word: str) -> bytes:
    """16-bit greyscale: dark-grey text (value 12000 of 65535) on white, as some scanners write it."""
    rgb = text_image(word)
    mask = np.array(rgb.convert("L")) < 128
    pixels = np.where(mask, 12000, 65535).astype(np.uint16)
    return image_bytes(Image.fromarray(pixels), "PNG")


def late_frame_gif(word: str, frames: int = 40, text_at: int = 33) -> bytes:
    """An animated GIF whose only text is on a late frame."""
    images = [text_image(word) if n == text_at else Image.new("RGB", (360, 90), (255, 255, 255 - n))
              for n in range(frames)]
    return image_bytes(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def write_video(path: Path, size: tuple[int, int], frames: list[np.ndarray]) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, size)
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))
    writer.release()


def make_corpus(folder: Path, outside: Path) -> dict[str, Expect]:
    """Write the corpus into `folder`; the outcome each file must get, by its name as --json shows it."""
    expect: dict[str, Expect] = {}

    def put(name: str, data: bytes | str, outcome: Expect) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        expect[display(name)] = outcome

    # -- good files: all must go in and be searchable -------------------------------------------------------
    put("good.pdf", pdf_bytes(["The WOMBAT report covers the spring survey of the valley."]),
        Expect("added", find="WOMBAT"))
    put("good.md", "# Notes\n\nThe CAPYBARA enclosure opens in May.\n", Expect("added", find="CAPYBARA"))
    put("scan.png", image_bytes(text_image("WALRUS"), "PNG"), Expect("added", find="WALRUS"))
    good_pdf = pdf_bytes(["A scanned NARWHAL memo."])
    # -- PDFs -----------------------------------------------------------------------------------------------
    put("pdf/empty.pdf", b"", Expect("failed", ("empty (0 bytes)", "fix:")))
    whole = pdf_bytes(["Some text that will be cut off halfway through the file. " * 20] * 3)
    put("pdf/truncated.pdf", whole[: len(whole) // 2], Expect("failed", ("truncated", "fix:")))
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret")
    put("pdf/encrypted.pdf", doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="pw"),
        Expect("failed", ("encrypted", "qpdf")))
    put("pdf/saved-page.pdf", "<!DOCTYPE html>\n<html><head><title>Invoice</title></head><body>Hi</body></html>",
        Expect("failed", ("an HTML page, not a PDF", "save the page as PDF")))
    put("pdf/letter.pdf", "Dear Sir, this is a plain text letter, not a PDF.",
        Expect("failed", ("plain-text file, not a PDF", "rename it to .txt")))
    put("pdf/blank.pdf", pdf_bytes(["", ""]), Expect("empty", ("no text found",)))
    put("pdf/half-blank.pdf", pdf_bytes(["The OCELOT page has words.", ""]),
        Expect("added", ("no text found on page 2",), find="OCELOT"))
    put("pdf/word-export.pdf", docx_bytes("hello"), Expect("failed", ("word document", "not a PDF", "export")))
    put("pdf/bundle.pdf", docx_bytes("x").replace(b"word/", b"misc/"),
        Expect("failed", ("a ZIP archive, not a PDF", "unpack")))
    put("pdf/photo-as.pdf", image_bytes(text_image("JACKAL"), "JPEG"),
        Expect("added", ("a JPEG image, not a PDF", "read as an image"), find="JACKAL"))
    # -- images ---------------------------------------------------------------------------------------------
    put("img/picture.mp4", image_bytes(text_image("QUOKKA"), "PNG"),
        Expect("added", ("a PNG image, not a video", "read as an image"), find="QUOKKA"))
    jpeg = image_bytes(text_image("JAGUAR", (720, 360)), "JPEG", quality=95)
    put("img/truncated.jpg", jpeg[: len(jpeg) // 3], Expect("failed", ("truncated", "fix:")))
    put("img/huge-header.png", png_claiming(16000, 16000), Expect("failed", ("16000", "fix:")))
    put("img/poster.png", image_bytes(text_image("CONDOR", (1400, 900)), "PNG"),
        Expect("failed", ("1400 x 900", "above the decode limit", "KB_IMAGE_DECODE_MAX_PIXELS=")))
    put("img/gray16.png", gray16_png("PELICAN"), Expect("added", find="PELICAN"))
    palette = text_image("MARMOT", ink=(20, 40, 160)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    put("img/palette.png", image_bytes(palette, "PNG"), Expect("added", find="MARMOT"))
    put("img/animated.gif", late_frame_gif("BISON"), Expect("added", find="BISON"))
    put("img/cmyk.jpg", image_bytes(text_image("BEAVER").convert("CMYK"), "JPEG"), Expect("added", find="BEAVER"))
    put("img/webp-named.png", image_bytes(text_image("HERON"), "WEBP", lossless=True), Expect("added", find="HERON"))
    put("img/notes.jpg", "this is a text file renamed to .jpg", Expect("failed", ("plain-text file, not an image",)))
    put("img/sky.jpg", image_bytes(Image.linear_gradient("L").resize((200, 120)).convert("RGB"), "JPEG"),
        Expect("empty", ("no text found",)))
    # -- video ----------------------------------------------------------------------------------------------
    (folder / "video").mkdir()
    write_video(folder / "video" / "tiny-33x17.mp4", (33, 17), [np.full((17, 33, 3), 90, np.uint8)] * 10)
    expect["video/tiny-33x17.mp4"] = Expect(("empty", "failed"), ("fix:",))
    word = np.array(text_image("FLAMINGO", (320, 96)))
    write_video(folder / "video" / "clip.mp4", (320, 96), [word] * 10)
    expect["video/clip.mp4"] = Expect("added", find="FLAMINGO")
    put("video/zero.mp4", b"", Expect("failed", ("empty (0 bytes)",)))
    put("video/readme.mp4", "Download failed: 403 Forbidden\n", Expect("failed", ("plain-text file, not a video",)))
    # Sound is read by the speech engine; this run has no speech model (see `run`), so audio files are left out
    # with the reason and the way to get one, and counted by extension.
    put("video/voice.mp4", wav_bytes(), Expect("unsupported", ("a WAV audio file, not a video", "KB_ASR_MODEL")))
    put("video/slides.mp4", good_pdf, Expect("added", ("a PDF, not a video",), find="NARWHAL"))
    # -- audio: no speech model here, so not read, counted by extension -------------------------------------
    put("audio/song.mp3", mp3_bytes(), Expect("unsupported", ("speech model", "KB_ASR_MODEL")))
    put("audio/sound.wav", wav_bytes(), Expect("unsupported", ("speech model", "KB_ASR_MODEL")))
    # -- text -----------------------------------------------------------------------------------------------
    put("text/junk.txt", random.Random(8).randbytes(4096), Expect("failed", ("not text", "fix:")))
    put("text/latin1.txt", "Caf\xe9 cr\xe8me: the MOOSE menu.\n".encode("latin-1"),
        Expect("added", ("not UTF-8", "Latin-1"), find="MOOSE"))
    put("text/utf16.txt", "The OTTER pages, saved by Notepad.\r\n".encode("utf-16"), Expect("added", find="OTTER"))
    # 5 MB on one line: chunked in linear time; refused here by a lowered KB_TEXT_MAX_BYTES (see TEXT_MAX_BYTES), as
    # embedding its ~4 300 chunks on a shared 2-core CPU would take minutes; the message names the setting.
    put("text/one-line.md", "lorem ipsum dolor sit amet " * 190_000, Expect("failed", ("KB_TEXT_MAX_BYTES",)))
    put("text/page.md", "<html><body><p>The IGUANA page, kept as Markdown.</p></body></html>\n",
        Expect("added", find="IGUANA"))
    put("text/empty.txt", b"", Expect("failed", ("empty (0 bytes)",)))
    put("text/manual.txt", pdf_bytes(["The OKAPI manual, saved with the wrong extension."]),
        Expect("added", ("a PDF, not a text file",), find="OKAPI"))
    # -- names ----------------------------------------------------------------------------------------------
    put(NON_UTF8, "The LEMUR menu from an old Latin-1 archive.\n", Expect("added", find="LEMUR"))
    put("50%_off a_b.md", "GECKO sale notes.\n", Expect("added", find="GECKO"))
    put("name with  spaces.md", "BADGER sightings.\n", Expect("added", find="BADGER"))
    put("-dash first.md", "ALPACA shearing dates.\n", Expect("added", find="ALPACA"))
    put(LONG_NAME, "MEERKAT colony notes.\n", Expect("added", find="MEERKAT"))
    put("日本語 ノート.md", "TAPIR feeding times.\n", Expect("added", find="TAPIR"))
    # -- office documents -----------------------------------------------------------------------------------
    put("office/report.docx", docx_bytes("The KOALA report"), Expect("unsupported", (".docx",)))
    # -- hidden ---------------------------------------------------------------------------------------------
    put(".private.md", "HIDDENWORD\n", Expect("hidden"))
    put(".git/config", "[core]\n", Expect("hidden"))
    expect.pop(".git/config")
    expect[".git"] = Expect("hidden", ("hidden folder",))
    # -- links ----------------------------------------------------------------------------------------------
    links = folder / "links"
    links.mkdir()
    os.symlink("loop-b.pdf", links / "loop-a.pdf")
    os.symlink("loop-a.pdf", links / "loop-b.pdf")
    os.symlink("missing.pdf", links / "dangling.pdf")
    os.symlink("..", links / "up")
    (outside / "secret.md").write_text("OUTSIDEWORD from a folder nobody asked for.\n")
    os.symlink(outside / "secret.md", links / "secret.md")
    os.symlink(outside, links / "elsewhere")
    os.symlink("../good.md", links / "alias.md")
    os.mkfifo(links / "queue.pipe")
    expect.update({
        "links/loop-a.pdf": Expect("failed", ("loops", "fix:")), "links/loop-b.pdf": Expect("failed", ("loops",)),
        "links/dangling.pdf": Expect("failed", ("links/dangling.pdf: a broken link", "missing.pdf", "fix:")),
        "links/up": Expect("link", ("a loop", "not followed")),
        "links/secret.md": Expect("link", ("outside", "not followed")),
        "links/elsewhere": Expect("link", ("outside", "not followed")),
        "links/alias.md": Expect(("added", "copied"), find="CAPYBARA"),
        "links/queue.pipe": Expect("unsupported", ("not a regular file",)),
    })
    return expect


# ------------------------------------------------------------------------------------------------ the run ----
@dataclass
class Run:
    folder: Path
    expect: dict[str, Expect]
    done: subprocess.CompletedProcess
    outcomes: dict[str, dict]
    home: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("bad-inputs")
    folder, outside, home = base / "archive", base / "outside", base / "kb"
    folder.mkdir()
    outside.mkdir()
    expect = make_corpus(folder, outside)
    env = {**os.environ, "KB_HOME": str(home), "KB_ENGINE": "ocr", "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL,
           "HF_HUB_OFFLINE": "1", "KB_TEXT_MAX_BYTES": str(TEXT_MAX_BYTES),
           "KB_ASR": "auto", "KB_ASR_MODEL": str(home.parent / "no-speech-model"),
           "KB_IMAGE_DECODE_MAX_PIXELS": str(DECODE_MAX_PIXELS)}
    done = subprocess.run([sys.executable, "-m", "ingest", "--json", str(folder)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.stdout.strip(), done.stderr
    report = json.loads(done.stdout)
    return Run(folder, expect, done, {f["path"]: f for f in report["files"]}, home)


@pytest.fixture(scope="module")
def kb_store(run: Run, embedder):
    from kb.store import open_store

    store = open_store(load_settings({"home": run.home, "embed_model": BUNDLED_EMBED_MODEL, "engine": "ocr"},
                                     env={}), embedder)
    yield store
    store.close()


def test_the_folder_runs_in_one_go_and_exits_1_because_some_files_failed(run: Run):
    assert run.done.returncode == 1, run.done.stderr
    assert "Traceback" not in run.done.stderr
    assert len(run.expect) >= 40
    assert set(run.outcomes) == set(run.expect), "every file has exactly one outcome"


def test_each_file_gets_its_outcome(run: Run):
    wrong = {}
    for name, want in run.expect.items():
        got = run.outcomes[name]
        statuses = want.status if isinstance(want.status, tuple) else (want.status,)
        message = " ".join(got["errors"] + got["notes"] + [f"fix: {got['fix']}" if got["fix"] else ""]).lower()
        missing = [w for w in want.words if w.lower() not in message]
        if got["status"] not in statuses or missing:
            wrong[name] = (got["status"], missing, message)
    assert not wrong, json.dumps(wrong, indent=1, ensure_ascii=False)


def test_every_failed_file_says_how_to_fix_it(run: Run):
    silent = [name for name, got in run.outcomes.items() if got["status"] == "failed" and not got["fix"]]
    assert not silent


def test_every_good_file_is_in_and_searchable(run: Run, kb_store):
    from kb.search import search

    lost = {}
    for name, want in run.expect.items():
        if want.find:
            got = run.outcomes[name]
            sources = [h.chunk.rel for h in search(kb_store, want.find, k=5)]
            if got["chunks"] < 1 or not any(display(s) == name for s in sources):
                lost[name] = (want.find, got["status"], sources)
    assert not lost, lost


def test_nothing_from_hidden_files_or_links_out_of_the_folder_is_stored(run: Run, kb_store):
    from kb.search import search

    for word in ("OUTSIDEWORD", "HIDDENWORD", "KOALA"):
        assert not [h for h in search(kb_store, word, k=5, mode="lexical") if word in h.chunk.text]


def test_a_name_that_is_not_utf8_is_shown_with_a_replacement_character_and_stored_to_round_trip(run: Run, kb_store):
    shown = display(NON_UTF8)
    assert shown == "caf\ufffd menu.md" and run.outcomes[shown]["status"] == "added"
    record = next(r for r in kb_store.manifest.all() if display(r.rel) == shown)
    assert record.rel == to_stored(NON_UTF8) and record.rel.encode("utf-8")  # valid UTF-8 text in the manifest
    assert os.fsencode(from_stored(record.path)) == os.fsencode(run.folder / NON_UTF8)
    assert Path(from_stored(record.path)).read_text().startswith("The LEMUR")


def test_the_summary_counts_what_was_not_read_by_extension(run: Run):
    summary = run.done.stderr  # with --json the table goes to stderr
    unsupported = next(line for line in summary.splitlines() if line.startswith("unsupported"))
    assert ".docx ×1" in unsupported and ".mp3 ×1" in unsupported and ".wav ×1" in unsupported
    assert any(line.split()[:2] == ["hidden", "2"] for line in summary.splitlines())
    assert "song.mp3" in summary and "FAILED links/dangling.pdf" in summary


# ----------------------------------------------------------------------- sniffing formats the run has none of ----
def _ftyp(brand: bytes, *compatible: bytes) -> bytes:
    body = brand + b"\x00\x00\x02\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00\x00\x00\x08free"


def _ts(packet: int = 188, prefix: int = 0) -> bytes:
    return b"".join(bytes(prefix) + b"\x47" + bytes(packet - prefix - 1) for _ in range(4))


@pytest.mark.parametrize("head, kind, name", [
    (_ftyp(b"isom", b"isom", b"avc1"), "video", "MP4"),
    (_ftyp(b"qt  "), "video", "QuickTime"),
    (b"\x00\x00\x00\x14moov" + bytes(32), "video", "QuickTime"),
    (_ftyp(b"heic", b"mif1", b"heic"), "image", "HEIC"),
    (_ftyp(b"mif1", b"heic"), "image", "HEIC"),
    (_ftyp(b"M4A ", b"isom"), "audio", "M4A"),
    (_ftyp(b"avif", b"mif1"), "other", "AVIF"),
    (b"\x1a\x45\xdf\xa3\x01\x00\x00\x00\x00\x00\x00\x1fB\x86\x81\x01B\x82\x84webm" + bytes(16), "video", "WebM"),
    (b"\x1a\x45\xdf\xa3\x01\x00\x00\x00\x00\x00\x00\x23B\x82\x88matroska" + bytes(16), "video", "Matroska"),
    (b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(16), "video", "AVI"),
    (b"RIFF\x00\x10\x00\x00WEBPVP8 " + bytes(16), "image", "WebP"),
    (_ts(), "video", "transport stream"),
    (_ts(192, 4), "video", "transport stream"),
    (b"OggS\x00\x02" + bytes(22) + b"\x80theora" + bytes(16), "video", "Ogg video"),
    (b"OggS\x00\x02" + bytes(22) + b"\x01vorbis" + bytes(16), "audio", "Ogg audio"),
    (b"fLaC\x00\x00\x00\x22" + bytes(40), "audio", "FLAC"),
    (b"II*\x00\x08\x00\x00\x00" + bytes(16), "image", "TIFF"),
    (b"BM" + bytes(12) + (40).to_bytes(4, "little") + bytes(20), "image", "BMP"),
    (b"BMW and Audi are car makers.\n" * 4, "text", "plain-text"),
    (b"\xff\xfeH\x00i\x00", "text", "plain-text"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(32), "office", "old Microsoft Office"),
    (b"\x1f\x8b\x08\x00" + bytes(16), "archive", "gzip"),
    (b"  <?xml version='1.0'?><!DOCTYPE html><html>", "html", "HTML"),
])
def test_sniff_names_what_a_file_really_is(head: bytes, kind: str, name: str):
    from ingest.sniff import READABLE, sniff_bytes

    found = sniff_bytes(head)
    assert (found.kind, name.lower() in found.name.lower()) == (kind, True), found
    assert found.kind in READABLE or found.fix, "a kind Seekframe cannot read says how"


def test_every_byte_that_is_not_utf8_round_trips_through_the_stored_form():
    from kb.paths import storable

    raw = bytes(range(0x80, 0x100)) + b" ok \xc3\xa9"  # each lone high byte, then a real UTF-8 "é"
    name = os.fsdecode(raw)
    stored = to_stored(name)
    assert stored.encode("utf-8") and os.fsencode(from_stored(stored)) == raw
    assert display(name) == display(stored) == "\ufffd" * 128 + " ok é"
    assert to_stored("plain é.pdf") == "plain é.pdf" and storable("plain é.pdf") and not storable(stored)


@pytest.mark.parametrize("claimed, head, suffix, read_as, words", [
    (None, b"\x47" + bytes(187) + b"\x47" + bytes(187) + b"\x47" + bytes(200), ".ts", "video", "read as a video"),
    (None, b"just some notes\n", ".csv", None, "unsupported file type .csv"),
    (None, b"ID3\x03\x00\x00" + bytes(64), ".mp3", "audio", "an MP3 audio file"),
    ("text", b"<html><body>notes</body></html>", ".md", "text", ""),
    ("video", b"\x89PNG\r\n\x1a\n" + bytes(32), ".mp4", "image", "a PNG image, not a video"),
    ("image", b"%PDF-1.7\n", ".jpg", "pdf", "a PDF, not an image"),
    ("pdf", b"\x00\x01\x02junk", ".pdf", "pdf", ""),  # unknown content: the PDF reader says what is wrong
    ("pdf", b"Error 404: not found", ".pdf", None, "plain-text file, not a PDF"),
    ("pdf", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(32), ".pdf", None, "old Microsoft Office file"),
])
def test_the_content_chooses_the_reader(claimed, head, suffix, read_as, words):
    from ingest.read import choose_reader
    from ingest.sniff import sniff_bytes
    from kb.errors import InputError

    if read_as is None:
        with pytest.raises(InputError) as refused:
            choose_reader(claimed, sniff_bytes(head), f"x{suffix}", suffix)
        assert words in str(refused.value) and refused.value.fix
    else:
        kind, note = choose_reader(claimed, sniff_bytes(head), f"x{suffix}", suffix)
        assert kind == read_as and words in note and (note == "") == (words == "")
