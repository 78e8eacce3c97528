"""The lexical (BM25) index beside Chroma: Tantivy over text tokenised in Python; it also keeps each chunk's text.

Chroma's open-source build has no keyword search, and dense vectors miss exact strings (invoice numbers, error
codes, names). Tantivy replaced SQLite FTS5 because FTS5 visits every chunk that holds any query word (80-90 %
of them for a common word: linear in the corpus), while Tantivy's block-max WAND skips blocks of postings that
cannot reach the top k (numbers in docs/benchmarks.md, the Scale section).

Tokenisation happens here, not in Tantivy, so it can handle scripts without spaces: Han runs go through
jieba (search mode: words and their sub-words) plus character bigrams, kana and Hangul become bigrams,
everything else is words. Tantivy only sees space-separated atomic tokens (its `whitespace` tokenizer).

Each chunk's text and Chroma metadata are stored here (compressed) and nowhere else: Chroma gets vectors and
metadata only (its own trigram full-text index of documents cannot be switched off in the embedded build and
was 70 % of fill time). The `Store` keeps this index in step with Chroma: new rows before the manifest commit,
old rows after it, and a query only returns chunks whose content hash is the manifest's (checked after ranking).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import shutil
import sqlite3
import threading
import time
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import regex
import tantivy
from tantivy import Occur as O  # noqa: E741 (short: the queries below read as clause lists)
from tantivy import Query as Q

from kb.errors import StoreError
from kb.types import Chunk

log = logging.getLogger(__name__)
SCHEMA_VERSION = 3  # 1: SQLite FTS5 (lexical.sqlite); 2: Tantivy (lexical/); 3: + fast fields length, key
STRING_FIELDS = ("id", "source_abs", "sha256", "source", "modality")
INT_FIELDS = ("page", "position")
FLOAT_FIELDS = ("t_start", "t_end")
WRITER_HEAP = 64_000_000  # bytes buffered before Tantivy writes a segment on its own
TIE_DEPTH = 200  # how far a query follows a run of equal scores at the k-th place
FEW_VALUES = 16  # a filter on more values than this marks its chunks up front (a term set query)
# A filtered query runs one of two plans, whichever a cost model of both says is cheaper (CPU microseconds per
# query). Scoring what the filter admits costs SCORE_US per admitted chunk holding a query word (a filter clause
# turns pruning off). Ranking unfiltered costs the ranking itself, RANK_US per chunk holding a query word (common
# words: WAND prunes little), plus PLACE_US per place it reads to find k that pass (TIE_DEPTH x dilution deep:
# Tantivy's heap, the lengths, the filter's check). The first grows with what the filter admits, the second with
# the store and the dilution, so the switch tends to a share of the store (RANK_US / SCORE_US, ~42 %) as it grows;
# the rule it replaced (admits <= 6000 x first depth) switched at sqrt(N x 180k) chunks: 42 % at 1M, 13 % at 10M.
# Fitted (log error; a fixed ~1.5 ms both plans pay cancels) to both plans forced on 17 filters at 100k, 17 at 252k
# and 18 at 1M chunks (`python -m bench.scale --filter-plans`; docs/benchmarks.md, Scale, "Choosing the filtered
# lexical plan by a cost model"): it picks the cheaper plan on all but two (0.4 and 1.5 ms lost, within 8 %).
SCORE_US = 0.057
RANK_US = 0.024
PLACE_US = 2.9
LOCK_WAIT_S = 60.0  # how long a writer waits for another process's writer (server mode)


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    # Term frequencies but no positions: BM25 needs no more, and positions would double the postings.
    builder.add_text_field("tokens", tokenizer_name="whitespace", index_option="freq")
    for name in STRING_FIELDS:
        builder.add_text_field(name, tokenizer_name="raw", index_option="basic")
    for name in INT_FIELDS:
        builder.add_integer_field(name, indexed=True, fast=True)
    for name in FLOAT_FIELDS:
        builder.add_float_field(name, indexed=True, fast=True)
    # Read per ranked chunk from columns (no stored row): the token count breaks ties as exact BM25 does, and a
    # 64-bit hash of the id lets a filter be checked on the ranked chunks. Only the k returned chunks read rows.
    builder.add_unsigned_field("length", fast=True)
    builder.add_unsigned_field("key", indexed=True, fast=True)
    builder.add_bytes_field("row", stored=True)  # {"id", "text", "meta"} as JSON: what a hit needs
    return builder.build()


SCHEMA = _schema()
FIELD_NAMES = {"tokens", *STRING_FIELDS, *INT_FIELDS, *FLOAT_FIELDS, "length", "key", "row"}
_HAN = r"\p{Han}"
_KANA = r"\p{Hiragana}\p{Katakana}ー"
_HANGUL = r"\p{Hangul}"
_CJK = rf"{_HAN}{_KANA}{_HANGUL}"
_W = rf"[[\p{{L}}\p{{N}}]--[{_CJK}]]"  # a letter or digit of a script that separates words by spaces
_WM = rf"[[\p{{L}}\p{{M}}\p{{N}}]--[{_CJK}]]"
_RUNS = regex.compile(rf"([{_HAN}]+)|([{_KANA}]+)|([{_HANGUL}]+)|({_W}{_WM}*(?:[-_.]{_W}{_WM}*)*)", regex.V1)
# The same words for ASCII-only text through the stdlib engine: 8x faster than the Unicode-class pattern above.
_ASCII_WORDS = re.compile(r"[a-z0-9]+(?:[-_.][a-z0-9]+)*")
_PARTS = regex.compile(rf"{_W}{_WM}*", regex.V1)
_ARABIC_MARKS = regex.compile(r"[\u064B-\u065F\u0670\u0640]")  # harakat and tatweel: spelling varies, words don't
STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have how i if in into is it its "
    "of on or so than that the their then there these they this those to was were what when where which who "
    "whom whose why will with would you your".split())


# Chinese function characters: in nearly every passage, so a match on them is noise (and bigrams across them too).
CJK_STOP = frozenset("的了在是和与及或也都就而之其这那有我你他她它们个吗呢吧啊把被对从到为以于将能会可要不着过所")
_CJK_STOP_SPLIT = regex.compile("[" + "".join(sorted(CJK_STOP)) + "]+")


def _jieba() -> Any:  # the jieba module (untyped), imported on first Chinese text
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it prints its dictionary-loading chatter otherwise
    return jieba


@functools.lru_cache(maxsize=200_000)  # words repeat (Zipf): the cache makes stemming nearly free
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


def _bigrams(run: str) -> list[str]:
    return [run] if len(run) < 2 else [run[i:i + 2] for i in range(len(run) - 1)]


def tokenize(text: str) -> list[str]:
    """Text -> index tokens: lower-cased, NFKC (full-width forms folded), stopwords dropped, CJK segmented."""
    text = _ARABIC_MARKS.sub("", unicodedata.normalize("NFKC", text).casefold())
    tokens: list[str] = []
    runs = [("", "", "", w) for w in _ASCII_WORDS.findall(text)] if text.isascii() else _RUNS.findall(text)
    for han, kana, hangul, word in runs:
        if han:
            # jieba's words for Chinese; character bigrams too, for Japanese kanji and words jieba does not know.
            words = [t for t in _jieba().cut_for_search(han) if t.strip() and t not in CJK_STOP]
            pieces = [p for p in _CJK_STOP_SPLIT.split(han) if len(p) > 1]
            tokens += words + [b for p in pieces for b in _bigrams(p) if b not in words]
        elif kana or hangul:
            tokens += _bigrams(kana or hangul)
        elif word not in STOPWORDS:
            tokens.append(_stem(word))
            if "-" in word or "_" in word or "." in word:  # INV-2024-0117 also answers a search for 0117
                tokens += [_stem(p) for p in _PARTS.findall(word) if p not in STOPWORDS]
    # Tantivy splits only at whitespace (none inside a token), so tokens go in as they are, combining marks too.
    return tokens


def identifiers(text: str) -> set[str]:
    """The code-like tokens of `text` (INV-2024-0117, E_ACCESS_4711, ISO9001): a digit with letters or joiners.

    Someone who types one wants the passages that contain it, whatever else they say around it.
    """
    out = set()
    for token in tokenize(text):
        if any(ch.isdigit() for ch in token) and any(ch.isalpha() or ch in "-_." for ch in token):
            out.add(token)
    return out


def query_terms(text: str) -> list[str]:
    """The question's distinct tokens: each is one OR-ed term of the BM25 query."""
    return list(dict.fromkeys(tokenize(text)))


