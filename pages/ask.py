"""Ask: a chat over the knowledge base; answers stream, citations [n] open the page, image or video second."""
from __future__ import annotations

import math
import time

import streamlit as st

from kb.answer import prepare, stream_answer
from kb.errors import SeekframeError
from kb.paths import display
from pages import resources, widgets
from pages.helpers import GROUPS, build_filters, md_escape, safe_markdown

st.title("Ask your knowledge base")
store = resources.open_or_stop()
settings = resources.settings()
resources.start_engine()  # loads while the user reads and types
if store.embedder.fallback_reason:
    st.warning(md_escape("Offline profile: the bundled English embedding model is in use "
                         f"({store.embedder.fallback_reason})."))
records = store.manifest.all()
if not records:
    widgets.empty_library()
    st.stop()

# filters ------------------------------------------------------------------------------------------------
with st.sidebar:
    st.header("Filters")
    chosen = st.multiselect("Sources", [r.rel for r in records], key="filter_sources", format_func=display,
                            placeholder="all sources")
    groups = st.multiselect("Modality", GROUPS, key="filter_groups", placeholder="documents, images and video")
    durations = [r.duration for r in records if r.kind == "video" and r.duration]
    seconds = full = None
    if durations:
        full = (0.0, float(math.ceil(max(durations))))
        seconds = st.slider("Video time range (seconds)", full[0], full[1], full, step=1.0, key="filter_seconds")
    filters = build_filters(chosen, groups, seconds, full)
    if st.button("New conversation", key="new_conversation"):
        st.session_state["history"] = []

if resources.engine_ready():
    try:
        engine = resources.engine()
        st.caption(md_escape(f"Engine: {engine.name} · model {engine.model} · {engine.device}. "
                             f"{resources.engine_explanation()}"))
    except SeekframeError as err:
        resources.show_error(err)
else:
    st.caption("Loading the model engine in the background… you can type a question meanwhile.")


def show_turn(turn: dict) -> None:
    with st.chat_message(turn["role"]):
        sources = len(turn["hits"]) if turn["role"] == "assistant" else None
        st.markdown(safe_markdown(turn["text"], sources))
        if turn["role"] == "assistant":
            st.caption(turn["timing"])
            for n, hit in enumerate(turn.get("hits", []), 1):
                widgets.citation(n, hit, turn["question"], expanded=n == 1)


def answer(question: str, history: list[dict]) -> dict | None:
    """Retrieve, stream the answer into the page, and return the turn to keep."""
    pairs = [(t["role"], t["text"]) for t in history]
    with st.chat_message("assistant"):
        try:
            prepared = prepare(question, store, k=settings.top_k, filters=filters, history=pairs,
                               max_tokens=settings.max_answer_tokens)
            engine = resources.engine()
            started = time.monotonic()
            shown, text = st.empty(), ""
            for piece in stream_answer(prepared, engine):
                text += piece  # the whole text is made safe each time: a link or marker may span pieces
                shown.markdown(safe_markdown(text, len(prepared.hits), streaming=True))
            shown.markdown(safe_markdown(text, len(prepared.hits)))
            generation = time.monotonic() - started
        except SeekframeError as err:
            resources.show_error(err)
            return None
        timing = (f"{engine.name} · {engine.model} · retrieval {prepared.retrieval_seconds:.2f} s · "
                  f"generation {generation:.2f} s · {len(prepared.hits)} sources")
        st.caption(md_escape(timing))
        for n, hit in enumerate(prepared.hits, 1):
            widgets.citation(n, hit, question, expanded=n == 1)
    return {"role": "assistant", "text": text, "hits": prepared.hits, "question": question,
            "timing": md_escape(timing)}


history = st.session_state.setdefault("history", [])
for turn in history:
    show_turn(turn)

question = st.chat_input("Ask a question about your documents, images and videos", key="question")
if question:
    with st.chat_message("user"):
        st.markdown(safe_markdown(question))
    reply = answer(question, history)
    if reply:
        history += [{"role": "user", "text": question}, reply]
