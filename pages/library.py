"""Library: every ingested source with its status."""
from __future__ import annotations

import streamlit as st

from pages import resources

st.title("Library")
records = resources.store().manifest.all()
if not records:
    st.info("Nothing ingested yet. Run `python -m ingest PATH...` to add PDFs and images.")
    st.stop()
st.dataframe([{"source": r.rel, "type": r.kind, "pages": r.pages, "chunks": r.chunks, "status": r.status,
               "engine": r.engine, "model": r.model} for r in records], hide_index=True, use_container_width=True)