# filters: the Chroma `where` that kb.search builds, as a Tantivy query ------------------------------------------
def filter_query(where: dict[str, Any]) -> tantivy.Query:
    """Translate a Chroma `where` filter into a Tantivy query over the indexed metadata fields."""
    if len(where) != 1:
        return filter_query({"$and": [{k: v} for k, v in where.items()]})
    (key, value), = where.items()
    if key in ("$and", "$or"):
        occur = tantivy.Occur.Must if key == "$and" else tantivy.Occur.Should
        return tantivy.Query.boolean_query([(occur, filter_query(w)) for w in value])
    if key not in STRING_FIELDS + INT_FIELDS + FLOAT_FIELDS:
        raise ValueError(f"the lexical index cannot filter on {key!r}")
    op, arg = next(iter(value.items())) if isinstance(value, dict) else ("$eq", value)
    if op in ("$in", "$nin", "$eq", "$ne"):
        values = [_typed(key, v) for v in (arg if op in ("$in", "$nin") else [arg])]
        match = _any_of(key, values)
        if op in ("$nin", "$ne"):
            return tantivy.Query.boolean_query([(tantivy.Occur.Must, tantivy.Query.all_query()),
                                                (tantivy.Occur.MustNot, match)])
        return match
    if key in STRING_FIELDS or op not in ("$gt", "$gte", "$lt", "$lte"):
        raise ValueError(f"the lexical index cannot filter {key!r} with {op!r}")
    kind = tantivy.FieldType.Integer if key in INT_FIELDS else tantivy.FieldType.Float
    bound = _typed(key, arg)
    if op in ("$gt", "$gte"):
        return tantivy.Query.range_query(SCHEMA, key, kind, lower_bound=bound, include_lower=op == "$gte")
    return tantivy.Query.range_query(SCHEMA, key, kind, upper_bound=bound, include_upper=op == "$lte")


