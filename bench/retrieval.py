"""Retrieval evaluation: `python -m bench.retrieval` -> recall@1/5/10, MRR and latency for each search mode.

Datasets: the SQuAD passages in ../shared/data/qa/squad_small (one text file per passage, hit = right passage)
and the born-digital PDFs in ../shared/data/pdfs with bench/pdf_questions.jsonl (hit = right file and page).
Each is ingested into a throwaway knowledge base with the named engine and embedder. `--datasets mmlongbench`
is the long-document set (../shared/data/qa/mmlongbench_dev: 25 long real documents, 190 questions with their
evidence pages and kinds): hit = an evidence page of the question's document, searched within that document
(and across all 25 with `--scope all`); recall per evidence kind; unanswerable questions reported apart (the
top hit's score). Its knowledge base is cached under .cache/bench/retrieval/, keyed by the settings and the
reader/chunker code, and reused across runs. `--lexical-compare` also
measures Tantivy against exact BM25 (bm25s) on SQuAD. `--write` puts the tables into
docs/benchmarks.md (its own section; other sections are left alone).
"""
from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.report import write_section

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SEEKFRAME_TEST_DATA", ROOT.parent / "shared" / "data"))
KS = (1, 5, 10)


@dataclass
class Case:
    question: str
    gold: Callable  # hit -> bool


