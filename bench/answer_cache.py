"""The answer cache on a repeated-question workload: hit rate, and time per answer served from it and written anew.

A knowledge base of generated PDFs (one fact each), a pool of questions about them, and a workload drawn from the
pool with a Zipf-like skew (a few questions asked often, most rarely: how a team's FAQ traffic looks), with an
ingest of a new file part way through (which makes every cached answer in its scope stale). The same workload runs
with the cache and without. The engine is the configured one (KB_ENGINE; `ocr` on a machine without a GPU, where
answers are quotes and the saving is retrieval only; with a language model the saving is the whole generation).

usage: python -m bench.answer_cache [--questions 30] [--asks 300] [--skew 1.1]
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

TOPICS = ["harbour crane", "orchard", "bakery oven", "library archive", "river ferry", "wind farm", "school bus",
          "city bridge", "mountain hut", "fish market", "tram depot", "glass factory", "rice terrace", "tea house",
          "salt mine", "ice rink", "paper mill", "bee farm", "steel foundry", "opera house", "ski lift", "dairy",
          "vineyard", "lighthouse", "observatory", "zoo", "airport tower", "post office", "train station", "museum"]


def make_pdf(path: Path, topic: str, n: int) -> None:
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_textbox(pymupdf.Rect(50, 50, 550, 800), f"Report on the {topic}. The {topic} handled {100 + n * 7} "
                        f"visitors per day in spring, and its manager is named Alex {topic.split()[0].title()}.",
                        fontsize=11)
    doc.save(path)
    doc.close()


def workload(pool: list[str], asks: int, skew: float, seed: int = 0) -> list[str]:
    weights = [1 / (rank ** skew) for rank in range(1, len(pool) + 1)]
    return random.Random(seed).choices(pool, weights=weights, k=asks)


def run(settings, engine, questions: list[str], cached: bool, add_at: int, folder: Path) -> dict:
    from ingest.pipeline import Ingestor
    from kb.answer import Generation, ask
    from kb.answer_cache import AnswerCache
    from kb.store import open_store

    store = open_store(settings)
    cache = AnswerCache(settings.home / f"bench-cache-{cached}.sqlite", settings.answer_cache_size) if cached else None
    times = {"hit": [], "miss": []}
    try:
        for n, question in enumerate(questions):
            if n == add_at:
                make_pdf(folder / "late.pdf", "late addition", 99)
                Ingestor(settings, store).run([folder / "late.pdf"])
            started = time.perf_counter()
            answer = ask(question, store, engine, settings.top_k, cache=cache,
                         generation=Generation.from_settings(settings))
            times["hit" if answer.cached else "miss"].append(time.perf_counter() - started)
        stats = cache.stats() if cache else None
    finally:
        store.delete_source(str((folder / "late.pdf").resolve()))
        store.close()
    return {"times": times, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--asks", type=int, default=300)
    parser.add_argument("--skew", type=float, default=1.1)
    args = parser.parse_args()
    from bench.report import markdown_table, write_section
    from ingest.pipeline import Ingestor
    from kb.config import BUNDLED_EMBED_MODEL, load_settings
    from kb.engines import load_engine
    from kb.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        topics = TOPICS[:args.questions]
        for n, topic in enumerate(topics):
            make_pdf(folder / f"{topic.replace(' ', '_')}.pdf", topic, n)
        settings = load_settings({"home": Path(tmp) / "kb", "embed_model": BUNDLED_EMBED_MODEL})
        store = open_store(settings)
        Ingestor(settings, store).run([folder])
        store.close()
        engine = load_engine(settings)
        pool = [f"How many visitors did the {t} handle per day?" for t in topics]
        questions = workload(pool, args.asks, args.skew)
        rows = []
        for cached in (False, True):
            got = run(settings, engine, questions, cached, args.asks // 2, folder)
            every = got["times"]["hit"] + got["times"]["miss"]
            hit = got["times"]["hit"]
            rate = f"{100 * got['stats'].hit_rate:.0f} %" if got["stats"] else "-"
            rows.append(["on" if cached else "off", len(every), rate,
                         f"{1000 * statistics.median(got['times']['miss']):.1f}",
                         f"{1000 * statistics.median(hit):.1f}" if hit else "-", f"{sum(every):.1f}"])
    table = markdown_table(["cache", "questions asked", "hit rate", "answer written, p50 ms", "served, p50 ms",
                            "total s"], rows)
    print(table)
    write_section("Answer cache (`python -m bench.answer_cache`)",
                  f"{args.asks} questions drawn from {args.questions} with Zipf skew {args.skew}, one new file "
                  f"ingested half way (every cached answer in its scope goes stale); engine {engine.name} "
                  f"({engine.model}).\n\n" + table)


if __name__ == "__main__":
    main()
