"""GPU throughput of the `transformers` engine at real page lengths: Qwen3-VL-4B architecture, random weights.

No weights can be downloaded where this runs, so the real Qwen3-VL-4B architecture is built with random
weights. A random model never ends a page by itself, so each page's output length is drawn from the length
distribution of real pages (PAGE_TOKEN_QUANTILES) and forced as that page's token cap (the loop guard is off).
In one run:
- `--check`: greedy ids of a few pages decoded together, one at a time, and with the step run eagerly;
- streamed answers (`engine.stream`, after `warm_up`): first token and tok/s, one stream and four at once;
- real lengths, the engine (`engine.generate_ids`: KV slab, recorded decode step, finished rows refilled in place)
  at each `--rows`, four pages per row as ingest hands them;
- real lengths, one page at a time through the engine (one row);
- `--baselines`: the engine before the KV slab, transformers' `generate()` per batch of equal lengths and one page
  at a time;
- `--video-minutes`: the windows of a video of that length.
Timing covers the engine call as ingest makes it: processor, vision tower, generation.

usage: python -m bench.engine_gpu [--check] [--pages 512] [--rows 128] [--length-scale 1] [--baselines]
                                  [--video-minutes 60] [--out FILE]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import time
import types
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import AttentionInterface, StoppingCriteria, StoppingCriteriaList
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import kb.engines.transformers_qwen as tq
from bench.report import markdown_table, publish
from kb import prompts
from kb.config import load_settings
from kb.engines import UNITS_PER_ROW
from kb.types import Request, VideoClip

# Output tokens of a real page: 5 % quantiles (0 %, 5 %, ..., 100 %) of the text layers of the 1116 pages with
# text of the 25 PDFs in shared/data/qa/mmlongbench_dev/documents (reports, papers, brochures), capped at the
# engine's 2048-token page limit. Counted with PyMuPDF's text and a tokenizer-free estimate of Qwen's BPE (one
# token per word of up to 8 letters, one more per further 8, one per digit and per punctuation mark): p10 202,
# median 610, p90 1189, mean 662. The reference (705 pages, a real tokenizer): p10 250, median 750,
# p90 1400, max 2050, mean 800, about 1.2 x these.
PAGE_TOKEN_QUANTILES = [14, 87, 202, 283, 348, 421, 473, 511, 549, 578, 610, 633, 683, 727, 814, 891, 978, 1074,
                        1189, 1310, 2048]
WINDOW_TOKENS = 160  # summary + on-screen text + entities of one video window
WINDOW_SECONDS, FRAMES_PER_WINDOW = 20, 10  # 1 frame/s sampling after scene-change dropping keeps about half


# ---- the engine before the KV slab: transformers' generate() per batch (the baseline rows) --------------------------

def grouped_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                             **kwargs):
    """sdpa, except for one-token decoding with a padding mask: there transformers' sdpa copies every key/value head
    once per query head sharing it (4x the KV cache per layer per step for Qwen3-VL-4B), because torch's fused
    kernels take either a mask or grouped heads. Rows of a refilled batch always carry padding, so decoding reads
    the cache once here, with the query heads grouped per key/value head."""
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1 or attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else dim ** -0.5
    scores = torch.matmul(query.view(batch, kv_heads, groups, dim), key.transpose(-1, -2)).float() * scale
    mask = attention_mask.reshape(batch, 1, 1, length)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(scores.softmax(-1).to(value.dtype), value)  # (batch, kv_heads, groups, dim)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


GROUPED_ATTENTION = "kb_grouped_sdpa"
AttentionInterface.register(GROUPED_ATTENTION, grouped_decode_attention)
AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)


GROUPED_ATTENTION = "kb_grouped_sdpa"
AttentionInterface.register(GROUPED_ATTENTION, grouped_decode_attention)
AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)


class RowStop(StoppingCriteria):
    """Stops each batch row on its own: at its token limit, at end of turn, or when its tail loops.

    Records where each row stopped, so the row's output is cut exactly there (rows that finish early are
    padded by generate() until the whole batch is done).
    """

    def __init__(self, prompt_len: int, limits: list[int], eos_ids: list[int], ngram: int = 12, repeats: int = 4):
        self.prompt_len = prompt_len
        self.limits = limits
        self.eos_ids = set(eos_ids)
        self.ngram, self.repeats = ngram, repeats
        self.stopped_at: list[int | None] = [None] * len(limits)
        self.cancelled = False  # set when a stream's reader goes away: the whole batch stops at the next token

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.cancelled:
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        generated = input_ids.shape[1] - self.prompt_len
        span = self.ngram * self.repeats
        # Only the generated part may loop-check: the prompt itself can repeat (table headers, frames).
        # One device-to-host copy per step for the whole batch, not one per row.
        tails = input_ids[:, -min(span, generated):].tolist() if generated > 0 else []
        for row, limit in enumerate(self.limits):
            if self.stopped_at[row] is not None or generated <= 0:
                continue
            tail = tails[row]
            if generated >= limit or tail[-1] in self.eos_ids or tq.repeating_tail(tail, self.ngram, self.repeats):
                self.stopped_at[row] = generated
        done = [stop is not None for stop in self.stopped_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def row_ids(self, row: int, new_tokens: list[int]) -> list[int]:
        """The tokens row `row` really generated: cut where it stopped and at its limit, end-of-turn dropped."""
        stop = self.stopped_at[row]
        ids = new_tokens[:stop if stop is not None else len(new_tokens)][:self.limits[row]]
        return ids[:-1] if ids and ids[-1] in self.eos_ids else ids


def generate_kwargs(engine: tq.TransformersEngine, requests: list[Request]) -> tuple[dict, RowStop]:
    """transformers' generate() arguments for a batch, as the engine built them before the KV slab."""
    inputs = engine.build_inputs(requests)
    limits = [r.max_new_tokens for r in requests]
    stop = RowStop(inputs["input_ids"].shape[1], limits, engine.eos_ids)
    kwargs = dict(**inputs, max_new_tokens=max(limits), do_sample=False, temperature=None, top_p=None,
                  top_k=None, stopping_criteria=StoppingCriteriaList([stop]),
                  pad_token_id=engine.tokenizer.pad_token_id)
    return kwargs, stop


