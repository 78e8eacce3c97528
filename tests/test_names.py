"""Names that are not valid UTF-8, from the store to people and back to the file: a PDF and a picture named with
the Latin-1 byte 0xE9 (b'caf\\xe9.pdf') are shown with U+FFFD by the CLI (text and --json) and by the app, and
the stored path opens the real file again (a cited page renders, the picture shows, key frames load, the PDF's
bookmarks are read). The stored form's private-use characters (kb/paths.py) never reach a person.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

import kb.__main__ as kb_cli
from ingest.pdf import render_page
from ingest.pipeline import Ingestor
from kb.answer import key_frames
from kb.config import BUNDLED_EMBED_MODEL, load_settings
from kb.paths import fs_path, to_stored
from kb.store import open_store
from kb.types import Chunk, Hit
from pages.helpers import highlight_boxes, keyframe_paths
from tests.test_app import ENV, app, clear_caches

PDF = os.fsdecode(b"caf\xe9.pdf")  # what os.walk and sys.argv give for that name: byte 0xE9 as U+DCE9
PNG = os.fsdecode(b"caf\xe9.png")
PDF_SHOWN, PNG_SHOWN = "caf\ufffd.pdf", "caf\ufffd.png"
PDF_TEXT = "The zeppelin hangar of the harbour was rebuilt in 2019 with a copper roof. " * 3
STORED_ESCAPES = re.compile("[\U0010ff80-\U0010ffff]")  # the stored form's stand-ins for undecodable bytes


def write_named_pdf(path: Path) -> None:
    """One page of text, with a bookmark (so the outline reads the PDF itself)."""
    doc = pymupdf.open()
    doc.new_page().insert_textbox(pymupdf.Rect(50, 50, 550, 800), PDF_TEXT, fontsize=11)
    doc.set_toc([[1, "Zeppelin hangar", 1]])
    path.write_bytes(doc.tobytes())  # PyMuPDF cannot save under a name that is not UTF-8; Python can
    doc.close()


def write_named_png(path: Path) -> None:
    from data.make_samples import font

    image = Image.new("RGB", (900, 260), "white")
    ImageDraw.Draw(image).text((40, 80), "Invoice INV-2024-0117", fill="black", font=font(64, "bold"))
    image.save(path, format="PNG")


@pytest.fixture(scope="module")
def names_kb(tmp_path_factory, embedder) -> tuple[Path, Path]:
    """A knowledge base holding the two files, ingested from a folder the way `python -m ingest` does."""
    root = tmp_path_factory.mktemp("names")
    folder = root / "library"
    folder.mkdir()
    write_named_pdf(folder / PDF)
    write_named_png(folder / PNG)
    assert sorted(os.listdir(os.fsencode(folder))) == [b"caf\xe9.pdf", b"caf\xe9.png"]
    settings = load_settings({"home": root / "kb", "embed_model": BUNDLED_EMBED_MODEL, "engine": "ocr"}, env={})
    store = open_store(settings, embedder)
    try:
        report = Ingestor(settings, store).run([folder])
    finally:
        store.close()
    assert {r.shown: r.status for r in report.results} == {PDF_SHOWN: "added", PNG_SHOWN: "added"}, report.results
    return root / "kb", folder


@pytest.fixture
def kb_env(names_kb, tmp_path, monkeypatch, embedder):
    """A private copy of the knowledge base, its settings in the environment; the CLI reuses the test embedder."""
    home = tmp_path / "kb"
    shutil.copytree(names_kb[0], home)
    for name, value in {**ENV, "KB_HOME": str(home), "KB_CONFIG": str(tmp_path / "none.toml")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(kb_cli, "open_store", lambda settings: open_store(settings, embedder))
    clear_caches()
    yield home
    clear_caches()


def cli(monkeypatch, capsys, *args: str) -> str:
    """`python -m kb ARGS` in this process: its standard output."""
    monkeypatch.setattr(sys, "argv", ["python -m kb", *args])
    assert kb_cli.main() == 0
    out = capsys.readouterr().out
    for_people = re.sub(r'"source_path": ".*"', "", out)  # the one field that keeps the exact stored path
    assert not STORED_ESCAPES.search(for_people), out  # people never see the stored form
    return out


# command line ---------------------------------------------------------------------------------------------
def test_cli_shows_the_replacement_character_and_source_path_round_trips(kb_env, names_kb, monkeypatch, capsys):
    hits = json.loads(cli(monkeypatch, capsys, "search", "--json", "zeppelin hangar copper roof"))
    assert (hits[0]["source"], hits[0]["page"]) == (PDF_SHOWN, 1)
    pdf_path = hits[0]["source_path"]
    assert pdf_path == to_stored(str(names_kb[1] / PDF)) and fs_path(pdf_path).is_file()
    # The exact path is accepted back: only that source is searched.
    only = json.loads(cli(monkeypatch, capsys, "search", "--json", "--source", pdf_path, "invoice"))
    assert only and {h["source"] for h in only} == {PDF_SHOWN}
    # A name typed in a shell arrives surrogate-escaped, and names the same source.
    typed = json.loads(cli(monkeypatch, capsys, "search", "--json", "--source", PNG, "invoice"))
    assert typed and {h["source"] for h in typed} == {PNG_SHOWN}
    assert f"{PDF_SHOWN} p. 1" in cli(monkeypatch, capsys, "search", "zeppelin hangar")
    sources = json.loads(cli(monkeypatch, capsys, "sources", "--json"))
    assert [(s["rel"], s["path"]) for s in sources] == [(PDF_SHOWN, str(names_kb[1] / PDF_SHOWN)),
                                                        (PNG_SHOWN, str(names_kb[1] / PNG_SHOWN))]
    assert [fs_path(s["source_path"]).is_file() for s in sources] == [True, True]
    assert PDF_SHOWN in cli(monkeypatch, capsys, "sources")
    answer = json.loads(cli(monkeypatch, capsys, "ask", "--json", "When was the zeppelin hangar rebuilt?"))
    assert "2019" in answer["answer"] and answer["citations"][0]["source"] == PDF_SHOWN
    assert PDF_SHOWN in cli(monkeypatch, capsys, "ask", "When was the zeppelin hangar rebuilt?")


def test_outline_reads_the_bookmarks_of_the_pdf_itself(kb_env, monkeypatch, capsys):
    entries = json.loads(cli(monkeypatch, capsys, "outline", "--json", PDF))
    assert [(e["title"], e["page"]) for e in entries] == [("Zeppelin hangar", 1)]


# opening the file from its stored path --------------------------------------------------------------------
def test_a_stored_path_opens_the_page_the_picture_and_key_frames(names_kb, tmp_path):
    stored_pdf, stored_png = (to_stored(str(names_kb[1] / name)) for name in (PDF, PNG))
    page = render_page(fs_path(stored_pdf), 1, dpi=72)
    assert page.size == (595, 842)  # an A4 page (PyMuPDF's default) at 72 dpi
    assert highlight_boxes(fs_path(stored_pdf), 1, "zeppelin hangar of the harbour"), "the quote is boxed"
    frame = tmp_path / os.fsdecode(b"key\xe9.jpg")
    Image.new("RGB", (32, 18), "red").save(frame, format="JPEG")
    hit = Hit(Chunk(id="x", text="", rel="clip", path="/clip", sha256="s", modality="video_segment",
                    keyframe=to_stored(str(frame))), 1.0)
    numbers, images = key_frames([hit])
    assert numbers == [1] and images[0].size == (32, 18)
    assert keyframe_paths(to_stored(str(frame)), tmp_path) == [frame]
    with Image.open(fs_path(stored_png)) as image:
        assert image.size == (900, 260)


# the app --------------------------------------------------------------------------------------------------
def visible_text(at: AppTest) -> str:
    """Everything the page writes as text, Markdown escapes removed."""
    parts = [e.value for kind in ("markdown", "caption", "subheader", "text", "warning", "success")
             for e in at.get(kind) if isinstance(getattr(e, "value", None), str)]
    parts += [e.label for e in at.expander] + [o for s in at.selectbox for o in s.options]
    return "\n".join(parts).replace("\\", "")


def test_library_shows_the_names_with_the_replacement_character(kb_env, names_kb):
    at = app("pages/library.py")
    assert sorted(at.dataframe[0].value["source"]) == [PDF_SHOWN, PNG_SHOWN]
    assert sorted(at.selectbox(key="library_open").options) == [PDF_SHOWN, PNG_SHOWN]
    at.selectbox(key="library_open").set_value(to_stored(str(names_kb[1] / PDF))).run()
    assert not at.exception, [e.value for e in at.exception]
    assert PDF_SHOWN in [s.value.replace("\\", "") for s in at.subheader]
    assert any("page 1" in c for i in at.get("image") for c in i.captions), "the page is rendered"
    assert not STORED_ESCAPES.search(visible_text(at))
    at.selectbox(key="library_open").set_value(to_stored(str(names_kb[1] / PNG))).run()
    assert not at.exception, [e.value for e in at.exception]
    assert PNG_SHOWN in [s.value.replace("\\", "") for s in at.subheader]
    assert at.get("image"), "the picture is shown"
    assert any("INV-2024-0117" in t.value for t in at.text)
    assert not STORED_ESCAPES.search(visible_text(at))


def test_a_cited_page_of_the_pdf_is_rendered_in_ask(kb_env):
    at = app()
    at.chat_input(key="question").set_value("When was the zeppelin hangar rebuilt?").run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [e.label.replace("\\", "") for e in at.expander]
    assert f"[1] {PDF_SHOWN} p. 1" in labels, labels
    assert any("page 1 · cited text highlighted" in c for i in at.get("image") for c in i.captions)
    assert not STORED_ESCAPES.search(visible_text(at))


def test_the_answer_prompt_names_sources_as_people_see_them() -> None:
    """The model is shown `caf\ufffd.pdf p. 1`, never the stored stand-in, so it cannot repeat it in an answer."""
    from kb.prompts import answer_prompt

    hit = Hit(Chunk(id="x", text="The hangar has a copper roof.", rel=to_stored(PDF), path="/" + to_stored(PDF),
                    sha256="s", modality="pdf_text", page=1), 1.0)
    prompt = answer_prompt("What roof?", [hit])
    assert f"({PDF_SHOWN} p. 1)" in prompt
    assert not STORED_ESCAPES.search(prompt)
