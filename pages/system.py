"""System: the engine and device, GPU memory, ingest throughput, knowledge-base size, effective settings."""
from __future__ import annotations

import streamlit as st

from kb.auth import ADMIN
from kb.errors import SeekframeError
from pages import access, resources
from pages.helpers import dir_size, gpu_info, human_bytes, md_code, md_escape
from pages.language import t, word

# The columns of helpers.gpu_info() and JobBoard.throughput(), by their catalog keys.
GPU_HEADERS = {"gpu": "sys.col_gpu", "name": "sys.col_name", "memory_used": "sys.col_memory_used",
               "memory_total": "sys.col_memory_total", "utilization": "sys.col_utilization"}
THROUGHPUT_HEADERS = {"job": "sys.col_job", "state": "sys.col_state", "files": "sys.col_files",
                      "pages read": "sys.col_pages", "chunks": "add.col_chunks", "seconds": "sys.col_seconds",
                      "files/min": "sys.col_files_min", "pages/s": "sys.col_pages_s", "engine": "sys.col_engine"}

st.title(t("sys.title"))
access.require_role(ADMIN, "action.system_page")
store = resources.open_or_stop()
settings = resources.settings()
resources.start_engine()

st.subheader(t("sys.engine"))
if resources.engine_ready():
    try:
        engine = resources.engine()
        st.dataframe([{t("sys.col_engine"): engine.name, t("sys.col_model"): engine.model,
                       t("sys.col_device"): engine.device, t("sys.col_captions"): engine.can_caption,
                       t("sys.col_answers"): engine.generative}], hide_index=True)
        st.caption(md_escape(resources.engine_explanation()))  # why this engine, as loading decided it
    except SeekframeError as err:
        resources.show_error(err)
else:
    st.info(t("sys.engine_loading"))
embedder = store.embedder
model = md_code(embedder.name)  # an identifier, shown as one
st.caption(t("sys.embedder_fallback", name=model, reason=md_escape(embedder.fallback_reason))
           if embedder.fallback_reason else t("sys.embedder", name=model))

st.subheader(t("sys.gpu"))
gpus = gpu_info()
if gpus:
    st.dataframe([{t(GPU_HEADERS[name]): value for name, value in gpu.items()} for gpu in gpus], hide_index=True)
else:
    st.caption(t("sys.no_gpu"))

st.subheader(t("sys.kb"))
records = store.manifest.all()
a, b, c, d = st.columns(4)
a.metric(t("sys.sources"), len(records))
b.metric(t("sys.chunks"), store.count())
c.metric(t("sys.on_disk"), human_bytes(dir_size(settings.home)))
d.metric(t("sys.uploads"), human_bytes(dir_size(settings.home / "uploads")))
st.caption(md_escape(t("sys.home_server", home=settings.home.resolve(), url=settings.chroma_url) if settings.chroma_url
                     else t("sys.home_embedded", home=settings.home.resolve())))

st.subheader(t("sys.cache"))
cache = resources.answer_cache().stats()
a, b, c = st.columns(3)
a.metric(t("sys.hit_rate"), f"{100 * cache.hit_rate:.0f} %", help=t("sys.hit_rate_help"))
b.metric(t("sys.served"), f"{cache.hits} / {cache.hits + cache.misses}")
c.metric(t("sys.stored"), f"{cache.entries} / {settings.answer_cache_size}")
st.caption(t("sys.cache_note"))

st.subheader(t("sys.last_ingests"))
rows = resources.jobs().throughput()
if rows:
    st.dataframe([{t(THROUGHPUT_HEADERS[name]) if name in THROUGHPUT_HEADERS else name:
                   word("state", value) if name == "state" else value for name, value in row.items()} for row in rows],
                 hide_index=True)
else:
    st.caption(t("sys.no_ingests"))

st.subheader(t("sys.config"))
st.caption(t("sys.config_note"))
st.dataframe([{t("sys.col_setting"): name, t("sys.col_value"): str(value),
               t("sys.col_from"): word("origin", settings.origins.get(name, "default"))}
              for name, value in settings.masked().items()], hide_index=True, width="stretch")