@dataclass
class Scores:
    ranks: list[int | None] = field(default_factory=list)  # 1-based rank of the first right hit, None: not in top 10
    seconds: list[float] = field(default_factory=list)

    def recall(self, k: int) -> float:
        return sum(r is not None and r <= k for r in self.ranks) / len(self.ranks)

    @property
    def mrr(self) -> float:
        return sum(1 / r for r in self.ranks if r) / len(self.ranks)

    def latency_ms(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def squad_cases(corpus: Path) -> list[Case]:
    folder = DATA / "qa" / "squad_small"
    for line in (folder / "passages.jsonl").read_text().splitlines():
        if line.strip():
            p = json.loads(line)
            (corpus / (p["pid"].replace("#", "_") + ".txt")).write_text(p["text"])
    cases = []
    for line in (folder / "queries.jsonl").read_text().splitlines():
        q = json.loads(line)
        if not q["is_impossible"]:
            name = q["gold_pid"].replace("#", "_") + ".txt"
            cases.append(Case(q["question"], lambda h, name=name: h.chunk.rel == name))
    return cases


def pdf_cases(corpus: Path) -> list[Case]:
    """Links to the born-digital PDFs only (the folder also holds ground-truth .md/.txt copies of their text)."""
    for pdf in sorted((DATA / "pdfs" / "born_digital").rglob("*.pdf")):
        if not (corpus / pdf.name).exists():
            (corpus / pdf.name).symlink_to(pdf)
    cases = []
    for line in (ROOT / "bench" / "pdf_questions.jsonl").read_text().splitlines():
        q = json.loads(line)
        name, page = Path(q["file"]).name, int(q["page"])
        cases.append(Case(q["question"], lambda h, name=name, page=page: (h.chunk.rel, h.chunk.page) == (name, page)))
    return cases


DATASETS = {"squad": (squad_cases, 4000), "pdf": (pdf_cases, 1200)}  # name -> (builder, chunk_chars)
LONGDOC = DATA / "qa" / "mmlongbench_dev"
CACHE = ROOT / ".cache" / "bench" / "retrieval"
KINDS = {"Pure-text (Plain-text)": "text", "Table": "table", "Chart": "chart/figure", "Figure": "chart/figure",
         "Generalized-text (Layout)": "layout"}
KIND_ORDER = ("text", "table", "chart/figure", "layout")
# what decides the long-document knowledge base's content: a change to any of these re-ingests
INDEX_CODE = ("ingest/pdf.py", "ingest/pdf_tables.py", "ingest/chunk.py", "kb/lexical.py", "kb/embed.py",
              "kb/engines/ocr.py", "kb/engines/ocr_layout.py", "kb/engines/ocr_orientation.py")


@dataclass
class LongCase:
    question: str
    doc: str
    pages: set[int]
    kinds: set[str]
    answerable: bool


def longdoc_cases() -> list[LongCase]:
    cases = []
    for q in json.loads((LONGDOC / "samples.dev.json").read_text()):
        sources = ast.literal_eval(q["evidence_sources"])
        cases.append(LongCase(q["question"], q["doc_id"], set(ast.literal_eval(q["evidence_pages"])),
                              {KINDS.get(k, k) for k in sources}, q["answer"] != "Not answerable"))
    return cases


def _pages_per_question(pdf: Path, questions: Counter) -> float:
    """Build order: the documents with the most questions per page first, so a build stopped half way (a busy
    machine) already covers most questions; OCR'd slide decks are no slower per question than a 468-page manual."""
    import pymupdf

    with pymupdf.open(pdf) as doc:
        return doc.page_count / max(1, questions[pdf.name])


def longdoc_store(args):
    """The long-document knowledge base, ingested once per (settings, reader and chunker code) and reused."""
    from ingest.pipeline import Ingestor
    from kb.config import load_settings
    from kb.store import open_store

    overrides = {"engine": args.engine, "embed_model": args.embed_model, "chunk_chars": args.chunk_chars}
    code = hashlib.sha1(b"".join((ROOT / f).read_bytes() for f in INDEX_CODE)).hexdigest()[:10]
    variant = {**overrides, **({"context": False} if args.no_context else {})}
    key = hashlib.sha1(json.dumps(variant, sort_keys=True).encode()).hexdigest()[:10]
    if args.no_context:  # the ablation: chunks without their "[Title › Section]" line
        import ingest.chunk

        ingest.chunk.with_context = lambda context, piece: piece
    work = Path(args.longdoc_home) if args.longdoc_home else CACHE / f"mmlongbench-{key}-{code}"
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, args.only_documents.split(",")))
    for pdf in sorted((LONGDOC / "documents").glob("*.pdf")):
        if wanted and pdf.name not in wanted:
            continue
        if not (corpus / pdf.name).exists():
            (corpus / pdf.name).symlink_to(pdf)
    (work / "settings.json").write_text(json.dumps({**variant, "code": code}, indent=1))
    settings = load_settings({"home": work / "kb", **overrides}, env={})
    store = open_store(settings)
    started = time.perf_counter()
    engine, counts = "ocr", "not run (--cached-only)"
    if not args.cached_only:
        # One document per run: each is stored as soon as it is read, so an interrupted build
        # keeps what it did (unchanged files are skipped: a cached run ingests nothing).
        results: Counter[str] = Counter()
        questions = Counter(c.doc for c in longdoc_cases())
        for pdf in sorted(corpus.glob("*.pdf"), key=lambda pdf: _pages_per_question(pdf, questions)):
            report = Ingestor(settings, store).run([pdf.resolve()])
            engine = report.engine if report.engine != "none needed" else engine
            results.update(report.counts())
            for result in report.results:  # what each document cost, and why one was left out
                print(f"{pdf.name}: {result.status}, {result.chunks} chunks in {report.seconds:.0f} s"
                      f"{'; ' + '; '.join(result.errors) if result.errors else ''}", file=sys.stderr, flush=True)
        counts = ", ".join(f"{n} {s}" for s, n in sorted(results.items()))
    info = {"files": len(store.manifest.all()), "chunks": store.count(), "embedder": store.embedder.name,
            "ingest_s": time.perf_counter() - started, "engine": engine, "home": work, "ingest_counts": counts,
            "documents": {r.rel for r in store.manifest.all() if r.status == "ok"}}
    return store, info


