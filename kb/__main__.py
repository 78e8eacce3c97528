"""`python -m kb`: config, search, ask, sources, outline, delete. Thin: parsing and printing only."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from kb.answer import Generation, ask, cache_key, keep_real_citations, prepare, stream_answer
from kb.answer_cache import AnswerCache
from kb.cli import add_settings_flags, run_cli, settings_from_args, setup_logging
from kb.config import Settings
from kb.engines import load_engine, resolve_engine_name, why_chosen
from kb.errors import NotFound
from kb.manifest import SourceRecord, describe
from kb.outline import outline
from kb.paths import display
from kb.search import MODALITY_GROUPS, Filters, search
from kb.store import Store, open_store
from kb.types import Hit


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        return float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range like 3-5") from None


def _date(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-01 or 2026-11-01T14:30") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kb", description="Seekframe: search and ask your knowledge base.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("config", help="print the effective settings and where each comes from")
    for name, text in (("search", "find passages"), ("ask", "answer a question with citations")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("question")
        cmd.add_argument("-k", type=int, default=None, help="number of passages (default KB_TOP_K)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.add_argument("--source", action="append", default=[], help="only this source (repeatable)")
        cmd.add_argument("--modality", action="append", default=[],
                         help=f"only these kinds: {', '.join(MODALITY_GROUPS)} or a modality name")
        cmd.add_argument("--pages", type=_range, help="page range, e.g. 2-4")
        cmd.add_argument("--seconds", type=_range, help="video time range in seconds, e.g. 60-90")
        cmd.add_argument("--after", type=_date, help="only sources ingested on or after this date (2026-11-01)")
        if name == "ask":
            cmd.add_argument("--no-cache", action="store_true",
                             help="write the answer anew even if this question was answered before")
    cmd = sub.add_parser("sources", help="list ingested files")
    cmd.add_argument("--json", action="store_true")
    cmd = sub.add_parser("outline", help="chapters of a video with timestamps, or sections of a document")
    cmd.add_argument("source", help="absolute path, path relative to its ingest root, or file name (exact)")
    cmd.add_argument("--json", action="store_true")
    cmd = sub.add_parser("delete", help="remove a source and its chunks")
    cmd.add_argument("source", nargs="?", help="absolute path, path relative to its ingest root, or file name; "
                                               "matched exactly (no wildcards, case counts)")
    cmd.add_argument("--glob", metavar="PATTERN",
                     help="every source whose relative path matches this shell pattern (* ? [..]); the matches "
                          "are listed and deleted only after you confirm")
    cmd.add_argument("--yes", action="store_true", help="with --glob: delete the matches without asking")
    for cmd in sub.choices.values():
        add_settings_flags(cmd)
    return parser


def _print_config(settings: Settings) -> int:
    _, why = resolve_engine_name(settings)
    for name, value in settings.masked().items():
        print(f"{name:20} {value!s:48} {settings.origins.get(name, 'default')}")
    print(f"\n{why}")
    return 0


def _print_hits(hits: list[Hit]) -> None:
    for n, hit in enumerate(hits, 1):
        snippet = " ".join(hit.chunk.text.split())[:240]
        print(f"[{n}] {hit.score:.3f}  {hit.where}  ({hit.chunk.modality})\n    {snippet}")


# --json output is for people and scripts alike: names are shown as people see them (an undecodable byte as
# U+FFFD, which loses the byte), and `source_path` keeps the exact stored absolute path, which --source,
# `kb outline` and `kb delete` take back (kb/paths.py, README "Command line").
def _hit_json(hit: Hit) -> dict[str, Any]:
    return {**hit.to_json(), "source": display(hit.chunk.rel), "source_path": hit.chunk.path}


def _source_json(record: SourceRecord) -> dict[str, Any]:
    return {**record.to_json(), "path": display(record.path), "rel": display(record.rel),
            "errors": [display(e) for e in record.errors], "source_path": record.path}


def _filters(args: argparse.Namespace) -> Filters:
    pages = (int(args.pages[0]), int(args.pages[1])) if args.pages else None
    return Filters(sources=args.source, modalities=args.modality, pages=pages, seconds=args.seconds,
                   ingested_after=args.after)


def _open(settings: Settings) -> Store:
    store = open_store(settings)
    if store.embedder.fallback_reason:
        print(f"OFFLINE PROFILE: using the bundled embedding model ({store.embedder.fallback_reason})", file=sys.stderr)
    return store


def _sources(store: Store, as_json: bool) -> int:
    records = store.manifest.all()
    if as_json:
        print(json.dumps([_source_json(r) for r in records], indent=2, ensure_ascii=False))
    elif not records:
        print("The knowledge base is empty. Add files with: python -m ingest PATH...")
    for r in records if not as_json else []:
        extent = f"{r.pages} pages" if r.pages else (f"{r.duration:.0f} s" if r.duration else "")
        print(f"{display(r.rel):50} {r.kind:6} {extent:10} {r.chunks:5} chunks  {r.status:8} {r.engine}")
    return 0


def _delete(store: Store, name: str | None, pattern: str | None, yes: bool) -> int:
    """Delete the one source `name` names exactly, or, after confirmation, every source `pattern` matches."""
    if pattern is not None:
        return _delete_matching(store, pattern, yes)
    assert name is not None  # main() requires exactly one of the two
    if not store.manifest.find(name):
        finished = store.unfinished_deletes(name)  # a delete killed half-way: finish it, and say so
        for cleanup in finished:
            removed = store.finish_delete(cleanup)
            print(f"deleted {display(cleanup.rel)} (finished an interrupted delete: {removed} leftover chunks)")
        if finished:
            return 0
    record = store.manifest.find_one(name)  # none, or an ambiguous name: an error listing the candidates
    print(f"deleted {display(record.rel)} ({store.delete_source(record.path)} chunks)")
    return 0


def _delete_matching(store: Store, pattern: str, yes: bool) -> int:
    records = store.manifest.glob(pattern)
    if not records:
        raise NotFound(f"no source matches the pattern {display(pattern)!r}", "list them with `python -m kb sources`")
    print(f"{len(records)} source{'s' * (len(records) > 1)} match {display(pattern)!r}:\n{describe(records)}")
    if not yes and not _confirmed(f"delete {'these' if len(records) > 1 else 'it'}? [y/N] "):
        return 1
    for record in records:
        print(f"deleted {display(record.rel)} ({store.delete_source(record.path)} chunks)")
    return 0


def _confirmed(question: str) -> bool:
    print(question, end="", flush=True)
    answer = sys.stdin.readline() if sys.stdin else ""
    if not answer:
        print("\nnothing deleted: no answer on standard input; add --yes to delete the listed sources without "
              "asking", file=sys.stderr)
        return False
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("nothing deleted", file=sys.stderr)
    return False


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    if args.command == "delete" and (args.source is None) == (args.glob is None):
        parser.error("delete: name one source, or give --glob PATTERN (not both)")
    if args.command == "delete" and args.yes and args.glob is None:
        parser.error("delete: --yes goes with --glob (a single named source is deleted without asking)")
    setup_logging(args.verbose)
    settings = settings_from_args(args)
    if args.command == "config":
        return _print_config(settings)
    store = _open(settings)
    try:
        if args.command == "sources":
            return _sources(store, args.json)
        if args.command == "delete":
            return _delete(store, args.source, args.glob, args.yes)
        if args.command == "outline":
            entries = outline(store, load_engine(settings), args.source)
            if args.json:
                print(json.dumps([vars(e) for e in entries], ensure_ascii=False, indent=2))
            else:
                print("\n".join(e.line() for e in entries) or "no outline: the source has no text")
            return 0
        k = args.k or settings.top_k
        if args.command == "search":
            hits = search(store, args.question, k, _filters(args))
            if args.json:
                print(json.dumps([_hit_json(h) for h in hits], ensure_ascii=False, indent=2))
            else:
                _print_hits(hits)
            return 0
        engine = load_engine(settings)
        print(why_chosen(engine), file=sys.stderr)
        generation, filters, cache = Generation.from_settings(settings), _filters(args), AnswerCache.of(settings)
        try:
            if args.json:
                answer = ask(args.question, store, engine, k, filters, generation=generation, cache=cache,
                             regenerate=args.no_cache)
                shown = {**answer.to_json(), "citations": [_hit_json(h) for h in answer.citations]}
                print(json.dumps(shown, ensure_ascii=False, indent=2))
                return 0
            key = cache_key(args.question, store, engine, k, filters, generation)
            found = cache.get(key) if not args.no_cache else None
            if found:
                print("(a stored answer to the same question: --no-cache writes it anew)", file=sys.stderr)
                print(found.text + "\n")
                _print_hits(found.hits)
                return 0
            prepared = prepare(args.question, store, k, filters, generation=generation)
            text = ""
            for piece in stream_answer(prepared, engine):  # the answer appears as it is written
                text += piece
                print(piece, end="", flush=True)
            print("\n")
            _print_hits(prepared.hits)
            if prepared.hits:
                cache.put(key, args.question, keep_real_citations(text, len(prepared.hits)), prepared.hits)
            return 0
        finally:
            cache.close()
    finally:
        store.close()


if __name__ == "__main__":
    run_cli(main)