def page_lengths(count: int, scale: float, seed: int = 0) -> list[int]:
    """`count` output lengths drawn from the real distribution (inverse CDF between the quantiles), times `scale`."""
    u = np.random.default_rng(seed).random(count) * (len(PAGE_TOKEN_QUANTILES) - 1)
    drawn = np.interp(u, np.arange(len(PAGE_TOKEN_QUANTILES)), PAGE_TOKEN_QUANTILES)
    return [max(4, int(round(n * scale))) for n in drawn]


def build_random_4b(out: Path) -> None:
    """Qwen3-VL-4B-Instruct's architecture (text and vision) with random bf16 weights, saved like a checkpoint."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from tests.tiny_qwen3vl import build_processor

    processor, ids = build_processor()
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, in_channels=3,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2560,
                           num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    torch.cuda.empty_cache()


# Page sizes at 150 dpi, cycled: A4, US letter, a 16:9 slide, a landscape half page. Different sizes give different
# visual token counts, so prompts in a batch differ in length, as in a real ingest.
PAGE_SIZES = [(1240, 1754), (1275, 1650), (1500, 844), (1240, 877)]


def scanned_page(n: int) -> Image.Image:
    page = Image.new("RGB", PAGE_SIZES[n % len(PAGE_SIZES)], "white")
    draw = ImageDraw.Draw(page)
    for line in range((page.height - 180) // 26):
        draw.text((90, 90 + line * 26), f"Page {n} line {line}: invoice INV-{n:04d}-{line:02d} total {line * 7.5:.2f}",
                  fill="black")
    return page


def video_window(start_s: int, fps: float = 25.0) -> VideoClip:
    frames = [Image.new("RGB", (640, 360), ((start_s * 7 + k * 20) % 255, 80, 160)) for k in range(FRAMES_PER_WINDOW)]
    step = WINDOW_SECONDS / FRAMES_PER_WINDOW
    indices = [int((start_s + k * step) * fps) for k in range(FRAMES_PER_WINDOW)]
    return VideoClip(frames=frames, frame_indices=indices, fps=fps, total_frames=int(3600 * fps))


class GpuBusy:
    """Share of wall time the GPU ran a kernel (NVML utilization, sampled every 50 ms)."""

    def __init__(self) -> None:
        self._nvml = self._handle = None
        if torch.cuda.is_available():
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        self._samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> GpuBusy:
        self._samples.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._nvml and not self._stop.wait(0.05):
            self._samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def share(self) -> float:
        return sum(self._samples) / len(self._samples) / 100 if self._samples else float("nan")


def pages(lengths: list[int]) -> list[Request]:
    return [Request("ocr", prompts.OCR_PAGE, [scanned_page(n)], max_new_tokens=n_tokens)
            for n, n_tokens in enumerate(lengths)]


def one_generate_per_batch(engine: tq.TransformersEngine, requests: list[Request], batch: int) -> tuple[int, int]:
    """The engine before continuous batching: `generate()` per batch, rows stopping on their own. Kept tokens and
    computed row-steps (a batch runs until its longest row is done)."""
    tokens = row_steps = 0
    for start in range(0, len(requests), batch):
        chunk = requests[start:start + batch]
        kwargs, stop = generate_kwargs(engine, chunk)
        with torch.inference_mode():
            sequences = engine._net.generate(**kwargs)
        new = sequences[:, stop.prompt_len:].tolist()
        kept = [stop.row_ids(row, ids) for row, ids in enumerate(new)]
        tokens += sum(len(ids) for ids in kept)
        row_steps += len(chunk) * len(new[0])
    return tokens, row_steps


def measure(label: str, run, busy: GpuBusy | None, count: int) -> list:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if busy:
        with busy:
            tokens, row_steps = run()
            torch.cuda.synchronize()
    else:
        tokens, row_steps = run()
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    row = [label, count, seconds, count * 60 / seconds, tokens / seconds, 1 - tokens / row_steps,
           busy.share if busy else float("nan"), torch.cuda.max_memory_allocated() / 2**30]
    print(row, flush=True)
    return row


def answer_request(k: int, tokens: int) -> Request:
    """Question `k` over ~1,500 tokens of retrieved passages, as the app asks it."""
    context = " ".join(f"[{n}] Passage {n} of the knowledge base, figures {n * 17} and {n * 31}." for n in range(60))
    return Request("answer", f"{context}\n\nQuestion {k}: what do the passages say?", max_new_tokens=tokens)


def stream_answers(engine: tq.TransformersEngine, concurrent: int, tokens: int) -> tuple[list[float], float]:
    """`concurrent` answers of `tokens` tokens streamed at once from threads, as the app's users would: each
    stream's seconds until its last piece, and the wall time of them all."""
    seconds: list[float] = []

    def one(k: int) -> None:
        request = answer_request(k, tokens)
        started = time.perf_counter()
        for _ in engine.stream(request):
            pass
        seconds.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(concurrent)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seconds, time.perf_counter() - started


