"""Library: every source with its status; open one to see its pages, segments or image text; delete, re-index."""
from __future__ import annotations

from datetime import datetime

import streamlit as st

from kb.auth import EDITOR
from kb.errors import SeekframeError
from kb.manifest import SourceRecord
from kb.outline import outline
from kb.paths import display
from kb.types import Modality, format_clock
from pages import access, resources, widgets
from pages.helpers import SORTS, chunks_by_page, md_code, md_escape, segments, source_rows, time_label
from pages.language import t, word, words

PAGES_PER_VIEW = 4
SEGMENTS_PER_VIEW = 60


def extent(record: SourceRecord) -> str:
    """`03:25`, `pages: 12` or '' (an image)."""
    if record.duration:
        return format_clock(record.duration)
    return t("lib.pages", count=record.pages) if record.pages else ""


st.title(t("lib.title"))
store = resources.open_or_stop()
flashed = st.session_state.pop("library_flash", None)
if flashed:
    st.success(md_escape(t(flashed[0], **flashed[1])))
failed = st.session_state.pop("library_error", None)
if failed:
    resources.show_error(failed)
records = store.manifest.all()
if not records:
    widgets.empty_library()
    st.stop()

left, right = st.columns([3, 1])
query = left.text_input(t("lib.search"), key="library_query", placeholder=t("lib.search_placeholder"))
order = right.selectbox(t("lib.sort"), list(SORTS), key="library_sort", format_func=words("sort"))
rows = source_rows(records, query, order)
# Dates as ISO (2026-12-01 19:30): read the same way in both languages.
st.dataframe([{t("lib.col_source"): display(r.rel), t("lib.col_type"): word("kind", r.kind),
               t("lib.col_extent"): extent(r), t("lib.col_chunks"): r.chunks,
               t("lib.col_status"): word("result", r.status),
               t("lib.col_ingested"): datetime.fromtimestamp(r.ingested_at).strftime("%Y-%m-%d %H:%M"),
               t("lib.col_engine"): word("engine", r.engine), t("lib.col_model"): r.model,
               t("lib.col_problems"): len(r.errors)}
              for r in rows], hide_index=True, width="stretch")
st.caption(t("lib.counts", shown=len(rows), total=len(records), chunks=store.count()))
if not rows:
    st.stop()

by_path = {r.path: r for r in rows}
path = st.selectbox(t("lib.open"), list(by_path), format_func=lambda p: display(by_path[p].rel), key="library_open")
record: SourceRecord = by_path[path]


def flash(key: str, **params: object) -> None:
    """A message for the next run (after the callback), kept as its catalog key: said in the language then."""
    st.session_state["library_flash"] = (key, params)


def refused(action: str) -> bool:
    """Checked in each callback, not only by disabling buttons: a viewer's request is refused here."""
    if access.can(EDITOR):
        return False
    flash("lib.refused", action=t(action), role=word("role", access.role()))
    return True


def ask_to_delete(record: SourceRecord) -> None:
    if not refused("action.delete"):
        st.session_state["library_confirm_delete"] = record.path  # the first click only asks


def delete(record: SourceRecord) -> None:
    """The confirmed delete: exactly the record's absolute path, never a name that could match others."""
    st.session_state.pop("library_confirm_delete", None)
    if refused("action.delete"):
        return
    removed = store.delete_source(record.path)
    flash("lib.deleted", name=display(record.rel), chunks=removed)


def reindex(record: SourceRecord) -> None:
    if refused("action.reindex"):
        return
    try:
        resources.jobs().reindex(record.path, store.manifest, owner=access.user())
    except SeekframeError as err:
        st.session_state["library_error"] = err
        return
    flash("lib.reindexing", name=display(record.rel))


