"""The visitor's interface language: the sidebar switch for this session, else the browser's language.

The words themselves are in kb/i18n.py (no Streamlit there); this only knows where the choice is kept.
"""
from __future__ import annotations

import streamlit as st

from kb import i18n
from kb.i18n import LANGUAGES, Language

KEY = "ui_language"


def current() -> Language:
    """The language chosen in the sidebar this session, or the browser's (st.context.locale)."""
    chosen = st.session_state.get(KEY)
    return chosen if chosen in LANGUAGES else i18n.language_of(st.context.locale)


def t(key: str, **params: object) -> str:
    """The catalog's text for `key` in this visitor's language."""
    return i18n.text(key, current(), **params)


def word(group: str, value: str) -> str:
    return i18n.word(group, value, current())


def switch() -> None:
    """The sidebar's language switch; its first value is the browser's language, then it follows the visitor."""
    language = current()
    st.session_state[KEY] = language  # kept across pages, even on runs that stop before the sidebar is drawn
    st.sidebar.selectbox(t("app.language"), list(LANGUAGES), key=KEY, format_func=LANGUAGES.__getitem__)
