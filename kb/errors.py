"""One exception tree. Every error says what went wrong and how to fix it; the CLI maps each to an exit code.

An error the web app can show also carries a stable `code` and its `params` (the values in its message), so the
interface can say it in the visitor's language (kb/i18n.py); without a code the English text is shown.
"""
from __future__ import annotations

from typing import Mapping


class SeekframeError(Exception):
    """Base class: `err.message` is the problem, `err.fix` the way out; `str(err)` says both (for logs, CLIs)."""

    exit_code = 1

    def __init__(self, message: str, fix: str = "", *, code: str = "",
                 params: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.code = code
        self.params: dict[str, object] = dict(params or {})

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


class ConfigError(SeekframeError):
    """A setting is missing, malformed or contradicts another."""

    exit_code = 2


class EngineError(SeekframeError):
    """The model engine could not load or answer."""


class EngineUnavailable(EngineError):
    """A model server is down or unreachable."""


class StoreError(SeekframeError):
    """The vector store cannot be opened or written."""


class StoreLocked(StoreError):
    """Another process owns the embedded store."""


class EmbedderMismatch(StoreError):
    """The collection was built with another embedding model."""


class InputError(SeekframeError):
    """One input file cannot be read (zero bytes, truncated, encrypted, wrong type); `params` include its path."""

    def __init__(self, path: str, message: str, fix: str = "", *, code: str = "",
                 params: Mapping[str, object] | None = None) -> None:
        super().__init__(f"{path}: {message}", fix, code=code, params={"path": path, **(params or {})})
        self.path = path


class NotFound(SeekframeError):
    """A source or chunk the user named is not in the knowledge base."""
