"""Library: every source with its status; open one to see its pages, segments or image text; delete, re-index."""
from __future__ import annotations

from datetime import datetime

import streamlit as st

from kb.auth import EDITOR
from kb.errors import SeekframeError
from kb.manifest import SourceRecord
from kb.outline import outline
from kb.paths import display
from kb.types import Modality
from pages import access, resources, widgets
from pages.helpers import SORTS, chunks_by_page, extent, md_escape, segments, source_rows, time_label

PAGES_PER_VIEW = 4
SEGMENTS_PER_VIEW = 60

st.title("Library")
store = resources.open_or_stop()
flash = st.session_state.pop("library_flash", None)
if flash:
    st.success(md_escape(flash))
records = store.manifest.all()
if not records:
    widgets.empty_library()
    st.stop()

left, right = st.columns([3, 1])
query = left.text_input("Search sources", key="library_query", placeholder="name, type, status or model")
order = right.selectbox("Sort by", list(SORTS), key="library_sort")
rows = source_rows(records, query, order)
st.dataframe([{"source": display(r.rel), "type": r.kind, "pages / duration": extent(r), "chunks": r.chunks,
               "status": r.status, "ingested at": datetime.fromtimestamp(r.ingested_at).strftime("%Y-%m-%d %H:%M"),
               "engine": r.engine, "model": r.model, "problems": len(r.errors)} for r in rows],
             hide_index=True, width="stretch")
st.caption(f"{len(rows)} of {len(records)} sources · {store.count()} chunks")
if not rows:
    st.stop()

by_path = {r.path: r for r in rows}
path = st.selectbox("Open a source", list(by_path), format_func=lambda p: display(by_path[p].rel), key="library_open")
record: SourceRecord = by_path[path]


def refused(action: str) -> bool:
    """Checked in each callback, not only by disabling buttons: a viewer's request is refused here."""
    if access.can(EDITOR):
        return False
    st.session_state["library_flash"] = f"Refused: {action} needs the editor role; you are {access.role()}."
    return True


def ask_to_delete(record: SourceRecord) -> None:
    if not refused("delete"):
        st.session_state["library_confirm_delete"] = record.path  # the first click only asks


def delete(record: SourceRecord) -> None:
    """The confirmed delete: exactly the record's absolute path, never a name that could match others."""
    st.session_state.pop("library_confirm_delete", None)
    if refused("delete"):
        return
    removed = store.delete_source(record.path)
    st.session_state["library_flash"] = (f"Deleted {display(record.rel)} from the knowledge base ({removed} chunks); "
                                         "the file itself stays on disk.")


def reindex(record: SourceRecord) -> None:
    if refused("re-index"):
        return
    try:
        resources.jobs().reindex(record.path, store.manifest, owner=access.user())
    except SeekframeError as err:
        st.session_state["library_flash"] = str(err)
        return
    st.session_state["library_flash"] = (f"Re-indexing {display(record.rel)} in the background: follow it on the "
                                         "Add content page.")


st.subheader(md_escape(display(record.rel)))
st.caption(md_escape(f"{record.kind} · {extent(record) or 'single image'} · {record.chunks} chunks · "
                     f"status {record.status} · engine {record.engine} {record.model} · {display(record.path)}"))
for problem in record.errors:
    st.warning(md_escape(display(problem)))
one, two, three, _ = st.columns([1, 1, 1, 3])
editor = access.can(EDITOR)
one.button("Re-index", key="library_reindex", on_click=reindex, args=(record,),
           help="Read the file again with the current engine and settings, even if it is unchanged."
           + ("" if editor else " (editors only)"))
two.button("Delete", key="library_delete", on_click=ask_to_delete, args=(record,), type="primary",
           help="Remove the source and its chunks from the knowledge base (the file stays on disk); asks first."
           + ("" if editor else " Editors only: as a viewer you are refused."))
if three.button("Outline", key="library_outline", help="Chapters with timestamps (video) or sections with pages"):
    with st.spinner("Writing the outline…"):
        entries = outline(store, resources.engine(), record.path)
    st.text("\n".join(e.line() for e in entries) or "No outline: the source has no text.")

if st.session_state.get("library_confirm_delete") == record.path:
    with st.container(border=True):
        st.warning(md_escape(f"Delete {display(record.rel)} ({record.chunks} chunks) from the knowledge base? Its "
                             "text can no longer be found or cited. The file stays on disk at "
                             f"{display(record.path)}."))
        yes, no, _ = st.columns([1, 1, 3])
        yes.button(f"Yes, delete {md_escape(display(record.rel))}", key="library_delete_confirm", on_click=delete,
                   args=(record,), type="primary")
        no.button("Keep it", key="library_delete_cancel", on_click=st.session_state.pop,
                  args=("library_confirm_delete", None))

chunks, _ = store.chunks_of(record.path)
if record.kind in ("video", "audio"):
    timeline = segments(chunks)
    start = st.session_state.get(f"play_from:{record.path}", 0.0)
    player = widgets.video_player if record.kind == "video" else widgets.audio_player
    player(record.path, start)
    st.caption(f"{len(timeline)} segments; ▶ plays from the start of a segment.")
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
        first = st.number_input("From page", min_value=1, max_value=max(numbers), value=1, key="library_page")
        numbers = [n for n in numbers if n >= first][:PAGES_PER_VIEW]
    for number in numbers:
        thumb, words = st.columns([1, 2])
        with thumb:
            widgets.pdf_page(record.path, number, width=260)
        with words:
            for chunk in pages[number]:
                st.caption(md_escape(f"page {number} · {chunk.modality}"))
                st.text(chunk.text)
elif record.kind == "image":
    widgets.image_file(record.path)
    for label, modality in (("Text in the image (OCR)", Modality.IMAGE_OCR), ("Caption", Modality.IMAGE_CAPTION)):
        texts = [c.text for c in chunks if c.modality == modality]
        st.markdown(f"**{label}**")
        st.text("\n\n".join(texts) if texts else "(none: the engine that read this image does not write captions)"
                if modality == Modality.IMAGE_CAPTION else "(no text found)")
else:
    for chunk in chunks:
        st.text(chunk.text)
