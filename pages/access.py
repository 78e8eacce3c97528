"""Sign-in for the pages: who the visitor is (st.login, a trusted proxy header, or the local single user) and
their role. The rules live in kb/auth.py; this only reads Streamlit's user, headers and peer address."""
from __future__ import annotations

import logging
import sys

import streamlit as st

from kb import i18n
from kb.auth import (
    ADMIN,
    LOCAL_USER,
    AccessDenied,
    Identity,
    allows,
    check_no_sign_in,
    identity_from_claims,
    identity_from_headers,
    require,
    role_of,
)
from pages import resources
from pages.helpers import md_escape
from pages.language import t, word

log = logging.getLogger(__name__)


def mode() -> str:
    """The sign-in mode in force: KB_AUTH, with `auto` meaning oidc when secrets.toml names a provider."""
    chosen = resources.settings().auth
    if chosen != "auto":
        return chosen
    try:
        return "oidc" if "auth" in st.secrets else "none"
    except FileNotFoundError:
        return "none"


def _stop() -> None:
    """End this run showing no pages: declaring a navigation of none keeps Streamlit from listing the files in
    pages/ instead (each page checks the role again anyway, for a visitor who types its address)."""
    st.navigation([st.Page(_nothing, title="Seekframe", default=True)], position="hidden")
    st.stop()


def _nothing() -> None:
    pass


def _stop_with(err: AccessDenied, **params: object) -> None:
    resources.show_error(err, **params)
    _stop()


def _sign_in_page() -> None:
    st.title("Seekframe")
    st.write(t("access.sign_in_intro"))
    st.button(t("access.sign_in"), key="sign_in", type="primary", on_click=st.login)
    _stop()


@st.cache_resource(show_spinner=False)
def _say_no_sign_in(address: str) -> bool:
    """Once per process, on the console: this app has no sign-in (everyone who reaches it is admin)."""
    print(f"\n*** SEEKFRAME: NO SIGN-IN. Everyone who reaches this app is admin; it listens on {address} only. "
          "For a team set KB_AUTH=oidc (a provider in .streamlit/secrets.toml) or KB_AUTH=header. ***\n",
          file=sys.stderr, flush=True)
    return True


def current() -> tuple[Identity, str]:
    """The visitor and their role, or a sign-in page / refusal and stop. Run at the top of every page run."""
    settings = resources.settings()
    how = mode()
    if how == "none":
        address = st.get_option("server.address") or ""
        try:
            check_no_sign_in(address)
        except AccessDenied as err:
            _stop_with(err)
        _say_no_sign_in(address)
        st.sidebar.warning(t("access.no_sign_in"))
        return Identity(email=LOCAL_USER, name="local user"), ADMIN
    if how == "oidc":
        if not st.user.is_logged_in:
            _sign_in_page()
        identity = identity_from_claims(st.user.to_dict())
    else:
        peer = st.context.ip_address or "127.0.0.1"  # Streamlit reports the loopback peer as None
        try:
            identity = identity_from_headers(dict(st.context.headers), peer, settings)
        except AccessDenied as err:
            log.warning("refused a sign-in header: %s", err)
            _stop_with(err)
    role = role_of(identity, settings)
    if role is None:
        st.error(md_escape(t("access.no_role", email=identity.email)))
        st.caption(t("access.no_role_fix"))
        if how == "oidc":
            st.button(t("access.sign_out"), key="sign_out", on_click=st.logout)
        _stop()
    return identity, role


def show_user(identity: Identity, role: str) -> None:
    with st.sidebar:
        name = shown_name(identity.email) if identity.email == LOCAL_USER else identity.name or identity.email
        st.caption(md_escape(t("access.signed_in_as", name=name, role=word("role", role))))
        if mode() == "oidc":
            st.button(t("access.sign_out"), key="sign_out", on_click=st.logout)


def shown_name(user: str) -> str:
    """A user as the page names them: the single local user in the visitor's language, others by their address."""
    return t("access.local_user") if user == LOCAL_USER else t("access.inbox") if user == "inbox" else user


def role() -> str:
    """This visitor's role, decided by streamlit_app.py for this run."""
    return st.session_state.get("seekframe_role") or current()[1]


def user() -> str:
    return st.session_state.get("seekframe_user") or current()[0].user


def can(needed: str) -> bool:
    return allows(role(), needed)


def require_role(needed: str, action: str) -> None:
    """Refuse the action (an error on the page and stop) unless the visitor's role reaches `needed`; `action`
    is its catalog key (`action.add_content`), said in English in the error and in the visitor's language on
    the page."""
    try:
        require(role(), needed, i18n.text(action, "en"))
    except AccessDenied as err:
        mine = role()
        _stop_with(err, action=t(action), needed=word("role", needed),
                   role=word("role", mine) if mine else t("access.not_allowed"))
