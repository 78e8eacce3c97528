"""Scale: `python -m bench.scale --sizes 100000,1000000` -> build time, disk, memory and query latency at N chunks.

A throwaway knowledge base (its own KB_HOME, embedded Chroma) is filled with synthetic chunks through the real
write path (`Store.replace_source` with precomputed vectors, `--per-source` chunks per synthetic source, so the
manifest has a realistic number of rows). The sizes are reached by growing one knowledge base: it is measured at
each size, then filled further. Vectors have the real embedding dimension and are clustered (random centroids
plus noise, each source leaning on a few centroids) so HNSW sees structure like real data, not uniform noise.
Text is ~150 Zipf-distributed pseudo-words per chunk with some numbers and codes (INV-2024-0117).

Queries: dense = `Store.query` with a vector near a random centroid; lexical = `Store.lexical_query` with 3-5
words of a stored chunk; hybrid = `kb.search.search(mode="hybrid")` end to end. Dense recall@10 is checked
against exact (brute-force) neighbours, and `--ef` sweeps HNSW ef_search at the largest size built.
Everything is generated from `--seed`, so `--workdir` can keep a knowledge base and a later run continues it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.report import markdown_table, write_section

TITLE = "Scale (`python -m bench.scale`)"


def title(dim: int) -> str:
    """The section a run writes: the 1024-d rows (the default embedder's size) and other sizes each in their own,
    so that runs at two vector sizes never overwrite each other's rows."""
    return TITLE if dim == 1024 else f"Scale at {dim}-d vectors (`python -m bench.scale --dim {dim}`)"
VOCAB_SIZE = 20_000
WORDS_PER_CHUNK = 150
CODE_RATE = 0.02  # share of tokens that are numbers or codes (INV-2024-0117, E_ACCESS_4711, 4711)
ZIPF_S = 1.07  # the exponent of word frequencies in English text
MIN_FREE_BYTES = 2 << 30  # stop filling when the machine has less memory than this left
TARGET_P95_MS = 100.0


# synthetic data -----------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    """Deterministic synthetic sources: source number -> chunk texts and their vectors."""

    dim: int
    per_source: int
    seed: int
    centroids: np.ndarray = field(init=False)
    vocab: np.ndarray = field(init=False)
    cumulative: np.ndarray = field(init=False)
    noise: float = 1.0  # noise norm relative to the centroid: cosine to own centroid ~0.7, like topical text

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0])
        self.centroids = _unit(rng.standard_normal((1000, self.dim), dtype=np.float32))
        self.vocab = np.array(_pseudo_words(rng, VOCAB_SIZE))
        ranks = np.arange(1, VOCAB_SIZE + 1, dtype=np.float64)
        self.cumulative = np.cumsum(ranks ** -ZIPF_S)
        self.cumulative /= self.cumulative[-1]

    def vectors(self, source: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, source])
        topics = rng.choice(len(self.centroids), size=3, replace=False)  # a document keeps to a few topics
        picks = topics[rng.integers(0, 3, self.per_source)]
        noise = rng.standard_normal((self.per_source, self.dim), dtype=np.float32) * (self.noise / math.sqrt(self.dim))
        return _unit(self.centroids[picks] + noise)

    def texts(self, source: int) -> list[str]:
        rng = np.random.default_rng([self.seed, 2, source])
        words = self.vocab[np.searchsorted(self.cumulative, rng.random((self.per_source, WORDS_PER_CHUNK)))]
        codes = rng.random(words.shape) < CODE_RATE
        for r, c in zip(*np.nonzero(codes)):
            words[r, c] = _code(rng)
        return [" ".join(row) + "." for row in words.tolist()]

    @staticmethod
    def kind(source: int) -> str:
        """The modality of a source's chunks: 5 % image OCR, 20 % scanned PDF, the rest born-digital PDF, so a kind
        filter admits a small or a large share of the chunks (filtered lexical queries are measured on both)."""
        return "image_ocr" if source % 20 == 0 else "pdf_ocr" if source % 20 < 5 else "pdf_text"

    def near_centroid(self, rng: np.random.Generator) -> np.ndarray:
        """A query vector: a random topic plus as much noise as a chunk has."""
        c = self.centroids[rng.integers(len(self.centroids))]
        return _unit(c + rng.standard_normal(self.dim).astype(np.float32) * (self.noise / math.sqrt(self.dim)))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _pseudo_words(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct pronounceable non-words (2-4 syllables), so nothing collides with a stopword list."""
    from kb.lexical import STOPWORDS

    onsets = list("bcdfghjklmnprstvwz") + ["br", "ch", "dr", "gr", "kl", "pl", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    codas = ["", "", "", "n", "r", "l", "m", "k", "t"]
    out: dict[str, None] = {}
    while len(out) < n:
        word = "".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))]
                       + codas[rng.integers(len(codas))] for _ in range(int(rng.integers(2, 5))))
        if word not in STOPWORDS:
            out[word] = None
    return list(out)


def _code(rng: np.random.Generator) -> str:
    kind = rng.integers(4)
    if kind == 0:
        return f"INV-{rng.integers(2015, 2027)}-{rng.integers(10000):04d}"
    if kind == 1:
        return f"E_{['ACCESS', 'TIMEOUT', 'DISK', 'AUTH', 'PARSE'][rng.integers(5)]}_{rng.integers(10000)}"
    if kind == 2:
        return f"{rng.integers(1, 1000)}.{rng.integers(100):02d}"
    return str(rng.integers(1, 100000))


class CentroidEmbedder:
    """Benchmark harness only: stands in for the embedding model, which cannot embed 1M chunks here.

    It has the real model's name and dimension (so the store treats it like that model) and answers a question
    with a vector near a random topic centroid, like a real question lands near its topic. The latency of a real
    query embedding (a forward pass of the model) is not part of these numbers; bench.retrieval measures it.
    """

    def __init__(self, name: str, corpus: Corpus) -> None:
        self.name = name
        self.dimension = corpus.dim
        self._corpus = corpus

    def embed_query(self, text: str) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return self._corpus.near_centroid(np.random.default_rng(seed)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise RuntimeError("bench.scale passes precomputed vectors; nothing should embed documents")


# measuring ------------------------------------------------------------------------------------------------------
class Timed:
    """A pass-through around an object that adds up the seconds spent in some of its methods (build timing)."""

    def __init__(self, inner: Any, methods: tuple[str, ...]) -> None:
        self._inner = inner
        self._methods = methods
        self.seconds = dict.fromkeys(methods, 0.0)
        self.cpu_seconds = dict.fromkeys(methods, 0.0)  # of the whole process, all threads (Chroma's too)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name not in self._methods:
            return value

        def timed(*args, **kwargs):
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return value(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.cpu_seconds[name] += time.process_time() - cpu
        return timed


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def free_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20)


def percentile_ms(seconds: list[float], q: float) -> float:
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(fn: Callable[[Any], Any], inputs: list[Any], max_s: float = 1e9) -> tuple[float, float, int, float]:
    """p50 and p95 in ms over `inputs` (stopping after `max_s` seconds, at least 20 queries), how many ran, and the
    mean CPU ms per query (the whole process, all threads): wall time waits for the cores others use, CPU does not."""
    fn(inputs[0])  # warm-up: the first query loads the HNSW index and SQLite pages
    seconds: list[float] = []
    cpu = time.process_time()
    for item in inputs:
        if len(seconds) >= 20 and sum(seconds) > max_s:
            break
        started = time.perf_counter()
        fn(item)
        seconds.append(time.perf_counter() - started)
    cpu_ms = 1000 * (time.process_time() - cpu) / len(seconds)
    return percentile_ms(seconds, 0.5), percentile_ms(seconds, 0.95), len(seconds), cpu_ms


# the knowledge base ----------------------------------------------------------------------------------------------
@dataclass
class Build:
    chunks: int = 0
    resumed_at: int = 0  # chunks already there when this run started (their build time is not counted)
    sources: int = 0
    total_s: float = 0.0
    cpu_s: float = 0.0  # CPU seconds of the process (all its threads) during replace_sources: load-independent
    chroma_cpu_s: float = 0.0
    lexical_cpu_s: float = 0.0
    generate_s: float = 0.0
    chroma_s: float = 0.0  # Collection.upsert (metadata, document FTS and HNSW insert included)
    lexical_s: float = 0.0  # LexicalIndex.upsert (tokenising and FTS5)
    other_s: float = 0.0  # the rest of replace_source: manifest commit, looking for old chunks to delete
    hnsw: str = ""  # the collection's HNSW settings (M, ef_construction): fixed when the knowledge base was made
    stopped: str = ""  # why filling stopped early, if it did


def open_kb(home: Path, corpus: Corpus, embed_name: str, hnsw: dict[str, Any] | None = None):
    """Open (or make) the benchmark's knowledge base; `hnsw` overrides the settings a new collection gets
    (kb.store.NEW_COLLECTION_HNSW; an existing knowledge base keeps its own)."""
    import kb.store
    from kb.config import load_settings

    settings = load_settings({"home": home, "embed_model": embed_name}, env={})
    defaults = dict(kb.store.NEW_COLLECTION_HNSW)
    kb.store.NEW_COLLECTION_HNSW.update(hnsw or {})
    try:
        return kb.store.open_store(settings, embedder=CentroidEmbedder(embed_name, corpus))
    finally:
        kb.store.NEW_COLLECTION_HNSW.clear()
        kb.store.NEW_COLLECTION_HNSW.update(defaults)


def hnsw_settings(store) -> str:
    hnsw = (store._collection.configuration_json or {}).get("hnsw") or {}
    return f"M {hnsw.get('max_neighbors', '?')}, ef_construction {hnsw.get('ef_construction', '?')}"


def fill(store, corpus: Corpus, build: Build, target: int, deadline: float, per_write: int = 5) -> None:
    """Add synthetic sources until the store holds `target` chunks (or time or memory runs out), `per_write`
    sources per `Store.replace_sources` call (how ingest hands over the files of one engine batch)."""
    from kb.manifest import SourceRecord
    from kb.types import Chunk

    collection = Timed(store._collection, ("upsert",))
    lexical = Timed(store.lexical, ("upsert",))
    store._collection, store.lexical = collection, lexical
    build.hnsw = hnsw_settings(store)
    last_report, last_chunks, last_total = time.perf_counter(), build.chunks, build.total_s
    try:
        while build.chunks < target:
            if time.perf_counter() > deadline:
                build.stopped = "time budget"
                return
            if free_bytes() < MIN_FREE_BYTES:
                build.stopped = "memory"
                return
            started = time.perf_counter()
            items = []
            for n in range(build.sources, build.sources + per_write):
                path = f"/synthetic/doc-{n:07d}.pdf"
                sha = hashlib.sha256(f"{corpus.seed}:{n}".encode()).hexdigest()
                texts, vectors = corpus.texts(n), corpus.vectors(n).tolist()
                chunks = [Chunk(id=f"{sha[:16]}:{i}", text=t, rel=Path(path).name, path=path, sha256=sha,
                                modality=corpus.kind(n), page=i // 3 + 1, engine="ocr", position=i)
                          for i, t in enumerate(texts)]
                items.append((SourceRecord(path=path, rel=Path(path).name, sha256=sha, size=len(texts) * 1000,
                                           kind="pdf", status="ok", chunks=len(chunks), engine="ocr", model=""),
                              chunks, vectors))
            generated, cpu_before = time.perf_counter(), time.process_time()
            before = collection.seconds["upsert"] + lexical.seconds["upsert"]
            store.replace_sources(items)
            done = time.perf_counter()
            build.cpu_s += time.process_time() - cpu_before
            inner = collection.seconds["upsert"] + lexical.seconds["upsert"] - before
            build.generate_s += generated - started
            build.other_s += (done - generated) - inner
            build.total_s += done - generated
            build.chunks += sum(len(chunks) for _, chunks, _ in items)
            build.sources += len(items)
            if done - last_report > 30:
                recent = (build.chunks - last_chunks) / max(build.total_s - last_total, 1e-9)
                last_report, last_chunks, last_total = done, build.chunks, build.total_s
                print(f"  {time.strftime('%H:%M:%S')} {build.chunks:>9,} chunks  {recent:,.0f} chunks/s lately  "
                      f"peak RSS {peak_rss_mib():,.0f} MiB  Chroma {collection.seconds['upsert']:.0f} s  lexical "
                      f"{lexical.seconds['upsert']:.0f} s  load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        build.chroma_s += collection.seconds["upsert"]
        build.lexical_s += lexical.seconds["upsert"]
        build.chroma_cpu_s += collection.cpu_seconds["upsert"]
        build.lexical_cpu_s += lexical.cpu_seconds["upsert"]
        store._collection, store.lexical = collection._inner, lexical._inner


def query_sets(corpus: Corpus, build: Build, n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """`n` query vectors near centroids, and `n` texts of 3-5 words taken from random stored chunks."""
    rng = np.random.default_rng([seed, 3])
    vectors = [corpus.near_centroid(rng) for _ in range(n)]
    texts = []
    for _ in range(n):
        chunk = corpus.texts(int(rng.integers(build.sources)))[int(rng.integers(corpus.per_source))]
        words = [w for w in chunk.rstrip(".").split() if w.isalpha()]
        texts.append(" ".join(rng.choice(words, size=int(rng.integers(3, 6)), replace=False)))
    return vectors, texts


def exact_neighbours(corpus: Corpus, sources: int, queries: np.ndarray, k: int) -> list[set[int]]:
    """Brute-force top-k (cosine) chunk numbers for each query, regenerating the vectors source by source."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    step = max(1, 20_000 // corpus.per_source)
    for first in range(0, sources, step):
        block = np.concatenate([corpus.vectors(s) for s in range(first, min(sources, first + step))])
        scores = np.concatenate([best_s, queries @ block.T], axis=1)
        ids = np.concatenate([best_i, np.broadcast_to(np.arange(len(block)) + first * corpus.per_source,
                                                      (len(queries), len(block)))], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    return [set(row) for row in best_i.tolist()]


def chunk_number(hit_id: str, per_source: int, sha_to_source: dict[str, int]) -> int:
    prefix, position = hit_id.split(":")
    return sha_to_source[prefix] * per_source + int(position)


def measure(store, corpus: Corpus, build: Build, home: Path, args) -> dict[str, Any]:
    """Latency of each mode, the suspected per-query overheads, dense recall@10, disk and memory at this size."""
    from kb.search import search

    vectors, texts = query_sets(corpus, build, args.queries, args.seed)
    cap = args.mode_seconds
    row: dict[str, Any] = {"chunks": store.count(), "sources": build.sources, "dim": args.dim}
    row["dense"] = latency(lambda v: store.query(v.tolist(), 10), vectors, cap)
    row["lexical"] = latency(lambda t: store.lexical_query(t, 10), texts, cap)
    row["hybrid"] = latency(lambda t: search(store, t, k=10, mode="hybrid", rerank=False), texts, cap)
    row["lexical_filtered"] = {name: latency(lambda t, w=where: store.lexical_query(t, 10, w), texts, cap)
                               for name, where in filtered_wheres(store).items()}
    # The pieces, to find what grows with N (count() is what Store.query called per query before it was removed).
    row["chroma_only"] = latency(lambda v: store._collection.query(
        query_embeddings=[v.tolist()], n_results=30, include=["documents", "metadatas", "distances"]), vectors, cap)
    some_paths = [r.path for r in store.manifest.all()[:30]]
    row["current_shas"] = latency(lambda _: store.manifest.current_shas(some_paths), texts[:50])
    row.update(lexical_pieces(store, texts, row["chunks"], cap))
    row["disk_mib"] = disk_mib(home)
    row["lexical_mib"] = disk_mib(home / "lexical")
    row["load"] = os.getloadavg()
    row["peak_rss_mib"] = peak_rss_mib()  # before exact BM25 below holds every chunk's tokens in this process
    row["build"] = Build(**build.__dict__)
    if args.recall:
        row["recall"] = dense_recall(store, corpus, build, vectors[:args.recall])
    if row["chunks"] <= args.agreement_max:
        row["agreement"] = store_agreement(store, corpus, build, texts[:100])
    return row


def filtered_wheres(store) -> dict[str, dict]:
    """The filters kb.search builds for a kind of file (a large and a small share of the chunks) and for one
    source (a small one): a filtered lexical query must prune like an unfiltered one, not score every match."""
    from kb.search import Filters

    one = store.manifest.all()[0].path
    return {"kind: documents (95 %)": Filters(modalities=["documents"]).where(store),
            "kind: images (5 %)": Filters(modalities=["images"]).where(store),
            "one source (200 chunks)": Filters(sources=[one]).where(store)}


def filtered_table(rows: list[dict[str, Any]]) -> str:
    names = list(rows[0]["lexical_filtered"])
    return markdown_table(["chunks", "lexical, no filter (p50 / p95 ms)"] + [f"{n} (p50 / p95 ms)" for n in names],
                          [[f"{r['chunks']:,}", _pair(r["lexical"])] + [_pair(r["lexical_filtered"][n]) for n in names]
                           for r in rows if "lexical_filtered" in r])


def query_embedding_ms(model: str, texts: list[str]) -> tuple[float, float, int, float]:
    """p50/p95 of embedding one question with a real model (what hybrid and dense add to the numbers above)."""
    from kb.embed import Embedder

    embedder = Embedder(model)
    return latency(embedder.embed_query, texts, 30)


def lexical_pieces(store, texts: list[str], chunks: int, cap: float) -> dict[str, Any]:
    """Tantivy alone (ranking only, no stored rows, no manifest check), and the share of chunks a query's words
    occur in: what an engine without pruning (FTS5) would have to score."""
    import tantivy

    from kb.lexical import SCHEMA, query_terms

    def query(text: str):
        return tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(SCHEMA, "tokens", t))
                                            for t in query_terms(text)])

    searcher = store.lexical._searcher()
    matched = [searcher.search(query(t), 1, count=True).count for t in texts[:50]]
    return {"tantivy_alone": latency(lambda t: searcher.search(query(t), 10, count=False), texts, cap),
            "matched_share": statistics.mean(matched) / chunks}