def measure_streams(engine: tq.TransformersEngine, args: argparse.Namespace) -> list[list]:
    """First token (a one-token answer, start to end) and tok/s of streamed answers, one alone then four at once,
    after the warm-up the app does at start."""
    warm = engine.warm_up()
    rows = []
    for concurrent in (1, 4):
        first, _ = stream_answers(engine, concurrent, 1)
        full, wall = stream_answers(engine, concurrent, args.stream_tokens)
        per_stream = (args.stream_tokens - 1) / (min(full) - min(first))
        rows.append([f"{concurrent} at once (warm-up at start {warm:.1f} s)", concurrent,
                     max(first), min(first), per_stream, concurrent * args.stream_tokens / wall])
        print(rows[-1], flush=True)
    return rows


def answers_during_bulk(engine: tq.TransformersEngine, args: argparse.Namespace) -> list[list]:
    """Answers streamed while a bulk batch decodes (a question asked during an ingest): each answer's first token
    and tok/s with the loop running, against the same answers on an idle engine, and what the loop stood paused
    for them (DecodeStats.answers_s). The answer goes between two chunks of the rows' decode steps."""
    engine.warm_up()
    requests = pages(page_lengths(args.answers_during_bulk, args.length_scale, seed=7))
    record_bulk_steps(engine, requests)
    rows = []

    def answer(label: str, running: Future | None) -> None:
        """One answer: its first piece's wait and its rate after it, from the same stream (a one-token answer
        before it waits for the loop's pause on its own, so two streams do not compare)."""
        started, first = time.perf_counter(), 0.0
        for _ in engine.stream(answer_request(len(rows), args.stream_tokens)):
            first = first or time.perf_counter()
        ended = time.perf_counter()
        still = "yes" if running is None or not running.done() else "no (ended first)"
        rows.append([label, first - started, (args.stream_tokens - 1) / max(ended - first, 1e-9), still])
        print(rows[-1], flush=True)

    answer("idle engine", None)
    started = time.perf_counter()
    bulk = engine.submit(requests)
    time.sleep(2.0)  # its first groups prefilled, its rows decoding
    for k in range(3):
        answer(f"during the bulk loop, answer {k + 1}", bulk)
    texts = bulk.result()
    bulk_s = time.perf_counter() - started
    stats = engine.last_stats
    rows.append([f"the bulk loop: {len(texts)} of {len(requests)} pages back in {bulk_s:.1f} s, paused "
                 f"{stats.answers_s:.2f} s for the answers", "", "", ""])
    print(rows[-1], stats, flush=True)
    return rows


