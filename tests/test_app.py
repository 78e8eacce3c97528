"""The Streamlit app through streamlit.testing (AppTest), on a real knowledge base ingested with the Ingestor.

The library: a born-digital PDF, a Markdown note carrying `<script>` and an image link, a photo of text (read
by RapidOCR), and the sample lecture clip whose segments are written through the store's public API (so the
video views are tested even where ingest/video.py is not in the tree).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import streamlit as st
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

from ingest.chunk import chunk_id
from ingest.pipeline import Ingestor, sha256_of
from kb.config import BUNDLED_EMBED_MODEL, load_settings
from kb.manifest import SourceRecord
from kb.store import open_store
from kb.types import Chunk, FileState
from pages.helpers import build_filters, safe_markdown, save_upload
from tests.conftest import ROOT, write_pdf

PDF_PAGES = ["Seekframe keeps provenance for every answer it gives. " * 3,
             "The purple elephant parade happens on page two, every spring. " * 3]
EVIL = ("# Crossing notes\n\nThe zebra crossing report says <script>alert('pwned')</script> and "
        "![x](http://evil.example/x.png) is the crossing picture.\n")
SLIDES = [(0.0, 4.0, "Slide 1: Introduction to vector search"), (4.0, 8.0, "Slide 2: Chunking PDFs by page"),
          (8.0, 12.0, "Slide 3: Citing video timestamps")]
ENV = {"KB_ENGINE": "ocr", "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL}


def make_library(folder: Path) -> Path:
    from data.make_samples import font, make_video

    folder.mkdir(parents=True)
    write_pdf(folder / "guide.pdf", PDF_PAGES)
    (folder / "crossing.md").write_text(EVIL)
    image = Image.new("RGB", (900, 260), "white")
    ImageDraw.Draw(image).text((40, 80), "Invoice INV-2024-0117", fill="black", font=font(64, "bold"))
    image.save(folder / "whiteboard.png")
    make_video(folder / "lecture_clip.mp4")
    return folder


def video_frame(video: Path, second: float) -> Image.Image:
    """The frame shown at `second`: key frames cut from the clip itself."""
    import av

    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= second:
                return frame.to_image()
    raise AssertionError(f"{video} has no frame at {second} s")


def add_video_source(store, video: Path) -> None:
    """The clip as three segments with key frames, written the way the video ingest writes them."""
    frames = store.settings.home / "keyframes"
    frames.mkdir(parents=True, exist_ok=True)
    sha = sha256_of(video)
    chunks = []
    for n, (start, end, text) in enumerate(SLIDES):
        frame = frames / f"lecture_{n}.jpg"
        video_frame(video, start + 1).resize((320, 180)).save(frame)
        chunks.append(Chunk(id=chunk_id(str(video), sha, n), text=text, rel=video.name, path=str(video),
                            sha256=sha, modality="video_segment", t_start=start, t_end=end, keyframe=str(frame),
                            engine="ocr", model="rapidocr", position=n))
    record = SourceRecord(path=str(video), rel=video.name, sha256=sha, size=video.stat().st_size, kind="video",
                          status="ok", chunks=0, engine="ocr", model="rapidocr", duration=12.0)
    store.replace_source(record, chunks)


def build_kb(home: Path, library: Path, embedder) -> None:
    settings = load_settings({"home": home, "embed_model": BUNDLED_EMBED_MODEL, "engine": "ocr"}, env={})
    store = open_store(settings, embedder)
    try:
        report = Ingestor(settings, store).run([library / n for n in ("guide.pdf", "crossing.md", "whiteboard.png")])
        assert report.exit_code == 0, report.results
        add_video_source(store, (library / "lecture_clip.mp4").resolve())
    finally:
        store.close()


@pytest.fixture(scope="module")
def base_kb(tmp_path_factory, embedder) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("app-kb")
    library = make_library(root / "library")
    build_kb(root / "kb", library, embedder)
    return root / "kb", library


def clear_caches() -> None:
    from pages import resources

    resources.in_app_worker.clear()  # stops the ingest worker before the store it writes to is closed
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def kb_env(base_kb, tmp_path, monkeypatch):
    """A private copy of the knowledge base (tests delete and re-index), and the app's settings in the env."""
    home = tmp_path / "kb"
    shutil.copytree(base_kb[0], home)
    for name, value in {**ENV, "KB_HOME": str(home), "KB_CONFIG": str(tmp_path / "none.toml")}.items():
        monkeypatch.setenv(name, value)
    clear_caches()
    yield home
    clear_caches()