def bm25_agreement(search_top10: Callable[[str], list[str]], ids: list[str], tokens: list[list[str]],
                   texts: list[str]) -> tuple[float, float]:
    """How much of the lexical top 10 exact BM25 (bm25s over the same tokens, k1 1.2, b 0.75, Lucene idf: Tantivy's
    formula) also puts in its top 10: (overlap of the two lists, share of our hits that score at least the exact
    10th best). The second counts ties as agreement: with short queries many chunks tie exactly, and which of the
    tied ones fill the last places is arbitrary in both engines."""
    import bm25s

    from kb.lexical import query_terms

    exact = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    exact.index(tokens, show_progress=False)
    position = {cid: n for n, cid in enumerate(ids)}
    overlap, tied = [], []
    for text in texts:
        terms = [t for t in query_terms(text) if t in exact.vocab_dict]
        if not terms:
            continue
        scores = exact.get_scores(terms)
        best = np.argpartition(-scores, 9)[:10]
        tenth = scores[best].min()
        ours = search_top10(text)
        overlap.append(len(set(ours) & {ids[i] for i in best}) / 10)
        tied.append(sum(scores[position[cid]] >= tenth * (1 - 1e-6) for cid in ours) / 10)
    return statistics.mean(overlap), statistics.mean(tied)