def check_graphs(engine: tq.TransformersEngine) -> None:
    """Greedy ids of 6 pages: 4 rows with recorded steps, one row at a time, and 4 rows run eagerly."""
    requests = pages([40, 9, 23, 31, 17, 12])
    engine.settings = engine.settings.replace(batch_size=4)
    batched = engine.generate_ids(requests)
    engine._slabs["bulk"].graphs_on = False
    eager = engine.generate_ids(requests)
    engine.settings = engine.settings.replace(batch_size=1)
    alone = [engine.generate_ids([r])[0] for r in requests]
    engine._slabs.clear()
    print(f"check: recorded == eager {batched == eager}, batched == alone "
          f"{sum(a == b for a, b in zip(batched, alone))}/{len(requests)}, lengths {[len(i) for i in batched]}",
          flush=True)


def transformers_prefill(engine: tq.TransformersEngine, prepared, slab, slots: list[int]) -> list[int]:
    """The prefill before packing (the 'before' rows): the group left-padded to its longest prompt through
    transformers' forward (attention under a padding mask, unfused norms and RoPE), its cache copied into the
    slab."""
    net = engine._net
    inputs = {k: v.to(net.device) for k, v in prepared.inputs.items()}
    out = net(**inputs, position_ids=prepared.positions.to(net.device), use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]
    if slab.banned is not None:
        logits = logits.masked_fill(slab.banned[None], float("-inf"))
    if slab.min_new:
        logits = logits.masked_fill(slab.eos_mask[None], float("-inf"))
    first = logits.argmax(-1)
    slab.load(slots, out.past_key_values, prepared.widths, first, prepared.next_pos.to(net.device))
    engine._first_logits = out.logits[:, -1]
    return [int(t) for t in first.tolist()]


_ENGINE_FORWARDS: dict = {}  # the engine's own forwards of the vision modules, while the old ones run