def _any_of(key: str, values: list[Any]) -> tantivy.Query:
    """Chunks whose `key` is one of `values`. A few values are term queries, which a conjunction with a short list
    of ids skips through; a term set query first marks every chunk it matches (7 ms for 74k chunks)."""
    if not values:
        return Q.empty_query()
    if len(values) > FEW_VALUES:
        return Q.term_set_query(SCHEMA, key, values)
    terms = [Q.term_query(SCHEMA, key, v) for v in values]
    return terms[0] if len(terms) == 1 else Q.boolean_query([(O.Should, t) for t in terms])


def estimated_matches(where: dict[str, Any], searcher: Any) -> int:
    """About how many chunks `where` admits, from document frequencies (a count would visit each of them):
    exact for values of string fields, an upper bound for their combinations, everything for ranges."""
    total = int(searcher.num_docs)
    if len(where) != 1:
        return estimated_matches({"$and": [{k: v} for k, v in where.items()]}, searcher)
    (key, value), = where.items()
    if key in ("$and", "$or"):
        parts = [estimated_matches(w, searcher) for w in value]
        return min(parts, default=total) if key == "$and" else min(total, sum(parts))
    op, arg = next(iter(value.items())) if isinstance(value, dict) else ("$eq", value)
    if key not in STRING_FIELDS or op not in ("$in", "$nin", "$eq", "$ne"):
        return total
    found = sum(int(searcher.doc_freq(key, str(v))) for v in (arg if op in ("$in", "$nin") else [arg]))
    return min(total, found) if op in ("$in", "$eq") else max(0, total - found)


def _first_depth(k: int, dilution: float) -> int:
    """How many ranked chunks to read first for k to pass a filter that admits one in `dilution` of them."""
    return int((k + 10) * dilution * 1.5) + 1


def _ranked_depth(k: int, dilution: float, total: int) -> int:
    """How deep the ranked plan's first search goes: as deep as ties are followed (at 1M chunks a common-word query
    costs the same at depth 20 and 200, as WAND prunes little, while a second search would double it)."""
    return min(total, max(_first_depth(k, dilution), int(TIE_DEPTH * dilution)))