st.subheader(md_escape(display(record.rel)))
shape = extent(record) or (t("lib.single_image") if record.kind == "image" else "—")
st.caption(t("lib.details", kind=md_escape(word("kind", record.kind)), extent=md_escape(shape), chunks=record.chunks,
             status=md_escape(word("result", record.status)), engine=md_escape(word("engine", record.engine)),
             model=md_code(record.model) if record.model else "", path=md_code(display(record.path))))
for problem in record.errors:
    st.warning(md_escape(display(problem)))
one, two, three, _ = st.columns([1, 1, 1, 3])
editor = access.can(EDITOR)
one.button(t("lib.reindex"), key="library_reindex", on_click=reindex, args=(record,),
           help=t("lib.reindex_help" if editor else "lib.reindex_help_viewer"))
two.button(t("lib.delete"), key="library_delete", on_click=ask_to_delete, args=(record,), type="primary",
           help=t("lib.delete_help" if editor else "lib.delete_help_viewer"))
if three.button(t("lib.outline"), key="library_outline", help=t("lib.outline_help")):
    with st.spinner(t("lib.writing_outline")):
        entries = outline(store, resources.engine(), record.path)
    if entries:
        st.text("\n".join(e.line() for e in entries))  # the source's own words, as text
    else:
        st.caption(t("lib.no_outline"))

if st.session_state.get("library_confirm_delete") == record.path:
    with st.container(border=True):
        st.warning(md_escape(t("lib.confirm_delete", name=display(record.rel), chunks=record.chunks,
                               path=display(record.path))))
        yes, no, _ = st.columns([1, 1, 3])
        yes.button(t("lib.yes_delete", name=md_escape(display(record.rel))), key="library_delete_confirm",
                   on_click=delete, args=(record,), type="primary")
        no.button(t("lib.keep"), key="library_delete_cancel", on_click=st.session_state.pop,
                  args=("library_confirm_delete", None))

chunks, _ = store.chunks_of(record.path)
if record.kind in ("video", "audio"):
    timeline = segments(chunks)
    start = st.session_state.get(f"play_from:{record.path}", 0.0)
    player = widgets.video_player if record.kind == "video" else widgets.audio_player
    player(record.path, start)
    st.caption(t("lib.segments", count=len(timeline)))
    for n, chunk in enumerate(timeline[:SEGMENTS_PER_VIEW]):
        frame, words, action = st.columns([1, 3, 1])
        with frame:
            widgets.keyframes(chunk, width=160)
        with words:
            st.caption(time_label(chunk.t_start, chunk.t_end))
            st.text(chunk.text)
        action.button(f"▶ {time_label(chunk.t_start, chunk.t_start)[:5]}", key=f"play_{n}",
                      on_click=st.session_state.__setitem__, args=(f"play_from:{record.path}", chunk.t_start))
elif record.kind == "pdf":
    pages = chunks_by_page(chunks)
    numbers = list(pages)
    if len(numbers) > PAGES_PER_VIEW:
        first = st.number_input(t("lib.from_page"), min_value=1, max_value=max(numbers), value=1, key="library_page")
        numbers = [n for n in numbers if n >= first][:PAGES_PER_VIEW]
    for number in numbers:
        thumb, words = st.columns([1, 2])
        with thumb:
            widgets.pdf_page(record.path, number, width=260)
        with words:
            for chunk in pages[number]:
                st.caption(md_escape(t("lib.page_modality", page=number, modality=word("modality", chunk.modality))))
                st.text(chunk.text)
elif record.kind == "image":
    widgets.image_file(record.path)
    for label, modality, none in (("lib.image_text", Modality.IMAGE_OCR, "lib.no_text"),
                                  ("lib.caption", Modality.IMAGE_CAPTION, "lib.no_caption")):
        texts = [c.text for c in chunks if c.modality == modality]
        st.markdown(f"**{t(label)}**")
        if texts:
            st.text("\n\n".join(texts))  # the image's own words, as text
        else:
            st.caption(t(none))
else:
    for chunk in chunks:
        st.text(chunk.text)