def store_agreement(store, corpus: Corpus, build: Build, texts: list[str]) -> tuple[float, float]:
    """bm25_agreement over every chunk of the knowledge base (exact BM25 holds them all in memory)."""
    from kb.lexical import tokenize

    ids, tokens = [], []
    for n in range(build.sources):
        sha = hashlib.sha256(f"{corpus.seed}:{n}".encode()).hexdigest()
        for i, text in enumerate(corpus.texts(n)):
            ids.append(f"{sha[:16]}:{i}")
            tokens.append(tokenize(text))
    return bm25_agreement(lambda t: [h.chunk.id for h in store.lexical_query(t, 10)], ids, tokens, texts)


def lexical_only_agreement(corpus: Corpus, chunks: int, queries: int, seed: int) -> tuple[float, float]:
    """The same comparison on a lexical index alone (no Chroma), to measure agreement without a full build."""
    from kb.lexical import LexicalIndex, tokenize
    from kb.types import Chunk

    work = Path(tempfile.mkdtemp(prefix="bench-agreement-"))
    index = LexicalIndex(work / "lexical", lambda paths: {p: "v" for p in paths}, exclusive=True)
    try:
        ids, tokens = [], []
        for n in range(chunks // corpus.per_source):
            batch = [Chunk(id=f"{n}:{i}", text=t, rel="s", path=f"/s{n}", sha256="v", modality="text",
                           position=i) for i, t in enumerate(corpus.texts(n))]
            index.upsert(batch)
            ids += [c.id for c in batch]
            tokens += [tokenize(c.text) for c in batch]
        _, texts = query_sets(corpus, Build(sources=chunks // corpus.per_source), queries, seed)
        return bm25_agreement(lambda t: [cid for cid, *_ in index.query(t, 10)], ids, tokens, texts)
    finally:
        index.close()
        shutil.rmtree(work, ignore_errors=True)


def dense_recall(store, corpus: Corpus, build: Build, vectors: list[np.ndarray]) -> float:
    """Share of the exact 10 nearest chunks that `Store.query` returns."""
    truth = exact_neighbours(corpus, build.sources, np.stack(vectors), 10)
    shas = {hashlib.sha256(f"{corpus.seed}:{n}".encode()).hexdigest()[:16]: n for n in range(build.sources)}
    found = 0
    for vector, exact in zip(vectors, truth):
        hits = store.query(vector.tolist(), 10)
        found += len(exact & {chunk_number(h.chunk.id, corpus.per_source, shas) for h in hits})
    return found / (10 * len(vectors))


def reopen_with_ef(home: Path, corpus: Corpus, embed_name: str, ef: int):
    """Open the store as if kb/store.py's EF_SEARCH were `ef`: the store sets it on open (`_use_ef_search`, which
    undid a `collection.modify` made here before: the earlier sweep measured 200 twice), and Chroma applies it when
    this client loads the HNSW index, so the client is rebuilt first."""
    from chromadb.api.client import SharedSystemClient

    import kb.store
    from kb.store import COLLECTION

    SharedSystemClient.clear_system_cache()
    default, kb.store.EF_SEARCH = kb.store.EF_SEARCH, ef
    try:
        store = open_kb(home, corpus, embed_name)
    finally:
        kb.store.EF_SEARCH = default
    stored = store._client.get_collection(COLLECTION, embedding_function=None)  # as modified, not as first read
    configured = (stored.configuration_json or {}).get("hnsw", {}).get("ef_search")
    if configured != ef:
        store.close()
        raise RuntimeError(f"the collection has ef_search {configured}, not {ef}: the sweep would measure another")
    return store


def ef_sweep(home: Path, corpus: Corpus, embed_name: str, build: Build, args) -> list[tuple]:
    """Dense p50/p95 and recall@10 for each ef_search (Chroma's default is 100), at the current size."""
    from chromadb.api.client import SharedSystemClient

    vectors, _ = query_sets(corpus, build, args.queries, args.seed + 1)
    out = []
    from kb.store import EF_SEARCH

    for ef in args.ef + [EF_SEARCH]:  # back to Seekframe's default at the end, for a kept --workdir
        store = reopen_with_ef(home, corpus, embed_name, ef)
        try:
            if len(out) < len(args.ef):
                for v in vectors[:20]:  # a reopened index is paged in by the first queries: not query latency
                    store.query(v.tolist(), 10)
                p50, p95, *_ = latency(lambda v, store=store: store.query(v.tolist(), 10), vectors)
                alone = latency(lambda v, store=store: store._collection.query(
                    query_embeddings=[v.tolist()], n_results=30, include=["documents", "metadatas", "distances"]),
                    vectors)
                recall = dense_recall(store, corpus, build, vectors[:args.recall]) if args.recall else None
                out.append((ef, p50, p95, alone[0], alone[1], recall))
                print(f"  ef_search={ef}: Store.query p50 {p50:.1f} ms, p95 {p95:.1f} ms, Chroma alone "
                      f"{alone[0]:.1f} / {alone[1]:.1f} ms, recall@10 {recall}", flush=True)
        finally:
            store.close()
            SharedSystemClient.clear_system_cache()
    return out


def plan_filters(paths: list[str], seed: int) -> dict[str, dict]:
    """Filters admitting 200 chunks to 95 % of them: sets of sources (a folder; more than FEW_VALUES paths is a term
    set query) and kinds, and kinds or-ed with sets of born-digital sources for the shares in between."""
    import re

    picked = [paths[i] for i in np.random.default_rng([seed, 4]).permutation(len(paths))]
    number = {p: int(m.group(1)) for p in picked if (m := re.search(r"doc-(\d+)", p))}
    text_sources = [p for p in picked if p in number and Corpus.kind(number[p]) == "pdf_text"]
    share = len(paths) / 5000  # the counts below are for 1M chunks (5,000 sources of 200): scaled to this size

    def count(n: int) -> int:
        return max(1, round(n * share))

    def kinds(*names: str) -> dict:
        return {"modality": {"$in": sorted(names)}}

    out = {f"{count(n)} source{'s' * (count(n) > 1)}": {"source_abs": {"$in": picked[:count(n)]}}
           for n in (1, 5, 50, 250, 500, 1000, 1500, 2000, 2500)}
    out |= {"kind image_ocr (5 %)": kinds("image_ocr"), "kind pdf_ocr (20 %)": kinds("pdf_ocr"),
            "kind image_ocr, pdf_ocr (25 %)": kinds("image_ocr", "pdf_ocr"), "kind pdf_text (75 %)": kinds("pdf_text"),
            "kind documents (95 %)": kinds("pdf_ocr", "pdf_text")}
    for n in (250, 500, 750, 1250):
        out[f"kind image_ocr, pdf_ocr or {count(n)} pdf_text sources"] = {"$or": [
            kinds("image_ocr", "pdf_ocr"), {"source_abs": {"$in": text_sources[:count(n)]}}]}
    return out


OLD_ROW_COST = 6000  # the rule the cost model replaced: score when admits <= 6000 x _first_depth(10, N / admits)


def filter_plans(home: Path, corpus: Corpus, embed_name: str, args) -> int:
    """Both plans of a filtered lexical query, forced (kb/lexical.py SCORE_US 0: score the chunks the filter admits;
    10**12: rank unfiltered and drop the others, going deeper rather than switching), on the knowledge base in
    --workdir, which is not written to; beside them the plan the cost model picks (kb.lexical.scores_admitted at
    the queries' mean word share) and its estimates, and the plan the old rule picked. Prints a table, and one JSON
    line per filter (the numbers the model's constants are fitted to)."""
    import kb.lexical

    store = open_kb(home, corpus, embed_name)
    default = kb.lexical.SCORE_US
    try:
        chunks = store.count()
        if not chunks:
            raise SystemExit(f"{home} holds no chunks: build one first (--sizes ... --workdir)")
        paths = [r.path for r in store.manifest.all()]
        _, texts = query_sets(corpus, Build(sources=len(paths)), args.queries, args.seed)
        searcher = store.lexical._searcher()
        total = int(searcher.num_docs)
        share = float(np.mean([kb.lexical.word_share(kb.lexical.query_terms(t), searcher) for t in texts]))
        table = []
        for name, where in plan_filters(paths, args.seed).items():
            admits = kb.lexical.estimated_matches(where, searcher)
            depth = kb.lexical._ranked_depth(10, total / max(1, admits), total)
            model = (kb.lexical.scoring_us(admits, share) / 1000, kb.lexical.ranking_us(total, share, depth) / 1000)
            load = os.getloadavg()[0]
            cells = []
            for forced in (0.0, 1e12):
                kb.lexical.SCORE_US = forced
                cells.append(latency(lambda t, w=where: store.lexical_query(t, 10, w), texts, args.mode_seconds))
            kb.lexical.SCORE_US = default
            cheaper = "scored" if cells[0][3] < cells[1][3] else "ranked"
            old = "scored" if admits <= OLD_ROW_COST * kb.lexical._first_depth(10, total / max(1, admits)) else "ranked"
            new = "scored" if kb.lexical.scores_admitted(admits, total, share, 10) else "ranked"
            table.append([name, f"{admits:,}", _pair(cells[0]), f"{cells[0][3]:.1f}", _pair(cells[1]),
                          f"{cells[1][3]:.1f}", cheaper, old, new, f"{model[0]:.1f} / {model[1]:.1f}", f"{load:.1f}"])
            print(" | ".join(table[-1]), flush=True)
            print(json.dumps({"chunks": total, "filter": name, "admits": admits, "share": share, "depth": depth,
                              "scored_cpu_ms": cells[0][3], "ranked_cpu_ms": cells[1][3], "scored_n": cells[0][2],
                              "ranked_n": cells[1][2], "load": load}), flush=True)
        if store.count() != chunks:
            raise RuntimeError("the knowledge base changed while it was measured")
    finally:
        kb.lexical.SCORE_US = default
        store.close()
    print(f"\n{chunks:,} chunks, k=10, up to {args.queries} queries per plan, mean word share {share:.2f}:\n")
    print(markdown_table(["filter", "admits", "scored: p50 / p95 ms", "scored: CPU ms", "ranked: p50 / p95 ms",
                          "ranked: CPU ms", "cheaper (CPU)", f"old rule ({OLD_ROW_COST})", "cost model",
                          "model: scored / ranked ms", "load (1 min)"], table))
    return 0


# reporting -------------------------------------------------------------------------------------------------------
def _pair(p: tuple) -> str:
    return f"{p[0]:.1f} / {p[1]:.1f}" + (f" (n={p[2]})" if len(p) > 2 and p[2] < 200 else "")


def _cpu_per_chunk(b: Build) -> str:
    if not b.cpu_s:
        return "-"
    ms = [1000 * x / (b.chunks - b.resumed_at) for x in (b.cpu_s, b.chroma_cpu_s, b.lexical_cpu_s)]
    return f"{ms[0]:.2f} ({ms[1]:.2f} / {ms[2]:.2f} / {ms[0] - ms[1] - ms[2]:.2f})"


def _cpu_per_query(r: dict[str, Any]) -> str:
    """Mean CPU ms per query of each mode (rows measured before it was recorded have none)."""
    modes = [r[m] for m in ("dense", "lexical", "hybrid")]
    return " / ".join(f"{m[3]:.1f}" for m in modes) if all(len(m) > 3 for m in modes) else "-"


def results_table(rows: list[dict[str, Any]]) -> str:
    header = ["chunks", "sources", "build s", "Chroma upsert s", "lexical upsert s", "rest of replace_source s",
              "chunks/s", "CPU ms per chunk: all (Chroma / lexical / rest)", "disk MiB (bytes/chunk)", "peak RSS MiB",
              "dense p50 / p95 ms", "lexical p50 / p95 ms", "hybrid p50 / p95 ms",
              "CPU ms per query: dense / lexical / hybrid", "dense recall@10", "load avg (1 min)"]
    body = []
    for r in rows:
        b: Build = r["build"]
        built = b.chunks > b.resumed_at  # a row measured right after resuming has no build of its own
        body.append([f"{r['chunks']:,}", f"{r['sources']:,}"] + [f"{x:.0f}" if built else "-" for x in (
                     b.total_s, b.chroma_s, b.lexical_s, b.other_s)] + [
                     f"{(b.chunks - b.resumed_at) / b.total_s:,.0f}" if b.total_s else "-",
                     _cpu_per_chunk(b),
                     f"{r['disk_mib']:,.0f} ({r['disk_mib'] * (1 << 20) / r['chunks']:,.0f})",
                     f"{r['peak_rss_mib']:,.0f}", _pair(r["dense"]), _pair(r["lexical"]),
                     _pair(r["hybrid"]), _cpu_per_query(r), f"{r['recall']:.3f}" if "recall" in r else "-",
                     f"{r['load'][0]:.1f}"])
    return markdown_table(header, body)


def pieces_table(rows: list[dict[str, Any]]) -> str:
    header = ["chunks", "Chroma query alone, 30 results (p50 / p95 ms)", "Manifest.current_shas() p50 ms",
              "Tantivy ranking alone, top 10 (p50 / p95 ms)", "share of chunks a lexical query's words occur in",
              "lexical index MiB (bytes/chunk)",
              "top 10 shared with exact BM25 / our hits in exact top 10 (ties count)"]
    return markdown_table(header, [[f"{r['chunks']:,}", _pair(r["chroma_only"]), f"{r['current_shas'][0]:.2f}",
                                    _pair(r["tantivy_alone"]), f"{r['matched_share']:.0%}",
                                    f"{r['lexical_mib']:,.0f} ({r['lexical_mib'] * (1 << 20) / r['chunks']:,.0f})",
                                    "{:.3f} / {:.3f}".format(*r["agreement"]) if "agreement" in r else "-"]
                                   for r in rows])


def save_rows(work: Path, rows: list[dict[str, Any]]) -> None:
    """The measured rows, kept in --workdir: a later run (a larger size, a fresh process) reports them too."""
    kept = [{**r, "build": r["build"].__dict__} for r in rows]
    (work / "rows.json").write_text(json.dumps(kept, indent=1))


def load_rows(work: Path) -> list[dict[str, Any]]:
    path = work / "rows.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())
    for r in rows:
        r["build"] = Build(**r["build"])
        for key, value in r.items():
            if isinstance(value, list) and key not in ("load",):
                r[key] = tuple(value)
    return sorted(rows, key=lambda r: r["chunks"])


def render(rows: list[dict[str, Any]], sizes: list[int], sweep: list, args) -> str:
    lines = [f"Synthetic chunks through `Store.replace_source` into an embedded Chroma + Tantivy knowledge base: "
             f"{args.dim}-d clustered unit vectors (1000 centroids), ~{WORDS_PER_CHUNK} Zipf-distributed pseudo-words "
             f"per chunk ({VOCAB_SIZE:,}-word vocabulary, {CODE_RATE:.0%} numbers and codes), {args.per_source} "
             f"chunks per source. Up to {args.queries} queries per mode (fewer, n=..., where a mode took over "
             f"{args.mode_seconds:g} s), k=10: dense = `Store.query` with a vector near a random centroid, lexical = "
             "`Store.lexical_query` with 3-5 words of a stored chunk, hybrid = `kb.search.search(mode=\"hybrid\")` end "
             "to end with a stand-in embedder (no model forward pass: add the embedder's query latency). Build time "
             "is `replace_source` only (generating text and vectors excluded); peak RSS is the whole process "
             "(Chroma runs in it). Dense recall@10 is against exact neighbours."
             + (f" HNSW: {rows[-1]['build'].hnsw}." if rows and rows[-1]["build"].hnsw else ""), "",
             results_table(rows), "", "Pieces of a query:", "", pieces_table(rows), "",
             "Filtered lexical queries (`Store.lexical_query` with the `where` of `kb.search.Filters`):", "",
             filtered_table(rows), ""]
    lines += [f"- **{size:,} chunks: not reached in this run** (see the notes)." for size in sizes
              if size > rows[-1]["chunks"]]
    if sweep:
        lines += ["", f"HNSW ef_search at {rows[-1]['chunks']:,} chunks (the store opened in a fresh client with "
                  "`kb/store.py` EF_SEARCH set to it; 20 queries first to page the index in; Chroma's default is 100):",
                  "",
                  markdown_table(["ef_search", "Store.query p50 / p95 ms", "Chroma query alone p50 / p95 ms",
                                  "recall@10"],
                                 [[ef, f"{p50:.1f} / {p95:.1f}", f"{a50:.1f} / {a95:.1f}",
                                   "-" if r is None else f"{r:.3f}"] for ef, p50, p95, a50, a95, r in sweep])]
    if args.notes and Path(args.notes).is_file():
        lines += ["", Path(args.notes).read_text().strip()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from kb.config import DEFAULT_EMBED_MODEL

    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated chunk counts to measure at")
    parser.add_argument("--dim", type=int, default=1024, help="embedding dimension (1024: Qwen3-Embedding-0.6B)")
    parser.add_argument("--per-source", type=int, default=200, help="chunks per synthetic source")
    parser.add_argument("--per-write", type=int, default=5, help="sources per Store.replace_sources call")
    parser.add_argument("--hnsw", default="", help="HNSW settings for a new knowledge base (JSON, Chroma's names), "
                        "e.g. '{\"ef_construction\": 50}'; an existing one keeps its own")
    parser.add_argument("--queries", type=int, default=200, help="queries per mode")
    parser.add_argument("--mode-seconds", type=float, default=60, help="stop a mode's queries after this long")
    parser.add_argument("--recall", type=int, default=50, help="dense queries checked against exact neighbours "
                        "(0: skip)")
    parser.add_argument("--ef", default="", help="ef_search values to sweep at the largest size, e.g. 50,100,400")
    parser.add_argument("--budget-min", type=float, default=30.0, help="stop filling after this many minutes")
    parser.add_argument("--workdir", default="", help="keep the knowledge base here; a later run continues it")
    parser.add_argument("--notes", default="", help="a markdown file appended to the section (conclusions)")
    parser.add_argument("--agreement-max", type=int, default=300_000, help="compare lexical with exact BM25 up "
                        "to this many chunks (bm25s holds them all in memory)")
    parser.add_argument("--query-embedder", default="", help="also time question embedding with this model, "
                        "e.g. bundled:all-MiniLM-L6-v2 (reported beside the table, not added to it)")
    parser.add_argument("--agreement-only", type=int, default=0, help="only compare a lexical index of this many "
                        "synthetic chunks (no Chroma) with exact BM25, and print it")
    parser.add_argument("--report-only", action="store_true", help="only render the rows and the ef_search sweep "
                        "kept in --workdir (with --notes, --write)")
    parser.add_argument("--filter-plans", action="store_true", help="only time both plans of filtered lexical "
                        "queries (kb/lexical.py's cost model) on the knowledge base in --workdir; adds nothing")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="write the tables into docs/benchmarks.md")
    args = parser.parse_args(argv)
    args.ef = [int(x) for x in args.ef.split(",") if x]
    sizes = sorted(int(s) for s in args.sizes.split(","))
    corpus = Corpus(args.dim, args.per_source, args.seed)
    if args.agreement_only:
        shared, tied = lexical_only_agreement(corpus, args.agreement_only, args.queries, args.seed)
        print(f"{args.agreement_only:,} chunks, {args.queries} queries: top 10 shared with exact BM25 {shared:.3f}, "
              f"our hits within the exact top 10 (ties count) {tied:.3f}")
        return 0
    embed_name = DEFAULT_EMBED_MODEL if args.dim == 1024 else f"synthetic-{args.dim}d"
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    if args.report_only:
        kept = work / "sweep.json"
        return report(load_rows(work), sizes, [tuple(x) for x in json.loads(kept.read_text())] if kept.is_file()
                      else [], args, corpus)
    if args.filter_plans:
        if not args.workdir:
            raise SystemExit("--filter-plans measures an existing knowledge base: give its --workdir")
        return filter_plans(work / "kb", corpus, embed_name, args)
    home = work / "kb"
    rows: list[dict[str, Any]] = load_rows(work) if args.workdir else []
    sweep: list[tuple] = []
    try:
        store = open_kb(home, corpus, embed_name, json.loads(args.hnsw) if args.hnsw else None)
        build = Build(sources=len(store.manifest.all()), chunks=store.count())
        build.resumed_at = build.chunks
        if build.chunks:
            print(f"continuing {home}: {build.chunks:,} chunks already there (their build time is not counted)")
        deadline = time.perf_counter() + 60 * args.budget_min
        measured: dict[int, dict[str, Any]] = {}
        try:
            for size in sizes:
                print(f"filling to {size:,} chunks ({args.dim}-d, {args.per_source} chunks per source)", flush=True)
                fill(store, corpus, build, size, deadline, args.per_write)
                if build.chunks in measured:
                    break
                measured[build.chunks] = measure(store, corpus, build, home, args)
                earlier = [r for r in rows if r["chunks"] == build.chunks]
                if build.chunks == build.resumed_at and earlier:  # measured again, not built: keep how it was built
                    measured[build.chunks]["build"] = earlier[0]["build"]  # and what this run skipped measuring
                    measured[build.chunks].update({key: earlier[0][key] for key in ("agreement", "recall")
                                                   if key in earlier[0] and key not in measured[build.chunks]})
                rows = sorted([r for r in rows if r["chunks"] != build.chunks] + [measured[build.chunks]],
                              key=lambda r: r["chunks"])
                if args.workdir:
                    save_rows(work, rows)
                latest = [measured[build.chunks]]
                print(results_table(latest), "\n\n", pieces_table(latest), "\n\n", filtered_table(latest), flush=True)
                if build.stopped:
                    print(f"stopped filling at {build.chunks:,} chunks: {build.stopped}", flush=True)
                    break
        finally:
            store.close()
        if args.ef:
            sweep = ef_sweep(home, corpus, embed_name, build, args)
            if args.workdir:
                (work / "sweep.json").write_text(json.dumps(sweep))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return report(rows, sizes, sweep, args, corpus)


def report(rows: list[dict[str, Any]], sizes: list[int], sweep: list, args, corpus: Corpus) -> int:
    """Print the section (and write it into docs/benchmarks.md with --write)."""
    report = render(rows, sizes, sweep, args)
    if args.query_embedder and rows:
        _, texts = query_sets(corpus, Build(sources=max(1, rows[-1]["sources"])), 100, args.seed)
        p50, p95, n, _ = query_embedding_ms(args.query_embedder, texts)
        report += (f"\n\nQuestion embedding with `{args.query_embedder}` (add it to dense and hybrid): "
                   f"p50 {p50:.1f} ms, p95 {p95:.1f} ms over {n} questions.")
    print(report)
    if args.write:
        write_section(title(args.dim), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
