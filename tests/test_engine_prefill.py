"""The transformers engine's prefill and its processor threads, run for real on the tiny random-weight Qwen3-VL
(CPU, float32).

The packed prefill (prompts one after another, no padding; the vision tower's own block forward) must read a
group exactly as transformers' own padded forward does, and preparing requests on several threads must not
change a single output. A call's one-time work (making the KV cache, recording decode steps, the first prefill
group) is counted apart from its steady work, once per slab.
"""
from __future__ import annotations

import threading

import pytest
import torch

from bench.engine_gpu import use_transformers_prefill
from kb.engines.kv_slab import KvSlab
from kb.engines.transformers_qwen import DecodeStats, TransformersEngine, processor_threads
from kb.types import Request, VideoClip
from tests.engine_inputs import BUDGET, noise_image, prepared_in_time


@pytest.fixture
def engine(make_settings, tiny_model_dir) -> TransformersEngine:
    return TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu", **BUDGET))


def window(seed: int) -> VideoClip:
    return VideoClip(frames=[noise_image(seed + k, (160, 120)) for k in range(4)], frame_indices=[0, 30, 60, 90],
                     fps=30.0, total_frames=1000)


def mixed_requests() -> list[Request]:
    """Pages of different sizes (different prompt lengths), a video window, a text-only question, and a request
    with both a picture and a video."""
    return [Request("ocr", "Read this page.", [noise_image(1, (120, 100))], max_new_tokens=9),
            Request("ocr", "Read this page.", [noise_image(2, (230, 90))], max_new_tokens=7),
            Request("video", "Describe the window.", video=window(10), max_new_tokens=8),
            Request("answer", "What is a knowledge base?", system="Be brief.", max_new_tokens=6),
            Request("video", "Both.", images=[noise_image(3, (90, 90))], video=window(20), max_new_tokens=8)]


def first_tokens(engine: TransformersEngine, requests: list[Request]) -> tuple[list[int], torch.Tensor]:
    """One prefill of the whole group: each row's first token and the logits it came from."""
    with torch.inference_mode():
        slab = engine._slab("bulk", len(requests), max(engine.columns_bound(r) for r in requests))
        first = engine.prefill(engine.prepare(requests), slab, list(range(len(requests))))
    assert engine._first_logits is not None
    return first, engine._first_logits.float().clone()


def test_packed_prefill_reads_a_group_as_transformers_padded_forward_does(engine):
    requests = mixed_requests()
    packed_first, packed_logits = first_tokens(engine, requests)
    packed_ids = engine.generate_ids(requests)
    use_transformers_prefill(engine, old=True)
    padded_first, padded_logits = first_tokens(engine, requests)
    padded_ids = engine.generate_ids(requests)
    assert packed_first == padded_first
    assert ((packed_logits - padded_logits).norm() / padded_logits.norm()).item() < 1e-5
    assert packed_ids == padded_ids  # and the cache it leaves decodes the same text
    assert [len(ids) for ids in packed_ids] == [r.max_new_tokens for r in requests]


def test_a_model_whose_layers_are_not_plain_prefills_through_its_own_modules(engine):
    """A quantized model (nf4 layers have no plain weight matrices) takes the modules' path, same result."""
    requests = mixed_requests()[:3]
    plain = engine.generate_ids(requests)
    engine._weights = (None,)
    assert engine._plain_weights() is None
    assert engine.generate_ids(requests) == plain


def test_pictures_of_one_size_are_attended_as_one_batch_and_read_as_transformers_reads_them(engine, monkeypatch):
    """Three video windows of one size (six frame pairs) and two pages of one size: the vision tower attends each
    kind in one batched call a block, not one call a piece, and its output is transformers' own blocks' output."""
    requests = [Request("video", "Describe.", video=window(30 + n), max_new_tokens=2) for n in range(3)]
    requests += [Request("ocr", "Read.", [noise_image(40 + n, (120, 100))], max_new_tokens=2) for n in range(2)]
    pictures = engine.prepare(requests).packed.pictures
    visual = engine._net.model.visual
    calls: list[int] = []
    attention = torch.nn.functional.scaled_dot_product_attention

    def counted(query, *args, **kwargs):
        calls.append(query.shape[0])  # pieces in the call's batch
        return attention(query, *args, **kwargs)

    def tower() -> list[torch.Tensor]:
        with torch.inference_mode():
            seen = [visual(pixels, grid_thw=grid) for pixels, grid, _ in pictures]
        return [t for out in seen for t in (out.pooler_output, *out.deepstack_features)]

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    batched = tower()
    assert sorted(calls) == sorted([2, 6] * len(visual.blocks))  # pages: 2 in one call; windows: 6 pairs in one
    use_transformers_prefill(engine, old=True)  # transformers' own blocks: each piece attended alone
    own = tower()
    assert len(batched) == len(own)
    for ours, theirs in zip(batched, own):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_loops_first_group_is_prepared_alone_then_several_at_once_changing_no_output(make_settings, tiny_model_dir):
    engine = TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                              batch_size=2, **BUDGET))
    requests = mixed_requests() + [Request("ocr", "Read.", [noise_image(k, (100 + 20 * k, 80))], max_new_tokens=5)
                                   for k in range(4, 8)]
    engine.processor_threads = 1
    one_thread = engine.generate_ids(requests)

    # With 3 threads, the loop's first group is prepared alone (the GPU waits for it only); the next two then run
    # at the same time: each waits for the other.
    together = threading.Barrier(2, timeout=20)
    calls: list[str] = []
    first_done, another_began = threading.Event(), threading.Event()
    began_beside_first: list[int] = []
    prepare = engine.prepare

    def prepare_together(group: list[Request]):
        calls.append(threading.current_thread().name)
        n = len(calls)
        if n == 1:
            another_began.wait(timeout=0.5)  # time for a second preparation to begin, were it allowed to
        elif not first_done.is_set():
            began_beside_first.append(n)
            another_began.set()
        if n in (2, 3):
            together.wait()
        try:
            return prepare(group)
        finally:
            if n == 1:
                first_done.set()

    engine.prepare = prepare_together  # type: ignore[method-assign]
    engine.processor_threads = 3
    assert engine.generate_ids(requests) == one_thread
    assert len(set(calls)) > 1
    assert began_beside_first == []
    assert engine.last_stats is not None and engine.last_stats.requests == len(requests)


