"""Ingest with two engine batches in flight (ingest/pipeline.py `_enrich`, the engine's `submit`): the next batch
is handed to the engine before the one before it is collected, and nothing a user sees changes with it: the same
chunks, in the same file order into the store, the same per-file errors when a batch fails. Tiny Qwen3-VL, CPU."""
from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from pathlib import Path

import pytest

import ingest.pipeline as pipeline
import kb.engines as engines
from ingest.pipeline import Ingestor
from kb.engines.transformers_qwen import TransformersEngine
from kb.errors import EngineError
from kb.store import Store
from tests.engine_inputs import BUDGET, scanned_pdf

TINY_CAPS = {"max_page_tokens": 6, "max_caption_tokens": 6, "max_video_tokens": 6}
REPLACE_SOURCES = Store.replace_sources


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    library = tmp_path / "library"
    library.mkdir()
    for name, pages in (("a-report", 3), ("b-broken", 2), ("c-memo", 1), ("d-manual", 3)):
        scanned_pdf(library / f"{name}.pdf", [f"{name} page {n + 1}" for n in range(pages)])
    return library


def _ingest(open_kb, model: Path, folder: Path, monkeypatch, pipelined: bool, units_per_row: int = 1) -> tuple:
    """Ingest the folder in batches of 2 x `units_per_row` pages (two rows, that many pages a row waiting); with
    `pipelined` off the engine is called one batch at a time, through `generate`. Returns the report, the chunks,
    the file order into the store, and the order of pictures taken, pieces handed over and batches collected."""
    monkeypatch.setattr(pipeline, "LOAD_WORKERS", 0)
    monkeypatch.setattr(engines, "UNITS_PER_ROW", units_per_row)
    if not pipelined:
        monkeypatch.setattr(pipeline, "submitter", lambda engine: None)
    home = folder.parent / f"kb-{len(list(folder.parent.glob('kb-*')))}"  # a knowledge base of its own
    store = open_kb(home=home, engine="transformers", model=str(model), device="cpu", batch_size=2, **BUDGET,
                    **TINY_CAPS)
    events: list[str] = []
    written: list[str] = []
    submit, collect, take = TransformersEngine.submit, Ingestor._collect, pipeline._LoadAhead.take

    def submitting(engine, requests):
        events.append("submit")
        return submit(engine, requests)

    def collecting(ingestor, handed, report):
        events.append("collect")
        return collect(ingestor, handed, report)

    def replace_sources(store_, items):
        written.extend(record.rel for record, _, _ in items)
        return REPLACE_SOURCES(store_, items)

    def taking(ahead, unit):
        if units_per_row > 1:
            events.append("take")
        return take(ahead, unit)

    monkeypatch.setattr(TransformersEngine, "submit", submitting)
    monkeypatch.setattr(pipeline._LoadAhead, "take", taking)
    monkeypatch.setattr(Ingestor, "_collect", collecting)
    monkeypatch.setattr(Store, "replace_sources", replace_sources)
    report = Ingestor(store.settings, store).run([folder])
    chunks = sorted((c.rel, c.page, c.text) for r in store.manifest.all() for c in store.chunks_of(r.path)[0])
    results = sorted((r.rel, r.status, r.chunks, tuple(r.errors)) for r in report.results)
    return results, chunks, written, events


def test_two_batches_in_flight_give_the_chunks_of_one_at_a_time(open_kb, tiny_model_writer, folder, monkeypatch):
    one_at_a_time = _ingest(open_kb, tiny_model_writer, folder, monkeypatch, pipelined=False)
    monkeypatch.undo()
    pipelined = _ingest(open_kb, tiny_model_writer, folder, monkeypatch, pipelined=True)
    assert pipelined[:3] == one_at_a_time[:3]
    results, chunks, written, events = pipelined
    assert [status for _, status, _, _ in results] == ["added"] * 4, results
    assert len({page for _, page, _ in chunks if page}) == 3 and all(text for _, _, text in chunks)
    # 9 pages in batches of 2: 5 batches, each next one handed over before the one before it is collected.
    assert events == ["submit", "submit", "collect"] * 1 + ["submit", "collect"] * 3 + ["collect"]
    assert one_at_a_time[3] == ["collect"] * 5


def test_an_idle_engine_starts_on_a_batchs_first_rows_while_the_rest_still_loads(open_kb, tiny_model_writer, folder,
                                                                                 monkeypatch):
    """Batches of four pages on two rows: each batch goes to the engine in pieces of two, the first as soon as its
    two pictures are in, before the next two are loaded; the chunks are those of one batch at a time."""
    one_at_a_time = _ingest(open_kb, tiny_model_writer, folder, monkeypatch, pipelined=False, units_per_row=2)
    monkeypatch.undo()
    results, chunks, written, events = _ingest(open_kb, tiny_model_writer, folder, monkeypatch, pipelined=True,
                                               units_per_row=2)
    assert (results, chunks, written) == one_at_a_time[:3]
    assert [status for _, status, _, _ in results] == ["added"] * 4, results
    piece = ["take", "take", "submit"]
    # 9 pages in batches of 4, 4 and 1; a batch is collected once the next one is handed over.
    assert events == piece * 2 + piece * 2 + ["collect"] + ["take", "submit", "collect", "collect"]


