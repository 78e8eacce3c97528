"""The lexical (BM25) index beside Chroma: SQLite FTS5 over text tokenised in Python.

Chroma's open-source build has no keyword search, and dense vectors miss exact strings (invoice numbers, error
codes, names). FTS5 was picked over bm25s because it updates in place per source (bm25s rebuilds its whole
matrix) and persists by itself; numbers in docs/benchmarks.md.

Tokenisation happens here, not in SQLite, so it can handle scripts without spaces: Han runs go through
jieba (search mode: words and their sub-words) plus character bigrams, kana and Hangul become bigrams,
everything else is words. FTS5 then only sees space-separated atomic tokens. The `Store` keeps this index
in step with Chroma: new rows before the manifest commit, old rows after it, and queries join the manifest so
only chunks of the current version of a source are returned.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import unicodedata
from pathlib import Path
from typing import Any, Sequence

import regex

from kb.types import Chunk

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
# Compounds like INV-2024-0117, E_ACCESS_4711 or 3.14 stay one token (and also yield their parts).
FTS_TOKENIZER = "unicode61 remove_diacritics 0 tokenchars '-_.'"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source_abs TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    modality TEXT NOT NULL,
    page INTEGER,
    t_start REAL,
    t_end REAL,
    position INTEGER NOT NULL,
    meta TEXT NOT NULL,          -- the chunk's Chroma metadata, so a hit needs no second look-up
    text TEXT NOT NULL,
    tokens TEXT NOT NULL         -- space-joined tokens: what FTS5 indexes
);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source_abs, position);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(tokens, content='chunks', content_rowid='rowid',
                                                  tokenize="{FTS_TOKENIZER}");
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
COLUMNS = {"source_abs", "sha256", "source", "modality", "page", "t_start", "t_end", "position"}

_HAN = r"\p{Han}"
_KANA = r"\p{Hiragana}\p{Katakana}ー"
_HANGUL = r"\p{Hangul}"
_CJK = rf"{_HAN}{_KANA}{_HANGUL}"
_W = rf"[[\p{{L}}\p{{N}}]--[{_CJK}]]"  # a letter or digit of a script that separates words by spaces
_WM = rf"[[\p{{L}}\p{{M}}\p{{N}}]--[{_CJK}]]"
_RUNS = regex.compile(rf"([{_HAN}]+)|([{_KANA}]+)|([{_HANGUL}]+)|({_W}{_WM}*(?:[-_.]{_W}{_WM}*)*)", regex.V1)
_PARTS = regex.compile(rf"{_W}{_WM}*", regex.V1)
_ARABIC_MARKS = regex.compile(r"[\u064B-\u065F\u0670\u0640]")  # harakat and tatweel: spelling varies, words don't
STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have how i if in into is it its "
    "of on or so than that the their then there these they this those to was were what when where which who "
    "whom whose why will with would you your".split())


# Chinese function characters: in nearly every passage, so a match on them is noise (and bigrams across them too).
CJK_STOP = frozenset("的了在是和与及或也都就而之其这那有我你他她它们个吗呢吧啊把被对从到为以于将能会可要不着过所")
_CJK_STOP_SPLIT = regex.compile("[" + "".join(sorted(CJK_STOP)) + "]+")


def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it prints its dictionary-loading chatter otherwise
    return jieba


def _stem(word: str) -> str:
    """A light English plural stemmer: 'invoices' and 'invoice' should meet; nothing more aggressive."""
    if not word.isascii() or len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zes", "ches", "shes")) or (word.endswith("oes") and len(word) > 5):
        return word[:-2]  # boxes, churches, volcanoes (but shoes, toes keep their e)
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _safe(token: str) -> str:
    """FTS5's unicode61 splits at combining marks (Devanagari vowel signs...): such tokens go in as hex."""
    if all(unicodedata.category(ch)[0] in "LN" or ch in "-_." for ch in token):
        return token
    return "x" + token.encode("utf-8").hex()


