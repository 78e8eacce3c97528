"""Add content: upload files or name a server folder; ingestion runs in the background, per-file status."""
from __future__ import annotations

import json

import streamlit as st

from ingest.jobs import FileStatus, Job, uploads_folder
from ingest.read import supported_extensions
from kb.auth import ADMIN, EDITOR
from kb.errors import InputError, SeekframeError
from kb.i18n import error_text, said, say
from kb.paths import display
from kb.types import FileState
from pages import access, resources
from pages.helpers import md_code, md_escape, save_upload
from pages.language import current, t, word

st.title(t("add.title"))
access.require_role(EDITOR, "action.add_content")  # also when the page is opened by its address
store = resources.open_or_stop()
settings = resources.settings()
queue = resources.jobs()
extensions = sorted(supported_extensions())
limit_mb = st.get_option("server.maxUploadSize")
st.markdown(t("add.intro", extensions=md_escape(", ".join(extensions)),
               folder=md_code(str(uploads_folder(settings.home)))))
st.caption(t("add.limit", limit=limit_mb))

# Kept in this visitor's session (st.session_state): each user chooses for their own uploads.
ocr_first = st.checkbox(t("add.ocr_first"), key="ocr_first", value=settings.ocr_first, help=t("add.ocr_first_help"))

upload_tab, folder_tab = st.tabs([t("add.tab_upload"), t("add.tab_folder")])
with upload_tab:
    files = st.file_uploader(t("add.files"), accept_multiple_files=True, key="uploads")
    if st.button(t("add.ingest_uploads"), key="ingest_uploads", disabled=not files, type="primary"):
        saved, problems = [], []
        for upload in files or []:
            try:
                saved.append(save_upload(upload.name, upload.getvalue(), uploads_folder(settings.home), extensions))
            except InputError as err:
                problems.append(err)
        st.session_state["upload_problems"] = problems
        if saved:
            try:
                queue.submit(saved, label=t("add.upload_label", count=len(saved)), owner=access.user(),
                             ocr_first=ocr_first)
            except SeekframeError as err:
                problems.append(err)
    for problem in st.session_state.get("upload_problems", []):  # errors, said in the language of this run
        resources.show_error(problem)

with folder_tab:
    if not access.can(ADMIN):
        st.info(t("add.folders_admin_only"))
    elif not settings.allowed_folders:
        st.info(t("add.folders_off"))
    else:
        st.caption(t("add.allowed_folders", folders=", ".join(md_code(str(r)) for r in settings.allowed_folders)))
        folder = st.text_input(t("add.folder"), key="folder_path",
                               placeholder=t("add.folder_placeholder", folder=settings.allowed_folders[0]))
        if st.button(t("add.ingest_folder"), key="ingest_folder", disabled=not folder.strip()):
            try:
                access.require_role(ADMIN, "action.read_folders")
                queue.submit([folder.strip()], owner=access.user(), ocr_first=ocr_first)
            except SeekframeError as err:
                resources.show_error(err)


def job_label(job: Job) -> str:
    """What a job is called, in the reader's language: a re-index and an inbox batch are named here (JobBoard
    stores English labels for them); an upload keeps the label its submitter's page gave it."""
    if job.force and job.paths:
        return t("add.reindex_label", name=job.paths[0].name)
    if job.owner == "inbox":
        return t("add.inbox_label", count=len(job.paths))
    return job.label


def reason(item: FileStatus) -> str:
    """Why a file failed or was skipped, in the reader's language where the error gave its code (else as the
    ingest wrote it)."""
    try:
        cause = json.loads(item.cause) if item.cause else {}
        if "said" in cause:  # notes or errors the reader wrote as catalog sentences (read as another type, ...)
            return display("; ".join(say(said(line["text"], line["code"], **line["params"]), current())
                                     for line in cause["said"]))
        message, fix = error_text(SeekframeError(item.reason, code=cause["code"], params=cause["params"]), current())
    except (ValueError, KeyError, TypeError):
        return word("reason", display(item.reason))
    return display(t("add.reason_fix", reason=message, fix=fix) if fix else message)


def show_job(job: Job) -> None:
    done = job.finished_files
    total = len(job.files) or 1
    label = t("add.job_by", label=job_label(job), owner=access.shown_name(job.owner)) if job.owner else job_label(job)
    st.markdown(t("add.job_line_pages" if job.pages_read else "add.job_line", label=md_escape(label),
                  state=word("state", job.state), done=done, total=len(job.files), seconds=f"{job.seconds:.1f}",
                  pages=job.pages_read))
    if job.error:
        st.caption(md_escape(word("reason", display(job.error))))
    st.progress(done / total)
    if job.active:
        st.button(t("add.cancel"), key=f"cancel_{job.id}", on_click=queue.cancel, args=(job.id,),
                  help=t("add.cancel_help"))
    if job.files:
        st.dataframe([{t("add.col_file"): display(f.rel), t("add.col_status"): word("state", f.state),
                       t("add.col_chunks"): f.chunks, t("add.col_result"): word("result", f.result),
                       t("add.col_reason"): reason(f)} for f in job.files],
                     hide_index=True, width="stretch")
    for item in job.files:
        if item.state == FileState.FAILED:
            st.error(md_escape(t("add.file_failed", file=display(item.rel), reason=reason(item))))


def jobs_panel() -> None:
    jobs = queue.jobs()
    if not jobs:
        st.caption(t("add.no_jobs"))
        return
    if queue.busy and not queue.live_workers():
        st.warning(t("add.no_worker"))
    for job in jobs[:10]:
        with st.container(border=True):
            show_job(job)
    if st.session_state.get("jobs_were_busy") and not queue.busy:
        st.session_state["jobs_were_busy"] = False
        st.rerun(scope="app")  # stop the timer below and refresh the rest of the page
    st.session_state["jobs_were_busy"] = queue.busy


st.subheader(t("add.jobs"))
if queue.busy:
    st.fragment(run_every=1.0)(jobs_panel)()  # redraw the statuses every second while something runs
else:
    jobs_panel()
