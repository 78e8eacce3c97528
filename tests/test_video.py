"""Video ingestion on real clips and generated ones: timestamps, scene-aware sampling, key frames, damaged files."""
from __future__ import annotations

import hashlib
import re
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from ingest.pipeline import Ingestor
from ingest.video import group_windows, read_video
from ingest.video_decoders import open_video
from ingest.video_sampling import SamplingParams, sample_frames
from kb.search import search
from kb.types import Source

COUNTER = "videos/pyscenedetect/counter.mp4"  # 10 fps, each frame shows "Frame = N" and "PTS = X s"
TESTCARD = "videos/moviepy/testcard_timecode_16s.mp4"  # 25 fps, frame n shows 00:00:{n//25}:{n%25}
WEBM = "videos/moviepy/big_buck_bunny_432_433.webm"


# -- generated clips --------------------------------------------------------------------------------------------
def write_video(path: Path, frames, fps: int = 5, rotation: int = 0, times: list[float] | None = None) -> Path:
    """Encode RGB frames as H.264 in an MP4; `times` gives each frame's own timestamp (variable frame rate)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.pix_fmt = "yuv420p"
        if times:
            stream.codec_context.time_base = Fraction(1, 1000)
        for n, img in enumerate(frames):
            if n == 0:
                stream.height, stream.width = img.shape[:2]
                if rotation:
                    stream.set_display_rotation(rotation)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times:
                frame.pts, frame.time_base = round(times[n] * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


_NOISE = [np.random.default_rng(n).normal(0, 4.0, (270, 480, 3)).astype(np.int16) for n in range(4)]


def slide(lines: list[str], bg=(250, 250, 250), seed: int = 0) -> np.ndarray:
    """A 480x270 slide with dark text lines and sensor-like noise that differs from frame to frame."""
    img = np.full((270, 480, 3), bg, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(img, line, (30, 50 + 40 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (20, 20, 20), 2, cv2.LINE_AA)
    return np.clip(img + _NOISE[seed % len(_NOISE)], 0, 255).astype(np.uint8)


def source(path: Path) -> Source:
    return Source(rel=path.name, path=str(path), sha256=hashlib.sha256(str(path).encode()).hexdigest())


@pytest.fixture(scope="module")
def ocr():
    from kb.config import load_settings
    from kb.engines.ocr import OCREngine

    return OCREngine(load_settings({"engine": "ocr"}, env={}))


# -- real clips: time stamps ------------------------------------------------------------------------------------
def test_counter_segments_match_burned_in_pts(test_data, make_settings, ocr):
    """Every segment starts and ends where the burned-in PTS of its frames says, to within one frame (0.1 s)."""
    settings = make_settings()
    path = test_data / COUNTER
    params = SamplingParams(fps=2.0, window_max=1.0)
    result = read_video(path, source(path), settings, params)
    assert result.kind == "video" and result.duration == pytest.approx(3.0, abs=0.01)
    units = result.units
    assert [u.t_start for u in units] == pytest.approx([0.0, 1.0, 2.0], abs=0.1)
    assert [u.t_end for u in units[:-1]] == [u.t_start for u in units[1:]]  # segments tile the video
    assert units[-1].t_end == pytest.approx(3.0, abs=0.01)
    for unit in units:
        clip = unit.video()
        # Each frame sent to the engine shows the PTS its timestamp claims (within one frame).
        for frame, stamp in zip(clip.frames, clip.timestamps):
            shown = float(re.search(r"PTS\s*=\s*([\d.]+)", ocr.read_page(frame, detect_orientation=False))[1])
            assert abs(shown - stamp) <= 0.1 + 1e-6
        keyframe = Image.open(unit.keyframe)
        assert max(keyframe.size) <= 320
        shown = float(re.search(r"PTS\s*=\s*([\d.]+)", ocr.read_page(keyframe, detect_orientation=False))[1])
        assert abs(shown - unit.t_start) <= 0.1 + 1e-6


def test_testcard_segment_at_7s_shows_its_timecode(test_data, open_kb):
    """Ingest with the ocr engine: the segment containing second 7 reads 00:00:07:.., and search finds it."""
    store = open_kb(video_max_pixels=128 * 1024)  # 418 x 313: the timecode stays legible, OCR is twice as fast
    path = test_data / TESTCARD
    report = Ingestor(store.settings, store).run([path])
    assert report.exit_code == 0 and report.chunks >= 2
    chunks = store.chunks_of(str(path.resolve()))[0]
    assert all(c.modality == "video_segment" for c in chunks)
    at7 = [c for c in chunks if c.t_start <= 7 < c.t_end]
    assert at7 and any(re.search(r"00:00:07:\d\d", c.text) for c in at7)
    assert not any(re.search(r"00:00:07:\d\d", c.text) for c in chunks if c.t_start > 7 or c.t_end <= 7)
    # The timecode is searchable as text, and a search naming the moment returns its segment with a key frame.
    for mode in ("lexical", "hybrid", "dense"):  # the moment named in the question puts its segment first
        top = search(store, "00:00:07", k=1, mode=mode)[0].chunk
        assert top.t_start <= 7 <= top.t_end and "00:00:07" in top.text and Path(top.keyframe).is_file(), mode
    record = store.manifest.get(str(path.resolve()))
    assert record.kind == "video" and record.duration == pytest.approx(16.0, abs=0.05)


def test_webm_vp8_decodes_with_both_decoders(test_data):
    path = test_data / WEBM
    for backend in ("decord", "pyav"):
        decoder = open_video(path, prefer=backend)
        info = decoder.info
        assert (info.fps, info.total_frames, info.width, info.height) == (24.0, 24, 1280, 720)
        assert info.duration == pytest.approx(1.0, abs=0.01)
        frames = dict(decoder.read([0, 12, 23], (320, 180)))
        assert sorted(frames) == [0, 12, 23] and frames[12].shape == (180, 320, 3) and frames[12].std() > 10


def test_pyav_fallback_reads_the_same_frames_as_decord(test_data):
    path = test_data / "videos/moviepy/testcard_timecode_2s.mp4"
    by = {b: sample_frames(path, prefer=b) for b in ("decord", "pyav")}
    assert by["decord"].info.backend == "decord" and by["pyav"].info.backend == "pyav"
    assert [(f.index, f.time) for f in by["decord"].frames] == [(f.index, f.time) for f in by["pyav"].frames]
    images = {b: dict(open_video(path, prefer=b).read([37], (320, 240)))[37].astype(float) for b in by}
    assert np.abs(images["decord"] - images["pyav"]).mean() < 3  # same frame, only scaler rounding differs


# -- sampling ---------------------------------------------------------------------------------------------------
def test_static_clip_keeps_fewer_frames_than_uniform(tmp_path):
    path = write_video(tmp_path / "static.mp4", (slide(["Quarterly results", "Revenue grew 12%"], seed=n)
                                                 for n in range(100)))  # 20 s of one slide
    result = sample_frames(path)
    assert result.decoded == 20  # uniform sampling at 1 frame/s would keep all of these
    # The first frame, then one every max_gap (10 s) to show the scene is still there.
    assert [(f.time, f.reason) for f in result.frames] == [(0.0, "first"), (10.0, "still")]
    assert result.dropped == 18 and result.kept == 2


def test_clip_with_cuts_keeps_every_cut(tmp_path):
    colours = [(200, 40, 40), (40, 160, 60), (30, 60, 200), (230, 200, 40)]
    starts = [0.0, 4.5, 9.0, 15.0]  # cuts between sampling points too
    frames = (slide([f"Slide {s + 1}"], bg=colours[s], seed=n)
              for n in range(100) for s in [sum(n / 5 >= t for t in starts) - 1])
    path = write_video(tmp_path / "cuts.mp4", frames)
    result = sample_frames(path)
    cuts = result.cuts
    assert len(cuts) == 4
    for start, cut in zip(starts, cuts):
        assert start <= cut <= start + 1.0  # the first sampled frame after the cut
    assert result.kept < result.decoded  # the frames within each slide were dropped
    windows = group_windows(result.frames, result.duration)
    assert [w.t_start for w in windows] == cuts  # every slide is its own segment


def test_new_line_of_text_is_a_change_worth_keeping(tmp_path):
    """A line added to a slide and one word changed later: few pixels move, both moments are kept."""
    def lines(t: float) -> list[str]:
        out = ["Agenda", "1. Introduction"]
        if t >= 6:
            out.append("2. Methods and data")
        out.append("Speaker: Alice" if t < 12 else "Speaker: Bruno")
        return out

    path = write_video(tmp_path / "text.mp4", (slide(lines(n / 5), seed=n) for n in range(80)))
    result = sample_frames(path)
    kept = {f.time: f.reason for f in result.frames}
    assert kept == {0.0: "first", 6.0: "local", 12.0: "local"}
    assert result.cuts == [0.0]  # a new line is not a new scene


def test_camera_pan_is_not_a_cut(tmp_path):
    """A pan changes every frame (all are kept) but it is one shot: no new segment at every second."""
    rng = np.random.default_rng(3)
    picture = cv2.GaussianBlur(rng.integers(0, 255, (270, 1440, 3), dtype=np.uint8), (31, 31), 0)
    for _ in range(30):
        cv2.circle(picture, (int(rng.integers(0, 1440)), int(rng.integers(0, 270))), int(rng.integers(10, 60)),
                   tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    frames = (np.ascontiguousarray(picture[:, 8 * n:8 * n + 480]) for n in range(60))  # 40 px/s for 12 s
    result = sample_frames(write_video(tmp_path / "pan.mp4", frames))
    assert result.kept == result.decoded == 12 and result.cuts == [0.0]


def test_variable_frame_rate_uses_frame_timestamps(tmp_path, make_settings):
    """10 fps for 4 s, then 2 fps: frame times come from timestamps, not index / average rate."""
    times = [i / 10 for i in range(40)] + [4 + i / 2 for i in range(12)]
    grey = [np.full((180, 320, 3), round(t * 20), np.uint8) for t in times]  # brightness encodes the time
    path = write_video(tmp_path / "vfr.mp4", grey, fps=10, times=times)
    params = SamplingParams(same_pixels=0.0)  # keep every candidate: this test is about time, not sampling
    for backend in ("decord", "pyav"):
        result = sample_frames(path, params, prefer=backend)
        assert result.info.variable_rate
        assert [f.time for f in result.frames] == pytest.approx([float(s) for s in range(10)], abs=1e-3)
    clips = [unit.video() for unit in read_video(path, source(path), make_settings(), params).units]
    # What the engine is told (index / fps) is the frame's true time, and the frame is the one shown then.
    assert [t for c in clips for t in c.timestamps] == pytest.approx([float(s) for s in range(10)], abs=1e-3)
    assert [round(np.asarray(f).mean() / 20) for c in clips for f in c.frames] == list(range(10))


def test_rotated_phone_video_is_upright(tmp_path):
    img = np.zeros((180, 320, 3), np.uint8)
    img[:40, :40] = (255, 0, 0)  # a red mark in the stored top-left corner
    path = write_video(tmp_path / "phone.mp4", [img] * 10, rotation=90)
    decoder = open_video(path)
    assert (decoder.info.rotation, decoder.info.width, decoder.info.height) == (90, 180, 320)
    frame = dict(decoder.read([0], (180, 320)))[0]
    red = np.argwhere(frame[..., 0] > 200).mean(axis=0)
    assert frame.shape == (320, 180, 3) and red[0] > 260 and red[1] < 40  # turned 90° counter-clockwise


# -- segments and damaged files through the pipeline ------------------------------------------------------------
def test_segments_bound_their_frames_and_save_key_frames(test_data, make_settings):
    settings = make_settings(video_max_pixels=64 * 1024)
    path = test_data / TESTCARD
    result = read_video(path, source(path), settings)
    units = result.units
    assert len(units) >= 2 and units[0].t_start == 0.0 and units[-1].t_end == pytest.approx(16.0, abs=0.01)
    assert all(a.t_end == b.t_start for a, b in zip(units, units[1:]))
    for unit in units:
        clip = unit.video()
        assert 1 <= len(clip.frames) <= SamplingParams().window_max_frames
        assert all(f.width * f.height <= 64 * 1024 for f in clip.frames)
        assert unit.t_start == clip.timestamps[0] and all(unit.t_start <= t < unit.t_end for t in clip.timestamps)
        assert clip.fps == 25.0 and clip.frame_indices == [round(t * 25) for t in clip.timestamps]
        assert Path(unit.keyframe).is_file()
    saved = sorted(Path(units[0].keyframe).parent.glob("*.jpg"))
    assert len(saved) == sum(len(u.video().frames) for u in units)  # every kept frame, for the app


def test_damaged_videos_fail_alone(test_data, open_kb, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    data = (test_data / TESTCARD).read_bytes()
    (folder / "half.mp4").write_bytes(data[:len(data) // 2])
    (folder / "noise.mp4").write_bytes(np.random.default_rng(1).bytes(20_000))
    write_video(folder / "good.mp4", (slide(["Seekframe keeps going"], seed=n) for n in range(15)))
    store = open_kb(video_max_pixels=128 * 1024)
    report = Ingestor(store.settings, store).run([folder])
    status = {r.rel: r for r in report.results}
    assert status["good.mp4"].status == "added" and status["good.mp4"].chunks == 1
    assert status["noise.mp4"].status == "failed" and "fix:" in status["noise.mp4"].errors[0]
    # Half a file: what decodes is kept, and the file is flagged with the way out.
    half = status["half.mp4"]
    assert half.status == "partial" and "truncated" in half.errors[0] and "fix:" in half.errors[0]
    record = store.manifest.get(str((folder / "half.mp4").resolve()))
    assert 7.5 < record.duration < 8.5

