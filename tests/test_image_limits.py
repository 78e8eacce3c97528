"""Image decoding that stays bounded and honest whatever a file claims: the decode limit reported as a limit,
truncated files reported as truncated, every Pillow mode converted before OCR, pictures kept at engine size,
and animations read beyond their first frame. Inputs are generated here; the `ocr` engine reads them."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import ingest.image as image_reader
from data.make_samples import font
from ingest.image import read_image
from ingest.pipeline import Ingestor
from ingest.png_strips import decode_reduced
from kb.config import BUNDLED_EMBED_MODEL, load_settings
from kb.errors import InputError
from kb.imaging import OCR_MAX_SIDE, keep_size, shrink, to_rgb
from kb.search import search
from kb.types import Request, Source


@pytest.fixture(scope="module")
def engine():
    from kb.engines.ocr import OCREngine

    return OCREngine(load_settings({"engine": "ocr", "embed_model": BUNDLED_EMBED_MODEL}, env={}))


def settings(**overrides):
    return load_settings({"engine": "ocr", "embed_model": BUNDLED_EMBED_MODEL, **overrides}, env={})


def word_image(word: str, size=(420, 100), ink=(0, 0, 0), paper=(255, 255, 255), mode="RGB") -> Image.Image:
    img = Image.new(mode, size, paper)
    ImageDraw.Draw(img).text((20, size[1] // 2 - 24), word, font=font(44, "bold"), fill=ink)
    return img


def save(img: Image.Image, path: Path, fmt: str | None = None, **options) -> Path:
    img.save(path, format=fmt, **options)
    return path


def read(path: Path, **overrides):
    return read_image(path, Source(path.name, str(path), "0" * 64), settings(**overrides))


def ocr_text(engine, path: Path, **overrides) -> str:
    """What the engine reads on every frame the reader hands out for `path`."""
    units = [u for u in read(path, **overrides).units if u.task == "ocr"]
    return " ".join(engine.generate([Request(task="ocr", prompt="", images=[u.load_image()])])[0] for u in units)


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG (checksums, IEND) whose header claims width x height but that holds four rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1) * 4)) + chunk(b"IEND", b""))


# -- limits -----------------------------------------------------------------------------------------------------
def test_a_picture_above_the_decode_limit_is_refused_naming_its_size_and_the_setting(tmp_path):
    path = save(Image.new("L", (1500, 1000), 255), tmp_path / "poster.png")
    with pytest.raises(InputError) as err:
        read(path, image_decode_max_pixels=1_000_000)
    message = str(err.value)
    assert message.startswith("poster.png: ") and "1500 x 1000" in message and "1 Mpx" in message
    assert "KB_IMAGE_DECODE_MAX_PIXELS=10000000" in err.value.fix
    assert read(path, image_decode_max_pixels=1_500_000).units  # at the limit it is read


def test_a_tiff_page_above_the_limit_is_refused_even_when_the_first_page_is_small(tmp_path):
    path = tmp_path / "scans.tif"
    Image.new("L", (100, 100), 255).save(path, save_all=True, append_images=[Image.new("L", (1200, 1000), 255)])
    with pytest.raises(InputError) as err:
        read(path, image_decode_max_pixels=1_000_000)
    assert "page 2" in str(err.value) and "KB_IMAGE_DECODE_MAX_PIXELS" in err.value.fix


def test_a_png_claiming_16000_square_with_its_data_missing_is_truncated_not_empty(tmp_path):
    path = tmp_path / "huge-header.png"
    path.write_bytes(png_claiming(16000, 16000))
    for limit in (100_000_000, 300_000_000):  # truncated is said first, whatever the limit
        with pytest.raises(InputError) as err:
            read(path, image_decode_max_pixels=limit)
        assert "truncated" in str(err.value) and "16000 x 16000" in str(err.value) and err.value.fix


def test_a_png_cut_short_is_truncated(tmp_path):
    data = io.BytesIO()
    word_image("TRUNCATED").save(data, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(InputError, match="truncated"):
        read(path)


def test_a_cut_jpeg_fails_in_the_pipeline_with_a_reason_not_as_an_empty_success(open_kb, tmp_path):
    data = io.BytesIO()
    word_image("KESTREL", size=(1200, 900)).save(data, format="JPEG", quality=95)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 3])
    store = open_kb()
    result = Ingestor(store.settings, store).run([folder]).results[0]
    assert result.status == "failed" and "truncated" in " ".join(result.errors)


def test_pictures_are_kept_at_engine_size_so_a_batch_holds_small_images(tmp_path):
    big_png = save(Image.new("RGB", (6000, 4000), (200, 190, 180)), tmp_path / "big.png", compress_level=1)
    big_jpeg = save(Image.new("RGB", (6000, 4000), (200, 190, 180)), tmp_path / "big.jpg", quality=80)
    for path in (big_png, big_jpeg):
        image = read(path).units[0].load_image()
        assert image.mode == "RGB" and image.size == keep_size(6000, 4000, settings().image_max_pixels)
        assert max(image.size) == OCR_MAX_SIDE
    small = save(Image.new("RGB", (300, 200), "white"), tmp_path / "small.png")
    assert read(small).units[0].load_image().size == (300, 200)  # never enlarged


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "1"])
def test_a_big_png_decoded_strip_by_strip_matches_a_whole_decode_and_is_read(engine, tmp_path, monkeypatch, mode):
    """8000 x 5000: decoded in strips and reduced on the way (never 40 Mpx at once), same picture as Pillow's."""
    page = Image.new("RGB", (8000, 5000), (250, 248, 240))
    ImageDraw.Draw(page).text((600, 2000), "OSPREY", font=font(700, "bold"), fill=(20, 30, 120))
    picture = (page.convert("P", palette=Image.Palette.ADAPTIVE, colors=16) if mode == "P"
               else page.convert(mode, dither=Image.Dither.NONE))
    path = save(picture, tmp_path / "poster.png", compress_level=1)
    size = keep_size(8000, 5000, settings().image_max_pixels)
    factors = []
    monkeypatch.setattr(image_reader, "decode_reduced",
                        lambda path, header, factor: factors.append(factor) or decode_reduced(path, header, factor))
    strips = read(path).units[0].load_image()
    assert factors == [2]
    whole = to_rgb(shrink(Image.open(path), size))
    assert strips.size == whole.size == size
    assert np.abs(np.asarray(strips, dtype=int) - np.asarray(whole, dtype=int)).mean() < 1.0
    if mode in ("RGB", "1"):  # reading it once per kind of source is enough
        assert "OSPREY" in engine.generate([Request(task="ocr", prompt="", images=[strips])])[0]


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    path = save(Image.new("RGB", (400, 300), "white"), tmp_path / "phone.jpg", exif=exif)
    assert read(path).units[0].load_image().size == (300, 400)