@dataclass
class LongScores:
    ranks: list[int | None] = field(default_factory=list)
    cases: list[LongCase] = field(default_factory=list)
    top_scores: list[float] = field(default_factory=list)
    absent: list[list[str]] = field(default_factory=list)  # kb.answer.absent_names per question
    top_pages: list[list[int | None]] = field(default_factory=list)  # the pages of the first 5 hits

    def subset(self, keep: Callable[[LongCase], bool]) -> Scores:
        return Scores([r for r, c in zip(self.ranks, self.cases) if keep(c)])


def evaluate_longdoc(store, cases: list[LongCase], modes: dict[str, dict], scope: str) -> dict[str, LongScores]:
    from kb.answer import absent_names
    from kb.search import Filters, search

    out = {label: LongScores() for label in modes}
    # each question is embedded once for all modes (no latency is measured here): the set is 190 long questions
    store.embedder.embed_query = functools.lru_cache(maxsize=None)(store.embedder.embed_query)
    for case in cases:
        filters = Filters(sources=[case.doc]) if scope == "document" else None
        absent = absent_names(case.question, store, filters)
        for label, kwargs in modes.items():
            out[label].absent.append(absent)
            hits = search(store, case.question, k=10, filters=filters, **kwargs)
            out[label].cases.append(case)
            out[label].top_scores.append(hits[0].score if hits else 0.0)
            out[label].top_pages.append([h.chunk.page for h in hits[:5]])
            out[label].ranks.append(next((n for n, h in enumerate(hits, 1)
                                          if h.chunk.rel == case.doc and h.chunk.page in case.pages), None))
    return out


def longdoc_table(results: dict[str, LongScores], info: dict, scope: str) -> list[str]:
    cases = next(iter(results.values())).cases
    answerable = [c for c in cases if c.answerable and c.pages]  # no evidence page: no page to find
    pageless = sum(c.answerable and not c.pages for c in cases)
    counts = {kind: sum(kind in c.kinds for c in answerable) for kind in KIND_ORDER}
    where = "within the question's document" if scope == "document" else "across all 25 documents"
    lines = [f"**mmlongbench** ({where}, {len({c.doc for c in cases})} of 25 documents)"
             f" — {len(answerable)} answerable questions ({', '.join(f'{k} {n}' for k, n in counts.items())}; a "
             f"question can have several kinds; {pageless} more without an evidence page are left out), "
             f"{sum(not c.answerable for c in cases)} unanswerable, {info['files']} "
             f"files, {info['chunks']} chunks, embedder `{info['embedder']}`, engine {info['engine']}", "",
             "| mode | evidence | n | recall@1 | recall@5 | recall@10 | MRR@10 |", "|---|---|---:|---:|---:|---:|---:|"]
    for mode, scores in results.items():
        for kind in (*KIND_ORDER, "all"):
            sub = scores.subset(lambda c, kind=kind: c in answerable and (kind == "all" or kind in c.kinds))
            if sub.ranks:
                lines.append(f"| {mode} | {kind} | {len(sub.ranks)} | {sub.recall(1):.3f} | {sub.recall(5):.3f} | "
                             f"{sub.recall(10):.3f} | {sub.mrr:.3f} |")
    lines += ["", "Top hit's score, answerable vs unanswerable questions (p10 / p50 / p90):", "",
              "| mode | answerable | unanswerable |", "|---|---|---|"]
    for mode, scores in results.items():
        spread = {}
        for flag in (True, False):
            values = sorted(s for s, c in zip(scores.top_scores, scores.cases) if c.answerable == flag)
            spread[flag] = " / ".join(f"{values[int(q * (len(values) - 1))]:.3f}" for q in (0.1, 0.5, 0.9))
        lines.append(f"| {mode} | {spread[True]} | {spread[False]} |")
    scores = next(iter(results.values()))
    said = {flag: [a for a, c in zip(scores.absent, scores.cases) if c.answerable == flag] for flag in (True, False)}
    lines += ["", "Answers that admit what is not there (`kb.answer.absent_names`: a name, acronym or number of the "
              "question that no chunk in the searched scope contains -> the answer says the sources do not cover "
              f"it): unanswerable questions caught {sum(map(bool, said[False]))} of {len(said[False])}; answerable "
              f"questions wrongly declined {sum(map(bool, said[True]))} of {len(said[True])} "
              f"({', '.join(sorted({n for a in said[True] for n in a})) or 'none'})."]
    return lines


