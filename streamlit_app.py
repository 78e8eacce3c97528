"""Seekframe web app. Pages live in pages/ and stay thin; logic is in kb/.

Start it with `python streamlit_app.py [streamlit flags]` (what `make run` does): the process takes the
knowledge base's lock first, so a command-line ingest into the same embedded store is refused from the moment
the app starts, not from the first visit (Streamlit runs this script only when a browser connects).
`streamlit run streamlit_app.py` works too; it takes the lock when the first page opens.
"""
import sys
from concurrent.futures import Future
from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx


def serve(flags: list[str]) -> int:
    """Lock the embedded store for this process's lifetime, start loading the engine, then run the Streamlit
    server in this process."""
    from streamlit.web import cli

    from kb.config import load_settings
    from kb.engines import load_in_background
    from kb.errors import SeekframeError
    from kb.store import OwnerLock

    try:
        settings = load_settings()
        if not settings.chroma_url:  # a Chroma server is shared by design: nothing to lock
            OwnerLock(settings.home / "owner.lock")  # the lock open_store takes; re-entrant within this process
    except SeekframeError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    # The model loads (and a GPU engine warms its answer path) while the server starts, not on the first question.
    load_in_background(settings).add_done_callback(_say_engine_ready)
    return cli.main(["run", str(Path(__file__).resolve()), *flags], prog_name="streamlit")


def _say_engine_ready(loading: "Future[object]") -> None:
    from kb.engines import why_chosen

    if loading.exception() is not None:
        print(f"Seekframe: the engine did not load: {loading.exception()}", file=sys.stderr, flush=True)
    else:
        print(f"Seekframe: engine ready. {why_chosen(loading.result())}", file=sys.stderr, flush=True)


def app() -> None:
    """One run of the page script (Streamlit runs it per interaction, with __name__ == "__main__")."""
    from kb.auth import ADMIN, EDITOR, allows
    from pages import access, resources
    from pages.language import switch, t

    st.set_page_config(page_title="Seekframe", page_icon="🔎", layout="wide")
    # The language first: every page after it, the sign-in page and the errors included, speaks the chosen one.
    switch()
    # Every page needs the store; opening it here (once per process) also takes the lock if the launcher did not.
    resources.open_or_stop()
    # Queued jobs resume with the process, not with the first visit to the Add page (a single-user app's worker
    # thread starts here; with a Chroma server the worker processes do it).
    resources.jobs()
    # Who is here, before any page: a sign-in page (and stop) until they are; each page offered only to its role.
    identity, role = access.current()
    st.session_state["seekframe_user"], st.session_state["seekframe_role"] = identity.user, role
    access.show_user(identity, role)
    pages = [st.Page("pages/ask.py", title=t("nav.ask"), icon=":material/chat:", default=True),
             st.Page("pages/library.py", title=t("nav.library"), icon=":material/library_books:")]
    if allows(role, EDITOR):
        pages.append(st.Page("pages/add.py", title=t("nav.add"), icon=":material/add_circle:"))
    if allows(role, ADMIN):
        pages.append(st.Page("pages/system.py", title=t("nav.system"), icon=":material/monitor_heart:"))
    st.navigation(pages).run()


# Only as the main script: a process that re-imports it (multiprocessing's reader processes do, as __mp_main__)
# must not open the store, whose lock this process holds.
if __name__ == "__main__":
    if get_script_run_ctx(suppress_warning=True) is None:  # `python streamlit_app.py`: the launcher
        sys.exit(serve(sys.argv[1:]))
    app()
