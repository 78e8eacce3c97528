"""End to end on a GPU host with the team's engine: `python -m ingest` on scanned pages, the `openai` engine feeding a
real vLLM server on the same card, through the embedded Chroma store.

What bench/ingest_gpu.py measures for the in-process `transformers` engine, here for `KB_ENGINE=openai` against
`vllm serve` (the model server of the team deployment, docker-compose.yml). The same scanned pages (the pages of
real PDFs rasterised into image-only PDFs, `make_scans`), the same random-weight Qwen3-VL-4B checkpoint
(`build_random_4b`) and random Qwen3-Embedding-0.6B embedder on the GPU, and each page's output length drawn from
the same real distribution and set as its token cap. A random model never ends a page by itself; the server is asked
to ignore its end-of-turn token and to write printable characters only (`ignore_eos`, `allowed_token_ids`: vLLM
sampling fields), so every page costs exactly its drawn length, as in the transformers runs.

The server is started here (`python -m vllm.entrypoints.openai.api_server`, vLLM importable by this Python; on the
lent host from the wheels `python -m bench.vllm_bundle` makes, installed into a folder on PYTHONPATH beside the
image's torch, with VLLM_USE_FLASHINFER_SAMPLER=0, after `bash bench/gpu_host.sh install one` and `install two`)
with the real checkpoint's picture budget in its processor (Qwen3-VL-4B-Instruct's: up to
16,777,216 pixels), so the pixels a page keeps are the ones the engine sends (`KB_IMAGE_MAX_PIXELS`, as
`OpenAIEngine` scales pictures before sending), and stopped at the end. `--concurrency 64,256` runs ingest once per
value (KB_CONCURRENCY: requests in flight), each into a fresh knowledge base, against the one server.

usage: python -m bench.ingest_server_gpu --pdfs DIR [--pages 1200] [--concurrency 64,256] [--model-dir DIR]
                                         [--server-args "--kv-cache-dtype fp8"] [--work DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.engine_gpu import GpuBusy, build_random_4b
from bench.ingest_gpu import (
    ENGINE_STAGE,
    FIRST_BATCH,
    READ_ENDED,
    GcPauses,
    SliceTimeline,
    Stages,
    build_random_embedder,
    ingest_once,
    instrument,
    make_scans,
)
from bench.report import markdown_table, publish

SERVED_NAME = "qwen3-vl-4b-random"
# Qwen3-VL-4B-Instruct's own processor budget (its preprocessor_config.json): the server keeps what it is sent.
CHECKPOINT_PIXELS = {"shortest_edge": 65_536, "longest_edge": 16_777_216}
SERVER_ARGS = ("--max-model-len 4096 --gpu-memory-utilization 0.8 --max-num-seqs 256 "
               "--limit-mm-per-prompt '{\"image\": 1, \"video\": 0}'")


def as_checkpoint(model_dir: Path) -> list[int]:
    """The random model's processor given the real checkpoint's picture budget (build_random_4b saves the tiny
    test processor's); the token ids of printable characters, which the server is asked to keep to."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    processor.image_processor.size = dict(CHECKPOINT_PIXELS)
    processor.save_pretrained(model_dir)
    tokenizer = processor.tokenizer
    printable = {tokenizer.convert_tokens_to_ids(chr(c)) for c in range(0x21, 0x7F)}
    printable.add(tokenizer.convert_tokens_to_ids("Ġ"))  # the byte-level space
    return sorted(printable)


STATS_LINE = re.compile(r"Avg prompt throughput: ([\d.]+) tokens/s, Avg generation throughput: ([\d.]+) "
                        r"tokens/s, Running: (\d+) reqs")


def port_answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        return True
    except OSError:
        return False


def stop_on_sigterm() -> None:
    """`timeout` and the device tool end a run with SIGTERM: raise, so `finally` stops the server's process group
    (it runs in a session of its own and would outlive this process, holding the GPU and the port)."""
    def leave(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


@dataclass
class Server:
    """`vllm serve` in its own process group, its log in a file; stopped with the group."""

    process: subprocess.Popen | None  # None: a server started elsewhere
    url: str  # http://127.0.0.1:PORT/v1
    log: Path
    ready_s: float = 0.0

    @classmethod
    def start(cls, python: str, model_dir: Path, port: int, arguments: str, log: Path,
              timeout_s: float = 900) -> Server:
        command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                   "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
                   *shlex.split(arguments)]
        if port_answers(port):  # a server left over (a killed run) would answer for the new one, and run with its args
            raise RuntimeError(f"port {port} already answers: stop the server there or pass another --port")
        print("starting:", shlex.join(command), flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                                   env=env)
        server = cls(process, f"http://127.0.0.1:{port}/v1", log)
        while time.perf_counter() - started < timeout_s:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({process.returncode}):\n{log.read_text()[-6000:]}")
            if port_answers(port):
                server.ready_s = time.perf_counter() - started
                return server
            time.sleep(1)
        server.stop()
        raise RuntimeError(f"vllm serve not ready in {timeout_s:.0f} s:\n{log.read_text()[-6000:]}")

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def steady_state(self, since: int) -> tuple[float, float, int]:
        """Mean prompt and output tok/s of vLLM's 10-second log lines after byte `since` while its batch was full
        (running requests within 5 % of the most seen in those lines), and how many lines that was."""
        with self.log.open("rb") as log:
            log.seek(since)
            lines = STATS_LINE.findall(log.read().decode(errors="replace"))
        stats = [(float(prompt), float(output), int(running)) for prompt, output, running in lines]
        most = max((running for *_, running in stats), default=0)
        full = [(prompt, output) for prompt, output, running in stats if running and running >= 0.95 * most]
        if not full:
            return 0.0, 0.0, 0
        return sum(p for p, _ in full) / len(full), sum(o for _, o in full) / len(full), len(full)

    def metric(self, name: str) -> float:
        """A counter or gauge from the server's Prometheus /metrics, summed over its labels."""
        text = urllib.request.urlopen(self.url.removesuffix("/v1") + "/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class Answers:
    """What the server said it did for the engine's requests (its token accounting), per run."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cut_by_length: int = 0
    log: list[tuple[int, int, int, int]] = field(default_factory=list)  # the totals at each run's end

    def close_run(self) -> tuple[int, int, int, int]:
        totals = (self.requests, self.prompt_tokens, self.completion_tokens, self.cut_by_length)
        before = self.log[-1] if self.log else (0, 0, 0, 0)
        self.log.append(totals)
        return tuple(a - b for a, b in zip(totals, before))  # type: ignore[return-value]


def instrument_server(printable: list[int]) -> Answers:
    """Every request asks the server for exactly its token cap in printable characters; each answer counted."""
    import threading

    from kb.engines.openai_compat import OpenAIEngine

    answers, lock = Answers(), threading.Lock()
    params, complete_one = OpenAIEngine._params, OpenAIEngine._complete_one

    def exact_length(self, request):
        made = params(self, request)
        made["extra_body"] = {**made["extra_body"], "ignore_eos": True, "allowed_token_ids": printable}
        return made

    def counted(self, request):
        done = complete_one(self, request)
        with lock:
            answers.requests += 1
            answers.prompt_tokens += done.prompt_tokens
            answers.completion_tokens += done.completion_tokens
            answers.cut_by_length += done.finish_reason == "length"
        return done

    OpenAIEngine._params, OpenAIEngine._complete_one = exact_length, counted
    return answers


def steady_cell(steady: tuple[float, float, int], prompt: int, completion: int, requests: int) -> str:
    """The steady state as tok/s and as the pages/min each side alone would give at this run's tokens a page."""
    prompt_s, output_s, lines = steady
    if not lines or not requests:
        return "no full-batch lines in the server log"
    per_page_prompt, per_page_output = prompt / requests, completion / requests
    return (f"{prompt_s:,.0f} / {output_s:,.0f} ({prompt_s * 60 / per_page_prompt:.0f} / "
            f"{output_s * 60 / per_page_output:.0f}), {lines}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pdfs", type=Path, required=True, help="folder of real PDFs to rasterise")
    parser.add_argument("--pages", type=int, default=1200)
    parser.add_argument("--length-scale", type=float, default=1.0)
    parser.add_argument("--concurrency", default="64", help="KB_CONCURRENCY values, one run each, e.g. 64,256")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ingest_gpu"))
    parser.add_argument("--model-dir", type=Path, help="random Qwen3-VL-4B folder (built if missing)")
    parser.add_argument("--server-args", default="", help="more `vllm serve` arguments")
    parser.add_argument("--base-args", default=SERVER_ARGS, help="the server's sizes (a CPU smoke test: "
                        "'--max-model-len 4096 --dtype float32 --enforce-eager')")
    parser.add_argument("--python", default=sys.executable, help="the Python that has vLLM")
    parser.add_argument("--embed-model", help="an embedder instead of the random Qwen3-Embedding-0.6B (smoke tests)")
    parser.add_argument("--device", default="cuda", help="where the embedder runs")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--server-url", help="a server already serving the model dir as " + SERVED_NAME + " (e.g. "
                        "started in an earlier call on a lent machine): used as it is, not started or stopped")
    parser.add_argument("--out", type=Path, help="write the markdown section here, not docs/benchmarks.md")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    started = time.perf_counter()
    scans = args.work / "scans"
    pages = make_scans(args.pdfs, scans, args.pages)
    model_dir = args.model_dir or args.work / "qwen3-vl-4b-random"
    if not (model_dir / "config.json").exists():
        build_random_4b(model_dir)
    printable = as_checkpoint(model_dir)
    embed_dir = args.work / "qwen3-embedding-0.6b-random"
    if not args.embed_model and not (embed_dir / "modules.json").exists():
        build_random_embedder(embed_dir)
    print(f"{pages} scanned pages in {scans}, models ready, {time.perf_counter() - started:.0f} s", flush=True)

    stop_on_sigterm()
    if args.server_url:
        server = Server(None, args.server_url, args.work / "vllm.log")
    else:
        server = Server.start(args.python, model_dir, args.port, f"{args.base_args} {args.server_args}",
                              args.work / "vllm.log")
    print(f"server ready in {server.ready_s:.0f} s", flush=True)
    os.environ.update({"KB_ENGINE": "openai", "KB_OPENAI_BASE_URL": server.url, "KB_MODEL": SERVED_NAME,
                       "KB_EMBED_MODEL": args.embed_model or str(embed_dir), "KB_DEVICE": args.device})
    stages = Stages()
    calls, loads = instrument(stages, args.length_scale)  # drawn lengths, stage timers (engine-agnostic parts)
    from kb.engines.openai_compat import OpenAIEngine

    stages.mark(OpenAIEngine, "submit", FIRST_BATCH, first=True)
    answers = instrument_server(printable)
    busy, pauses, slices = GpuBusy(), GcPauses(), SliceTimeline()
    rows = []
    try:
        for number, concurrency in enumerate(concurrencies, 1):
            os.environ["KB_CONCURRENCY"] = str(concurrency)
            preempted, log_at = server.metric("vllm:num_preemptions_total"), server.log_size()
            run = ingest_once(number, f"KB_CONCURRENCY={concurrency}", scans, args.work / f"kb-server{number}",
                              stages, calls, loads, busy, pauses, slices)
            requests, prompt, completion, cut = answers.close_run()
            preempted = server.metric("vllm:num_preemptions_total") - preempted
            print(f"run {number}: {run.seconds:.1f} s, {requests} requests, exit {run.code}", flush=True)
            time.sleep(11)  # the server's next 10-second line closes the run's last interval
            steady = server.steady_state(log_at)
            rows.append((run, concurrency, requests, prompt, completion, cut, preempted, steady))
    finally:
        server.stop()

    table = [[run.number, concurrency, f"{run.seconds:.1f}", f"{pages * 60 / run.seconds:.0f}",
              f"{run.stages.get(ENGINE_STAGE, 0):.1f}", run.at(FIRST_BATCH), run.at(READ_ENDED), requests,
              f"{prompt / max(1, requests):.0f}", completion, f"{completion / run.seconds:.0f}", cut,
              int(preempted), steady_cell(steady, prompt, completion, requests), f"{run.busy:.0%}", run.chunks,
              run.code]
             for run, concurrency, requests, prompt, completion, cut, preempted, steady in rows]
    header = ["run", "requests in flight (KB_CONCURRENCY)", "end to end s", "pages/min", "engine s (main thread "
              "waits)", "first batch handed at s", "reading ended at s", "requests", "prompt tokens a request "
              "(server's count)", "output tokens", "output tok/s end to end", "ended by their cap",
              "preemptions", "server steady state, batch full: prompt / output tok/s (pages/min), lines",
              "GPU busy", "chunks", "exit code"]
    body = (f"`python -m bench.ingest_server_gpu --pdfs DIR --pages {args.pages} --concurrency {args.concurrency}"
            + (f" --server-args '{args.server_args}'" if args.server_args else "") + "`: "
            f"{pages} scanned pages (from {len(list(args.pdfs.glob('*.pdf')))} PDFs), `python -m ingest` with "
            f"KB_ENGINE=openai against `vllm serve` on the same GPU ({args.base_args} {args.server_args}; ready "
            f"{server.ready_s:.0f} s after start, not timed), output lengths drawn at {args.length_scale} x the real "
            f"distribution, each run into a fresh knowledge base.\n\n" + markdown_table(header, table))
    for run, *_ in rows:
        body += f"\n\nRun {run.number}, per stage:\n\n{run.stage_table()}"
    publish("Ingest end to end on GPU through a vLLM server", body, args.out)
    if server.log.exists():
        print(json.dumps({"vllm_log_tail": server.log.read_text()[-3000:]}), flush=True)


if __name__ == "__main__":
    main()