def app(page: str = "") -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def ask(at: AppTest, question: str) -> AppTest:
    at.chat_input(key="question").set_value(question).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def labels(at: AppTest) -> list[str]:
    """Citation labels as the user reads them (the app escapes Markdown in them with backslashes)."""
    return [e.label.replace("\\", "") for e in at.expander]


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def wait_for_jobs(at: AppTest) -> AppTest:
    from pages import resources

    assert resources.jobs().wait(timeout=120), "the ingest jobs did not finish"
    return at.run()


# ask ------------------------------------------------------------------------------------------------------
def test_ask_with_ocr_engine_cites_the_pdf_page(kb_env):
    at = ask(app(), "Where does the purple elephant parade happen?")
    answer = at.chat_message[-1]
    # Sources are numbered in document order (neighbouring pages join as context): the quote cites page 2.
    cited = int(re.search(r"\[(\d+)\]", answer.markdown[0].value.replace("\\", "")).group(1))
    assert labels(at)[cited - 1] == f"[{cited}] guide.pdf p. 2"
    assert any("purple elephant parade" in t for t in texts(at))
    assert any("page 2" in c for i in at.get("image") for c in i.captions), "the cited page is shown"
    timing = " ".join(c.value for c in at.caption)
    assert "ocr" in timing and "retrieval" in timing and "generation" in timing


def test_follow_up_uses_the_previous_question(kb_env):
    at = ask(app(), "Where does the purple elephant parade happen?")
    ask(at, "and in which season?")  # names no subject: only the first question does
    assert len(at.session_state["history"]) == 4
    assert len(at.chat_message) == 4
    assert at.session_state["history"][-1]["hits"][0].chunk.rel == "guide.pdf"


def test_video_citation_has_key_frame_player_and_clock_labels(kb_env):
    at = app()
    at.multiselect(key="filter_groups").set_value(["video"]).run()
    ask(at, "When are PDFs chunked by page?")
    assert labels(at) and all("lecture_clip.mp4" in label for label in labels(at))
    # The best segment and its neighbour (context) are cited in time order; each has its own player.
    cited = [n for n, label in enumerate(labels(at)) if label.endswith("lecture_clip.mp4 00:04–00:08")]
    assert cited, labels(at)
    videos = at.get("video")
    assert any(v.proto.start_time == 4 and v.proto.end_time == 9 for v in videos)


def test_filters_restrict_sources_and_time(kb_env):
    at = app()
    at.multiselect(key="filter_sources").set_value(["crossing.md"]).run()
    ask(at, "Where does the purple elephant parade happen?")
    assert labels(at) and all("crossing" in label for label in labels(at))

    at = app()
    at.slider(key="filter_seconds").set_value((0.0, 3.0)).run()
    at.multiselect(key="filter_groups").set_value(["video"]).run()
    ask(at, "Citing video timestamps")
    assert labels(at) == ["[1] lecture_clip.mp4 00:00–00:04"]


def test_document_with_script_is_shown_as_text(kb_env):
    at = ask(app(), "What does the zebra crossing report say?")
    assert any("<script>alert('pwned')</script>" in t for t in texts(at)), "the document text is shown verbatim"
    for md in at.markdown:
        assert "<script" not in md.value and "![x](http" not in md.value

    at = app("pages/library.py")
    at.selectbox(key="library_open").set_value(_path(at, "crossing.md")).run()
    assert any("<script>alert('pwned')</script>" in t for t in texts(at))
    for md in at.markdown:
        assert "<script" not in md.value


def _path(at: AppTest, rel: str) -> str:
    from pages import resources

    return next(r.path for r in resources.store().manifest.all() if r.rel == rel)


