"""`python -m ingest PATH...`: add files and folders to the knowledge base. Exit 0 all in, 1 some failed, 2 usage."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ingest.pipeline import Ingestor, IngestReport
from kb.cli import add_settings_flags, run_cli, settings_from_args, setup_logging
from kb.engines import resolve_engine_name
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
            self.files.set_postfix_str(event.detail[-40:], refresh=False)
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


def print_report(report: IngestReport) -> None:
    counts = report.counts()
    print(f"\n{'status':10} {'files':>6}")
    for status in ("added", "updated", "renamed", "copied", "skipped", "partial", "failed", "pruned"):
        if counts.get(status):
            print(f"{status:10} {counts[status]:6}")
    print(f"{'chunks':10} {report.chunks:6}\n{'seconds':10} {report.seconds:6.1f}\n"
          f"engine: {report.engine}, pages read by it: {report.pages_read}")
    for result in report.failed:
        print(f"\n{result.status.upper()} {result.path}", file=sys.stderr)
        for error in result.errors:
            print(f"  {error}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description="Add files and folders to Seekframe.")
    parser.add_argument("paths", nargs="+", type=Path, help="files or folders (walked recursively)")
    parser.add_argument("--prune", action="store_true", help="remove sources under these folders that vanished")
    parser.add_argument("--force", action="store_true", help="read unchanged files again (after changing the engine)")
    add_settings_flags(parser)
    args = parser.parse_args()
    setup_logging(args.verbose)
    missing = [str(p) for p in args.paths if not p.exists()]
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
    print_report(report)
    return report.exit_code


if __name__ == "__main__":
    run_cli(main)