def _bigrams(run: str) -> list[str]:
    return [run] if len(run) < 2 else [run[i:i + 2] for i in range(len(run) - 1)]


def tokenize(text: str) -> list[str]:
    """Text -> index tokens: lower-cased, NFKC (full-width forms folded), stopwords dropped, CJK segmented."""
    text = _ARABIC_MARKS.sub("", unicodedata.normalize("NFKC", text).casefold())
    tokens: list[str] = []
    for han, kana, hangul, word in _RUNS.findall(text):
        if han:
            # jieba's words for Chinese; character bigrams too, for Japanese kanji and words jieba does not know.
            words = [t for t in _jieba().cut_for_search(han) if t.strip() and t not in CJK_STOP]
            pieces = [p for p in _CJK_STOP_SPLIT.split(han) if len(p) > 1]
            tokens += words + [b for p in pieces for b in _bigrams(p) if b not in words]
        elif kana or hangul:
            tokens += _bigrams(kana or hangul)
        elif word not in STOPWORDS:
            parts = _PARTS.findall(word)
            tokens.append(_stem(word))
            if len(parts) > 1:  # INV-2024-0117 also answers a search for 0117
                tokens += [_stem(p) for p in parts if p not in STOPWORDS]
    return [_safe(t) for t in tokens]


def identifiers(text: str) -> set[str]:
    """The code-like tokens of `text` (INV-2024-0117, E_ACCESS_4711, ISO9001): a digit with letters or joiners.

    Someone who types one wants the passages that contain it, whatever else they say around it.
    """
    out = set()
    for token in tokenize(text):
        if any(ch.isdigit() for ch in token) and any(ch.isalpha() or ch in "-_." for ch in token):
            out.add(token)
    return out


def match_expression(text: str) -> str:
    """An FTS5 query: any of the question's tokens (OR), each quoted so no token is read as an operator."""
    unique = dict.fromkeys(tokenize(text))
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in unique)


def where_sql(where: dict[str, Any] | None, alias: str = "c") -> tuple[str, list[Any]]:
    """Translate a Chroma `where` filter (the one kb.search builds) into SQL over the chunks table."""
    if not where:
        return "1", []
    if len(where) != 1:
        return where_sql({"$and": [{k: v} for k, v in where.items()]}, alias)
    (key, value), = where.items()
    if key in ("$and", "$or"):
        parts = [where_sql(w, alias) for w in value]
        joiner = " AND " if key == "$and" else " OR "
        return "(" + joiner.join(p for p, _ in parts) + ")", [a for _, args in parts for a in args]
    if key not in COLUMNS:
        raise ValueError(f"the lexical index cannot filter on {key!r}")
    column = f"{alias}.{key}"
    op, arg = next(iter(value.items())) if isinstance(value, dict) else ("$eq", value)
    if op in ("$in", "$nin"):
        marks = ", ".join("?" for _ in arg) or "NULL"
        return f"{column} {'NOT ' if op == '$nin' else ''}IN ({marks})", list(arg)
    sql_op = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
    return f"{column} {sql_op} ?", [arg]