def use_transformers_prefill(engine: tq.TransformersEngine, old: bool) -> None:
    """The bench's switch to the prefill as it was (`transformers_prefill`, transformers' vision tower: Conv3d
    patch embedding, unfused blocks; one processor thread), or back to the engine's own (packed prompts copied to
    the GPU by the processor threads, `speed_up_vision`)."""
    visual = engine._net.model.visual
    modules = [visual.patch_embed, *visual.blocks]
    if old:
        for module in modules:
            if "forward" in module.__dict__:
                _ENGINE_FORWARDS[module] = module.__dict__.pop("forward")
        engine.prefill = types.MethodType(transformers_prefill, engine)
        engine._to_device = lambda packed: packed  # the packed copy is not used: no copy to the GPU ahead
        engine.processor_threads = 1
    else:
        for module in modules:
            if module in _ENGINE_FORWARDS:
                module.forward = _ENGINE_FORWARDS.pop(module)
        engine.__dict__.pop("prefill", None)
        engine.__dict__.pop("_to_device", None)
        engine.processor_threads = tq.processor_threads()


def timed(run, repeat: int = 2) -> float:
    """Median seconds of `run` on the GPU after one warm-up run."""
    run()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def prefill_pieces(engine: tq.TransformersEngine, prepared, slab, group: int, old: bool) -> str:
    """One line: a prefill group's milliseconds, whole and in pieces (each timed alone, after a warm-up)."""
    net, device, slots = engine._net, engine._net.device, list(range(group))
    visual = net.model.visual
    gpu = {k: v.to(device) for k, v in prepared.inputs.items()}
    pixels, grid = gpu["pixel_values"].to(visual.dtype), gpu["image_grid_thw"]
    whole = timed(lambda: engine.prefill(prepared, slab, slots))
    if old:
        copy = timed(lambda: {k: v.to(device) for k, v in prepared.inputs.items()})
        positions = prepared.positions.to(device)

        def forward():
            return net(**gpu, position_ids=positions, use_cache=True, logits_to_keep=1).past_key_values
    else:
        packed = tq.pack(prepared.inputs, prepared.positions, net.config)
        copy = timed(lambda: engine._to_device(packed))

        def forward():
            return engine._prompt_forward(prepared.packed)[1]
    vision = timed(lambda: visual(pixels, grid_thw=grid))
    patch = timed(lambda: visual.patch_embed(pixels))
    prompt = timed(forward)
    cache = forward()
    first = torch.zeros(group, dtype=torch.long, device=device)
    load = timed(lambda: slab.load(slots, cache, prepared.widths, first, prepared.next_pos.to(device)))
    label = "before (transformers' forward, padded)" if old else "after (packed)"
    where = "in the prefill" if old else "on the processor thread"
    return (f"{label}: prefill {whole * 1e3:.1f} ms/group = {whole * 1e3 / group:.1f} ms/page; inputs to GPU "
            f"{copy * 1e3:.1f} ms ({where}); vision tower {vision * 1e3:.1f} ms (patch embedding {patch * 1e3:.1f}); "
            f"vision + language model {prompt * 1e3:.1f} ms, so language model {(prompt - vision) * 1e3:.1f} ms; "
            f"copy into the slab {load * 1e3:.1f} ms")


def profile_prefill(engine: tq.TransformersEngine, out: Path, group: int = 16) -> None:
    """Where one prefill group's time goes (`--profile-prefill`): the processor on the CPU, the copy to the GPU,
    the vision tower, the language model's prompt forward, padding, the copy into the slab; old and new vision
    path; a torch.profiler table of the whole prefill (written to `out`)."""
    from torch.profiler import ProfilerActivity, profile

    requests = pages([64] * group)
    cpu = [time.perf_counter()]
    for _ in range(2):
        prepared = engine.prepare(requests)
        cpu.append(time.perf_counter())
    print(f"processor (CPU, one thread): {(cpu[2] - cpu[1]) * 1e3 / group:.1f} ms/page "
          f"(first call {(cpu[1] - cpu[0]) * 1e3 / group:.1f})", flush=True)
    widths = prepared.widths
    print(f"prompt tokens: {widths}; padded to {max(widths)}: padding {1 - sum(widths) / (max(widths) * group):.3f}",
          flush=True)
    slab = engine._slab("bulk", group, max(engine.columns_bound(r) for r in requests))
    slots = list(range(group))
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    with torch.inference_mode():
        for old in (True, False):
            use_transformers_prefill(engine, old)
            lines.append(prefill_pieces(engine, prepared, slab, group, old))
            print(lines[-1], flush=True)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                engine.prefill(prepared, slab, slots)
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=45, max_name_column_width=70)
            own = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60)
            (out / f"prefill_profile_{'old' if old else 'new'}.txt").write_text(
                "\n".join(lines) + "\n\n" + table + "\n\n" + own)
            print(own, flush=True)
    measure_processor(engine, windows=48, per_task=4)


