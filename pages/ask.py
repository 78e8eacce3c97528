"""Ask: a chat over the knowledge base; answers stream, citations [n] open the page, image or video second."""
from __future__ import annotations

import json
import math
import time

import streamlit as st

from kb.answer import Generation, cache_key, keep_real_citations, prepare, stream_answer
from kb.engines import Engine
from kb.errors import SeekframeError
from kb.paths import display
from pages import access, resources, widgets
from pages.helpers import GROUPS, build_filters, md_code, md_escape, safe_markdown
from pages.language import t, words

st.title(t("ask.title"))
store = resources.open_or_stop()
settings = resources.settings()
resources.start_engine()  # loads while the user reads and types
if store.embedder.fallback_reason:
    st.warning(md_escape(t("ask.offline_embedder", reason=store.embedder.fallback_reason)))
records = store.manifest.all()
if not records:
    widgets.empty_library()
    st.stop()

# filters ------------------------------------------------------------------------------------------------
with st.sidebar:
    st.header(t("ask.filters"))
    chosen = st.multiselect(t("ask.sources"), [r.rel for r in records], key="filter_sources", format_func=display,
                            placeholder=t("ask.all_sources"))
    groups = st.multiselect(t("ask.modality"), GROUPS, key="filter_groups", placeholder=t("ask.all_modalities"),
                            format_func=words("group"))
    durations = [r.duration for r in records if r.kind in ("video", "audio") and r.duration]
    seconds = full = None
    if durations:
        full = (0.0, float(math.ceil(max(durations))))
        seconds = st.slider(t("ask.time_range"), full[0], full[1], full, step=1.0,
                            key="filter_seconds")
    filters = build_filters(chosen, groups, seconds, full)
    # Generation settings live in this visitor's session (st.session_state), not in the shared settings.
    st.header(t("ask.generation"))
    max_tokens = st.number_input(t("ask.max_tokens"), min_value=1, max_value=8192, step=64, key="gen_max_tokens",
                                 value=settings.max_answer_tokens)
    temperature = st.slider(t("ask.temperature"), 0.0, 1.5, float(settings.temperature), step=0.05,
                            key="gen_temperature")
    top_p = st.slider(t("ask.top_p"), 0.05, 1.0, float(settings.top_p), step=0.05, key="gen_top_p",
                      disabled=temperature == 0, help=t("ask.top_p_help"))
    chosen_generation = Generation(int(max_tokens), float(temperature), float(top_p))

    def new_conversation() -> None:
        st.session_state.update(history=[], conversation_id=None, open_conversation=None)

    st.button(t("ask.new_conversation"), key="new_conversation", on_click=new_conversation)
    # Earlier conversations of this user (kept in KB_HOME, visible to their owner only).
    mine = resources.conversations().of(access.user())
    if mine:
        titles = {c["id"]: c["title"] for c in mine}
        chosen_id = st.selectbox(t("ask.your_conversations"), [None, *titles], key="open_conversation",
                                 format_func=lambda i: "—" if i is None else titles[i])
        if chosen_id is not None and chosen_id != st.session_state.get("conversation_id"):
            try:
                st.session_state["history"] = resources.conversations().turns(chosen_id, access.user())
                st.session_state["conversation_id"] = chosen_id
            except SeekframeError as err:
                resources.show_error(err)

if resources.engine_ready():
    try:
        engine = resources.engine()
        st.caption(t("ask.engine", engine=md_escape(engine.name), model=md_code(engine.model),
                     device=md_escape(engine.device), why=md_escape(resources.engine_explanation())))
    except SeekframeError as err:
        resources.show_error(err)
else:
    st.caption(t("ask.engine_loading"))


def regenerate(index: int) -> None:
    """Drop the cached turn (and its question) and ask the same question again, bypassing the cache."""
    history = st.session_state["history"]
    st.session_state["regenerate"] = history[index]["question"]
    del history[index - 1:]


def timing(key: str, engine: Engine, **params: object) -> str:
    """The line under an answer, kept (in the session and in saved conversations) as its catalog key and values,
    so it is said in the language of whoever reads it later."""
    return json.dumps({"key": key, "params": {"engine": engine.name, "model": engine.model, **params}})