class _CutShort(Exception):
    """A job cancelled or Ctrl-C, as the pipeline meets it."""


def test_a_run_cut_short_cancels_the_batches_it_had_in_flight(open_kb, tiny_model_writer, folder, monkeypatch):
    """A run that stops while batches are in flight tells the engine to drop them (each piece handed over and not
    collected is cancelled: the engine then stops decoding it), instead of leaving the GPU busy with pages nobody
    will read."""
    monkeypatch.setattr(pipeline, "LOAD_WORKERS", 0)
    monkeypatch.setattr(engines, "UNITS_PER_ROW", 1)
    store = open_kb(home=folder.parent / "kb", engine="transformers", model=str(tiny_model_writer), device="cpu",
                    batch_size=2, **BUDGET, **TINY_CAPS)
    handed: list[Future[list[str]]] = []

    def submitting(engine, requests):  # an engine still decoding: nothing comes back before the cut
        handed.append(Future())
        return handed[-1]

    def cut_short(ingestor, batch, report):
        raise _CutShort

    monkeypatch.setattr(TransformersEngine, "submit", submitting)
    monkeypatch.setattr(Ingestor, "_collect", cut_short)
    with pytest.raises(_CutShort):
        Ingestor(store.settings, store).run([folder])
    assert len(handed) == 2  # two batches in flight when the first was to be collected
    assert all(future.cancelled() for future in handed)


def test_a_failed_batch_fails_only_its_pages_and_the_run_goes_on(open_kb, tiny_model_writer, folder, monkeypatch,
                                                                  caplog):
    """The processor fails on b-broken's pages (in the engine's loop, on its processor threads): the batches that
    hold them fail, each of their pages is tried again alone, and only b-broken's fail."""
    clean = _ingest(open_kb, tiny_model_writer, folder, monkeypatch, pipelined=True)
    monkeypatch.undo()
    request, prepare = Ingestor._request, TransformersEngine.prepare

    def marked(ingestor, unit, picture):
        made = request(ingestor, unit, picture)
        return dataclasses.replace(made, system="BROKEN") if unit.source.rel.startswith("b-") else made

    def failing(engine, requests):
        if any(r.system == "BROKEN" for r in requests):
            raise EngineError("the processor cannot read this page", "see the log")
        return prepare(engine, requests)

    monkeypatch.setattr(Ingestor, "_request", marked)
    monkeypatch.setattr(TransformersEngine, "prepare", failing)
    with caplog.at_level("WARNING", logger="ingest.pipeline"):
        results, chunks, written, events = _ingest(open_kb, tiny_model_writer, folder, monkeypatch, pipelined=True)
    # The two failed batches said why, and their four pages went back to the engine alone, handed over together.
    assert caplog.text.count("an engine batch of 2 failed (EngineError('the processor cannot read this page'") == 2
    assert events.count("submit") == 5 + 4
    broken = [r for r in results if r[0] == "b-broken.pdf"]
    problem = "ocr: the engine failed: the processor cannot read this page\n  fix: see the log"
    assert broken == [("b-broken.pdf", "failed", 0, (f"page 1: {problem}", f"page 2: {problem}"))]
    assert [r for r in results if r[0] != "b-broken.pdf"] == [r for r in clean[0] if r[0] != "b-broken.pdf"]
    assert chunks == [c for c in clean[1] if c[0] != "b-broken.pdf"]
    assert written == [name for name in clean[2] if name != "b-broken.pdf"]


def test_the_job_workers_engine_hands_batches_over_and_still_sees_each_one(make_settings, tiny_model_dir):
    """The worker wraps the engine to see each batch before it runs (status, cancel): batches handed over while
    one decodes go through that look too, and come back as the engine's own."""
    from ingest.worker import _ReportingEngine
    from kb.types import Request
    from tests.engine_inputs import noise_image

    engine = TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                              batch_size=2, **BUDGET))
    seen: list[int] = []
    wrapped = _ReportingEngine(engine, lambda requests: seen.append(len(requests)))
    batches = [[Request("ocr", "Read.", [noise_image(k, (90, 60))], max_new_tokens=4) for k in range(n, n + 3)]
               for n in (0, 3)]
    submit = engines.submitter(wrapped)
    assert submit is not None
    handed = [submit(batch) for batch in batches]
    assert [h.result() for h in handed] == [engine.generate(batch) for batch in batches]
    assert seen == [3, 3]
    assert wrapped.recording is engine.recording  # the embedder beside its batches waits on the same lock


# -- a video's windows go to the engine while the rest of it is still sampled ------------------------------------
VIDEO_WINDOWS = {"video_fps": 2.0, "video_max_gap": 1.0, "video_window_min": 1.0, "video_window_max": 2.0,
                 "video_window_frames": 3}


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """A folder with a 12 s recording of three slides: with VIDEO_WINDOWS, about six windows of two seconds."""
    from data.make_samples import make_video

    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "lecture.mp4")
    return videos


