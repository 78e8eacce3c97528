"""Streamlit pieces shared by the pages: citations, media players, the empty-library message.

Document text is always shown with st.text (never Markdown or HTML); names go through md_escape. Paths arrive
in their stored form (kb/paths.py): shown with `display`, opened through `fs_path`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import streamlit as st

from kb.answer import best_sentence
from kb.paths import display, fs_path
from kb.types import Chunk, Hit, Modality
from pages import resources
from pages.helpers import keyframe_paths, md_escape, time_label
from pages.language import t, word


def empty_library() -> None:
    st.info(t("empty.info"))
    st.page_link("pages/add.py", label=t("nav.add"), icon=":material/add_circle:")


def _mtime(path: Path) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def pdf_page(stored: str, page: int, quote: str = "", width: int | None = None) -> None:
    """A rendered page, the quoted text boxed when the page has a text layer."""
    path = fs_path(stored)
    if not path.is_file():
        st.caption(t("widget.pdf_gone"))
        return
    if quote:
        image, found = resources.highlighted_page(stored, page, quote, _mtime(path))
    else:
        image, found = resources.page_image(stored, page, 110, _mtime(path)), False
    st.image(image, caption=t("widget.page_highlighted" if found else "widget.page", page=page),
             width=width if width else "stretch")


def video_player(stored: str, start: float | None, end: float | None = None) -> None:
    _play(st.video, "widget.video_gone", stored, start, end)


def image_file(stored: str, width: int = 480) -> None:
    """A source image, when it is still at its ingest path."""
    path = fs_path(stored)
    if path.is_file():
        st.image(str(path), width=width)


def audio_player(stored: str, start: float | None, end: float | None = None) -> None:
    """An audio source from the cited second (an audio file's passages have no frames to show)."""
    _play(st.audio, "widget.audio_gone", stored, start, end)


def _play(player: Callable[..., object], gone: str, stored: str, start: float | None, end: float | None) -> None:
    path = fs_path(stored)
    if not path.is_file():
        st.caption(t(gone))
        return
    # Streamlit's players take whole seconds; end one second late so the cited segment plays to its end.
    player(str(path), start_time=int(start or 0), end_time=int(end) + 1 if end is not None else None)


def keyframes(chunk: Chunk, width: int = 220) -> None:
    frames = keyframe_paths(chunk.keyframe, resources.settings().home)
    if frames:
        st.image([str(p) for p in frames[:4]], width=width)


def citation(n: int, hit: Hit, question: str = "", expanded: bool = False) -> None:
    """One numbered source: what it is, the cited text, and the page, image or video segment."""
    chunk = hit.chunk
    source = display(chunk.rel)
    where = hit.where if chunk.page is None or chunk.t_start is not None else t("cite.page", name=source,
                                                                                page=chunk.page)
    modality = md_escape(word("modality", chunk.modality))
    with st.expander(md_escape(f"[{n}] {where}"), expanded=expanded):
        quote = best_sentence(question, chunk.text) if question else ""
        if chunk.t_start is not None and chunk.modality == Modality.SPEECH:
            st.caption(f"{md_escape(source)} · {time_label(chunk.t_start, chunk.t_end)} · {modality}")
            audio_player(chunk.path, chunk.t_start, chunk.t_end)
        elif chunk.t_start is not None:
            st.caption(f"{md_escape(source)} · {time_label(chunk.t_start, chunk.t_end)} · {modality}")
            left, right = st.columns([1, 2])
            with left:
                keyframes(chunk)
            with right:
                video_player(chunk.path, chunk.t_start, chunk.t_end)
        elif chunk.page is not None and chunk.path.lower().endswith(".pdf"):
            st.caption(f"{md_escape(source)} · {md_escape(t('widget.page', page=chunk.page))} · {modality}")
            pdf_page(chunk.path, chunk.page, quote)
        elif chunk.modality.startswith("image"):
            st.caption(f"{md_escape(source)} · {modality}")
            image_file(chunk.path)
        else:
            st.caption(f"{md_escape(source)} · {modality}")
        st.text(chunk.text)  # document text: shown as text, never as Markdown or HTML
