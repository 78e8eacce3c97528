"""The generated sample library: each file holds what a new user is told it holds, readable the way ingest reads it."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pymupdf
import pytest

from data import make_samples as ms
from kb.errors import SeekframeError


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    results = ms.generate(out)
    assert all(status == "written" or status.startswith("skipped (no CJK") for status in results.values()), results
    return out


@pytest.fixture(scope="module")
def ocr():
    """RapidOCR with its bundled models; returns the recognised lines of a BGR image joined by newlines."""
    from rapidocr import RapidOCR

    engine = RapidOCR()
    return lambda bgr: "\n".join(engine(bgr).txts or ())


def _page_text(page) -> str:
    return " ".join(page.get_text().split()).lower()  # line wraps must not hide a phrase


def _video_frames(path: Path) -> list[np.ndarray]:
    """Decode every frame in order (sequential reads are exact where seeking in H.264 may not be)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_manual_is_three_text_pages_with_each_phrase_on_its_page(samples: Path) -> None:
    with pymupdf.open(samples / ms.MANUAL_NAME) as doc:
        texts = [_page_text(page) for page in doc]
    assert len(texts) == 3
    for number, phrase in ms.MANUAL_PHRASES.items():
        pages_with_phrase = [i + 1 for i, text in enumerate(texts) if phrase.lower() in text]
        assert pages_with_phrase == [number], phrase
    assert "track mute silences the selected track" in texts[0]  # the text table survives as text lines


def test_scanned_invoice_has_no_text_layer_but_ocr_reads_it(samples: Path, ocr) -> None:
    with pymupdf.open(samples / ms.INVOICE_NAME) as doc:
        assert len(doc) == 1
        page = doc[0]
        assert page.get_text().strip() == ""
        assert len(page.get_images()) == 1
        pix = page.get_pixmap(dpi=120)
    rgb = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, pix.n)[..., :3]
    text = ocr(np.ascontiguousarray(rgb[..., ::-1]))
    assert ms.INVOICE_NUMBER in text
    assert f"{ms.INVOICE_TOTAL:.2f}" in text


def test_video_has_the_promised_length_and_slide_schedule(samples: Path, ocr) -> None:
    cap = cv2.VideoCapture(str(samples / ms.VIDEO_NAME))
    fps, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    assert fps == pytest.approx(ms.VIDEO_FPS)
    assert count / fps == pytest.approx(ms.SLIDES[-1][1])
    assert (width, height) == ms.VIDEO_SIZE

    frames = _video_frames(samples / ms.VIDEO_NAME)
    assert len(frames) == count
    at_5s = ocr(frames[round(5.0 * ms.VIDEO_FPS)])
    assert "Slide 2" in at_5s and "Slide 1" not in at_5s
    assert "t = 5.0 s" in at_5s
    # The switch happens exactly on the schedule: the last frame before 4 s still shows slide 1.
    assert "Slide 1" in ocr(frames[round(4.0 * ms.VIDEO_FPS) - 1])


def test_whiteboard_photo_text_is_readable(samples: Path, ocr) -> None:
    text = ocr(cv2.imread(str(samples / ms.PHOTO_NAME)))
    assert "Sprint" in text
    assert "12 March" in text


def test_chinese_notice_is_readable_when_a_cjk_font_exists(samples: Path, ocr) -> None:
    path = samples / ms.NOTICE_NAME
    if not path.exists():
        pytest.skip("no CJK font on this machine, so the generator skipped the Chinese notice")
    assert "会议室" in ocr(cv2.imread(str(path)))


def test_library_is_small(samples: Path) -> None:
    assert sum(p.stat().st_size for p in samples.iterdir()) < 2 * 1024 * 1024


def test_rerun_skips_existing_files_and_force_rebuilds_identical_ones(tmp_path: Path) -> None:
    assert ms.main([str(tmp_path)]) == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    assert set(ms.generate(tmp_path).values()) == {"skipped (exists)"}
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == {n: m for n, (m, _) in before.items()}

    (tmp_path / ms.PHOTO_NAME).unlink()
    results = ms.generate(tmp_path)
    assert results[ms.PHOTO_NAME] == "written" and results[ms.MANUAL_NAME] == "skipped (exists)"

    assert set(ms.generate(tmp_path, force=True).values()) <= {"written", "skipped (no CJK font on this machine)"}
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {n: b for n, (_, b) in before.items()}
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_unwritable_target_fails_with_a_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SeekframeError) as err:
        ms.generate(blocker / "samples")
    assert "OUT_DIR" in err.value.fix
    assert ms.main([str(blocker / "samples")]) != 0
    assert "fix:" in capsys.readouterr().err


def test_missing_cjk_font_skips_only_the_chinese_notice(tmp_path: Path, monkeypatch, caplog) -> None:
    others = [ms.MANUAL_NAME, ms.INVOICE_NAME, ms.PHOTO_NAME, ms.VIDEO_NAME]
    for name in others:  # already there, so only the notice is attempted
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr(ms, "cjk_font", lambda size: None)
    results = ms.generate(tmp_path)
    assert results[ms.NOTICE_NAME].startswith("skipped (no CJK font")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert "no CJK font" in caplog.text
