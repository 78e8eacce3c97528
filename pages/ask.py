"""Ask: a chat over the knowledge base with numbered citations."""
from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from kb.answer import prepare, stream_answer
from kb.types import Hit
from pages import resources

st.title("Ask your knowledge base")
store = resources.store()
if store.embedder.fallback_reason:
    st.warning(f"Offline profile: the bundled English embedding model is in use ({store.embedder.fallback_reason}).")
if store.count() == 0:
    st.info("The knowledge base is empty. Add files with `python -m ingest PATH...` (or `make run` for the samples).")
    st.stop()
engine = resources.engine()
st.caption(f"Engine: {engine.name} · model {engine.model} · {engine.device}. {resources.engine_explanation()}")


def show_citation(n: int, hit: Hit) -> None:
    with st.expander(f"[{n}] {hit.where}", expanded=n == 1):
        st.text(hit.text)  # document text is shown as text, never as HTML or Markdown
        if hit.page and hit.source_abs.lower().endswith(".pdf") and Path(hit.source_abs).exists():
            st.image(resources.page_image(hit.source_abs, hit.page), caption=f"page {hit.page}")
        elif hit.modality.startswith("image") and Path(hit.source_abs).exists():
            st.image(hit.source_abs)


history = st.session_state.setdefault("history", [])
for turn in history:
    with st.chat_message(turn["role"]):
        st.markdown(turn["text"])
        for n, hit in enumerate(turn.get("hits", []), 1):
            show_citation(n, hit)

question = st.chat_input("Ask a question", key="question")
if question:
    with st.chat_message("user"):
        st.markdown(question)
    pairs = [(t["role"], t["text"]) for t in history]
    prepared = prepare(question, store, k=resources.settings().top_k, history=pairs)
    with st.chat_message("assistant"):
        started = time.monotonic()
        text = st.write_stream(stream_answer(prepared, engine))
        st.caption(f"retrieval {prepared.retrieval_seconds:.2f} s · generation {time.monotonic() - started:.2f} s")
        for n, hit in enumerate(prepared.hits, 1):
            show_citation(n, hit)
    history += [{"role": "user", "text": question}, {"role": "assistant", "text": text, "hits": prepared.hits}]
