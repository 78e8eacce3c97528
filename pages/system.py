"""System: the engine and device, GPU memory, ingest throughput, knowledge-base size, effective settings."""
from __future__ import annotations

import streamlit as st

from kb.auth import ADMIN
from kb.errors import SeekframeError
from pages import access, resources
from pages.helpers import dir_size, gpu_info, human_bytes, md_escape

st.title("System")
access.require_role(ADMIN, "the System page")
store = resources.open_or_stop()
settings = resources.settings()
resources.start_engine()

st.subheader("Engine")
if resources.engine_ready():
    try:
        engine = resources.engine()
        st.dataframe([{"engine": engine.name, "model": engine.model, "device": engine.device,
                       "captions": engine.can_caption, "written answers": engine.generative}], hide_index=True)
        st.caption(md_escape(resources.engine_explanation()))  # why this engine, as loading decided it
    except SeekframeError as err:
        resources.show_error(err)
else:
    st.info("The model engine is still loading in the background.")
embedder = store.embedder
st.text(f"Embedding model: {embedder.name}" + (f" (fallback: {embedder.fallback_reason})"
                                                if embedder.fallback_reason else ""))

st.subheader("GPU")
gpus = gpu_info()
if gpus:
    st.dataframe(gpus, hide_index=True)
else:
    st.text("no GPU (nvidia-smi not found or no NVIDIA device): models run on the CPU")

st.subheader("Knowledge base")
records = store.manifest.all()
a, b, c, d = st.columns(4)
a.metric("Sources", len(records))
b.metric("Chunks", store.count())
c.metric("On disk", human_bytes(dir_size(settings.home)))
d.metric("Uploads", human_bytes(dir_size(settings.home / "uploads")))
st.text(f"Home: {settings.home.resolve()}" + (f" · Chroma server {settings.chroma_url}" if settings.chroma_url
                                                else " · embedded Chroma store, owned by this app process"))

st.subheader("Answer cache")
cache = resources.answer_cache().stats()
a, b, c = st.columns(3)
a.metric("Hit rate", f"{100 * cache.hit_rate:.0f} %", help="questions answered from the cache, of all asked")
b.metric("Served / asked", f"{cache.hits} / {cache.hits + cache.misses}")
c.metric("Stored answers", f"{cache.entries} / {settings.answer_cache_size}")
st.caption("An identical question with the same filters and generation settings, on unchanged sources, is "
           "answered at once; any ingest, delete or re-index of a source in its scope makes it answer anew.")

st.subheader("Last ingests")
rows = resources.jobs().throughput()
if rows:
    st.dataframe(rows, hide_index=True)
else:
    st.text("No ingest has run in this app session yet.")

st.subheader("Effective configuration")
st.caption("defaults < seekframe.toml < KB_* environment < flags; secrets are masked")
st.dataframe([{"setting": name, "value": str(value), "from": settings.origins.get(name, "default")}
              for name, value in settings.masked().items()], hide_index=True, width="stretch")