def per_question(results: dict[str, LongScores]) -> list[dict]:
    """One row a question: what it asked, where the answer is, and where each mode found it (None: not in 10)."""
    first = next(iter(results.values()))
    return [{"question": c.question, "doc": c.doc, "pages": sorted(c.pages), "kinds": sorted(c.kinds),
             "answerable": c.answerable, "absent": first.absent[n],
             "ranks": {mode: scores.ranks[n] for mode, scores in results.items()},
             "top_pages": {mode: scores.top_pages[n] for mode, scores in results.items()}}
            for n, c in enumerate(first.cases)]


def run_longdoc(args, modes: dict[str, dict]) -> list[str]:
    store, info = longdoc_store(args)
    try:
        lines = []
        only = set(args.only_documents.split(",")) if args.only_documents else info["documents"]
        cases = [c for c in longdoc_cases() if c.doc in only and c.doc in info["documents"]]
        for scope in args.scope.split(","):
            results = evaluate_longdoc(store, cases, modes, scope)
            if args.per_question:
                Path(args.per_question).write_text(json.dumps(per_question(results), indent=1))
            table_lines = longdoc_table(results, info, scope)
            print("\n".join(table_lines), flush=True)
            lines += table_lines + [""]
        return lines
    finally:
        store.close()


def evaluate(store, cases: list[Case], modes: dict[str, dict]) -> dict[str, Scores]:
    """Every mode on every question; modes interleaved per question so a busy machine slows all of them alike."""
    from kb.search import search

    out = {label: Scores() for label in modes}
    for kwargs in modes.values():
        search(store, cases[0].question, k=10, **kwargs)  # warm-up: model loads are not query latency
    for case in cases:
        for label, kwargs in modes.items():
            started = time.perf_counter()
            hits = search(store, case.question, k=10, **kwargs)
            out[label].seconds.append(time.perf_counter() - started)
            out[label].ranks.append(next((n for n, h in enumerate(hits, 1) if case.gold(h)), None))
    return out


def run_dataset(name: str, args, modes: dict[str, dict]) -> tuple[dict[str, Scores], dict]:
    from ingest.pipeline import Ingestor
    from kb.config import load_settings
    from kb.store import open_store

    builder, chunk_chars = DATASETS[name]
    if args.no_context:  # the ablation: chunks without their "[Title › Section]" line
        import ingest.chunk

        ingest.chunk.with_context = lambda context, piece: piece
    work = Path(args.workdir) / name if args.workdir else Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    cases = builder(corpus)
    settings = load_settings({"home": work / "kb", "engine": args.engine, "embed_model": args.embed_model,
                              "chunk_chars": chunk_chars}, env={})
    store = open_store(settings)
    try:
        started = time.perf_counter()
        # the files themselves: a folder walk does not follow links to files outside it (the PDF set's are links)
        report = Ingestor(settings, store).run([p.resolve() for p in sorted(corpus.iterdir())])
        info = {"files": len(report.results), "chunks": store.count(), "questions": len(cases),
                "ingest_s": time.perf_counter() - started, "embedder": store.embedder.name,
                "ingest_counts": ", ".join(f"{n} {s}" for s, n in sorted(report.counts().items())),
                "engine": report.engine}
        return evaluate(store, cases, modes), info
    finally:
        store.close()


