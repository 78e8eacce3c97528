"""Process-wide resources for the pages, created once per process (st.cache_resource): settings, the store,
the engine (loaded on a background thread so pages stay usable meanwhile) and the ingest job table."""
from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import streamlit as st

from ingest.jobs import JobBoard
from ingest.worker import Worker, start_thread
from kb.answer_cache import AnswerCache
from kb.config import Settings, load_settings
from kb.conversations import Conversations
from kb.engines import Engine, load_in_background, why_chosen
from kb.errors import SeekframeError
from kb.i18n import error_text, say
from kb.paths import fs_path
from kb.store import Store, open_store
from pages.helpers import md_escape
from pages.language import current, t


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return load_settings()


@st.cache_resource(show_spinner=False, on_release=lambda store: store.close())
def store() -> Store:
    # The app process owns the embedded store for its lifetime (see kb.store.OwnerLock); the ingest
    # jobs write through this same object.
    return open_store(settings())


@st.cache_resource(show_spinner=False, on_release=lambda cache: cache.close())
def answer_cache() -> AnswerCache:
    return AnswerCache.of(settings())


def _engine_loader() -> Future[Engine]:
    # One per process, begun by the launcher (streamlit_app.serve) before any visitor; a failed load starts again.
    return load_in_background(settings())


def start_engine() -> None:
    """Begin loading the engine in the background (no wait)."""
    _engine_loader()


def engine_ready() -> bool:
    return _engine_loader().done()


def engine() -> Engine:
    """The engine, waiting for it to finish loading; a failed load is forgotten so the next call retries."""
    future = _engine_loader()
    if not future.done():
        with st.spinner(t("app.loading_engine")):
            future.exception()
    return future.result()


def engine_explanation() -> str:
    """Why the loaded engine runs (call once it is loaded: `engine_ready`), in the visitor's language."""
    return say(why_chosen(engine()), current())


def _stop_worker(running: tuple[Worker, object]) -> None:
    worker, thread = running
    worker.stop()
    thread.join(60)


@st.cache_resource(show_spinner=False, on_release=_stop_worker)
def in_app_worker() -> tuple[Worker, object]:
    """The embedded store belongs to this process, so this process ingests too: a worker on a thread. With a
    Chroma server (KB_CHROMA_URL) no app replica does: `python -m ingest --worker` processes take the jobs."""
    board = JobBoard.open(settings())
    inbox = Path(settings().inbox).resolve() if settings().inbox else None
    # The worker thread has no Streamlit context: it waits on the loader's future directly.
    worker = Worker(store(), _engine_loader().result, board, inbox=inbox)
    return worker, start_thread(worker)


@st.cache_resource(show_spinner=False, on_release=lambda board: board.close())
def jobs() -> JobBoard:
    """The job table in KB_HOME: submit, list, cancel. Jobs outlive this process and are shared by replicas."""
    if not settings().chroma_url:
        in_app_worker()
    return JobBoard.open(settings())


@st.cache_resource(show_spinner=False, on_release=lambda kept: kept.close())
def conversations() -> Conversations:
    return Conversations(settings().home)


def open_or_stop() -> Store:
    """The store, or a readable error with its fix (config problem, store locked by a CLI ingest) and stop."""
    try:
        with st.spinner(t("app.opening")):
            return store()
    except SeekframeError as err:
        show_error(err)
        st.stop()


def show_error(err: BaseException, **params: object) -> None:
    """The error and its fix in the visitor's language (English where the catalog has no words for it);
    `params` replace the error's own values with ones the page can say better (a translated action name)."""
    message, fix = error_text(err, current(), **params)
    st.error(md_escape(message) + (f"\n\n**{t('app.how_to_fix')}** {md_escape(fix)}" if fix else ""))


@st.cache_data(max_entries=64, show_spinner=False)
def page_image(path: str, page: int, dpi: int = 110, mtime: float = 0.0):
    """A rendered PDF page (mtime in the key: a replaced file renders again). `path` is the stored form (valid
    UTF-8, which the cache key needs), opened by its real name."""
    from ingest.pdf import render_page

    return render_page(fs_path(path), page, dpi=dpi)


@st.cache_data(max_entries=64, show_spinner=False)
def highlighted_page(path: str, page: int, quote: str, mtime: float = 0.0):
    """The page with the cited text boxed, where the page has a text layer."""
    from pages.helpers import draw_boxes, highlight_boxes

    image = page_image(path, page, 110, mtime)
    try:
        boxes = highlight_boxes(fs_path(path), page, quote)
    except Exception:  # highlighting is a nicety; a page that cannot be searched is still shown
        boxes = []
    return draw_boxes(image, boxes), bool(boxes)
