"""Add content: upload files or name a server folder; ingestion runs in the background, per-file status."""
from __future__ import annotations

import streamlit as st

from ingest.jobs import Job, uploads_folder
from ingest.read import supported_extensions
from kb.auth import ADMIN, EDITOR
from kb.errors import InputError, SeekframeError
from kb.paths import display
from kb.types import FileState
from pages import access, resources
from pages.helpers import md_code, md_escape, save_upload

st.title("Add content")
access.require_role(EDITOR, "adding content")  # also when the page is opened by its address
store = resources.open_or_stop()
settings = resources.settings()
queue = resources.jobs()
extensions = sorted(supported_extensions())
limit_mb = st.get_option("server.maxUploadSize")
st.markdown(
    f"Seekframe reads {md_escape(', '.join(extensions))}. Files are ingested in the background by the ingest "
    "worker: you can leave this page, or close the browser, and come back. Each upload is saved under "
    f"{md_code(str(uploads_folder(settings.home)))}, in a folder named after its content, so files with the "
    "same name never replace each other.")
st.caption(f"Upload limit: {limit_mb} MB per file. Raise it when starting the app, e.g. "
           "`streamlit run streamlit_app.py --server.maxUploadSize 2000`, or set `maxUploadSize` under "
           "`[server]` in `.streamlit/config.toml`. For very large files, give a folder on the server instead.")

# Kept in this visitor's session (st.session_state): each user chooses for their own uploads.
ocr_first = st.checkbox("OCR-first: text only, no captions of figures and photos (faster)", key="ocr_first",
                        value=settings.ocr_first,
                        help="Pages, photos and video frames are still read for their text; what a figure or photo "
                             "shows is not described. Re-index a source later to add its captions.")

upload_tab, folder_tab = st.tabs(["Upload files", "Folder on the server"])
with upload_tab:
    files = st.file_uploader("Files to add", accept_multiple_files=True, key="uploads")
    if st.button("Ingest uploaded files", key="ingest_uploads", disabled=not files, type="primary"):
        saved, problems = [], []
        for upload in files or []:
            try:
                saved.append(save_upload(upload.name, upload.getvalue(), uploads_folder(settings.home), extensions))
            except InputError as err:
                problems.append(str(err))
        st.session_state["upload_problems"] = problems
        if saved:
            try:
                queue.submit(saved, label=f"upload of {len(saved)} file" + ("s" if len(saved) != 1 else ""),
                             owner=access.user(), ocr_first=ocr_first)
            except SeekframeError as err:
                problems.append(str(err))
    for problem in st.session_state.get("upload_problems", []):
        st.error(md_escape(problem))

with folder_tab:
    if not access.can(ADMIN):
        st.info("Reading folders on the server is for admins only.")
    elif not settings.allowed_folders:
        st.info("Reading folders on the server is off: anyone who can open this app could read the server's "
                "files through it. To allow it, set `KB_ALLOWED_FOLDERS` to the folders the app may read "
                "(absolute paths separated by `:`, or `allowed_folders = [...]` in `seekframe.toml`) and restart "
                "the app. Only files under those folders are read; hidden files and links that lead out of them "
                "are not.")
    else:
        st.caption("Allowed folders: " + ", ".join(md_code(str(r)) for r in settings.allowed_folders)
                   + " (`KB_ALLOWED_FOLDERS`). Hidden files and links that lead out of them are not read.")
        folder = st.text_input("Folder or file path on the server", key="folder_path",
                               placeholder=f"{settings.allowed_folders[0]}/...  (walked recursively)")
        if st.button("Ingest folder", key="ingest_folder", disabled=not folder.strip()):
            try:
                access.require_role(ADMIN, "reading server folders")
                queue.submit([folder.strip()], owner=access.user(), ocr_first=ocr_first)
            except SeekframeError as err:
                resources.show_error(err)


def show_job(job: Job) -> None:
    done = job.finished_files
    total = len(job.files) or 1
    by = f" · by {job.owner}" if job.owner else ""
    st.markdown(f"**{md_escape(job.label + by)}** · {job.state} · {done}/{len(job.files)} files · "
                f"{job.seconds:.1f} s" + (f" · {job.pages_read} pages read by the engine" if job.pages_read else ""))
    if job.error:
        st.caption(md_escape(display(job.error)))
    st.progress(done / total)
    if job.active:
        st.button("Cancel", key=f"cancel_{job.id}", on_click=queue.cancel, args=(job.id,),
                  help="Stops before the next file or page batch; files already stored stay.")
    if job.files:
        st.dataframe([{"file": display(f.rel), "status": f.state, "chunks": f.chunks, "result": f.result,
                       "reason": display(f.reason)} for f in job.files], hide_index=True, width="stretch")
    for item in job.files:
        if item.state == FileState.FAILED:
            st.error(md_escape(display(f"{item.rel}: {item.reason}")))


def jobs_panel() -> None:
    jobs = queue.jobs()
    if not jobs:
        st.caption("No ingest jobs yet.")
        return
    if queue.busy and not queue.live_workers():
        st.warning("Jobs are waiting, but no ingest worker has reported in the last minute: start one with "
                   "`python -m ingest --worker` (same KB_HOME and KB_CHROMA_URL as this app).")
    for job in jobs[:10]:
        with st.container(border=True):
            show_job(job)
    if st.session_state.get("jobs_were_busy") and not queue.busy:
        st.session_state["jobs_were_busy"] = False
        st.rerun(scope="app")  # stop the timer below and refresh the rest of the page
    st.session_state["jobs_were_busy"] = queue.busy


st.subheader("Ingest jobs")
if queue.busy:
    st.fragment(run_every=1.0)(jobs_panel)()  # redraw the statuses every second while something runs
else:
    jobs_panel()