class LexicalIndex:
    """Chunks and their tokens in `path`; the manifest is attached so queries see current versions only."""

    def __init__(self, path: Path, manifest_path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.is_new = not path.exists()
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._db.execute("ATTACH DATABASE ? AS m", (str(manifest_path),))
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # writing -----------------------------------------------------------------------------------------
    def upsert(self, chunks: Sequence[Chunk], metadatas: Sequence[dict] | None = None) -> None:
        """Add chunks (replacing any with the same id), in one transaction."""
        metadatas = metadatas or [c.metadata() for c in chunks]
        rows = [(c.id, c.source_abs, c.sha256, c.source, c.modality, c.page, c.t_start, c.t_end, c.position,
                 json.dumps(meta), c.text, " ".join(tokenize(c.text))) for c, meta in zip(chunks, metadatas)]
        with self._lock, self._db:
            self._delete_rows("id IN (SELECT value FROM json_each(?))", [json.dumps([c.id for c in chunks])])
            self._db.executemany(
                "INSERT INTO chunks (id, source_abs, sha256, source, modality, page, t_start, t_end, position, "
                "meta, text, tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("INSERT INTO fts (rowid, tokens) SELECT rowid, tokens FROM chunks WHERE id IN "
                             "(SELECT value FROM json_each(?))", (json.dumps([c.id for c in chunks]),))

    def delete_source(self, path: str, keep_version: tuple[str, int] | None = None) -> int:
        """Remove the rows of `path`, except those of `keep_version` (content hash, chunk count: positions
        0..count-1 of that hash); returns how many went."""
        sha, count = keep_version or ("", 0)
        with self._lock, self._db:
            return self._delete_rows("source_abs = ? AND NOT (sha256 = ? AND position < ?)", [path, sha, count])

    def _delete_rows(self, condition: str, args: list[Any]) -> int:
        # An external-content FTS5 table forgets a row only when told its old tokens ('delete' command).
        self._db.execute(f"INSERT INTO fts (fts, rowid, tokens) SELECT 'delete', rowid, tokens FROM chunks "
                         f"WHERE {condition}", args)
        return self._db.execute(f"DELETE FROM chunks WHERE {condition}", args).rowcount

    # reading -----------------------------------------------------------------------------------------
    def orphans(self) -> list[tuple[str, str]]:
        """(path, rel) of sources that have rows here but no manifest row (a scan: for repairs only)."""
        with self._lock:
            return self._db.execute("SELECT DISTINCT source_abs, source FROM chunks WHERE source_abs NOT IN "
                                    "(SELECT path FROM m.sources)").fetchall()

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def query(self, text: str, k: int, where: dict | None = None) -> list[tuple[str, str, dict, float]]:
        """(id, text, metadata, bm25 score) of the best `k` current chunks for `text`, best first."""
        expression = match_expression(text)
        if not expression or k <= 0:
            return []
        with self._lock:
            rows = self._ranked_first(expression, k) if where is None else []
            if len(rows) < k:  # a filter, or stale versions among the best: join before ranking
                condition, args = where_sql(where)
                sql = ("SELECT c.id, c.text, c.meta, -bm25(fts) AS score FROM fts JOIN chunks c ON c.rowid = fts.rowid "
                       "JOIN m.sources s ON s.path = c.source_abs AND s.sha256 = c.sha256 "
                       f"WHERE fts MATCH ? AND {condition} ORDER BY bm25(fts) LIMIT ?")
                rows = self._db.execute(sql, [expression, *args, k]).fetchall()
        return [(cid, doc, json.loads(meta), float(score)) for cid, doc, meta, score in rows]

    def _ranked_first(self, expression: str, k: int) -> list[tuple]:
        """Rank inside FTS5, then join only the best few: joining every match first cost 60% of query time
        at 100k chunks (bench/scale.py)."""
        sql = ("SELECT c.id, c.text, c.meta, -f.score FROM (SELECT rowid, bm25(fts) AS score FROM fts "
               "WHERE fts MATCH ? ORDER BY score LIMIT ?) f JOIN chunks c ON c.rowid = f.rowid "
               "JOIN m.sources s ON s.path = c.source_abs AND s.sha256 = c.sha256 ORDER BY f.score LIMIT ?")
        return self._db.execute(sql, [expression, k * 4, k]).fetchall()

    def neighbours(self, path: str, sha256: str, positions: Sequence[int]) -> list[tuple[str, str, dict]]:
        """The chunks of one version of a source at the given positions (for context assembly)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, text, meta FROM chunks WHERE source_abs = ? AND sha256 = ? AND position IN "
                "(SELECT value FROM json_each(?)) ORDER BY position", (path, sha256, json.dumps(list(positions))))
            return [(cid, doc, json.loads(meta)) for cid, doc, meta in rows.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()