def timing_line(kept: str) -> str:
    """A kept timing line for st.caption; a line saved as plain text (before this form) as it is."""
    try:
        line = json.loads(kept)
        params = {name: md_escape(str(value)) for name, value in line["params"].items()}
        return t(line["key"], **{**params, "model": md_code(str(line["params"]["model"]))})
    except (ValueError, KeyError, TypeError):
        return kept


def show_turn(turn: dict, index: int) -> None:
    with st.chat_message(turn["role"]):
        sources = len(turn["hits"]) if turn["role"] == "assistant" else None
        st.markdown(safe_markdown(turn["text"], sources))
        if turn["role"] == "assistant":
            st.caption(timing_line(turn["timing"]))
            if turn.get("cached"):
                st.button(t("ask.regenerate"), key=f"regenerate_{index}", on_click=regenerate, args=(index,),
                          help=t("ask.regenerate_help"))
            for n, hit in enumerate(turn.get("hits", []), 1):
                widgets.citation(n, hit, turn["question"], expanded=n == 1)


def answer(question: str, history: list[dict], fresh: bool = False) -> dict | None:
    """Retrieve, stream the answer into the page, and return the turn to keep; a repeated question is answered from
    the answer cache unless `fresh` (the Regenerate button)."""
    pairs = [(turn["role"], turn["text"]) for turn in history]
    with st.chat_message("assistant"):
        try:
            engine = resources.engine()
            cache = resources.answer_cache()
            key = cache_key(question, store, engine, settings.top_k, filters, chosen_generation, pairs)
            found = None if fresh else cache.get(key)
        except SeekframeError as err:
            resources.show_error(err)
            return None
        if found:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(found.created))
            turn = {"role": "assistant", "text": found.text, "hits": found.hits, "question": question,
                    "timing": timing("ask.cached_timing", engine, when=when, sources=len(found.hits)), "cached": True}
            st.markdown(safe_markdown(found.text, len(found.hits)))
            st.caption(timing_line(turn["timing"]))
            st.button(t("ask.regenerate"), key="regenerate_new", on_click=regenerate, args=(len(history) + 1,),
                      help=t("ask.regenerate_help"))
            for n, hit in enumerate(found.hits, 1):
                widgets.citation(n, hit, question, expanded=n == 1)
            return turn
        try:
            prepared = prepare(question, store, k=settings.top_k, filters=filters, history=pairs,
                               generation=chosen_generation)
            started = time.monotonic()
            shown, text = st.empty(), ""
            for piece in stream_answer(prepared, engine):
                text += piece  # the whole text is made safe each time: a link or marker may span pieces
                shown.markdown(safe_markdown(text, len(prepared.hits), streaming=True))
            shown.markdown(safe_markdown(text, len(prepared.hits)))
            writing = time.monotonic() - started
        except SeekframeError as err:
            resources.show_error(err)
            return None
        line = timing("ask.timing", engine, retrieval=f"{prepared.retrieval_seconds:.2f}", generation=f"{writing:.2f}",
                      sources=len(prepared.hits))
        st.caption(timing_line(line))
        for n, hit in enumerate(prepared.hits, 1):
            widgets.citation(n, hit, question, expanded=n == 1)
    if prepared.hits:
        cache.put(key, question, keep_real_citations(text, len(prepared.hits)), prepared.hits)
    return {"role": "assistant", "text": text, "hits": prepared.hits, "question": question,
            "timing": line}


history = st.session_state.setdefault("history", [])
for index, turn in enumerate(history):
    show_turn(turn, index)

asked = st.chat_input(t("ask.placeholder"), key="question")
again = st.session_state.pop("regenerate", None)
question = asked or again
if question:
    with st.chat_message("user"):
        st.markdown(safe_markdown(question))
    reply = answer(question, history, fresh=bool(again) and not asked)
    if reply:
        turns = [{"role": "user", "text": question}, reply]
        history += turns
        saved = resources.conversations()
        if not st.session_state.get("conversation_id"):
            st.session_state["conversation_id"] = saved.start(access.user(), question)
        saved.add(st.session_state["conversation_id"], access.user(), turns)
