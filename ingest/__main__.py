"""`python -m ingest PATH...`: add files and folders to the knowledge base. Exit 0 all in, 1 some failed, 2 usage."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from ingest.pipeline import NOT_READ, FileResult, Ingestor, IngestReport
from kb.cli import add_settings_flags, run_cli, settings_from_args, setup_logging
from kb.engines import resolve_engine_name
from kb.paths import display
from kb.store import open_store
from kb.types import Progress


class ProgressBars:
    """One bar for files, one for pages read by the engine."""

    def __init__(self) -> None:
        self.files: tqdm | None = None
        self.pages: tqdm | None = None
        self.video: tqdm | None = None

    def __call__(self, event: Progress) -> None:
        if event.stage in ("read", "plan"):
            if self.files is None or self.files.desc != event.stage:
                self.close()
                self.files = tqdm(total=event.total, desc=event.stage, unit="file", file=sys.stderr, leave=False)
            self.files.set_postfix_str(display(event.detail)[-40:], refresh=False)
            self.files.update(event.done - self.files.n)
        elif event.stage == "model":
            if self.pages is None:
                self.pages = tqdm(desc=f"pages ({event.detail})", unit="page", file=sys.stderr, leave=False)
            self.pages.update(event.done - self.pages.n)
        elif event.stage == "video":  # minutes of video read by the engine, with tqdm's ETA
            if self.video is None:
                self.video = tqdm(desc="video", unit="s", file=sys.stderr, leave=False)
            self.video.total = event.total
            self.video.update(event.done - self.video.n)

    def close(self) -> None:
        for bar in (self.files, self.pages, self.video):
            if bar is not None:
                bar.close()
        self.files = self.pages = self.video = None


STATUSES = ("added", "updated", "renamed", "copied", "skipped", "partial", "empty", "failed", "pruned",
            "unsupported", "hidden", "link")
FIRST_FEW = 5  # names listed per "not read" status without --verbose


def print_report(report: IngestReport, verbose: bool = False, out=sys.stdout) -> None:
    """The summary table, then one block per file that needs a look (failed, partial, empty, read as another
    type, links), then the names of files not read (all with --verbose, the first few without)."""
    counts = report.counts()
    print(f"\n{'status':12} {'files':>6}", file=out)
    for status in STATUSES:
        if counts.get(status):
            by_ext = report.extensions(status) if status == "unsupported" else {}
            kinds = ", ".join(f"{ext} ×{n}" for ext, n in sorted(by_ext.items(), key=lambda kv: (-kv[1], kv[0])))
            print(f"{status:12} {counts[status]:6}" + (f"  ({kinds})" if kinds else ""), file=out)
    print(f"{'chunks':12} {report.chunks:6}\n{'seconds':12} {report.seconds:6.1f}\n"
          f"engine: {report.engine}, pages read by it: {report.pages_read}", file=out)
    for result in sorted(report.results, key=lambda r: r.path):
        if result.status in ("failed", "partial", "empty", "link") or (result.notes and result.status not in
                                                                         NOT_READ):
            _print_result(result)
    for status in ("unsupported", "hidden"):
        names = [r.shown for r in report.results if r.status == status]
        if names:
            shown = names if verbose else names[:FIRST_FEW]
            more = f" … and {len(names) - len(shown)} more (--verbose lists them)" if len(shown) < len(names) else ""
            print(f"\n{status} (not read): {', '.join(shown)}{more}", file=sys.stderr)


def _print_result(result: FileResult) -> None:
    print(f"\n{result.status.upper()} {result.shown}", file=sys.stderr)
    for line in [*result.errors, *result.notes]:
        print(f"  {display(line)}", file=sys.stderr)
    if result.fix and not any("fix: " in e for e in result.errors):
        print(f"  fix: {display(result.fix)}", file=sys.stderr)


def print_json(report: IngestReport) -> None:
    """Every file's outcome, for scripts: one JSON object on stdout."""
    files = [r.to_json() for r in sorted(report.results, key=lambda r: r.path)]
    summary = {"files": files, "counts": dict(report.counts()), "chunks": report.chunks,
               "seconds": round(report.seconds, 3), "engine": report.engine, "pages_read": report.pages_read,
               "exit_code": report.exit_code}
    json.dump(summary, sys.stdout, ensure_ascii=False, indent=1)
    print()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description="Add files and folders to Seekframe.")
    parser.add_argument("paths", nargs="+", type=Path, help="files or folders (walked recursively)")
    parser.add_argument("--prune", action="store_true", help="remove sources under these folders that vanished")
    parser.add_argument("--force", action="store_true", help="read unchanged files again (after changing the engine)")
    parser.add_argument("--json", action="store_true", help="print every file's outcome as JSON on stdout "
                        "(the summary goes to stderr)")
    add_settings_flags(parser)
    args = parser.parse_args()
    setup_logging(args.verbose)
    # A link that dangles or loops exists as a name: it gets its own result line, not a usage error.
    missing = [display(str(p)) for p in args.paths if not os.path.lexists(p)]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")  # exits with 2
    settings = settings_from_args(args)
    print(resolve_engine_name(settings)[1], file=sys.stderr)
    store = open_store(settings)
    if store.embedder.fallback_reason:
        print(f"OFFLINE PROFILE: bundled embedding model in use ({store.embedder.fallback_reason})", file=sys.stderr)
    bars = ProgressBars()
    try:
        report = Ingestor(settings, store, progress=bars).run(args.paths, prune=args.prune, force=args.force)
    finally:
        bars.close()
        store.close()
    if args.json:
        print_json(report)
    print_report(report, verbose=args.verbose, out=sys.stderr if args.json else sys.stdout)
    return report.exit_code


if __name__ == "__main__":
    run_cli(main)
