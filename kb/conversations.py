"""Conversations on the Ask page, kept per user in KB_HOME/conversations.sqlite (shared by every app replica).

A conversation belongs to the user who started it; reading one by id checks the owner, so another user's
id reveals nothing. Turns keep the answer's text, timing line and cited hits, so a reopened conversation shows
the same citations (page images and video seconds are drawn again from the hits).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, TypedDict

from kb.errors import NotFound
from kb.types import Hit

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_user ON conversations(user, updated);
CREATE TABLE IF NOT EXISTS turns (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,              -- user, assistant
    text TEXT NOT NULL,
    question TEXT NOT NULL DEFAULT '',
    timing TEXT NOT NULL DEFAULT '',
    hits TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (conversation_id, position)
);
"""


class Turn(TypedDict, total=False):
    """One turn as the Ask page keeps it: the user's question, or an answer with its timing and cited hits."""

    role: str  # user, assistant
    text: str
    question: str
    timing: str
    hits: list[Hit]


class Conversations:
    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(home / "conversations.sqlite"), timeout=30, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()  # one connection for every session of an app process: one at a time
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def start(self, user: str, title: str) -> int:
        now = time.time()
        with self._lock, self._db:
            cursor = self._db.execute("INSERT INTO conversations (user, title, created, updated) VALUES (?, ?, ?, ?)",
                                      (user, title.strip()[:80] or "conversation", now, now))
        assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
        return cursor.lastrowid

    def add(self, conversation_id: int, user: str, turns: list[Turn]) -> None:
        """Append turns ({role, text, question?, timing?, hits?}) to the user's conversation."""
        self._owned(conversation_id, user)
        with self._lock, self._db:
            start = self._db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM turns WHERE conversation_id = ?",
                                     (conversation_id,)).fetchone()[0]
            self._db.executemany(
                "INSERT INTO turns (conversation_id, position, role, text, question, timing, hits) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(conversation_id, start + n, t["role"], t["text"], t.get("question", ""), t.get("timing", ""),
                  json.dumps([h.to_record() for h in t.get("hits", [])], ensure_ascii=False))
                 for n, t in enumerate(turns)])
            self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))

    def of(self, user: str, limit: int = 50) -> list[dict[str, Any]]:
        """The user's conversations, most recent first: {id, title, updated}."""
        with self._lock:
            rows = self._db.execute("SELECT id, title, updated FROM conversations WHERE user = ? "
                                    "ORDER BY updated DESC, id DESC LIMIT ?", (user, limit)).fetchall()
        return [dict(r) for r in rows]

    def turns(self, conversation_id: int, user: str) -> list[Turn]:
        self._owned(conversation_id, user)
        with self._lock:
            rows = self._db.execute("SELECT * FROM turns WHERE conversation_id = ? ORDER BY position",
                                    (conversation_id,)).fetchall()
        return [{"role": r["role"], "text": r["text"], "question": r["question"], "timing": r["timing"],
                 "hits": [Hit.from_record(h) for h in json.loads(r["hits"])]} for r in rows]

    def _owned(self, conversation_id: int, user: str) -> None:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM conversations WHERE id = ? AND user = ?",
                                   (conversation_id, user)).fetchone()
        if row is None:  # the same answer for someone else's conversation and for none: nothing leaks
            raise NotFound(f"you have no conversation {conversation_id}", "pick one of yours, or start a new one",
                           code="conversation.unknown", params={"conversation": conversation_id})

    def close(self) -> None:
        self._db.close()