def compare_lexical() -> list[str]:
    """Tantivy (what kb.lexical uses) against exact BM25 (bm25s, same tokens and k1/b) on SQuAD: speed, recall and
    how much of the top 10 they share (Tantivy stores document lengths in one byte, so scores differ slightly)."""
    import bm25s

    from kb.lexical import LexicalIndex, query_terms, tokenize
    from kb.types import Chunk

    folder = DATA / "qa" / "squad_small"
    passages = [json.loads(x) for x in (folder / "passages.jsonl").read_text().splitlines() if x.strip()]
    queries = [q for q in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())
               if not q["is_impossible"]]
    work = Path(tempfile.mkdtemp(prefix="bench-lexical-"))
    index = LexicalIndex(work / "lexical", lambda paths: {p: "x" for p in paths}, exclusive=True)
    add_s = []
    for p in passages:
        chunk = Chunk(id=p["pid"], text=p["text"], rel=p["pid"], path=p["pid"], sha256="x", modality="text")
        started = time.perf_counter()
        index.upsert([chunk])
        add_s.append(time.perf_counter() - started)
    started = time.perf_counter()
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")  # Tantivy's BM25 parameters and idf
    retriever.index([tokenize(p["text"]) for p in passages], show_progress=False)
    rebuild_s = time.perf_counter() - started  # bm25s has no in-place add: one new source costs a rebuild
    vocab = retriever.vocab_dict
    ours_hit, ours_s, exact_hit, exact_s, agreement = [], [], [], [], []
    for q in queries:
        started = time.perf_counter()
        ours = [cid for cid, *_ in index.query(q["question"], 10)]
        ours_s.append(time.perf_counter() - started)
        ours_hit.append(q["gold_pid"] in ours[:5])
        started = time.perf_counter()
        tokens = [t for t in query_terms(q["question"]) if t in vocab] or [next(iter(vocab))]
        docs, _ = retriever.retrieve([tokens], k=10, show_progress=False)
        exact_s.append(time.perf_counter() - started)
        exact = [passages[i]["pid"] for i in docs[0]]
        exact_hit.append(q["gold_pid"] in exact[:5])
        agreement.append(len(set(ours) & set(exact)) / 10)
    index.close()
    p50 = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    return ["| lexical back-end | add one source | query p50 | recall@5 (SQuAD, 293 q) | top 10 shared with exact "
            "BM25 | persistence |",
            "|---|---:|---:|---:|---:|---|",
            f"| Tantivy (chosen) | {p50(add_s):.2f} ms (in place, one commit) | {p50(ours_s):.2f} ms | "
            f"{sum(ours_hit) / len(queries):.3f} | {statistics.mean(agreement):.3f} | its own folder, atomic commits |",
            f"| bm25s (exact BM25) | {1000 * rebuild_s:.1f} ms (full rebuild of {len(passages)} passages; grows with "
            f"the corpus) | {p50(exact_s):.2f} ms | {sum(exact_hit) / len(queries):.3f} | 1 | save/load whole index |"]