def test_processor_threads_follow_the_host_cores():
    assert [processor_threads(cores) for cores in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]


class EagerGraph:
    """Stands in for a recorded CUDA graph on the CPU (no graphs there): a replay runs the step eagerly."""

    def __init__(self, slab: KvSlab, width: int, rows: int) -> None:
        self.slab, self.width, self.rows = slab, width, rows

    def replay(self) -> None:
        self.slab._forward(self.width, self.rows)


def record_eagerly(slab: KvSlab, width: int, rows: int) -> EagerGraph:
    """KvSlab._record on the CPU: leaves what a capture leaves (the step kept under its shape), computes nothing."""
    graph = EagerGraph(slab, width, rows)
    slab._graphs[(rows, width)] = graph  # type: ignore[assignment]
    slab._logits[(rows, width)] = torch.empty(0)
    return graph


def test_a_call_counts_the_steps_it_records_and_a_later_call_on_the_same_slab_records_none(
        make_settings, tiny_model_dir, monkeypatch):
    engine = TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                              batch_size=4, **BUDGET))
    prepared_in_time(monkeypatch)  # rows join at the same steps in each call, so they need the same step shapes
    requests = mixed_requests() + [Request("ocr", "Read.", [noise_image(k, (100 + 20 * k, 80))],
                                           max_new_tokens=3 + 2 * k) for k in range(4, 8)]
    eager = engine.generate_ids(requests)
    made = engine.last_stats
    assert made is not None
    assert (made.recorded, made.record_s) == (0, 0.0)  # a CPU slab records nothing
    assert made.slab_s > 0 and made.warm_up_s >= made.slab_s  # but this call made the bulk cache

    monkeypatch.setattr(KvSlab, "_record", record_eagerly)
    slab = engine._slab("bulk", engine.slots, max(engine.columns_bound(r) for r in requests))  # the call's slab
    slab.graphs_on = True
    assert engine.generate_ids(requests) == eager
    stats = engine.last_stats
    # Every step shape the call needed was recorded by it, the tail's fewer rows included, and counted once.
    assert stats.recorded == len(slab._graphs) > 0
    assert any(rows < slab.rows for rows, _ in slab._graphs)
    assert stats.record_s > 0
    assert stats.slab_s == 0.0  # the first call's cache, kept
    assert stats.warm_up_s == pytest.approx(stats.record_s + stats.prefill_warm_up_s)
    # One prefill group per refill group of rows (4 rows // 8: one row a group), every request in one of them.
    assert stats.group_rows == [1] * len(requests)
    assert len(stats.group_s) == len(requests) and sum(stats.group_s) <= stats.prefill_s
    assert 0 < stats.tail_s

    assert engine.generate_ids(requests) == eager
    again = engine.last_stats
    assert again is not stats and (again.recorded, again.record_s, again.slab_s) == (0, 0.0, 0.0)
    assert len(slab._graphs) == stats.recorded


def test_prefill_warm_up_is_the_first_groups_time_beyond_a_later_groups_for_as_many_rows():
    # Later groups: 0.75 s for 24 rows, so 0.5 s for the first group's 16: 2.5 s of it was one-time work.
    stats = DecodeStats(group_s=[3.0, 0.5, 0.25], group_rows=[16, 16, 8], record_s=1.5, slab_s=0.25)
    assert stats.prefill_warm_up_s == pytest.approx(2.5)
    assert stats.warm_up_s == pytest.approx(4.25)
    assert DecodeStats(group_s=[0.4, 0.5], group_rows=[16, 16]).prefill_warm_up_s == 0.0  # a warm first group
    assert DecodeStats(group_s=[3.0], group_rows=[16]).prefill_warm_up_s == 0.0  # nothing to compare with
