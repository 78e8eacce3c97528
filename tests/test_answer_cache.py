"""The answer cache: a repeated question is served from it at once, a change to the sources in its scope (ingest,
delete, re-index) makes it answer anew, its size is bounded, and the app marks a cached answer and regenerates."""
from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import kb.answer as answer_module
from ingest.pipeline import Ingestor
from kb.answer import Generation, ask
from kb.answer_cache import AnswerCache
from kb.engines import load_engine
from kb.search import Filters
from tests.conftest import ROOT, write_pdf

CRANE = "How much does the harbour crane lift?"


@pytest.fixture
def kb(open_kb, tmp_path):
    store = open_kb()
    write_pdf(tmp_path / "harbour.pdf", ["The harbour crane lifts forty tonnes on a calm day."])
    write_pdf(tmp_path / "orchard.pdf", ["The orchard gives two hundred crates of apples each autumn."])
    assert Ingestor(store.settings, store).run([tmp_path]).exit_code == 0
    return store


@pytest.fixture(scope="module")
def ocr():
    from kb.config import load_settings

    return load_engine(load_settings({"engine": "ocr", "home": "/nonexistent"}, env={}))


@pytest.fixture
def searches(monkeypatch):
    """How many times retrieval ran: a cached answer needs none."""
    calls = []
    real = answer_module.search

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(answer_module, "search", counting)
    return calls


def test_a_repeated_question_is_served_from_the_cache_with_its_citations(kb, ocr, searches):
    cache = AnswerCache.of(kb.settings)
    first = ask(CRANE, kb, ocr, k=3, cache=cache)
    second = ask(CRANE, kb, ocr, k=3, cache=cache)
    assert not first.cached and second.cached and len(searches) == 1
    assert second.text == first.text and "forty tonnes" in second.text
    assert [h.to_json() for h in second.citations] == [h.to_json() for h in first.citations]
    assert second.to_json()["cached"] is True
    again = ask(CRANE, kb, ocr, k=3, cache=cache, regenerate=True)  # the Regenerate button / --no-cache
    assert not again.cached and len(searches) == 2
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1) and stats.hit_rate == 0.5


def test_other_settings_filters_or_wording_are_other_questions(kb, ocr, searches):
    cache = AnswerCache.of(kb.settings)
    ask(CRANE, kb, ocr, k=3, cache=cache)
    assert ask(f"  {CRANE} ", kb, ocr, k=3, cache=cache).cached  # spacing aside, the same question
    assert not ask(CRANE, kb, ocr, k=2, cache=cache).cached
    assert not ask(CRANE, kb, ocr, k=3, cache=cache, generation=Generation(64)).cached
    assert not ask(CRANE, kb, ocr, k=3, cache=cache, filters=Filters(sources=["harbour.pdf"])).cached
    assert not ask("What does the orchard give?", kb, ocr, k=3, cache=cache).cached


def test_a_delete_or_ingest_invalidates_the_answers_it_touches(kb, ocr, tmp_path):
    cache = AnswerCache.of(kb.settings)
    only_harbour = Filters(sources=["harbour.pdf"])
    ask(CRANE, kb, ocr, k=3, cache=cache)
    ask(CRANE, kb, ocr, k=3, cache=cache, filters=only_harbour)
    assert kb.delete_source(str((tmp_path / "orchard.pdf").resolve()))
    assert not ask(CRANE, kb, ocr, k=3, cache=cache).cached  # the orchard was in its scope
    assert ask(CRANE, kb, ocr, k=3, cache=cache, filters=only_harbour).cached  # it was not in this one's
    write_pdf(tmp_path / "harbour.pdf", ["The harbour crane now lifts sixty tonnes after its refit."])
    Ingestor(kb.settings, kb).run([tmp_path / "harbour.pdf"])
    fresh = ask(CRANE, kb, ocr, k=3, cache=cache, filters=only_harbour)
    assert not fresh.cached and "sixty tonnes" in fresh.text
    Ingestor(kb.settings, kb).run([tmp_path / "harbour.pdf"], force=True)  # a re-index
    assert not ask(CRANE, kb, ocr, k=3, cache=cache, filters=only_harbour).cached


def test_the_cache_is_bounded_least_recently_used_first(kb, ocr, make_settings):
    cache = AnswerCache(kb.settings.home / "small-cache.sqlite", max_entries=2)
    questions = [CRANE, "What does the orchard give?", "How many crates of apples?"]
    for q in questions[:2]:
        ask(q, kb, ocr, k=3, cache=cache)
    assert ask(CRANE, kb, ocr, k=3, cache=cache).cached  # now the most recently used
    ask(questions[2], kb, ocr, k=3, cache=cache)  # evicts the orchard question, not the crane
    assert cache.stats().entries == 2
    assert ask(CRANE, kb, ocr, k=3, cache=cache).cached
    assert not ask(questions[1], kb, ocr, k=3, cache=cache).cached
    off = AnswerCache(kb.settings.home / "off.sqlite", max_entries=0)
    ask(CRANE, kb, ocr, k=3, cache=off)
    assert not ask(CRANE, kb, ocr, k=3, cache=off).cached


def test_the_app_marks_a_cached_answer_regenerates_it_and_shows_the_hit_rate(kb, monkeypatch, tmp_path):
    from kb.config import BUNDLED_EMBED_MODEL

    home = kb.settings.home
    kb.close()  # the app process owns the store
    for name, value in {"KB_HOME": str(home), "KB_ENGINE": "ocr", "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL,
                        "KB_CONFIG": str(tmp_path / "none.toml")}.items():
        monkeypatch.setenv(name, value)
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
        at.run()
        at.chat_input(key="question").set_value(CRANE).run()
        assert not at.session_state["history"][-1].get("cached")
        # The same question in a new conversation (within one, earlier turns are part of the question).
        at.button(key="new_conversation").click().run()
        at.chat_input(key="question").set_value(CRANE).run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.session_state["history"][-1]["cached"]
        assert "cached answer" in " ".join(c.value for c in at.chat_message[-1].caption)
        at.button(key="regenerate_new").click().run()
        history = at.session_state["history"]
        assert len(history) == 2 and not history[-1].get("cached") and "forty tonnes" in history[-1]["text"]
        at.switch_page("pages/system.py")
        at.run()
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Hit rate"] == "50 %" and metrics["Served / asked"] == "1 / 2"
    finally:
        from pages import resources

        resources.jobs.clear()
        st.cache_resource.clear()