def measure_processor(engine: tq.TransformersEngine, windows: int, per_task: int) -> None:
    """The video processor's throughput (windows' frames to pixel values) with 1, 2, 4 and 8 threads."""
    from concurrent.futures import ThreadPoolExecutor

    video = [Request("video", prompts.VIDEO_WINDOW, video=video_window(w * WINDOW_SECONDS),
                     max_new_tokens=WINDOW_TOKENS) for w in range(windows)]
    engine.prepare(video[:per_task])
    for threads in (1, 2, 4, 8):
        with ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            list(pool.map(lambda k: engine.prepare(video[k:k + per_task]), range(0, windows, per_task)))
            took = time.perf_counter() - started
        print(f"video processor, {threads} threads: {took * 1e3 / windows:.1f} ms/window "
              f"({windows / took:.1f} windows/s; torch threads {torch.get_num_threads()})", flush=True)


def one_time(stats: tq.DecodeStats) -> str:
    """A call's one-time work against its steady work (DecodeStats: the KV cache made, steps recorded, the first
    prefill group's excess), and its drained tail."""
    first = f"{stats.group_s[0]:.2f} s for {stats.group_rows[0]} rows" if stats.group_s else "none"
    later = (f"later groups {stats.later_group_s_per_row * 1e3:.1f} ms a row (slowest {max(stats.group_s[1:]):.2f} s)"
             if len(stats.group_s) > 1 else "no later group")
    waits = ", ".join(f"{waited:.2f} s at {at:.1f} s" for at, waited in stats.long_waits) or "none"
    return (f"warm-up {stats.warm_up_s:.1f} s (KV cache made in {stats.slab_s:.1f} s; {stats.recorded} decode steps "
            f"recorded in {stats.record_s:.1f} s; first prefill group {first}, {later}), "
            f"tail after the last group joined {stats.tail_s:.1f} s; waits for a prepared group over "
            f"{tq.LONG_WAIT_S} s (seconds after the loop began): {waits}")


