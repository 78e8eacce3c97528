"""`python -m ingest PATH...`: add files and folders to the knowledge base. Exit 0 all in, 1 some failed, 2 usage.

`python -m ingest --worker`: run ingest jobs that the app queued (and the inbox, KB_INBOX) until stopped.
`python -m ingest --worker-health`: exit 0 when a worker on this host wrote its heartbeat lately (health check).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from ingest.jobs import JobBoard
from ingest.pipeline import NOT_READ, FileResult, Ingestor, IngestReport
from ingest.worker import Worker
from kb.cli import add_settings_flags, run_cli, settings_from_args, setup_logging
from kb.config import Settings
from kb.engines import Engine, load_engine
from kb.paths import display
from kb.store import open_store
from kb.types import Outcome, Progress, Stage


class ProgressBars:
    """One bar for files, one for pages read by the engine."""

    def __init__(self) -> None:
        self.files: tqdm | None = None
        self.pages: tqdm | None = None
        self.video: tqdm | None = None
        self.speech: tqdm | None = None
        # Kept here, not read back from the bar: a bar disabled by TQDM_DISABLE=1 has no `desc`.
        self.files_label = self.speech_label = ""

    def __call__(self, event: Progress) -> None:
        if event.stage in (Stage.READ, Stage.PLAN):
            if self.files is None or self.files_label != event.stage:
                self.close()
                self.files_label = event.stage
                self.files = tqdm(total=event.total, desc=event.stage, unit="file", file=sys.stderr, leave=False)
            self.files.set_postfix_str(display(event.detail)[-40:], refresh=False)
            self.files.update(event.done - self.files.n)
        elif event.stage == Stage.MODEL:
            if self.pages is None:
                self.pages = tqdm(desc=f"pages ({event.detail})", unit="page", file=sys.stderr, leave=False)
            self.pages.update(event.done - self.pages.n)
        elif event.stage == Stage.SPEECH:  # seconds of sound transcribed in the current file, with tqdm's ETA
            label = f"speech {display(event.detail)[-30:]}"
            if self.speech is None or self.speech_label != label:
                if self.speech is not None:
                    self.speech.close()
                self.speech_label = label
                self.speech = tqdm(desc=label, unit="s", file=sys.stderr, leave=False)
            self.speech.total = event.total
            self.speech.update(event.done - self.speech.n)
        elif event.stage == Stage.VIDEO:  # minutes of video read by the engine, with tqdm's ETA
            if self.video is None:
                self.video = tqdm(desc="video", unit="s", file=sys.stderr, leave=False)
            self.video.total = event.total
            self.video.update(event.done - self.video.n)

    def close(self) -> None:
        for bar in (self.files, self.pages, self.video, self.speech):
            if bar is not None:
                bar.close()
        self.files = self.pages = self.video = self.speech = None


# The summary's order: what was stored first, then what went wrong, then what was left alone.
STATUSES = (Outcome.ADDED, Outcome.UPDATED, Outcome.RENAMED, Outcome.COPIED, Outcome.SKIPPED, Outcome.PARTIAL,
            Outcome.EMPTY, Outcome.FAILED, Outcome.PRUNED, Outcome.UNSUPPORTED, Outcome.HIDDEN, Outcome.LINK)
FIRST_FEW = 5  # names listed per "not read" status without --verbose


def print_report(report: IngestReport, verbose: bool = False, out: TextIO = sys.stdout) -> None:
    """The summary table, then one block per file that needs a look (failed, partial, empty, read as another
    type, links), then the names of files not read (all with --verbose, the first few without)."""
    counts = report.counts()
    print(f"\n{'status':12} {'files':>6}", file=out)
    for status in STATUSES:
        if counts.get(status):
            by_ext = report.extensions(status) if status == Outcome.UNSUPPORTED else {}
            kinds = ", ".join(f"{ext} ×{n}" for ext, n in sorted(by_ext.items(), key=lambda kv: (-kv[1], kv[0])))
            print(f"{status:12} {counts[status]:6}" + (f"  ({kinds})" if kinds else ""), file=out)
    print(f"{'chunks':12} {report.chunks:6}\n{'seconds':12} {report.seconds:6.1f}\n"
          f"engine: {report.engine}, pages read by it: {report.pages_read}", file=out)
    look = (Outcome.FAILED, Outcome.PARTIAL, Outcome.EMPTY, Outcome.LINK)  # outcomes shown file by file
    for result in sorted(report.results, key=lambda r: r.rel):
        if result.status in look or (result.notes and result.status not in NOT_READ):
            _print_result(result)
    for status in (Outcome.UNSUPPORTED, Outcome.HIDDEN):
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
    files = [r.to_json() for r in sorted(report.results, key=lambda r: r.rel)]
    summary = {"files": files, "counts": dict(report.counts()), "chunks": report.chunks,
               "seconds": round(report.seconds, 3), "engine": report.engine, "pages_read": report.pages_read,
               "exit_code": report.exit_code}
    json.dump(summary, sys.stdout, ensure_ascii=False, indent=1)
    print()


def run_worker(settings: Settings, name: str) -> int:
    """Take jobs until SIGTERM/SIGINT; a job in progress is handed back and resumes from its checkpoints."""
    store = open_store(settings)
    board = JobBoard(settings.home, lease=settings.job_lease)
    engine: list[Engine] = []

    def engine_once() -> Engine:
        if not engine:
            engine.append(load_engine(settings))
        return engine[0]

    inbox = Path(settings.inbox).resolve() if settings.inbox else None
    if inbox is not None:
        inbox.mkdir(parents=True, exist_ok=True)
    worker = Worker(store, engine_once, board, name=name, inbox=inbox)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    print(f"worker {worker.name}: jobs from {board.path}" + (f", inbox {inbox}" if inbox else ""), file=sys.stderr)
    try:
        worker.run()
    finally:
        board.close()
        store.close()
    return 0


def worker_health(settings: Settings) -> int:
    board = JobBoard(settings.home, lease=settings.job_lease)
    live = [w for w in board.live_workers() if w.startswith(socket.gethostname() + ":")]
    board.close()
    print(f"live workers on this host: {', '.join(live) or 'none'}")
    return 0 if live else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description="Add files and folders to Seekframe.")
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (walked recursively)")
    parser.add_argument("--prune", action="store_true", help="remove sources under these folders that vanished")
    parser.add_argument("--force", action="store_true", help="read unchanged files again (after changing the engine)")
    parser.add_argument("--json", action="store_true", help="print every file's outcome as JSON on stdout "
                        "(the summary goes to stderr)")
    parser.add_argument("--ocr-first", action="store_true", help="text only: no captions of figures and photos "
                        "(faster; KB_OCR_FIRST)")
    parser.add_argument("--worker", action="store_true",
                        help="run the jobs the app queues (and files dropped in KB_INBOX) until stopped")
    parser.add_argument("--worker-name", default="", help="this worker's name in the job table (default host:pid)")
    parser.add_argument("--worker-health", action="store_true",
                        help="exit 0 if a worker on this host wrote its heartbeat within one lease (KB_JOB_LEASE)")
    add_settings_flags(parser)
    args = parser.parse_args()
    setup_logging(args.verbose)
    if args.worker or args.worker_health:
        if args.paths:
            parser.error("--worker takes no paths: queue them from the app, or drop files in KB_INBOX")
        settings = settings_from_args(args)
        return worker_health(settings) if args.worker_health else run_worker(settings, args.worker_name)
    if not args.paths:
        parser.error("give files or folders to ingest (or --worker)")
    # A link that dangles or loops exists as a name: it gets its own result line, not a usage error.
    missing = [display(str(p)) for p in args.paths if not os.path.lexists(p)]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")  # exits with 2
    settings = settings_from_args(args)
    if args.ocr_first:
        settings = settings.replace(ocr_first=True)
    store = open_store(settings)
    if store.embedder.fallback_reason:
        print(f"OFFLINE PROFILE: bundled embedding model in use ({store.embedder.fallback_reason})", file=sys.stderr)
    bars = ProgressBars()
    try:
        report = Ingestor(settings, store, progress=bars).run(args.paths, prune=args.prune, force=args.force)
    finally:
        bars.close()
        store.close()
    if report.engine_why:  # the engine loads only when a file needs one
        print(report.engine_why, file=sys.stderr)
    if args.json:
        print_json(report)
    print_report(report, verbose=args.verbose, out=sys.stderr if args.json else sys.stdout)
    return report.exit_code


if __name__ == "__main__":
    run_cli(main)