def word_share(terms: Iterable[str], searcher: Any) -> float:
    """About what share of the chunks hold one of `terms` (at most 1: the sum of their document frequencies)."""
    total = max(1, int(searcher.num_docs))
    return min(1.0, sum(int(searcher.doc_freq("tokens", t)) for t in set(terms)) / total)


def scoring_us(admitted: float, share: float) -> float:
    """The cost model's CPU microseconds for scoring every admitted chunk that holds a query word."""
    return SCORE_US * admitted * share


def ranking_us(total: int, share: float, depth: int) -> float:
    """The cost model's CPU microseconds for ranking all chunks `depth` places deep (the filter checked on those)."""
    holding = total * share
    return RANK_US * holding + PLACE_US * min(depth, holding)


def scores_admitted(admitted: int, total: int, share: float, k: int) -> bool:
    """Whether a query for k chunks whose filter admits `admitted` of `total` (`share` of them holding a query word)
    should score the admitted chunks (True) or rank all and drop the others (False): the cheaper by the cost model."""
    depth = _ranked_depth(k, total / max(1, admitted), total)
    return scoring_us(admitted, share) <= ranking_us(total, share, depth)


def _narrowed(ranking: tantivy.Query, allowed: tantivy.Query) -> tantivy.Query:
    """`ranking` over the chunks `allowed` admits: scores every such chunk that has a query word (no pruning)."""
    return Q.boolean_query([(O.Must, ranking), (O.Must, Q.const_score_query(allowed, 0.0))])


def _tied(score: float) -> float:
    """A score rounded so that ties show: Tantivy's sums differ in the 7th digit for the same terms and length."""
    return round(score, 4)


def _typed(key: str, value: Any) -> Any:
    if key in INT_FIELDS:
        if float(value) != int(value):
            raise ValueError(f"{key} is a whole number; {value!r} cannot be compared with it")
        return int(value)
    return float(value) if key in FLOAT_FIELDS else str(value)


def _document(chunk: Chunk, meta: dict[str, Any]) -> tantivy.Document:
    doc = tantivy.Document()
    tokens = tokenize(chunk.text)
    doc.add_text("tokens", " ".join(tokens))
    for name in STRING_FIELDS:
        value = chunk.id if name == "id" else meta.get(name)  # under the stored names (source, source_abs)
        if value is not None:
            doc.add_text(name, str(value))
    for name in INT_FIELDS + FLOAT_FIELDS:
        value = getattr(chunk, name)
        if value is not None:
            doc.add_integer(name, int(value)) if name in INT_FIELDS else doc.add_float(name, float(value))
    doc.add_unsigned("length", len(tokens))
    doc.add_unsigned("key", _key(chunk.id))
    doc.add_bytes("row", json.dumps({"id": chunk.id, "text": chunk.text, "meta": meta}).encode())
    return doc


def _key(chunk_id: str) -> int:
    """A chunk id as 64 bits (a collision only makes a filter check look at one more chunk, see `_admitted`)."""
    return int.from_bytes(hashlib.blake2b(chunk_id.encode(), digest_size=8).digest(), "little")


def _has_current_schema(path: Path) -> bool:
    """Whether the index at `path` has this version's fields (meta.json lists them; no need to open it)."""
    fields = json.loads((path / "meta.json").read_text()).get("schema", [])
    return {field.get("name") for field in fields} == FIELD_NAMES


def _stored(searcher: Any, address: Any) -> dict[str, Any]:
    """The stored row of the chunk at `address`: {"id", "text", "meta"}."""
    row: dict[str, Any] = json.loads(bytes(searcher.doc(address).get_first("row")))
    return row