def record_bulk_steps(engine: tq.TransformersEngine, requests: list[Request]) -> float:
    """Make the bulk slab for these requests, record its decode steps (every halving of the rows; every width too
    where the per-row attention kernel does not run) and compile the prefill before timing: a long ingest does it
    once. Seconds it took."""
    started = time.perf_counter()
    with torch.inference_mode():
        slab = engine._slab("bulk", engine.slots, max(engine.columns_bound(r) for r in requests))
        rows = slab.rows
        while rows >= 1:
            slab.record_all(slab.length, rows)
            if rows % 2:
                break
            rows //= 2
        # The prefill's compiled layer halves and vision blocks too (symbolic sizes: compiled once).
        engine.generate_ids([dataclasses.replace(r, max_new_tokens=2) for r in requests[:2]])
    torch.cuda.synchronize()
    took = time.perf_counter() - started
    print(f"recorded before timing in {took:.1f} s; its prefill call: {one_time(engine.last_stats)}", flush=True)
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=512, help="pages per realistic workload")
    parser.add_argument("--rows", default="128", help="batch rows of the engine (KB_BATCH_SIZE), comma-separated")
    parser.add_argument("--length-scale", type=float, default=1.0,
                        help="scale of the drawn lengths (1 = real)")
    parser.add_argument("--baselines", action="store_true",
                        help="also the engine before the KV slab: one transformers generate() per batch")
    parser.add_argument("--single-pages", type=int, default=3, help="pages run one at a time")
    parser.add_argument("--stream-tokens", type=int, default=128, help="0 skips the streaming answers")
    parser.add_argument("--check", action="store_true", help="first compare recorded and eager decoding")
    parser.add_argument("--streams-only", action="store_true", help="only the streaming answers")
    parser.add_argument("--answers-during-bulk", type=int, default=0, metavar="PAGES",
                        help="also answers streamed while a bulk batch of this many pages decodes")
    parser.add_argument("--video-minutes", type=int, default=0, help="0 skips the video workload")
    parser.add_argument("--out", type=Path, help="write the markdown section to this file, not docs/benchmarks.md")
    parser.add_argument("--model-dir", type=Path, help="where the random checkpoint is built (reused if present)")
    parser.add_argument("--prefill-before", action="store_true",
                        help="also run the realistic workload with the prefill as it was (transformers' padded "
                             "forward), for a before/after in one run")
    parser.add_argument("--profile-prefill", type=Path, metavar="DIR",
                        help="first profile one prefill group, before and after (tables written to DIR), and time "
                             "the video processor on 1-8 threads")
    args = parser.parse_args()
    # Random weights loop easily; the loop guard would then stop rows early and flatter the numbers.
    tq.repeating_tail = lambda *a, **k: False
    rows_list = [int(r) for r in args.rows.split(",")]
    lengths = page_lengths(args.pages, args.length_scale)
    mean = int(round(sum(lengths) / len(lengths)))
    busy = GpuBusy()
    rows: list[list] = []
    stats: dict[str, tq.DecodeStats] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp)
        started = time.perf_counter()
        if not (model_dir / "config.json").exists():
            build_random_4b(model_dir)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        engine = tq.TransformersEngine(load_settings({"engine": "transformers", "model": str(model_dir),
                                                      "device": "cuda"}, env={}))
        load_s = time.perf_counter() - started
        print(f"model loaded: {torch.cuda.memory_allocated() / 2**30:.2f} GiB on the GPU, default rows "
              f"{engine.slots}", flush=True)
        # The baselines ran with the grouped decode attention (transformers' sdpa copies the KV heads under a mask).
        engine._net.config.text_config._attn_implementation = GROUPED_ATTENTION
        engine.eos_ids = []  # a random model must not end a page early by chance: lengths are the drawn ones
        engine._net.generation_config.eos_token_id = None
        if args.check:
            check_graphs(engine)
        if args.profile_prefill:
            profile_prefill(engine, args.profile_prefill)
        streams = measure_streams(engine, args) if args.stream_tokens else []
        during = answers_during_bulk(engine, args) if args.answers_during_bulk else []
        if args.streams_only:
            return finish(rows, args, build_s, load_s, engine, lengths, stats, streams, {}, during)
        recorded = {}
        for slots in rows_list:
            engine.settings = engine.settings.replace(batch_size=slots)
            # As ingest calls it: four times as many pages as rows per engine call.
            requests = pages(page_lengths(max(args.pages, UNITS_PER_ROW * slots), args.length_scale))
            recorded[slots] = record_bulk_steps(engine, requests)
            for old in (False, True) if args.prefill_before else (False,):
                use_transformers_prefill(engine, old)
                key = f"{slots} rows" + (", prefill before" if old else "")

                def refill(requests: list[Request] = requests, key: str = key) -> tuple[int, int]:
                    engine.generate_ids(requests)
                    stats[key] = engine.last_stats
                    return engine.last_stats.tokens, engine.last_stats.row_steps

                label = (f"before: transformers' padded prefill, {slots} rows" if old else
                         f"real lengths, KV slab + recorded decode step, packed prefill, {slots} rows")
                rows.append(measure(label, refill, busy, len(requests)))
                print(stats[key], flush=True)
            use_transformers_prefill(engine, False)
        engine.settings = engine.settings.replace(batch_size=1)
        single = pages(lengths[:args.single_pages])
        record_bulk_steps(engine, single)

        def one_by_one() -> tuple[int, int]:
            ids = [engine.generate_ids([r])[0] for r in single]
            return sum(map(len, ids)), sum(map(len, ids))

        rows.append(measure("real lengths, one page at a time (KV slab, 1 row)", one_by_one, busy, len(single)))
        if args.baselines:
            first = rows_list[0]
            engine.settings = engine.settings.replace(batch_size=first)
            engine._slabs.clear()
            torch.cuda.empty_cache()
            rows.append(measure(f"before: equal lengths ({mean} tokens), one generate() per batch of {first}",
                                lambda: one_generate_per_batch(engine, pages([mean] * first), first), busy, first))
            rows.append(measure("before: real lengths, one page at a time, generate()",
                                lambda: one_generate_per_batch(engine, single[:1], 1), busy, 1))
        if args.video_minutes:
            engine.settings = engine.settings.replace(batch_size=rows_list[0])
            windows = [Request("video", prompts.VIDEO_WINDOW, video=video_window(w * WINDOW_SECONDS),
                               max_new_tokens=WINDOW_TOKENS) for w in range(args.video_minutes * 60 // WINDOW_SECONDS)]
            record_bulk_steps(engine, windows)

            def video() -> tuple[int, int]:
                ids = engine.generate_ids(windows)
                stats["video"] = engine.last_stats
                return sum(map(len, ids)), engine.last_stats.row_steps

            rows.append(measure(f"video windows of a {args.video_minutes}-min video, KV slab", video, busy,
                                len(windows)))
    finish(rows, args, build_s, load_s, engine, lengths, stats, streams, recorded, during)


def finish(rows, args, build_s: float, load_s: float, engine, lengths: list[int], stats: dict,
           streams: list, recorded: dict, during: list) -> None:
    header = ["workload", "pages", "seconds", "pages/min", "useful tok/s", "padding share", "GPU busy", "peak GiB"]
    table = markdown_table(header, rows)
    q = np.percentile(lengths, [10, 50, 90, 100]).astype(int).tolist()
    refills = "; ".join(f"{k}: {s.steps} decode steps, {s.refills} refills, prefill {s.prefill_s:.1f} s "
                        f"({s.prefill_s * 1e3 / max(1, s.requests):.1f} ms/page), waited for the processor "
                        f"{s.wait_s:.1f} s, {one_time(s)}" for k, s in stats.items())
    refills += "".join(f"; decode steps recorded before timing ({k} rows, every halving): {v:.1f} s"
                       for k, v in recorded.items())
    body = (f"`python -m bench.engine_gpu --pages {args.pages} --rows {args.rows} --length-scale {args.length_scale}`"
            f": Qwen3-VL-4B architecture, random bf16 weights (built in {build_s:.0f} s, loaded in {load_s:.0f} s), "
            f"KV slab with the decode step recorded as CUDA graphs (kb/engines/kv_slab.py), "
            f"scanned pages at 150 dpi (A4, letter, slide and half-page sizes; up to "
            f"{engine.settings.image_max_pixels // 1024} visual tokens). Output lengths drawn from real pages "
            f"(bench/engine_gpu.py: PAGE_TOKEN_QUANTILES) at "
            f"{args.length_scale} x scale: p10 {q[0]}, median {q[1]}, p90 {q[2]}, max {q[3]} tokens. Useful tok/s "
            f"counts kept tokens only; padding share = computed row-steps that produced nothing kept (finished rows "
            f"waiting in the batch); GPU busy = NVML utilization (share of time a kernel ran). {refills}.\n\n{table}")
    if streams:
        body += ("\n\nStreaming answers (`engine.stream`, the app's code path; a ~1500-token prompt, "
                 f"{args.stream_tokens} tokens each):\n\n" + markdown_table(
                     ["streams", "n", "first token s (slowest)", "first token s (fastest)",
                      "tok/s (fastest stream, after its first token)", "tok/s all streams"], streams))
    if during:
        body += (f"\n\nAnswers while a bulk batch of {args.answers_during_bulk} pages decodes (one stream at a time, "
                 f"{args.stream_tokens} tokens each):\n\n" + markdown_table(
                     ["answer", "first token s", "tok/s after its first token", "bulk loop still running"], during))
    publish("Engine throughput on GPU at real page lengths (transformers)", body, args.out)


if __name__ == "__main__":
    main()
