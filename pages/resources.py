"""Process-wide resources for the pages: settings, the store and the engine are loaded once (st.cache_resource)."""
from __future__ import annotations

import streamlit as st

from kb.config import Settings, load_settings
from kb.engines import Engine, load_engine, resolve_engine_name
from kb.store import Store, open_store


@st.cache_resource(show_spinner="Opening the knowledge base…")
def settings() -> Settings:
    return load_settings()


@st.cache_resource(show_spinner="Loading the embedding model and the store…")
def store() -> Store:
    # The app process owns the embedded store for its lifetime (see kb.store.OwnerLock).
    return open_store(settings())


@st.cache_resource(show_spinner="Loading the model engine…")
def engine() -> Engine:
    return load_engine(settings())


def engine_explanation() -> str:
    return resolve_engine_name(settings())[1]


@st.cache_data(max_entries=64, show_spinner=False)
def page_image(path: str, page: int):
    from ingest.pdf import render_page

    return render_page(path, page, dpi=110)