def test_ask_with_tiny_transformers_model(kb_env, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("KB_ENGINE", "transformers")
    monkeypatch.setenv("KB_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("KB_DEVICE", "cpu")
    monkeypatch.setenv("KB_MAX_ANSWER_TOKENS", "6")
    clear_caches()
    at = ask(app(), "Where does the purple elephant parade happen?")
    timing = " ".join(c.value for c in at.chat_message[-1].caption)
    assert "transformers" in timing and "generation" in timing
    turn = at.session_state["history"][-1]
    assert turn["text"], "the model streamed text (random weights: noise, maybe only whitespace)"
    assert labels(at)[0].startswith("[1] guide.pdf")


def test_empty_knowledge_base_says_how_to_add_content(tmp_path, monkeypatch):
    for name, value in {**ENV, "KB_HOME": str(tmp_path / "empty"), "KB_CONFIG": str(tmp_path / "x.toml")}.items():
        monkeypatch.setenv(name, value)
    clear_caches()
    try:
        for page in ("", "pages/library.py"):
            at = app(page)
            assert "knowledge base is empty" in at.info[0].value and "Add content" in at.info[0].value
            assert not at.chat_input
    finally:
        clear_caches()


# library --------------------------------------------------------------------------------------------------
def test_library_lists_every_source_with_details(kb_env):
    at = app("pages/library.py")
    table = at.dataframe[0].value
    assert sorted(table["source"]) == ["crossing.md", "guide.pdf", "lecture_clip.mp4", "whiteboard.png"]
    assert dict(zip(table["source"], table["pages / duration"]))["lecture_clip.mp4"] == "00:12"
    at.text_input(key="library_query").set_value("video").run()
    assert list(at.dataframe[0].value["source"]) == ["lecture_clip.mp4"]
    # The only match is open: its timeline, with a button that moves the player's start.
    assert at.get("video")[0].proto.start_time == 0
    at.button(key="play_2").click().run()
    assert at.get("video")[0].proto.start_time == 8
    assert "Slide 3: Citing video timestamps" in texts(at)
    # The outline: a chapter per slide, at the second it starts.
    at.button(key="library_outline").click().run()
    outline = next(t for t in texts(at) if t.startswith("[00:00:00]"))
    assert outline.splitlines() == [f"[00:00:{int(s):02d}] {title}" for s, _, title in SLIDES]


def test_library_image_shows_its_ocr_text(kb_env):
    at = app("pages/library.py")
    at.selectbox(key="library_open").set_value(_path(at, "whiteboard.png")).run()
    assert any("INV-2024-0117" in t for t in texts(at))


def test_library_delete_and_reindex(kb_env):
    at = app("pages/library.py")
    guide = _path(at, "guide.pdf")
    at.selectbox(key="library_open").set_value(guide).run()
    assert any("purple elephant" in t for t in texts(at))
    at.button(key="library_reindex").click().run()
    assert "Re-indexing guide.pdf" in at.success[0].value.replace("\\", "")
    wait_for_jobs(at)
    from pages import resources

    job = resources.jobs().jobs()[0]
    assert [(f.rel, f.state, f.result) for f in job.files] == [("guide.pdf", FileState.DONE, "updated")]

    at = app("pages/library.py")
    at.selectbox(key="library_open").set_value(guide).run()
    at.button(key="library_delete").click().run()
    at.button(key="library_delete_confirm").click().run()
    assert "Deleted guide.pdf" in at.success[0].value.replace("\\", "")
    assert "guide.pdf" not in list(at.dataframe[0].value["source"])
    at = ask(app(), "Where does the purple elephant parade happen?")
    assert not any("guide" in label for label in labels(at))


# add content ----------------------------------------------------------------------------------------------
def test_upload_shows_a_per_file_error_for_bad_files(kb_env):
    at = app("pages/add.py")
    at.file_uploader(key="uploads").set_value([("broken.pdf", b"this is not a PDF at all", "application/pdf"),
                                               ("tool.exe", b"MZ\x90", "application/octet-stream"),
                                               ("walrus.md", b"# Walrus\n\nThe walrus choir sings at dawn.\n",
                                                "text/markdown")]).run()
    at.button(key="ingest_uploads").click().run()
    errors = [e.value.replace("\\", "") for e in at.error]
    assert any("tool.exe" in e and "unsupported file type" in e for e in errors)
    wait_for_jobs(at)
    errors = [e.value.replace("\\", "") for e in at.error]
    # "not a readable PDF", or what the content sniffing says it really is: either way the user reads why
    assert any("broken.pdf" in e and "not a PDF" in e.replace("readable ", "") for e in errors), errors
    statuses = dict(zip(at.dataframe[0].value["file"], at.dataframe[0].value["status"]))
    assert statuses == {"broken.pdf": FileState.FAILED, "walrus.md": FileState.DONE}
    assert [p.name for p in (kb_env / "uploads").glob("*/walrus.md")] == ["walrus.md"]
    at = ask(app(), "What does the walrus choir do?")
    assert labels(at)[0] == "[1] walrus.md"


def test_add_a_server_folder_and_a_missing_one(kb_env, tmp_path, monkeypatch):
    monkeypatch.setenv("KB_ALLOWED_FOLDERS", str(tmp_path))
    clear_caches()
    folder = tmp_path / "more"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "otter.md").write_text("# Otters\n\nThe otter holds hands while sleeping.\n")
    at = app("pages/add.py")
    at.text_input(key="folder_path").set_value(str(tmp_path / "nowhere")).run()
    at.button(key="ingest_folder").click().run()
    assert "no such file or folder" in at.error[0].value
    at.text_input(key="folder_path").set_value(str(folder)).run()
    at.button(key="ingest_folder").click().run()
    wait_for_jobs(at)
    assert dict(zip(at.dataframe[0].value["file"], at.dataframe[0].value["status"])) == {"sub/otter.md": FileState.DONE}


# system ---------------------------------------------------------------------------------------------------
def test_system_page_shows_engine_size_and_settings(kb_env):
    at = app("pages/system.py")
    from pages import resources

    resources.engine()  # finish loading, so the page shows the engine rather than "loading"
    at.run()
    engine = at.dataframe[0].value
    assert engine["engine"][0] == "ocr"
    assert any("'ocr' chosen by KB" in c.value for c in at.caption)  # why: as load_engine decided it
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Sources"] == "4" and int(metrics["Chunks"]) >= 5 and metrics["On disk"][0] != "0"
    config = at.dataframe[-1].value
    origin = dict(zip(config["setting"], config["from"]))
    assert origin["home"] == "KB_HOME" and origin["engine"] == "KB_ENGINE"
    assert any("GPU" in c.value for c in at.caption)


# jobs and helpers (no Streamlit) -----------------------------------------------------------------------------
def test_safe_markdown_keeps_links_images_and_html_out():
    text = ("See [x](http://evil.example/a) ![y](https://evil.example/a.png) <img src=x> www.evil.example "
            "me@evil.example &#91;z&#93;(https&#58;//evil.example) [1] [9].")
    shown = safe_markdown(text, citations=1)
    assert "<img" not in shown and "&#" not in shown and not re.search(r"(?<!\\)[\[\]]", shown)
    assert not re.search(r"(?i)https?://|www\.|@evil", shown), "a bare URL or address would be linked"
    assert "\\[1\\]" in shown and "[9]" not in shown.replace("\\", "")
    assert safe_markdown("a claim [1", 3, streaming=True) == "a claim "  # the marker is not finished yet
def test_filters_and_uploads_helpers(tmp_path):
    assert build_filters([], ["video"], (0.0, 12.0), (0.0, 12.0)).seconds is None
    assert build_filters(["a.pdf"], [], (2.0, 5.0), (0.0, 12.0)).seconds == (2.0, 5.0)
    saved = save_upload("../../etc/notes.md", b"hi", tmp_path, [".md"])
    assert saved.parent.parent == tmp_path and saved.name == "notes.md" and saved.read_bytes() == b"hi"
    with pytest.raises(Exception, match="empty"):
        save_upload("a.md", b"", tmp_path, [".md"])


# 中文 / English -------------------------------------------------------------------------------------------------
# What may stay in Latin letters on a Chinese page: names (product, engines, models, formats, settings), units.
LATIN_ALLOWED = {"Seekframe", "OCR", "PDF", "GPU", "CPU", "cpu", "cuda", "CUDA", "NVIDIA", "nvidia", "smi", "Chroma",
                 "RapidOCR", "ocr", "rapidocr", "openai", "transformers", "auto", "Qwen", "VL", "vLLM", "SGLang",
                 "token", "Top", "B", "MB", "KB", "GB", "MiB", "pid", "s", "p",
                 "Vera"}  # the signed-in user's own name
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
# Stripped before looking for English words: code spans, paths and file names, settings, numbers with units.
NOT_WORDS = re.compile(r"`[^`]*`|\S*[/\\]\S*|[\w.-]*\.[A-Za-z0-9]{2,8}\b|\b[A-Z]+_[A-Z_]+\b|[\w.+-]+@[\w.-]+")
_SHOWN_FIELDS = ("body", "label", "help", "placeholder", "caption", "text", "page_name")


def shown_texts(at: AppTest) -> list[str]:
    """Everything a visitor reads on the page the app drew: each element's text, label, help and placeholder,
    tab and expander labels, widget options, metric labels, image captions, table headers.

    Left out: document text (st.text, shown verbatim), the chat turns' own words (the question, and the answer,
    which follows the question's language), the titles of past conversations (the visitor's questions) and the
    language switch's options (each language's name in its own script)."""
    found: list[str] = []

    def strings(message, depth: int = 0) -> None:
        for field, value in message.ListFields():
            if field.name in _SHOWN_FIELDS and isinstance(value, str):
                found.append(value)
            elif field.name in ("options", "captions"):
                found.extend(str(v) for v in value)
            elif hasattr(value, "ListFields") and depth < 3:  # nested: a heading, an alert, an expander's label
                strings(value, depth + 1)

    def walk(node, in_chat: bool = False) -> None:
        kind = getattr(node, "type", "")
        if kind == "text" or (in_chat and kind == "markdown") or getattr(node, "key", None) == "ui_language_switch":
            return
        if getattr(node, "key", None) == "open_conversation":
            found.append(node.label)
            return
        proto = getattr(node, "proto", None)
        if kind == "dataframe":
            found.extend(str(c) for c in node.value.columns)
        elif proto is not None:
            strings(proto)
        for child in getattr(node, "children", {}).values():
            walk(child, in_chat or kind == "chat_message")

    walk(at._tree)
    return [text.replace("\\", "").replace("\u200b", "") for text in found if text]  # escapes, inert links


def english_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z]+", NOT_WORDS.sub(" ", text)) if w not in LATIN_ALLOWED]


