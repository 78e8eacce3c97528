"""The engine loads (and on a GPU warms its bulk path) while the files are read (ingest/pipeline.py `_load_early`,
kb/engines/transformers_qwen.py `prepare_to_ingest`), and nothing a user sees changes with it: the same chunks,
the same error when the engine cannot load, no engine at all for text files. Run on the tiny Qwen3-VL, CPU."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import ingest.pipeline as pipeline
from ingest.pipeline import Ingestor
from kb.embed import user_cache_dir
from kb.engines.transformers_qwen import TransformersEngine, keep_compile_caches
from kb.errors import EngineError
from kb.types import Request, VideoClip
from tests.conftest import write_pdf
from tests.engine_inputs import BUDGET, noise_image, two_scene_video

TINY_CAPS = {"max_page_tokens": 8, "max_caption_tokens": 8, "max_video_tokens": 8}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    library = tmp_path / "library"
    library.mkdir()
    (library / "a-notes.md").write_text("The pump room is on the second floor, next to the valve store.")
    two_scene_video(library / "b-clip.mp4")
    noise_image(3, (160, 120)).save(library / "c-photo.png")
    return library


def _settings(model: Path, **more: object) -> dict[str, object]:
    return {"engine": "transformers", "model": str(model), "device": "cpu", **BUDGET, **TINY_CAPS, **more}


def _chunks(store) -> list[tuple]:
    return sorted((c.rel, c.modality, c.page, c.t_start, c.text) for r in store.manifest.all()
                  for c in store.chunks_of(r.path)[0])


def _watch_the_engine_start(monkeypatch) -> tuple[dict[str, object], threading.Event]:
    """Where the engine loads and what its bulk warm-up is made for (`seen`), and an event set when the load
    starts."""
    seen: dict[str, object] = {}
    started = threading.Event()
    real_load, real_prepare = pipeline.load_engine, TransformersEngine.prepare_to_ingest

    def load(settings):
        seen["loaded on the main thread"] = threading.current_thread() is threading.main_thread()
        started.set()
        return real_load(settings)

    def prepare(engine, video=False, pages=True):
        seen["warmed for video"], seen["warmed for pages"] = video, pages
        return real_prepare(engine, video=video, pages=pages)

    monkeypatch.setattr(pipeline, "load_engine", load)
    monkeypatch.setattr(TransformersEngine, "prepare_to_ingest", prepare)
    return seen, started


def test_a_folder_with_a_video_loads_and_warms_the_engine_while_the_video_is_sampled(folder, open_kb,
                                                                                      tiny_model_writer, monkeypatch):
    store = open_kb(**_settings(tiny_model_writer))
    seen, load_started = _watch_the_engine_start(monkeypatch)
    real_read = pipeline.read_file

    def read(path, *args, **kwargs):
        result = real_read(path, *args, **kwargs)
        if path.suffix == ".mp4":  # sampled now: a load started only after reading would not come in time
            seen["loading while sampled"] = load_started.wait(10)
        return result

    monkeypatch.setattr(pipeline, "read_file", read)
    report = Ingestor(store.settings, store).run([folder])
    assert seen == {"loaded on the main thread": False, "loading while sampled": True, "warmed for video": True,
                    "warmed for pages": True}
    assert report.counts() == {"added": 3}, report.results
    assert report.engine.startswith("transformers")


def test_a_folder_of_videos_only_warms_the_engine_for_windows_only(tmp_path, open_kb, tiny_model_writer,
                                                                   monkeypatch):
    """A page's cache is longer than a window's: sized for pages, 256 rows of windows did not fit an H200."""
    library = tmp_path / "videos"
    library.mkdir()
    two_scene_video(library / "clip.mp4")
    store = open_kb(**_settings(tiny_model_writer))
    seen, _ = _watch_the_engine_start(monkeypatch)
    report = Ingestor(store.settings, store).run([library])
    assert report.counts() == {"added": 1}, report.results
    assert seen == {"loaded on the main thread": False, "warmed for video": True, "warmed for pages": False}


def test_a_scanned_pdf_starts_the_engine_loading_once_it_is_read(tmp_path, open_kb, tiny_model_writer,
                                                                  monkeypatch):
    """A PDF's extension does not say whether its pages need the engine: once read, a page without a text layer
    starts the load and the warm-up, while the next files are read and the pages rendered."""
    folder = tmp_path / "scans"
    folder.mkdir()
    page = Image.new("RGB", (600, 300), "white")
    ImageDraw.Draw(page).text((30, 120), "KINGFISHER REPORT PAGE 1", fill="black", font_size=32)
    page.save(folder / "a-scan.pdf", resolution=100)
    (folder / "b-notes.md").write_text("The kingfisher report is filed every spring.")
    seen, loading = _watch_the_engine_start(monkeypatch)
    real_read = pipeline.read_file

    def read(path, *args, **kwargs):
        if path.suffix == ".md":
            seen["loading when the next file is read"] = loading.is_set()
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_file", read)
    store = open_kb(**_settings(tiny_model_writer))
    report = Ingestor(store.settings, store).run([folder])
    assert report.counts() == {"added": 2}, report.results
    assert seen == {"loaded on the main thread": False, "loading when the next file is read": True,
                    "warmed for video": False, "warmed for pages": True}
    assert ("a-scan.pdf", "pdf_ocr") in {(rel, modality) for rel, modality, *_ in _chunks(store)}


def test_the_early_start_changes_no_chunk(folder, open_kb, tiny_model_writer, tmp_path, monkeypatch):
    chunks = {}
    for early in (True, False):
        if not early:  # as before: the engine loads on the main thread at the first unit that needs it
            monkeypatch.setattr(Ingestor, "_load_early", lambda self, jobs: None)
        store = open_kb(**_settings(tiny_model_writer, home=tmp_path / f"kb-{early}"))
        report = Ingestor(store.settings, store).run([folder])
        assert report.counts() == {"added": 3}, report.results
        chunks[early] = _chunks(store)
    assert {(rel, modality) for rel, modality, *_ in chunks[True]} >= {
        ("b-clip.mp4", "video_segment"), ("c-photo.png", "image_ocr"), ("a-notes.md", "text")}
    assert chunks[True] == chunks[False]


def test_an_engine_that_cannot_load_fails_the_run_as_before(folder, open_kb, tmp_path, monkeypatch):
    outcomes = {}
    for early in (True, False):
        if not early:
            monkeypatch.setattr(Ingestor, "_load_early", lambda self, jobs: None)
        store = open_kb(**_settings(tmp_path / "no-such-model", home=tmp_path / f"kb-{early}"))
        with pytest.raises(EngineError) as err:
            Ingestor(store.settings, store).run([folder])
        outcomes[early] = (str(err.value), err.value.fix, _chunks(store))
    assert "no-such-model does not exist" in outcomes[True][0] and "KB_ENGINE=ocr" in outcomes[True][1]
    assert outcomes[True] == outcomes[False]


def test_a_folder_of_text_files_never_loads_an_engine(tmp_path, open_kb, tiny_model_writer, monkeypatch):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.md").write_text("Quarterly figures are filed by the fifth working day.")
    (folder / "b.txt").write_text("The archive closes at six.")
    write_pdf(folder / "c.pdf", [f"A born-digital page about valve {n}: " + "its seals are checked monthly. " * 8
                                 for n in range(2)])
    loads = []
    monkeypatch.setattr(pipeline, "load_engine", lambda settings: loads.append(settings))
    store = open_kb(**_settings(tiny_model_writer))
    report = Ingestor(store.settings, store).run([folder])
    assert report.counts() == {"added": 3}, report.results
    assert loads == [] and report.engine == "none needed"


@pytest.fixture
def engine(make_settings, tiny_model_dir) -> TransformersEngine:
    return TransformersEngine(make_settings(**_settings(tiny_model_dir)))


def test_prepare_to_ingest_does_nothing_on_a_cpu(engine):
    threads = threading.active_count()
    done = engine.prepare_to_ingest(video=True)
    assert done.done() and done.result() is None
    assert engine._slabs == {} and engine.last_stats is None and threading.active_count() == threads


@pytest.mark.parametrize("video, pages, caps", [(False, True, {"max_video_tokens": 400}),
                                                 (True, True, {"max_video_tokens": 400}),
                                                 (True, False, {"max_page_tokens": 2000})])
def test_the_warm_up_makes_the_bulk_cache_the_real_call_uses(make_settings, tiny_model_dir, video, pages, caps):
    """What the warm-up thread does on a GPU, run here directly: the real call finds the cache made for it, and
    the cache is no longer than the planned files need (`caps`: a window needs more columns than a page, or a
    page more than a window)."""
    engine = TransformersEngine(make_settings(**_settings(tiny_model_dir, **caps)))
    engine._warm_bulk(video, pages)
    warmed = engine._slabs["bulk"]
    s = engine.settings
    page = Request(task="ocr", prompt="Read this page.", images=[noise_image(1, (120, 100))],
                   max_new_tokens=s.max_page_tokens)
    clip = VideoClip(frames=[noise_image(n, (160, 120)) for n in range(s.video_window_frames)],
                     frame_indices=list(range(0, 10 * s.video_window_frames, 10)), fps=10.0, total_frames=400)
    window = Request(task="video", prompt="Describe this.", video=clip, max_new_tokens=s.max_video_tokens)
    real = [page] * pages + [window] * video
    engine.generate_ids(real)
    assert engine._slabs["bulk"] is warmed and engine.last_stats.slab_s == 0.0
    if not video:  # a page's cache is too short for a window: a folder with a video must ask for it
        assert not warmed.fits(engine.columns_bound(window))
    if not pages:  # a window's cache is too short for a page here: a video-only folder did not pay for pages
        assert not warmed.fits(engine.columns_bound(page))


def test_a_kept_engines_warm_up_runs_no_loop_once_its_cache_and_functions_are_warm(make_settings, tiny_model_dir):
    """A worker keeps its engine between jobs: the next job's warm-up finds the cache it needs, its steps recorded
    and its prefill compiled, and runs no loop (a warm-up loop's short tail would record steps of fewer rows); it
    records the steps of a loop's tail instead, so the job's own tail does not stop to record one."""
    engine = TransformersEngine(make_settings(**_settings(tiny_model_dir)))
    loops: list[int] = []
    generate_ids = engine.generate_ids
    engine.generate_ids = lambda requests: loops.append(len(requests)) or generate_ids(requests)  # type: ignore

    def warm_when_idle() -> None:  # the loop's thread ends just after the call's batch is handed back
        for _ in range(200):
            if not engine._bulk.running:
                break
            time.sleep(0.05)
        assert not engine._bulk.running  # a running loop would make the warm-up return at once
        engine._warm_bulk(video=True, pages=True)

    warm_when_idle()
    assert len(loops) == 1  # a fresh engine: the warm-up compiles the prefill
    warmed = engine._slabs["bulk"]
    warm_when_idle()
    assert len(loops) == 1 and engine._slabs["bulk"] is warmed  # the next job's: no loop
    recorded: list[int] = []
    warmed.record_all = lambda up_to, rows=0: recorded.append(rows) or 0  # type: ignore[method-assign]
    warm_when_idle()
    assert len(loops) == 1 and recorded == warmed.tail_rows()  # every row count a tail steps, no loop
    warmed.lacks_any = lambda up_to, rows=0: True  # type: ignore[method-assign]  # a GPU cache not yet recorded
    warm_when_idle()
    assert len(loops) == 2


def test_compile_caches_default_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    keep_compile_caches()
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).is_relative_to(user_cache_dir())
    assert str(user_cache_dir()).startswith(str(tmp_path / "cache"))
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine")  # the user's choice is kept


def test_a_failing_warm_up_is_logged_not_raised(engine, monkeypatch, caplog):
    monkeypatch.setattr(engine, "_device", "cuda:0")  # the GPU path, on a CPU: its warm-up fails at once
    monkeypatch.setattr(engine, "_warm_bulk", lambda video, pages: (_ for _ in ()).throw(RuntimeError("no GPU here")))
    done = engine.prepare_to_ingest()
    assert isinstance(done.exception(timeout=10), RuntimeError)
    logged = False
    for _ in range(100):  # the callback logs on the warm-up thread, right after the failure is set
        logged = any("warming up the bulk path failed" in r.getMessage() and "no GPU here" in r.getMessage()
                     for r in caplog.records)
        if logged:
            break
        time.sleep(0.05)
    assert logged
    monkeypatch.setattr(engine, "_device", "cpu")
    assert engine.generate_ids([Request(task="ocr", prompt="x", images=[noise_image(2, (64, 64))],
                                        max_new_tokens=3)])