def table(name: str, results: dict[str, Scores], info: dict) -> list[str]:
    lines = [f"**{name}** — {info['questions']} questions, {info['files']} files, {info['chunks']} chunks, "
             f"embedder `{info['embedder']}`, engine {info['engine']}, ingest {info['ingest_s']:.0f} s "
             f"({info['ingest_counts']})", "",
             "| mode | recall@1 | recall@5 | recall@10 | MRR@10 | p50 ms | p95 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, s in results.items():
        lines.append(f"| {mode} | {s.recall(1):.3f} | {s.recall(5):.3f} | {s.recall(10):.3f} | {s.mrr:.3f} | "
                     f"{s.latency_ms(0.5):.1f} | {s.latency_ms(0.95):.1f} |")
    return lines


def verdict(results: dict[str, Scores]) -> str:
    """Is hybrid at least as good as the best single method on every metric?"""
    metrics = {"recall@1": lambda s: s.recall(1), "recall@5": lambda s: s.recall(5),
               "recall@10": lambda s: s.recall(10), "MRR": lambda s: s.mrr}
    best = max(("dense", "lexical"), key=lambda m: (metrics["MRR"](results[m]), metrics["recall@5"](results[m])))
    worse = [n for n, f in metrics.items() if f(results["hybrid"]) < f(results[best]) - 1e-9]
    if not worse:
        return f"Hybrid is at least as good as the best single method ({best}) on every metric."
    return f"Hybrid is below the best single method ({best}) on {', '.join(worse)}."


TITLE = "Retrieval quality (`python -m bench.retrieval`)"
LONGDOC_TITLE = "Long-document retrieval (`python -m bench.retrieval --datasets mmlongbench`)"
LONGDOC_NOTE = ("MMLongBench-Doc development split (../shared/data/qa/mmlongbench_dev): questions written by people "
                "about long real documents, paraphrased, not copied from the page. Page recall@k: an evidence page of "
                "the question's document among the first k hits (chunks, as search returns them). Offline profile: "
                "ocr engine (RapidOCR for the five slide decks without a text layer and the scanned court filing), "
                "bundled MiniLM embedder. The default embedder (Qwen3-Embedding-0.6B) and the cross-encoder are not "
                "in this machine's model cache and the hub is unreachable, so neither was measured; where they can "
                "be loaded: `python -m bench.retrieval --datasets mmlongbench --embed-model Qwen/Qwen3-Embedding-0.6B "
                "--rerank-model BAAI/bge-reranker-v2-m3 --write`. What was tried and what it did: the notes section "
                "below.")


def commit() -> str:
    """The code measured: the commit, marked when the working tree differs from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def options(chunk_chars: int, embed_model: str) -> list[tuple[str, str | int | bool, str]]:
    """The command line: (flag, default, help); a False default is an on/off switch."""
    return [
        ("--datasets", "squad,pdf,mmlongbench", "comma-separated: squad, pdf, mmlongbench"),
        ("--scope", "document", "mmlongbench: search within the question's document (document), across all "
         "documents (all), or both (document,all)"),
        ("--longdoc-home", "", "mmlongbench: use this folder's knowledge base (KB in FOLDER/kb) instead of the "
         "cached one for these settings"),
        ("--no-context", False, "chunks without their document title and section line (the ablation; for "
         "mmlongbench its own cached knowledge base)"),
        ("--per-question", "", "mmlongbench: also write each question's rank per mode, top page and absent "
         "names to this JSON file (for reading the misses)"),
        ("--cached-only", False, "mmlongbench: do not ingest; evaluate the questions of the documents already in "
         "the cached knowledge base"),
        ("--only-documents", "", "mmlongbench: comma-separated document names to build and evaluate (default: all "
         "that are ingested; with --longdoc-home, a small knowledge base of these alone)"),
        ("--chunk-chars", chunk_chars, "mmlongbench chunk size"),
        ("--engine", "ocr", "ingest engine (ocr reads born-digital PDFs without a model)"),
        ("--embed-model", embed_model, "embedder (id, folder or bundled:NAME)"),
        ("--rerank-model", "", "cross-encoder for hybrid+rerank (id or folder); default: BAAI/bge-reranker-v2-m3 "
         "when a CUDA GPU is present, else none"),
        ("--workdir", "", "keep the knowledge bases here (re-runs skip ingest)"),
        ("--sweep", "", "extra hybrid variants, e.g. '0.5:1,1:0.5' (dense:lexical weights) and 'noexact' "
         "(without putting hits that hold the question's codes first)"),
        ("--lexical-compare", False, "also compare Tantivy with exact BM25 (bm25s) on SQuAD"),
        ("--write", False, "write the tables into docs/benchmarks.md"),
    ]


def main(argv: list[str] | None = None) -> int:
    from kb.config import BUNDLED_EMBED_MODEL, Settings

    defaults = Settings()

    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__.splitlines()[0])
    for flag, default, help_text in options(defaults.chunk_chars, BUNDLED_EMBED_MODEL):
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, default=default, type=type(default), help=help_text)
    args = parser.parse_args(argv)
    modes: dict[str, dict] = {m: {"mode": m, "rerank": False} for m in ("dense", "lexical", "hybrid")}
    for variant in filter(None, args.sweep.split(",")):
        if variant == "noexact":
            modes["hybrid, no exact-first"] = {"mode": "hybrid", "rerank": False, "exact_boost": False}
        else:
            dense_w, lexical_w = map(float, variant.split(":"))
            modes[f"hybrid {dense_w:g}:{lexical_w:g}"] = {"mode": "hybrid", "rerank": False,
                                                          "dense_weight": dense_w, "lexical_weight": lexical_w}
    reranker = _reranker(args.rerank_model)
    if reranker:
        modes["hybrid+rerank"] = {"mode": "hybrid", "rerank": reranker}
    lines = ["Hybrid = dense + BM25 (Tantivy) fused by "
             f"reciprocal-rank fusion (k={defaults.rrf_k}, dense:lexical weights "
             f"{defaults.dense_weight:g}:{defaults.lexical_weight:g} unless the row says otherwise), hits holding a "
             "code the question names (INV-2024-0117) first. Latency is per query, end to end (embedding the "
             "question included), modes interleaved per question; the machine was shared with other jobs, so "
             "dense latencies are noisy.", ""]
    if not reranker:
        lines += ["hybrid+rerank: not measured here (no CUDA GPU, or the cross-encoder could not be loaded "
                  "offline); pass --rerank-model to measure it.", ""]
    datasets = [name.strip() for name in args.datasets.split(",")]
    longdoc = run_longdoc(args, modes) if "mmlongbench" in datasets else []
    if longdoc and args.write:
        note = f"{LONGDOC_NOTE} Commit `{commit()}`."
        write_section(LONGDOC_TITLE, "\n".join(lines[:1] + ["", note, ""] + lines[2:] + longdoc))
    datasets = [name for name in datasets if name != "mmlongbench"]
    if not datasets:
        return 0
    for name in datasets:
        results, info = run_dataset(name, args, modes)
        lines += table(name, results, info) + ["", verdict(results), ""]
        print("\n".join(table(name, results, info)), flush=True)
    lines += [f"Default: `{defaults.search_mode}` (setting search_mode, KB_SEARCH_MODE); the sentences under each "
              "table say where hybrid falls below the best single method. It stays the default because BM25 alone "
              "returns nothing for a "
              "question that shares no word with the text (paraphrase, another language: see the Chinese "
              "paraphrase test in tests/test_search.py), which these two sets, written from the text, do not "
              "measure; lexical mode is one setting away. The weights were chosen on these same questions (no held-out "
              "set), and with the bundled English-only MiniLM; the PDF questions were written from the page "
              "text, which favours exact words. Re-run with --embed-model when the embedder changes.", ""]
    if args.lexical_compare:
        compare = compare_lexical()
        lines += ["### Lexical back-end", ""] + compare + [""]
        print("\n".join(compare))
    if args.write:
        write_section(TITLE, "\n".join([f"Commit `{commit()}`.", ""] + lines))
    return 0


def _reranker(model: str):
    from kb.engines import cuda_available
    from kb.rerank import DEFAULT_RERANK_MODEL, Reranker

    if not model and not cuda_available():
        return None
    reranker = Reranker(model or DEFAULT_RERANK_MODEL)
    try:
        reranker.model  # noqa: B018
    except Exception as err:  # offline without the weights: report, measure the rest
        print(f"reranker {reranker.name} not available: {str(err).splitlines()[0][:160]}", file=sys.stderr)
        return None
    return reranker


if __name__ == "__main__":
    sys.exit(main())