def _video_kb(open_kb, model: Path, recording: Path, home: str):
    return open_kb(home=recording.parent / home, engine="transformers", model=str(model), device="cpu", batch_size=2,
                   **BUDGET, **TINY_CAPS, **VIDEO_WINDOWS)


def _ingest_video(store, recording: Path, monkeypatch) -> tuple:
    """Ingest the recording with a loaded engine of two rows; the events in order: each piece submitted (its
    windows), and the read ending (the windows it made). Returns the report, the chunks and the events."""
    from kb.engines import load_engine

    monkeypatch.setattr(pipeline, "LOAD_WORKERS", 0)
    events: list[tuple[str, int]] = []
    submit, read_file = TransformersEngine.submit, pipeline.read_file

    def submitting(engine, requests):
        events.append(("submit", len(requests)))
        return submit(engine, requests)

    def reading(*args, **kwargs):
        result = read_file(*args, **kwargs)
        events.append(("read", len(result.units)))
        return result

    monkeypatch.setattr(TransformersEngine, "submit", submitting)
    monkeypatch.setattr(pipeline, "read_file", reading)
    report = Ingestor(store.settings, store, engine=load_engine(store.settings)).run([recording])
    chunks = sorted((c.t_start, c.t_end, c.text) for r in store.manifest.all() for c in store.chunks_of(r.path)[0])
    return report, chunks, events


def test_a_videos_first_windows_reach_the_engine_while_the_rest_is_still_sampled(open_kb, tiny_model_writer,
                                                                                 recording, monkeypatch):
    """The engine starts on a recording's first windows (a piece of its two rows) before the sampling has reached
    the end of the file, and what is stored is what reading the whole file first gave."""
    report, chunks, events = _ingest_video(_video_kb(open_kb, tiny_model_writer, recording, "kb-streamed"), recording,
                                           monkeypatch)
    assert report.counts() == {"added": 1}, report.results
    windows = next(n for event, n in events if event == "read")
    assert windows >= 5
    read_at = events.index(("read", windows))
    assert events[:read_at] == [("submit", 2)] * (windows // 2)  # every full piece went before the read ended
    assert sum(n for event, n in events if event == "submit") == windows  # each window once
    monkeypatch.undo()
    monkeypatch.setattr(Ingestor, "_stream", lambda ingestor, job, unit: None)  # queued once the file is read
    whole_first = _ingest_video(_video_kb(open_kb, tiny_model_writer, recording, "kb-whole-first"), recording,
                                monkeypatch)
    assert whole_first[1] == chunks and len(chunks) >= windows and all(text for _, _, text in chunks)
    assert whole_first[2][0] == ("read", windows)


def test_a_streamed_recording_cut_short_resumes_from_the_windows_it_read(open_kb, tiny_model_writer, recording,
                                                                         monkeypatch):
    """Cut short after the engine's first piece of windows came back: nothing is stored, and the next run reads
    only the windows that were not read yet (the first piece comes from the checkpoint)."""
    collect = Ingestor._collect
    collected: list[int] = []

    def cut_after_one(ingestor, handed, report):
        if collected:
            raise _CutShort
        collected.append(len(handed.ready))
        return collect(ingestor, handed, report)

    store = _video_kb(open_kb, tiny_model_writer, recording, "kb")
    monkeypatch.setattr(Ingestor, "_collect", cut_after_one)
    with pytest.raises(_CutShort):
        _ingest_video(store, recording, monkeypatch)
    assert store.manifest.all() == []  # nothing half-written is visible
    monkeypatch.undo()
    report, chunks, events = _ingest_video(store, recording, monkeypatch)
    assert report.counts() == {"added": 1}, report.results
    windows = next(n for event, n in events if event == "read")
    assert len(collected) == 1 and sum(n for event, n in events if event == "submit") == windows - collected[0]
    assert len({(start, end) for start, end, _ in chunks}) == windows and all(text for _, _, text in chunks)


def test_the_job_workers_engine_reads_a_videos_first_windows_while_the_rest_is_sampled(open_kb, tiny_model_writer,
                                                                                        recording, monkeypatch):
    """A job worker takes its kept engine when the plan shows a video, so the video's windows stream to it too."""
    from ingest.jobs import JobBoard
    from ingest.worker import Worker
    from kb.engines import load_engine

    store = _video_kb(open_kb, tiny_model_writer, recording, "kb-worker")
    kept = load_engine(store.settings)
    events: list[str] = []
    submit, read_file = TransformersEngine.submit, pipeline.read_file

    def submitting(engine, requests):
        events.append("submit")
        return submit(engine, requests)

    def reading(*args, **kwargs):
        result = read_file(*args, **kwargs)
        events.append("read")
        return result

    monkeypatch.setattr(pipeline, "LOAD_WORKERS", 0)
    monkeypatch.setattr(TransformersEngine, "submit", submitting)
    monkeypatch.setattr(pipeline, "read_file", reading)
    board = JobBoard(store.settings.home, allowed_folders=[recording])
    job = board.submit([recording])
    assert Worker(store, lambda: kept, board).run_one()
    assert [f.state for f in board.job(job.id).files] == ["done"]
    assert "read" in events and events.index("submit") < events.index("read")
