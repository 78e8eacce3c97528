"""A long video sampled in time slices by processes keeps what one pass keeps; kept frames need no second decode."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

import ingest.pipeline as pipeline
import ingest.video_sampling as video_sampling
import ingest.video_slices as video_slices
from ingest.video import read_video
from ingest.video_sampling import SamplingParams, sample_frames
from kb.types import Source, VideoClip

FPS = 10
SECONDS = 36
CUTS = {8.0: (200, 230, 250), 21.0: (250, 240, 200), 30.0: (230, 250, 230)}  # background colour from then on
LINES = {0.0: "Agenda", 3.0: "1. Sampling in slices", 13.0: "2. Keep the frames", 16.0: "3. No second decode",
         25.0: "4. Measure it"}  # a line of text appears at each time; a cut clears the slide
PARAMS = SamplingParams(fps=2.0, max_gap=4.0, frame_pixels=320 * 180)


def _frame(t: float) -> np.ndarray:
    start = max([0.0] + [c for c in CUTS if c <= t])
    img = np.full((270, 480, 3), CUTS.get(start, (250, 250, 250)), np.uint8)
    shown = [text for at, text in sorted(LINES.items()) if start <= at <= t]
    for i, line in enumerate(shown):
        cv2.putText(img, line, (30, 50 + 40 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (20, 20, 20), 2, cv2.LINE_AA)
    cv2.putText(img, f"{int(t):02d}", (420, 250), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (120, 120, 120), 1)  # a clock
    return img


@pytest.fixture(scope="module")
def lecture(tmp_path_factory) -> Path:
    """36 s of slides (OpenCV, MPEG-4): lines of text appear at known times, three cuts, a small clock."""
    path = tmp_path_factory.mktemp("slices") / "lecture.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (480, 270))
    for n in range(SECONDS * FPS):
        writer.write(cv2.cvtColor(_frame(n / FPS), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture
def in_slices(monkeypatch):
    """Slices of 5 s (8 of them, boundaries inside scenes and right after text changes) read by 2 processes."""
    monkeypatch.setattr(video_slices, "SLICE_SECONDS", 5.0)
    monkeypatch.setattr(video_slices, "SLICE_WORKERS", 2)


def test_slices_keep_the_frames_one_pass_keeps(lecture, in_slices):
    one_pass = sample_frames(lecture, PARAMS)
    sliced = video_slices.sample(lecture, PARAMS)
    assert sliced.frames == one_pass.frames  # index, time, cut and reason of every kept frame
    assert [f.picture for f in sliced.frames] == [f.picture for f in one_pass.frames]
    assert [f.keyframe for f in sliced.frames] == [f.keyframe for f in one_pass.frames]
    assert (sliced.decoded, sliced.dropped, sliced.errors) == (one_pass.decoded, one_pass.dropped, [])
    # What the slides show is kept: every cut starts a scene, every new line of text is kept within a candidate
    # (0.5 s), and a still slide keeps a frame every max_gap seconds, also across slice boundaries (where each
    # slice's frames before its first cut were decided with the frames before the slice).
    kept = [f.time for f in sliced.frames]
    assert {0.0, *CUTS} <= {round(t, 1) for t in sliced.cuts}
    assert any("still" == f.reason for f in sliced.frames)
    for at in LINES:
        assert any(at <= t < at + 0.5 for t in kept), at
    assert max(np.diff(kept)) <= PARAMS.max_gap + 1e-6
    assert len(kept) < 0.6 * one_pass.decoded  # near-duplicates were dropped in the slices too


def test_windows_frames_come_from_the_sampling_not_the_file(lecture, in_slices, make_settings, tmp_path):
    """The engine's frames are kept while sampling: a window's frames load after the video is gone, and they are
    the frames at the window's times (the burned-in clock)."""
    settings = make_settings(video_max_pixels=320 * 180)
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(lecture.read_bytes())
    source = Source(rel=copy.name, path=str(copy), sha256=hashlib.sha256(b"copy").hexdigest())
    units = read_video(copy, source, settings, replace(PARAMS, frame_pixels=settings.video_max_pixels)).units
    copy.unlink()
    assert len(units) >= 4
    for unit in units:
        clip = unit.video()
        assert clip.frames and all(f.size == (320, 180) for f in clip.frames)
        for frame, stamp in zip(clip.frames, clip.timestamps):
            expected = cv2.resize(_frame(stamp), (320, 180), interpolation=cv2.INTER_AREA).astype(np.int16)
            assert np.abs(np.asarray(frame, np.int16) - expected).mean() < 6, stamp
        assert Path(unit.keyframe).is_file()


def test_windows_kept_in_memory_open_in_this_process(lecture, in_slices, make_settings):
    """No loading process decodes a kept window and sends its pixels back: it opens where it is taken, and its
    frames decode where the engine reads them."""
    settings = make_settings(video_max_pixels=320 * 180)
    source = Source(rel=lecture.name, path=str(lecture), sha256=hashlib.sha256(b"memory").hexdigest())
    units = read_video(lecture, source, settings, replace(PARAMS, frame_pixels=settings.video_max_pixels)).units
    ahead = pipeline._LoadAhead(workers=2)
    try:
        ahead.add(units, limit=len(units))
        assert ahead._pool is None  # nothing was sent to a process
        clips = [ahead.take(unit).picture for unit in units]
    finally:
        ahead.close()
    assert all(isinstance(c, VideoClip) and c.frames for c in clips)
    assert [c.frame_indices for c in clips] == [u.video().frame_indices for u in units]
    assert all(np.asarray(f).shape == (180, 320, 3) for c in clips for f in c.frames)


