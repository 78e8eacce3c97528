"""Outlines: video chapters at the right seconds, document sections at the right pages."""
import pymupdf

from data.make_samples import SLIDES, make_video
from ingest.pipeline import Ingestor
from kb.answer import prepare
from kb.engines import load_engine
from kb.outline import OutlineEntry, _clean, _parse_chapters, outline
from kb.types import Chunk
from tests.conftest import write_pdf


def test_video_chapters_follow_the_slides_and_answers_see_key_frames(open_kb, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "lecture.mp4")
    store = open_kb(video_window_min=2.0, video_window_max=4.0, video_window_frames=4)
    assert Ingestor(store.settings, store).run([folder]).counts() == {"added": 1}
    chapters = outline(store, load_engine(store.settings), "lecture.mp4")
    starts = {title.split(":")[0]: start for start, _, title in SLIDES}  # "Slide 1" -> 0.0
    found = {e.title.split(":")[0]: e.t_start for e in chapters if e.title.startswith("Slide")}
    assert set(found) == set(starts)
    for slide, start in starts.items():
        assert abs(found[slide] - start) <= 1.0, (slide, found[slide])
    assert chapters[0].line().startswith("[00:00:00] ")
    # A question about the video sends the cited segments' key frames along, and the prompt says which.
    prepared = prepare("What does the slide about chunking say?", store, k=2)
    assert prepared.hits[0].chunk.modality == "video_segment" and prepared.request.images
    assert "key frames of sources [1]" in prepared.request.prompt


def test_document_outline_uses_bookmarks_with_pages(open_kb, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    path = write_pdf(folder / "report.pdf", ["Intro text. " * 10, "Methods text. " * 10, "Results text. " * 10])
    with pymupdf.open(path) as doc:
        doc.set_toc([[1, "Introduction", 1], [1, "Methods", 2], [2, "Sampling", 2], [1, "Results", 3]])
        doc.saveIncr()
    store = open_kb()
    Ingestor(store.settings, store).run([folder])
    entries = outline(store, load_engine(store.settings), "report.pdf")
    assert [(e.title, e.page, e.level) for e in entries] == [("Introduction", 1, 1), ("Methods", 2, 1),
                                                            ("Sampling", 2, 2), ("Results", 3, 1)]
    assert entries[2].line() == "  p. 2  Sampling"


def test_model_chapters_are_parsed_ordered_and_kept_inside_the_video():
    text = "Chapters:\n[00:05:20] Variable naming\n- [00:00:00] Welcome\n[1:02] Setup\n[09:59:00] Invented\nnoise"
    segment = Chunk(id="x", text="", rel="v.mp4", path="/v.mp4", sha256="s", modality="video_segment",
                    t_start=0.0, t_end=400.0)
    kept = _clean(_parse_chapters(text), [segment])
    assert [(e.t_start, e.title) for e in kept] == [(0, "Welcome"), (62, "Setup"), (320, "Variable naming")]
    assert OutlineEntry("Variable naming", t_start=320).line() == "[00:05:20] Variable naming"