def assert_speaks(at: AppTest, language: str, where: str) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    texts = shown_texts(at)
    assert len(texts) >= 2, (where, texts)
    if language == "zh":
        wrong = {text: english_words(text) for text in texts if english_words(text)}
        assert not wrong, f"{where}: English words on the Chinese page: {wrong}"
        assert sum(bool(CJK.search(text)) for text in texts) >= len(texts) // 2, (where, texts)
    else:
        wrong = {text: CJK.findall(text) for text in texts if CJK.search(text)}
        assert not wrong, f"{where}: Chinese on the English page: {wrong}"
    return texts


def app_in(language: str, page: str = "", **session) -> AppTest:
    """The app as a browser set to `language` sees it (st.context.locale)."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.context = {"locale": "zh-CN" if language == "zh" else "en-US"}
    for name, value in session.items():
        setattr(at, name, value)
    at.run()
    if page:
        at.switch_page(page).run()
    return at


LANGUAGES = ("en", "zh")


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_page_of_an_empty_knowledge_base_speaks_one_language(language, tmp_path, monkeypatch):
    for name, value in {**ENV, "KB_HOME": str(tmp_path / "empty"), "KB_CONFIG": str(tmp_path / "x.toml")}.items():
        monkeypatch.setenv(name, value)
    clear_caches()
    try:
        at = app_in(language)
        texts = assert_speaks(at, language, "ask (empty)")
        sidebar = " ".join(shown_texts(at))  # the entry script's sidebar: who is signed in, no-sign-in warning
        assert ("本机用户" if language == "zh" else "local user") in sidebar and "KB_AUTH" in sidebar
        assert any(("知识库是空的" if language == "zh" else "knowledge base is empty") in t for t in texts)
        for page in ("pages/library.py", "pages/add.py", "pages/system.py"):
            assert_speaks(at.switch_page(page).run(), language, f"{page} (empty)")
    finally:
        clear_caches()


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_page_of_a_populated_knowledge_base_speaks_one_language(language, kb_env, tmp_path, monkeypatch):
    at = app_in(language)
    assert_speaks(at, language, "ask")
    ask(at, "Where does the purple elephant parade happen?")  # citations, page captions, timing
    texts = assert_speaks(at, language, "ask with an answer")
    assert any(("第 2 页" if language == "zh" else "p. 2") in t for t in texts), texts
    at.multiselect(key="filter_groups").set_value(["video"]).run()
    ask(at, "When are PDFs chunked by page?")  # a video citation
    assert_speaks(at, language, "ask with a video citation")

    at.switch_page("pages/library.py").run()
    assert_speaks(at, language, "library")
    for source in ("guide.pdf", "whiteboard.png", "lecture_clip.mp4"):
        at.selectbox(key="library_open").set_value(_path(at, source)).run()
        assert_speaks(at, language, f"library: {source}")
    at.button(key="library_delete").click().run()  # the confirmation
    texts = assert_speaks(at, language, "library: confirm delete")
    at.button(key="library_delete_cancel").click().run()
    at.button(key="library_reindex").click().run()  # a flash message, and a job for the Add page
    assert_speaks(at, language, "library: re-index")
    wait_for_jobs(at)

    at.switch_page("pages/add.py").run()
    at.file_uploader(key="uploads").set_value([("tool.exe", b"MZ\x90", "application/octet-stream"),
                                               ("broken.pdf", b"this is not a PDF at all", "application/pdf"),
                                               ("walrus.md", b"# Walrus\n\nThe walrus choir sings at dawn.\n",
                                                "text/markdown")]).run()
    at.button(key="ingest_uploads").click().run()
    wait_for_jobs(at)
    texts = assert_speaks(at, language, "add: jobs, an upload refused, a file the reader refused")
    assert any(("不支持的文件类型" if language == "zh" else "unsupported file type") in t for t in texts), texts
    assert any(("这是纯文本文件，不是PDF 文件" if language == "zh" else "this is a plain-text file, not a PDF") in t
               for t in texts), texts
    table = at.dataframe[0].value
    assert list(table.columns) == (["文件", "状态", "片段数", "结果", "原因"] if language == "zh"
                                   else ["file", "status", "chunks", "result", "reason"])
    assert list(table[table.columns[1]]) == (["失败", "完成"] if language == "zh" else ["failed", "done"])

    # The GPU table too: an nvidia-smi that reports one device, as the real one prints it.
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text("#!/bin/sh\necho '0, NVIDIA H200, 1024, 143771, 5'\n")
    (tools / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    at.switch_page("pages/system.py").run()
    from pages import resources

    resources.engine()
    assert_speaks(at.run(), language, "system")
    gpu = at.dataframe[1].value
    assert list(gpu.columns)[2:] == (["已用显存", "总显存", "利用率"] if language == "zh"
                                     else ["memory used", "memory total", "utilization"])
    assert gpu.iloc[0, 1] == "NVIDIA H200"


@pytest.mark.parametrize("language", LANGUAGES)
def test_signed_in_pages_speak_one_language(language, kb_env, monkeypatch):
    """With a sign-in provider: the sign-in page, a viewer refused a delete and the Add page, a user with no role."""
    monkeypatch.setenv("KB_AUTH", "oidc")
    clear_caches()
    texts = assert_speaks(app_in(language, user={"is_logged_in": False}), language, "sign-in page")
    assert ("登录" if language == "zh" else "Sign in") in texts

    viewer = {"is_logged_in": True, "email": "vera@example.com", "name": "Vera"}
    at = app_in(language, user=viewer)
    texts = assert_speaks(at, language, "ask, signed in")
    assert ("退出登录" if language == "zh" else "Sign out") in texts
    at.switch_page("pages/library.py").run()
    at.button(key="library_delete").click().run()
    texts = assert_speaks(at, language, "library, viewer refused")
    assert any(("已拒绝：删除需要编辑者角色" if language == "zh" else "Refused: delete needs the editor role") in t
               for t in texts), texts
    at.switch_page("pages/add.py").run()
    texts = assert_speaks(at, language, "add, viewer refused")
    assert any(("添加内容需要编辑者角色" if language == "zh" else "adding content needs the editor role") in t
               for t in texts), texts

    monkeypatch.setenv("KB_VIEWERS", "someone-else@example.com")
    clear_caches()
    texts = assert_speaks(app_in(language, user=viewer), language, "no role")
    assert any(("没有角色" if language == "zh" else "has no role") in t for t in texts), texts


def test_the_sidebar_switch_overrides_the_browser_language(kb_env):
    at = app_in("zh")
    assert at.title[0].value == "向知识库提问" and at.selectbox(key="ui_language_switch").value == "zh"
    assert at.selectbox(key="ui_language_switch").label == "语言"
    at.selectbox(key="ui_language_switch").set_value("en").run()
    assert at.title[0].value == "Ask your knowledge base"
    at.switch_page("pages/library.py").run()  # the choice holds for the session, on every page
    assert at.title[0].value == "Library" and "source" in at.dataframe[0].value.columns

    at = app_in("en")
    assert at.title[0].value == "Ask your knowledge base" and at.selectbox(key="ui_language_switch").value == "en"
    at.selectbox(key="ui_language_switch").set_value("zh").run()
    assert at.title[0].value == "向知识库提问"
    at.switch_page("pages/system.py").run()
    assert at.title[0].value == "系统"