def test_over_the_budget_frames_are_decoded_again(lecture, make_settings, monkeypatch):
    monkeypatch.setattr(video_sampling, "PICTURE_BUDGET", 0)
    settings = make_settings(video_max_pixels=320 * 180)
    source = Source(rel=lecture.name, path=str(lecture), sha256=hashlib.sha256(b"budget").hexdigest())
    units = read_video(lecture, source, settings, replace(PARAMS, frame_pixels=settings.video_max_pixels)).units
    assert not units[1].video.in_memory  # so its frames are decoded again in a loading process
    clip = units[1].video()
    expected = cv2.resize(_frame(clip.timestamps[0]), (320, 180), interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(np.asarray(clip.frames[0], np.int16) - expected).mean() < 6


def test_small_hosts_sample_in_one_pass(monkeypatch):
    monkeypatch.setattr(video_slices.os, "sched_getaffinity", lambda pid: {0, 1})
    assert video_slices.slice_workers() == 0
    monkeypatch.setattr(video_slices.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert video_slices.slice_workers() == 6  # the main thread and the engine's processor thread keep a core


def test_a_failed_slice_process_falls_back_to_one_pass(lecture, in_slices, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise BrokenPipeError("a sampling process died")

    monkeypatch.setattr(video_slices, "_sample_in_processes", broken)
    sampled = video_slices.sample(lecture, PARAMS)
    assert sampled.frames == sample_frames(lecture, PARAMS).frames
    assert "sampling it in one pass" in caplog.text


def test_frames_decoded_in_the_processor_threads_read_as_decoded_ones(lecture, make_settings, tiny_model_dir):
    """Kept frames reach the engine undecoded (its processor threads decode them, several at once): the model
    reads the same windows as from frames decoded beforehand."""
    from kb.engines.transformers_qwen import TransformersEngine
    from kb.types import Request
    from tests.engine_inputs import BUDGET

    settings = make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu", batch_size=2, **BUDGET)
    source = Source(rel=lecture.name, path=str(lecture), sha256=hashlib.sha256(b"threads").hexdigest())
    units = read_video(lecture, source, settings, replace(PARAMS, frame_pixels=settings.video_max_pixels)).units
    engine = TransformersEngine(settings)
    engine.processor_threads = 3

    def windows(decoded: bool) -> list[Request]:
        clips = [unit.video() for unit in units]
        for clip in clips:
            clip.frames = [f.convert("RGB") for f in clip.frames] if decoded else clip.frames
        return [Request("video", "Describe.", video=clip, max_new_tokens=4) for clip in clips]

    lazy = windows(decoded=False)
    assert all(f.tile for r in lazy for f in r.video.frames)  # not decoded yet (PIL empties `tile` once it has)
    assert engine.generate_ids(lazy) == engine.generate_ids(windows(decoded=True))


def _read_giving(path: Path, settings, label: bytes) -> tuple[list, list[int], object]:
    """Read the video with `on_unit`: the units given, the frames kept when each was given, and the result."""
    source = Source(rel=path.name, path=str(path), sha256=hashlib.sha256(label).hexdigest())
    kept, given, kept_at = [0], [], []
    keep = video_sampling.SampleResult.keep

    def counting(result, frame, on_keep):
        kept[0] = len(result.frames) + 1
        return keep(result, frame, on_keep)

    def giving(unit):
        given.append(unit)
        kept_at.append(kept[0])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(video_sampling.SampleResult, "keep", counting)
        result = read_video(path, source, settings, replace(PARAMS, frame_pixels=settings.video_max_pixels),
                            on_unit=giving)
    return given, kept_at, result


def test_windows_are_given_as_they_close_while_the_rest_is_still_sampled(lecture, in_slices, make_settings):
    """The reader gives each window's unit as soon as the next window starts (so the engine can read it while the
    rest is sampled): the first long before the last frame is kept, and the units given are the read's, in order."""
    settings = make_settings(video_max_pixels=320 * 180)
    given, kept_at, result = _read_giving(lecture, settings, b"given")
    assert len(given) >= 4 and [id(u) for u in given] == [id(u) for u in result.units]
    total = kept_at[-1]
    assert kept_at[0] < total / 2 and kept_at == sorted(kept_at) and kept_at[-2] < total
    plain = read_video(lecture, Source(rel=lecture.name, path=str(lecture), sha256="0" * 64), settings,
                       replace(PARAMS, frame_pixels=settings.video_max_pixels)).units
    assert [(u.t_start, u.t_end) for u in given] == [(u.t_start, u.t_end) for u in plain]


def test_sampling_started_over_gives_each_window_once(lecture, in_slices, make_settings, monkeypatch):
    """A slice's process dies after some windows were given: the video is sampled again in one pass, and the
    windows it makes again are not given twice (the engine has them already); the read's units are those given."""
    merge, merged = video_slices._merge, []

    def dying(*args, **kwargs):
        if len(merged) == 4:
            raise BrokenPipeError("a sampling process died")
        merged.append(1)
        return merge(*args, **kwargs)

    monkeypatch.setattr(video_slices, "_merge", dying)
    settings = make_settings(video_max_pixels=320 * 180)
    given, _, result = _read_giving(lecture, settings, b"again")
    assert len(merged) == 4 and len(given) >= 4
    assert [id(u) for u in given] == [id(u) for u in result.units]  # each once, and the read's own
    assert [(u.t_start, u.t_end) for u in given] == sorted({(u.t_start, u.t_end) for u in given})