def _aside(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def _finish_swap(path: Path) -> None:
    """A crash between the renames of `LexicalIndex.build(replace=True)` leaves the old index aside: with the new
    one in place it goes; without, it comes back (and is upgraded again)."""
    aside = _aside(path)
    if not aside.is_dir():
        return
    if (path / "meta.json").is_file():
        shutil.rmtree(aside)
    else:
        aside.rename(path)


def _wait_for_writer(index: tantivy.Index, path: Path) -> Any:
    """The index's one writer, waiting while another process holds it (server mode)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    pause = 0.02
    while True:
        try:
            return index.writer(WRITER_HEAP, 1)
        except ValueError as err:
            if "lock" not in str(err).lower() or time.monotonic() > deadline:
                raise StoreError(f"cannot write the lexical index at {path}: {err}",
                                 "another process has been writing it for over a minute; wait for it to "
                                 "finish, or stop it") from err
        time.sleep(pause)
        pause = min(0.5, pause * 2)


# the index -------------------------------------------------------------------------------------------------------
Row = tuple[str, str, dict[str, Any]]  # (chunk id, text, Chroma metadata)
Scored = tuple[str, str, dict[str, Any], float]  # a Row and its BM25 score


class _Open:
    """One Tantivy index opened by this process: shared by every LexicalIndex on the same folder (the app opens
    the store more than once), because Tantivy allows one writer per index and the reader can be shared too."""

    registry: dict[str, _Open] = {}
    guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.index = tantivy.Index(SCHEMA, str(path), reuse=True)
        self.index.config_reader(reload_policy="commit")  # other processes' commits show up on their own
        self.writer: Any = None
        self.lock = threading.RLock()  # one write (or one writer open/close) at a time in this process
        self.users = 0


class LexicalIndex:
    """Chunks (tokens, text, metadata) in the Tantivy index at `path`.

    `current_shas(paths) -> {path: sha256}` is the manifest: queries return only chunks of the current version of
    each source. `exclusive`: this process owns the knowledge base (the embedded store's lock), so it keeps the
    index's one writer open; otherwise (a Chroma server, several processes) each write takes the writer, waiting
    for another process's write to finish, and gives it back after its commit.
    """

    def __init__(self, path: Path, current_shas: Callable[[list[str]], dict[str, str]], exclusive: bool) -> None:
        if not self.exists(path):
            self.build(path, [])
        elif not _has_current_schema(path):
            self._upgrade(path)
        self.path = path
        self._current_shas = current_shas
        self._exclusive = exclusive
        with _Open.guard:
            key = str(path.resolve())
            self._open = _Open.registry.get(key) or _Open(path)
            _Open.registry[key] = self._open
            self._open.users += 1
        self._key = key

    @staticmethod
    def exists(path: Path) -> bool:
        _finish_swap(path)
        return (path / "meta.json").is_file()

    @classmethod
    def build(cls, path: Path, batches: Iterable[tuple[Sequence[Chunk], Sequence[dict[str, Any]]]],
              replace: bool = False) -> int:
        """Create the index at `path` from batches of (chunks, their metadata), all or nothing: it is built beside
        and renamed into place, so a crash while building leaves no half index (the next open builds again).
        `replace`: an index already at `path` is swapped for the new one (see `_finish_swap` for a crash then)."""
        building = path.with_name(path.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        writer = tantivy.Index(SCHEMA, str(building)).writer(WRITER_HEAP, 1)
        added = 0
        for chunks, metadatas in batches:
            for chunk, meta in zip(chunks, metadatas):
                writer.add_document(_document(chunk, meta))
            added += len(chunks)
        writer.commit()
        writer.wait_merging_threads()
        if replace:
            path.rename(_aside(path))
            building.rename(path)
            shutil.rmtree(_aside(path))
            return added
        try:
            building.rename(path)
        except OSError:  # another process built it first (server mode): theirs stands
            if not cls.exists(path):
                raise
            shutil.rmtree(building, ignore_errors=True)
        return added

    @classmethod
    def _upgrade(cls, path: Path) -> None:
        """An index of an older schema (before the fast fields length and key) is rebuilt from its own stored rows,
        once (1M chunks: see docs/benchmarks.md, Scale). Its writer is held meanwhile, so no other process writes."""
        old = tantivy.Index.open(str(path))
        writer = _wait_for_writer(old, path)
        try:
            if _has_current_schema(path):  # another process upgraded it while this one waited
                return
            searcher = old.searcher()
            total = int(searcher.num_docs)
            log.info("rebuilding the lexical index at %s for its new schema (%d chunks, once)", path, total)
            addresses = [address for _, address in searcher.search(Q.all_query(), total).hits] if total else []

            def batches() -> Iterator[tuple[list[Chunk], list[dict[str, Any]]]]:
                for start in range(0, len(addresses), 5000):
                    rows = [_stored(searcher, a) for a in addresses[start:start + 5000]]
                    yield [Chunk.from_stored(r["id"], r["text"], r["meta"]) for r in rows], [r["meta"] for r in rows]
            cls.build(path, batches(), replace=True)
        finally:
            writer.rollback()
            del writer  # its lock file goes with the old folder, or is released here

    # writing -----------------------------------------------------------------------------------------
    def upsert(self, chunks: Sequence[Chunk], metadatas: Sequence[dict[str, Any]] | None = None) -> None:
        """Add chunks (replacing any with the same id), in one commit."""
        metadatas = metadatas or [c.metadata() for c in chunks]
        documents = [_document(c, m) for c, m in zip(chunks, metadatas)]  # tokenised outside the writer lock
        ids = [c.id for c in chunks]
        with self._writing() as writer:
            # A new version has new ids (they hold its content hash): asking once is cheaper than a delete per id.
            if ids and self._searcher().search(Q.term_set_query(SCHEMA, "id", ids), 1, count=True).count:
                for cid in ids:
                    writer.delete_documents_by_term("id", cid)  # applies to earlier documents only
            for document in documents:
                writer.add_document(document)

    def delete_source(self, path: str, keep_version: tuple[str, int] | None = None) -> int:
        """Remove the rows of `path`, except those of `keep_version` (content hash, chunk count: positions
        0..count-1 of that hash); returns how many went."""
        clauses = [(O.Must, Q.term_query(SCHEMA, "source_abs", path))]
        sha, count = keep_version or ("", 0)
        if count > 0:
            positions = Q.range_query(SCHEMA, "position", tantivy.FieldType.Integer, 0, count - 1)
            kept = Q.boolean_query([(O.Must, Q.term_query(SCHEMA, "sha256", sha)), (O.Must, positions)])
            clauses.append((O.MustNot, kept))
        query = Q.boolean_query(clauses)
        if not self._searcher().search(query, 1, count=True).count:
            return 0  # nothing to remove (a new source): no commit
        with self._writing() as writer:
            doomed: int = self._searcher().search(query, 1, count=True).count
            writer.delete_documents_by_query(query)
        return doomed

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        """The writer for one commit; the commit is atomic (a crash before it leaves the last commit intact)."""
        shared = self._open
        with shared.lock:
            writer = shared.writer or self._take_writer()
            try:
                yield writer
                writer.commit()
            except BaseException:
                writer.rollback()
                raise
            finally:
                if self._exclusive:
                    shared.writer = writer
                else:  # give the index's lock back to the other processes
                    shared.writer = None
                    writer.wait_merging_threads()
            shared.index.reload()  # this process sees its own commit at once

    def _take_writer(self) -> Any:
        return _wait_for_writer(self._open.index, self.path)

    # reading -----------------------------------------------------------------------------------------
    def _searcher(self) -> Any:
        return self._open.index.searcher()

    def orphans(self) -> list[tuple[str, str]]:
        """(path, rel) of sources that have rows here but no manifest row (a scan: for repairs only)."""
        searcher = self._searcher()
        paths = [term for term, _ in searcher.terms_with_prefix("source_abs", "")]
        known = self._current_shas(paths)
        out = []
        for path in paths:
            if path in known:
                continue
            hits = searcher.search(Q.term_query(SCHEMA, "source_abs", path), 1).hits  # none if all deleted
            if hits:
                out.append((path, self._row(searcher, hits[0][1])[2].get("source", "")))
        return out

    def count(self) -> int:
        return int(self._searcher().num_docs)

    def ids(self) -> list[str]:
        """Every chunk id in the index, sorted (one twice would show twice)."""
        searcher = self._searcher()
        total = searcher.num_docs
        if not total:
            return []
        hits = searcher.search(tantivy.Query.all_query(), total).hits
        return sorted(self._row(searcher, address)[0] for _, address in hits)

    def query(self, text: str, k: int, where: dict[str, Any] | None = None) -> list[Scored]:
        """(id, text, metadata, BM25 score) of the best `k` current chunks for `text`, best first."""
        terms = query_terms(text)
        if not terms or k <= 0:
            return []
        # Only SHOULD term clauses and a top-k collector: the shape Tantivy runs with block-max WAND.
        ranking = Q.boolean_query([(O.Should, Q.term_query(SCHEMA, "tokens", t)) for t in terms])
        searcher = self._searcher()
        if not where:
            return self._ranked(searcher, ranking, k, None, 1.0)
        allowed = filter_query(where)
        matches = max(1, estimated_matches(where, searcher))
        share = word_share(terms, searcher)
        # A filter clause turns WAND off (Tantivy prunes only pure SHOULD queries): every admitted chunk with a query
        # word is scored. Ranking unfiltered instead reads about TIE_DEPTH x dilution places to find k that pass.
        if scores_admitted(matches, searcher.num_docs, share, k):
            # Few pass (a source, a folder, a rare kind; most kinds in a small store): score them.
            return self._ranked(searcher, _narrowed(ranking, allowed), k, None, 1.0)
        # Many pass (a common kind of file): rank unfiltered, deep enough for k to pass, and drop the others.
        return self._ranked(searcher, ranking, k, allowed, searcher.num_docs / matches, share)

    def _ranked(self, searcher: Any, query: Any, k: int, allowed: Any, dilution: float, share: float = 1.0
                ) -> list[Scored]:
        """The best `k` current chunks of `query`'s ranking that `allowed` (a filter query, or None) admits.

        `dilution` is how many ranked chunks it takes, on average, for one to pass the filter: the first depth
        and how far ties are followed grow with it (`share`: of the chunks holding a query word, for the cost model).
        Ranking and ties use scores and fast fields only; the filter and the stored rows are checked in rank order,
        a few at a time, for the chunks returned."""
        if not searcher.num_docs:
            return []  # (Tantivy refuses a depth of 0)
        tie_depth = int(TIE_DEPTH * dilution)  # whole: each step below must grow the depth, or it would loop
        depth = _ranked_depth(k, dilution, searcher.num_docs)
        rows: dict[tuple[int, int], dict[str, Any]] = {}  # stored rows read so far, by address
        while True:
            hits = searcher.search(query, depth, count=False).hits
            more = len(hits) == depth
            scores = [_tied(score) for score, _ in hits]
            addresses = [address for _, address in hits]
            lengths = searcher.fast_field_values("length", addresses)
            # Tantivy keeps a chunk's length in one byte (lengths 150-160 share a value), so chunks that differ
            # only in length tie; exact BM25 ranks the shorter first, and so do we.
            order = sorted(range(len(hits)), key=lambda n: (-scores[n], lengths[n] or 0))
            taken = [order[i] for i in self._accepted(searcher, [addresses[n] for n in order], k, allowed,
                                                      dilution, rows)]
            if more and len(taken) >= k and depth < tie_depth and scores[-1] == scores[taken[k - 1]]:
                depth = int(min(tie_depth, depth * 4))  # chunks tied with the k-th go on past the depth: take all
                continue
            if len(taken) >= k or not more:
                out = []
                for n in taken[:k]:
                    row = rows[(addresses[n].segment_ord, addresses[n].doc)]
                    out.append((row["id"], row["text"], row["meta"], float(scores[n])))
                return out
            # Too few passed: the filter admits fewer of the best than on average, or stale versions (a write in
            # flight, a crash being cleaned up) took places: look deeper, or score what the filter admits when
            # ranking past the others again costs more than that.
            depth *= 4
            if allowed is not None and (scoring_us(searcher.num_docs / dilution, share)
                                        < ranking_us(searcher.num_docs, share, depth)):
                return self._ranked(searcher, _narrowed(query, allowed), k, None, 1.0)

    def _accepted(self, searcher: Any, addresses: list[Any], k: int, allowed: Any, dilution: float,
                  rows: dict[tuple[int, int], dict[str, Any]]) -> list[int]:
        """The places in `addresses` (best first) of the first `k` chunks that `allowed` admits (if given) and that
        are of the current version of their source. Checked in rank order, about as many at a time as should
        give the k still missing; the rows read are kept in `rows` (by address)."""
        taken: list[int] = []
        start = 0
        while len(taken) < k and start < len(addresses):
            missing = k - len(taken)
            end = min(len(addresses), start + math.ceil(missing * dilution * (1.0 if allowed is None else 1.5)))
            batch = list(range(start, end))
            if allowed is not None:
                admitted = self._admitted(searcher, allowed,
                                          searcher.fast_field_values("key", [addresses[n] for n in batch]))
                batch = [n for n in batch if (addresses[n].segment_ord, addresses[n].doc) in admitted]
            batch = batch[:missing]
            start = batch[-1] + 1 if len(batch) == missing else end
            for n in batch:
                where = (addresses[n].segment_ord, addresses[n].doc)
                if where not in rows:
                    rows[where] = _stored(searcher, addresses[n])
            metas = [rows[(addresses[n].segment_ord, addresses[n].doc)]["meta"] for n in batch]
            current = self._current_shas([m.get("source_abs", "") for m in metas])
            taken += [n for n, m in zip(batch, metas) if current.get(m.get("source_abs")) == m.get("sha256")]
        return taken

    @staticmethod
    def _admitted(searcher: Any, allowed: Any, keys: list[int]) -> set[tuple[int, int]]:
        """The addresses (segment, document) of the chunks with these `keys` that the filter query `allowed`
        admits: Tantivy decides, so a filter means the same on both paths. (A chunk elsewhere with a colliding
        key may come back too; the caller only looks up its own addresses.)"""
        if not keys:
            return set()
        query = Q.boolean_query([(O.Must, Q.term_set_query(SCHEMA, "key", keys)), (O.Must, allowed)])
        return {(address.segment_ord, address.doc) for _, address in searcher.search(query, 2 * len(keys)).hits}

    def rows(self, ids: Sequence[str]) -> dict[str, Row]:
        """The stored rows of the chunks `ids` (those that exist)."""
        if not ids:
            return {}
        searcher = self._searcher()
        hits = searcher.search(tantivy.Query.term_set_query(SCHEMA, "id", list(ids)), len(ids)).hits
        found = (self._row(searcher, address) for _, address in hits)
        return {row[0]: row for row in found}

    def rows_of(self, path: str, sha256: str | None = None, positions: tuple[int, int] | None = None) -> list[Row]:
        """The rows of a source (of one version, and a range of positions, if given), in position order."""
        clauses = [(O.Must, Q.term_query(SCHEMA, "source_abs", path))]
        if sha256 is not None:
            clauses.append((O.Must, Q.term_query(SCHEMA, "sha256", sha256)))
        if positions is not None:
            clauses.append((O.Must, Q.range_query(SCHEMA, "position", tantivy.FieldType.Integer, *positions)))
        query = Q.boolean_query(clauses)
        searcher = self._searcher()
        total = searcher.search(query, 1, count=True).count
        if not total:
            return []
        rows = [self._row(searcher, address) for _, address in searcher.search(query, total).hits]
        return sorted(rows, key=lambda row: int(row[2].get("position", 0)))

    def neighbours(self, path: str, sha256: str, positions: Sequence[int]) -> list[Row]:
        """The chunks of one version of a source at the given positions (for context assembly)."""
        if not positions:
            return []
        wanted = set(positions)
        rows = self.rows_of(path, sha256, (min(positions), max(positions)))
        return [row for row in rows if int(row[2].get("position", 0)) in wanted]

    @staticmethod
    def _row(searcher: Any, address: Any) -> Row:
        row = _stored(searcher, address)
        return row["id"], row["text"], row["meta"]

    def close(self) -> None:
        shared = self._open
        with _Open.guard:
            shared.users -= 1
            if shared.users > 0:
                return
            _Open.registry.pop(self._key, None)
        with shared.lock:
            if shared.writer is not None:
                shared.writer.wait_merging_threads()  # merges finish and the lock file is released
                shared.writer = None


def read_fts5(path: Path, batch: int = 5000) -> Iterator[list[Row]]:
    """The rows of a lexical index from before Tantivy (SQLite FTS5, lexical.sqlite), in batches."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        last = 0
        while True:
            got = db.execute("SELECT rowid, id, text, meta FROM chunks WHERE rowid > ? ORDER BY rowid LIMIT ?",
                             (last, batch)).fetchall()
            if not got:
                return
            last = got[-1][0]
            yield [(cid, text, json.loads(meta)) for _, cid, text, meta in got]
    finally:
        db.close()
