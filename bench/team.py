"""Concurrency for a team: N simulated users ask while a worker ingests, against a Chroma server.

`python -m bench.team [--users 20] [--questions 5] [--files 40]` starts a `chroma run` server and one
`python -m ingest --worker` process (ocr engine) on a fresh KB_HOME, queues a job of generated PDFs (each names a
different animal), and, while the worker ingests, runs N asker threads. Each asks through the code path of the
Ask page (kb.answer.prepare + stream_answer, with the app's engine) about animals already ingested. It reports
answer latency p50/p95, errors, and checks that every file was ingested exactly once (one manifest row per file,
as many chunks in Chroma as the manifest lists, no duplicate ids). Writes a section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.report import markdown_table, write_section
from ingest.jobs import JobBoard
from kb.answer import prepare, stream_answer
from kb.config import BUNDLED_EMBED_MODEL, load_settings
from kb.engines import load_engine
from kb.store import open_store

ROOT = Path(__file__).resolve().parent.parent
ANIMALS = ["otter", "heron", "badger", "kestrel", "newt", "marten", "plover", "vole", "stoat", "curlew", "lynx",
           "ibex", "gannet", "puffin", "beaver", "bison", "crane", "egret", "falcon", "gecko"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_library(folder: Path, count: int) -> list[Path]:
    from tests.conftest import write_pdf

    folder.mkdir(parents=True)
    paths = []
    for n in range(count):
        animal = ANIMALS[n % len(ANIMALS)]
        pages = [f"Field note {n}: the {animal} number {n} was seen near marker {n * 7}. " * 4,
                 f"Appendix {n}: counting {animal}s at dawn, tally {n * 3}. " * 4]
        paths.append(write_pdf(folder / f"note_{n:03d}_{animal}.pdf", pages))
    return paths


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.team")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--questions", type=int, default=5, help="questions per user")
    parser.add_argument("--files", type=int, default=40)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="seekframe-team-bench-"))
    home, port = work / "kb", free_port()
    chroma = subprocess.Popen([str(Path(sys.executable).parent / "chroma"), "run", "--path", str(work / "chroma"),
                               "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "KB_HOME": str(home), "KB_CHROMA_URL": url, "KB_ENGINE": "ocr",
           "KB_EMBED_MODEL": BUNDLED_EMBED_MODEL, "KB_CONFIG": str(work / "none.toml"), "HF_HUB_OFFLINE": "1"}
    worker = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the Chroma server did not start") from None
                time.sleep(0.5)
        settings = load_settings({"home": home, "chroma_url": url, "embed_model": BUNDLED_EMBED_MODEL,
                                  "engine": "ocr"}, env={})
        store = open_store(settings)  # the askers' store: one app process's
        engine = load_engine(settings)
        library = make_library(work / "library", args.files)
        seed = library[: len(ANIMALS) // 2]
        board = JobBoard(home, allowed_folders=[work / "library"])
        board.submit(seed, label="seed")  # something to ask about before the big job
        worker = subprocess.Popen([sys.executable, "-m", "ingest", "--worker", "--worker-name", "bench"], cwd=ROOT,
                                  env=env, stdout=(work / "worker.log").open("w"), stderr=subprocess.STDOUT)
        if not board.wait(300):
            raise SystemExit(f"the seed job did not finish: {(work / 'worker.log').read_text()[-2000:]}")
        board.submit(library[len(seed):], label="bulk")  # ingested while the users ask
        ingest_started = time.monotonic()

        latencies: list[float] = []
        errors: list[str] = []
        guard = threading.Lock()

        def user(number: int) -> None:
            for q in range(args.questions):
                animal = ANIMALS[(number + q) % (len(ANIMALS) // 2)]
                started = time.monotonic()
                try:
                    prepared = prepare(f"Where was the {animal} seen?", store, k=settings.top_k,
                                       max_tokens=settings.max_answer_tokens)
                    text = "".join(stream_answer(prepared, engine))
                    if animal not in text.lower() and not any(animal in h.chunk.rel for h in prepared.hits):
                        raise AssertionError(f"no {animal} in the answer or its sources")
                    with guard:
                        latencies.append(time.monotonic() - started)
                except Exception as err:  # counted, reported: the benchmark measures errors
                    with guard:
                        errors.append(f"user {number}: {err!r}")

        threads = [threading.Thread(target=user, args=(n,)) for n in range(args.users)]
        asked_at = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        asking_seconds = time.monotonic() - asked_at
        busy_while_asking = board.busy
        if not board.wait(900):
            raise SystemExit("the bulk job did not finish")
        ingest_seconds = time.monotonic() - ingest_started

        records = store.manifest.all()
        listed = sum(r.chunks for r in records)
        ids = store._collection.get(include=[])["ids"]  # every stored chunk id, to find duplicates
        once = (len(records) == len(library) and len({r.path for r in records}) == len(library)
                and store.count() == listed == len(set(ids)) == len(ids))
        store.close()
        rows = [[args.users, args.users * args.questions, len(latencies), len(errors),
                 f"{percentile(latencies, 0.5):.2f}", f"{percentile(latencies, 0.95):.2f}",
                 f"{statistics.mean(latencies):.2f}" if latencies else "-", f"{asking_seconds:.0f}",
                 "yes" if busy_while_asking else "finished first", f"{len(records)}/{len(library)}",
                 f"{listed}", "yes" if once else "NO"]]
        header = ["users", "questions", "answered", "errors", "p50 s", "p95 s", "mean s", "asking s",
                  "worker still ingesting at the end", "files in", "chunks", "each file exactly once"]
        table = markdown_table(header, rows)
        print(table)
        for error in errors[:10]:
            print(error, file=sys.stderr)
        write_section("Team: concurrent askers while a worker ingests (bench/team.py)",
                      f"`python -m bench.team --users {args.users} --questions {args.questions} --files "
                      f"{args.files}`: a `chroma run` server, one `python -m ingest --worker` process (ocr engine) "
                      f"ingesting {len(library) - len(seed)} PDFs ({ingest_seconds:.0f} s) while {args.users} "
                      "threads of one app process ask through the Ask page's code path (prepare + stream_answer, "
                      "extractive answers from the ocr engine). Latency is per question, retrieval and answer.\n\n"
                      + table)
        return 0 if once and not errors else 1
    finally:
        for process in (worker, chroma):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)


if __name__ == "__main__":
    sys.exit(main())