# -- conversions before OCR --------------------------------------------------------------------------------------
def gray16(word: str, ink: int, paper: int) -> Image.Image:
    mask = np.asarray(word_image(word).convert("L")) < 128
    return Image.fromarray(np.where(mask, ink, paper).astype(np.uint16))


@pytest.mark.parametrize(("word", "ink", "paper"), [("PELICAN", 3000, 0), ("GANNET", 12000, 65535)],
                         ids=["dark-grey-on-black", "dark-grey-on-white"])
def test_16bit_greyscale_text_is_read(engine, tmp_path, word, ink, paper):
    """16-bit pixels are stretched over their real range: text at 3000 of 65535 on black is not lost."""
    path = save(gray16(word, ink, paper), tmp_path / "scan16.png")
    assert Image.open(path).mode == "I;16"
    assert word in ocr_text(engine, path)
    assert word in engine.generate([Request(task="ocr", prompt="", images=[Image.open(path)])])[0]


def _palette_with_transparency() -> Image.Image:
    img = word_image("MARMOT", ink=(20, 40, 160)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    img.info["transparency"] = img.getpixel((0, 0))  # the paper is see-through
    return img


def _alpha_only(mode: str) -> Image.Image:
    """Black text drawn only in the alpha channel: colour is black everywhere, paper fully transparent."""
    alpha = word_image("FALCON").convert("L").point(lambda v: 255 - v)
    return Image.merge(mode, [Image.new("L", alpha.size, 0)] * (len(mode) - 1) + [alpha])


CONVERSIONS = {
    "palette-transparent.png": (_palette_with_transparency, "PNG", "MARMOT"),
    "la.png": (lambda: _alpha_only("LA"), "PNG", "FALCON"),
    "rgba.webp": (lambda: _alpha_only("RGBA"), "WEBP", "FALCON"),
    "cmyk.jpg": (lambda: word_image("OTTER").convert("CMYK"), "JPEG", "OTTER"),
    "bilevel.tif": (lambda: word_image("BADGER").convert("1"), "TIFF", "BADGER"),
}


@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_every_colour_mode_is_converted_before_ocr(engine, tmp_path, name):
    make, fmt, word = CONVERSIONS[name]
    path = save(make(), tmp_path / name, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert word in ocr_text(engine, path)


# -- animations --------------------------------------------------------------------------------------------------
def blank_frame(n: int, size=(420, 100)) -> Image.Image:
    """A blank frame with a 2-pixel progress dot: every frame differs from the last, but not in a way to read."""
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).rectangle((n % size[0], size[1] - 2, n % size[0] + 1, size[1] - 1), fill=(60, 60, 60))
    return img


def animated(path: Path, frames: list[Image.Image], fmt: str | None = None) -> Path:
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return path


def test_text_on_frame_250_of_a_500_frame_gif_is_searchable(open_kb, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    frames = [word_image("NARWHAL") if n == 249 else blank_frame(n) for n in range(500)]
    path = animated(folder / "anim.gif", frames)
    assert Image.open(path).n_frames == 500
    store = open_kb()
    result = Ingestor(store.settings, store).run([folder]).results[0]
    assert result.status == "added" and result.chunks >= 1
    hits = search(store, "NARWHAL", k=3)
    assert hits and hits[0].chunk.rel == "anim.gif" and hits[0].chunk.page == 250 and "NARWHAL" in hits[0].chunk.text


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_identical_and_near_identical_frames_are_read_once(tmp_path, fmt):
    words = ["ALPHA", "BRAVO", "CHARLIE"]
    frames = [word_image(word) for word in words for _ in range(10)]
    frames = [_speck(f, n) for n, f in enumerate(frames)]  # a faint speck moves: no two frames are the same
    path = animated(tmp_path / f"slides.{fmt.lower()}", frames, fmt)
    assert Image.open(path).n_frames == 30
    result = read(path, image_max_frames=50)
    ocr = [u for u in result.units if u.task == "ocr"]
    assert [u.page for u in ocr] == [1, 11, 21] and not result.notes


def _speck(img: Image.Image, n: int) -> Image.Image:
    img = img.copy()
    img.putpixel((400 + n % 10, 5 + n // 10), (0, 0, 0))
    return img


def test_many_distinct_frames_are_sampled_over_the_whole_animation_and_the_limit_is_said(engine, tmp_path):
    frames = [word_image(f"SLIDE {n}") for n in range(30)]
    path = animated(tmp_path / "slideshow.gif", frames)
    result = read(path, image_max_frames=5)
    pages = [u.page for u in result.units if u.task == "ocr"]
    assert len(pages) == 5 and pages[0] == 1 and pages[-1] == 30 and pages == sorted(pages)
    assert "30 distinct" in result.notes[0] and "KB_IMAGE_MAX_FRAMES=5" in result.notes[0]
    last = next(u for u in result.units if u.task == "ocr" and u.page == 30)
    assert "SLIDE 29" in engine.generate([Request(task="ocr", prompt="", images=[last.load_image()])])[0]


# -- videos too small or too plain to hold text --------------------------------------------------------------------
@pytest.mark.parametrize(("size", "count"), [((33, 17), 10), ((64, 48), 1), ((3, 3), 5)],
                         ids=["33x17", "one-frame", "3x3"])
def test_tiny_and_textless_videos_give_units_the_pipeline_can_judge(engine, tmp_path, size, count):
    """No crash and at least one window the engine reads (to empty text: the pipeline then says "no text")."""
    import cv2

    from ingest.video import read_video

    path = tmp_path / "tiny.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, size)
    for _ in range(count):
        writer.write(np.full((size[1], size[0], 3), 90, np.uint8))
    writer.release()
    result = read_video(path, Source("tiny.mp4", str(path), "1" * 64), settings(home=tmp_path / "kb"))
    assert result.units and not result.errors
    texts = engine.generate([Request(task="video", prompt="", video=u.video()) for u in result.units])
    assert texts == [""] * len(result.units)
