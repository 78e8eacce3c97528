"""The visitor's interface language: the sidebar switch for this session, else the browser's language.

The words themselves are in kb/i18n.py (no Streamlit there); this only knows where the choice is kept.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import streamlit as st

from kb import i18n
from kb.i18n import LANGUAGES, Language

KEY = "ui_language"  # the visitor's choice: plain session state, which no page change or widget cleanup drops
SWITCH = "ui_language_switch"  # the sidebar widget that changes it


def current() -> Language:
    """The language chosen in the sidebar this session, or the browser's (st.context.locale)."""
    chosen = st.session_state.get(KEY)
    return chosen if chosen in LANGUAGES else i18n.language_of(st.context.locale)


def t(key: str, **params: object) -> str:
    """The catalog's text for `key` in this visitor's language."""
    return i18n.text(key, current(), **params)


def word(group: str, value: str) -> str:
    return i18n.word(group, value, current())


def words(group: str) -> Callable[[str], str]:
    """A widget's format_func for a vocabulary, in the language of this run (bound now: Streamlit may call it
    outside the run, where the session's choice cannot be read)."""
    return partial(i18n.word, group, language=current())


def _chosen() -> None:
    st.session_state[KEY] = st.session_state[SWITCH]


def switch() -> None:
    """The sidebar's language switch, showing the language in force (the browser's until the visitor picks one)."""
    st.session_state[SWITCH] = current()
    st.sidebar.selectbox(t("app.language"), list(LANGUAGES), key=SWITCH, format_func=LANGUAGES.__getitem__,
                         on_change=_chosen)
