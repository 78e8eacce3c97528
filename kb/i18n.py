"""The interface's words in English and Simplified Chinese: one catalog, one lookup (`text`), no Streamlit.

Every key maps to both languages; placeholders are named (`{name}`) and the same in both, and no sentence is
built by joining translated fragments, so a translator sees whole sentences. Counts are shown plural-free
("chunks: 3", "3/5 files"), which reads right in both languages without plural rules.

Errors are translated by their stable `code` (kb/errors.py): `err.<code>` is the message, `err.<code>.fix` the
fix, filled with the error's `params`. An error with no code, or a code not in the catalog, shows its English
text: nothing a user sees is ever lost for want of a translation.
"""
from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path
from typing import Literal, Mapping

Language = Literal["en", "zh"]
LANGUAGES: dict[Language, str] = {"en": "English", "zh": "中文"}
DEFAULT_LANGUAGE: Language = "en"
_HAN = re.compile(r"[\u4e00-\u9fff]")


def language_of(locale: str | None) -> Language:
    """The interface language for a browser's language tag (`zh-CN`, `zh-Hans`, `zh-TW`, `en-US`, None)."""
    return "zh" if (locale or "").lower().replace("_", "-").split("-")[0] == "zh" else DEFAULT_LANGUAGE


def language_of_text(words: str) -> Language:
    """The language a question is written in, as far as the interface's two go: Chinese when it holds Chinese
    characters (a Chinese question often names English products: "LinnSequencer 是什么？"), else English."""
    return "zh" if _HAN.search(words) else DEFAULT_LANGUAGE


def text(key: str, language: Language, **params: object) -> str:
    """The catalog's text for `key` in `language`, its `{placeholders}` filled from `params`.

    An unknown key is a bug in the caller (KeyError), found by the tests that render every page.
    """
    return CATALOG[key][language].format_map(params)


def word(group: str, value: str, language: Language) -> str:
    """A vocabulary word (a job state, a file type, a modality, a role) in `language`; unknown words as they are,
    since they come from data (a newer ingest may write a state this catalog does not know yet)."""
    entry = CATALOG.get(f"{group}.{value}")
    return entry[language] if entry else value


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class Said(str):
    """English text that also carries its catalog key and values, so an interface can say it in another language;
    everywhere else (logs, the CLI) it is just the string."""

    code: str = ""
    params: dict[str, object]


def said(english: str, code: str, **params: object) -> Said:
    shown = Said(english)
    shown.code, shown.params = code, params
    return shown


def say(shown: str, language: Language) -> str:
    """`shown` in `language` when it is a Said the catalog knows, else as it is."""
    code = getattr(shown, "code", "")
    if isinstance(shown, Said) and code in CATALOG:
        return text(code, language, **phrased(shown.params, language))
    return str(shown)


def phrased(params: Mapping[str, object], language: Language) -> dict[str, object]:
    """`params` with each value that is a catalog phrase ("a video", "a PNG image": what a reader calls a file)
    in `language`; other values (names, numbers, a library's own message) stay as they are."""
    return {name: word("phrase", value, language) if isinstance(value, str) else value
            for name, value in params.items()}


def error_text(err: BaseException, language: Language, **overrides: object) -> tuple[str, str]:
    """(message, fix) of an error in `language`: from the catalog by the error's code, else its English text.
    `overrides` replace parameters the caller can say better (an action's translated name, say)."""
    code = getattr(err, "code", "")
    message = str(getattr(err, "message", "") or err)  # errors from outside the library have no .message
    fix = str(getattr(err, "fix", "") or "")
    if not code or f"err.{code}" not in CATALOG:
        return message, fix
    params: Mapping[str, object] = {**phrased(getattr(err, "params", {}), language), **overrides}
    translated_fix = text(f"err.{code}.fix", language, **params) if f"err.{code}.fix" in CATALOG else fix
    return text(f"err.{code}", language, **params), translated_fix


def _load(path: Path) -> dict[str, dict[Language, str]]:
    """The catalog: kb/messages.toml, a table per key with its `en` and `zh` text (a data file, as translators
    keep them; the tests check every key has both languages with the same placeholders)."""
    with path.open("rb") as fh:
        return {key: {"en": entry["en"], "zh": entry["zh"]} for key, entry in tomllib.load(fh).items()}


CATALOG: dict[str, dict[Language, str]] = _load(Path(__file__).with_name("messages.toml"))
