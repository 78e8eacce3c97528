"""Pipelined bulk calls of the transformers engine (`TransformersEngine.submit`, kb/engines/transformers_qwen.py
`_BulkLoop`): a batch handed over while another decodes joins its rows as they free, in one decode loop, and
each batch comes back as soon as its own rows are done, with the ids it gets alone. Tiny random Qwen3-VL, CPU."""
from __future__ import annotations

import gc
import threading
import time
import weakref
from concurrent.futures import Future

import pytest
import torch

from kb.engines import transformers_qwen
from kb.engines.kv_slab import KvSlab, layer_in, layer_out
from kb.engines.transformers_qwen import DECODE_CHUNK, DecodeStats, TransformersEngine, _Refill
from kb.errors import EngineError
from kb.types import Request
from tests.engine_inputs import BUDGET, noise_image, prepared_in_time


@pytest.fixture
def two_rows(make_settings, tiny_model_dir) -> TransformersEngine:
    return TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                            batch_size=2, **BUDGET))


def page(seed: int, tokens: int, prompt: str = "Read this page.") -> Request:
    return Request(task="ocr", prompt=prompt, images=[noise_image(seed, (64 + 8 * seed, 80))], max_new_tokens=tokens)


def handed_over_together(engine: TransformersEngine, *batches: list[Request]) -> list[Future[list[str]]]:
    """Submit the batches while the engine lock is held, so the loop starts only once all are queued: which loop
    a batch joins then does not depend on timing."""
    with engine._lock:
        return [engine.submit(batch) for batch in batches]


def test_a_second_batch_joins_the_rows_of_the_first_and_comes_back_first_when_it_is_done(two_rows, monkeypatch):
    prepared_in_time(monkeypatch)
    first = [page(1, 4), page(2, 30)]  # the long page keeps decoding after the short one frees its row
    second = [page(3, 5), page(4, 3)]
    alone = [two_rows.generate([r])[0] for r in first + second]
    returned: list[str] = []
    futures = handed_over_together(two_rows, first, second)
    for name, future in zip(("first", "second"), futures):
        future.add_done_callback(lambda _, name=name: returned.append(name))
    assert futures[0].result(timeout=60) + futures[1].result(timeout=60) == alone
    stats = two_rows.last_stats
    assert stats is not None and stats.calls == 2 and stats.requests == 4  # one loop decoded both batches
    assert stats.joined_live == 2, stats  # both pages of the second batch took rows beside the long page
    assert returned == ["second", "first"]  # the second batch did not wait for the first one's long page
    assert stats.tokens == 4 + 30 + 5 + 3


def test_one_batch_alone_is_one_loop_as_generate_was(two_rows):
    requests = [page(n, 3 + n) for n in range(1, 5)]
    ids = two_rows.generate_ids(requests)
    stats = two_rows.last_stats
    assert [len(i) for i in ids] == [4, 5, 6, 7]
    assert stats is not None and stats.calls == 1 and stats.joined_live == 0 and stats.requests == 4


def test_a_batch_that_fails_fails_alone_and_the_others_come_back(two_rows, monkeypatch):
    requests = [[page(1, 6)], [page(2, 4, prompt="BROKEN page."), page(5, 4)], [page(3, 5)]]
    alone = [two_rows.generate([r])[0] for r in (requests[0][0], requests[2][0])]
    prepare = TransformersEngine.prepare

    def failing(engine, batch):
        if any(r.prompt.startswith("BROKEN") for r in batch):
            raise EngineError("the processor failed on a page", "see the log")
        return prepare(engine, batch)

    monkeypatch.setattr(TransformersEngine, "prepare", failing)
    futures = handed_over_together(two_rows, *requests)
    assert futures[0].result(timeout=60) == alone[:1]
    with pytest.raises(EngineError, match="processor failed"):
        futures[1].result(timeout=60)
    assert futures[2].result(timeout=60) == alone[1:]
    assert two_rows.generate_ids([page(4, 3)])  # the loop still runs


def test_rows_go_on_decoding_while_a_batch_handed_over_is_still_prepared(two_rows, monkeypatch):
    """A batch whose pictures are still being prepared (a video's windows as it is sampled) does not stop the rows
    already decoding: they finish and come back meanwhile, and it joins once ready, with the ids it gets alone."""
    decoding, joining = [page(1, 20)], [page(2, 5)]
    alone = [two_rows.generate([r])[0] for r in decoding + joining]
    ready = threading.Event()
    prepare = TransformersEngine.prepare

    def slow(engine, batch):
        if batch[0] is joining[0]:
            assert ready.wait(timeout=60)
        return prepare(engine, batch)

    monkeypatch.setattr(TransformersEngine, "prepare", slow)
    futures = handed_over_together(two_rows, decoding, joining)
    try:
        assert futures[0].result(timeout=60) == alone[:1]
        assert not futures[1].done()
    finally:
        ready.set()
    assert futures[1].result(timeout=60) == alone[1:]
    stats = two_rows.last_stats
    assert stats is not None and stats.calls == 2  # one loop: it went on decoding, then took the late batch in


def test_a_batch_longer_than_the_cache_waits_for_the_loop_to_drain_and_gets_a_larger_one(two_rows):
    short = [page(1, 4), page(2, 6)]
    alone = [two_rows.generate([r])[0] for r in short]
    length = two_rows._slabs["bulk"].length
    long = [Request(task="answer", prompt="Long?", max_new_tokens=length + 10)]
    futures = handed_over_together(two_rows, short, long)
    assert futures[0].result(timeout=60) == alone
    assert futures[1].result(timeout=60)
    stats = two_rows.last_stats
    assert stats is not None and stats.calls == 1 and stats.requests == 1  # a loop of its own, after the first
    assert two_rows._slabs["bulk"].length >= length + 10


def ask(engine: TransformersEngine, question: Request, seen: dict) -> None:
    """Ask `question` on a thread of its own (its text lands in seen["answer"], the thread in seen["asker"]), and
    return once it waits for the engine."""
    asker = threading.Thread(target=lambda: seen.setdefault("answer", "".join(engine.stream(question))))
    seen["asker"] = asker
    asker.start()
    for _ in range(1000):
        if engine._answers.any():
            break
        time.sleep(0.01)


def test_an_answer_goes_between_two_chunks_of_the_rows_decoding_and_the_loop_goes_on(two_rows, monkeypatch):
    """A question asked while bulk rows decode does not wait for them to end: the loop lets the engine go after
    the chunk of steps it is in, the answer runs, and the loop goes on where it was, with the same ids; a batch
    handed over while the question waited joins that loop after the answer."""
    question = Request(task="answer", prompt="What is in the pump room?", max_new_tokens=5)
    first_pages, later = [page(1, 30), page(2, 3)], [page(3, 4)]
    alone = [two_rows.generate([r])[0] for r in first_pages + later]
    answer_alone = "".join(two_rows.stream(question))
    events: list[str] = []
    seen: dict[str, object] = {}
    real_chunk, real_tokens = _Refill._decode_chunk, TransformersEngine._answer_tokens

    def first_chunk_asks(run):
        if not seen:  # while the first batch decodes: a question comes, then another batch
            ask(two_rows, question, seen)
            seen["later"] = two_rows.submit(later)
        real_chunk(run)

    def answer_tokens(engine, request, cancelled):
        yield from real_tokens(engine, request, cancelled)
        events.append("answered")  # under the engine lock: before the loop can take it back

    loops: list[DecodeStats] = []
    real_run = _Refill.run

    def run(refill, first):
        loops.append(refill.stats)  # filled in as the loop runs
        real_run(refill, first)

    monkeypatch.setattr(_Refill, "_decode_chunk", first_chunk_asks)
    monkeypatch.setattr(TransformersEngine, "_answer_tokens", answer_tokens)
    monkeypatch.setattr(_Refill, "run", run)
    first = two_rows.submit(first_pages)  # 30 steps: two chunks of 16, the question comes in the first
    first.add_done_callback(lambda _: events.append("first batch"))
    assert first.result(timeout=60) + seen["later"].result(timeout=60) == alone
    seen["asker"].join(60)
    assert seen["answer"] == answer_alone
    assert events == ["answered", "first batch"]  # the 30-token page was still decoding when the answer came
    # One loop: it paused for the answer, then took in the batch handed over while the question waited.
    assert [(loop.calls, loop.requests) for loop in loops] == [(2, 3)]
    assert loops[0].answers_s > 0


def test_an_answer_goes_between_two_prefill_groups_of_a_refill(two_rows, monkeypatch):
    """A loop's refill loads its groups one after another (a wave of 128 rows took ~5 s on an H200): a question
    that comes while the first group loads goes before the second, not after the whole wave and a chunk."""
    question = Request(task="answer", prompt="What is in the pump room?", max_new_tokens=3)
    pages = [page(1, 6), page(2, 6)]  # two rows of one group each: one refill of two groups
    alone = [two_rows.generate([r])[0] for r in pages]
    events: list[str] = []
    seen: dict[str, object] = {}
    real_load, real_tokens = _Refill._load, TransformersEngine._answer_tokens

    def load_then_ask(run, batch, prepared, taken):
        real_load(run, batch, prepared, taken)
        events.append("group loaded")
        if not seen:
            ask(two_rows, question, seen)

    def answer_tokens(engine, request, cancelled):
        yield from real_tokens(engine, request, cancelled)
        events.append("answered")

    monkeypatch.setattr(_Refill, "_load", load_then_ask)
    monkeypatch.setattr(TransformersEngine, "_answer_tokens", answer_tokens)
    assert two_rows.submit(pages).result(timeout=60) == alone
    seen["asker"].join(60)
    assert seen["answer"]
    assert events == ["group loaded", "answered", "group loaded"]


def test_a_cancelled_batch_leaves_the_loop_and_the_batch_beside_it_comes_back(two_rows, monkeypatch):
    """A caller that cancels its batch (a run cut short: a job cancelled, Ctrl-C) stops its rows after the chunk
    they are in and drops its waiting requests, instead of decoding pages nobody will read; a batch handed over
    beside it still comes back, with the ids it gets alone."""
    long_pages, other = [page(1, 200), page(2, 200), page(5, 200)], [page(3, 5)]  # two rows: one long page waits
    alone = two_rows.generate(other)
    handed: dict[str, object] = {}
    ready = threading.Event()
    real_chunk = _Refill._decode_chunk

    def first_chunk_then_cancel(run):
        real_chunk(run)
        if "cancelled" not in handed:
            ready.wait(60)
            handed["cancelled"] = handed["long"].cancel()

    monkeypatch.setattr(_Refill, "_decode_chunk", first_chunk_then_cancel)
    handed["long"], handed["other"] = handed_over_together(two_rows, long_pages, other)
    ready.set()
    assert handed["other"].result(timeout=60) == alone
    assert handed["cancelled"] is True and handed["long"].cancelled()
    stats = two_rows.last_stats
    assert stats is not None and stats.requests == 4
    # One chunk of the long pages, then the short page's own steps: not the 200 the long pages asked for.
    assert stats.steps < DECODE_CHUNK + 10, stats


@pytest.mark.parametrize("where", ["_decode_chunk", "run"])
def test_a_failure_of_the_loop_itself_fails_its_batches_and_the_next_call_runs(two_rows, monkeypatch, where):
    """A decode step that fails (shared by every row) fails each batch of the loop, and one that fails before a
    batch joined (recording the steps) fails that batch: no caller waits forever, and the engine goes on."""
    real = getattr(_Refill, where)
    failed: list[bool] = []

    def once(*args):
        if not failed:
            failed.append(True)
            raise RuntimeError("the decode step failed")
        return real(*args)

    monkeypatch.setattr(_Refill, where, once)
    futures = handed_over_together(two_rows, [page(1, 6)], [page(2, 4)])
    for future in futures if where == "_decode_chunk" else futures[:1]:
        with pytest.raises(RuntimeError, match="decode step failed"):
            future.result(timeout=60)
    assert len(futures[1].result(timeout=60) if where == "run" else two_rows.generate([page(2, 4)])) == 1


def test_a_loop_that_runs_out_of_gpu_memory_gives_its_cache_back_and_the_next_call_makes_its_own(two_rows,
                                                                                                monkeypatch):
    """A cache too large for the GPU (an engine's warm-up makes it for full pages) is not kept for every later call
    to fail on: the failed loop lets go of it, the caller is told what to lower, and the next call runs."""
    page_one, page_two = page(1, 3), page(2, 4)
    alone = two_rows.generate_ids([page_two])
    made = weakref.ref(two_rows._slabs["bulk"])
    real = _Refill._decode_chunk

    def out_of_memory(run):
        monkeypatch.setattr(_Refill, "_decode_chunk", real)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.88 GiB")

    monkeypatch.setattr(_Refill, "_decode_chunk", out_of_memory)
    with pytest.raises(EngineError, match="out of memory while decoding 2 rows") as failed:
        two_rows.generate_ids([page_one])
    assert "KB_BATCH_SIZE" in failed.value.fix
    gc.collect()
    assert "bulk" not in two_rows._slabs and made() is None  # its memory is free, not held by the error
    assert two_rows.generate_ids([page_two]) == alone


def test_a_cache_too_large_to_make_lets_go_of_what_it_had_made(two_rows, monkeypatch):
    """The warm-up makes the bulk cache for full pages; where that does not fit, the layers made before the GPU ran
    out must not stay held by the error (the warm-up's future keeps it), or every later call runs out of memory."""
    made: list[weakref.ref[torch.Tensor]] = []

    def part_made(*args, **kwargs):
        layers = [torch.empty(1 << 20)]
        made.append(weakref.ref(layers[0]))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.88 GiB")

    monkeypatch.setattr(transformers_qwen, "KvSlab", part_made)
    with pytest.raises(torch.cuda.OutOfMemoryError) as failed:
        two_rows._warm_bulk(video=False)
    kept = failed.value  # as the warm-up's future keeps it
    gc.collect()
    assert made and made[0]() is None and kept.__traceback__ is not None
    assert "bulk" not in two_rows._slabs
    monkeypatch.undo()
    assert len(two_rows.generate_ids([page(1, 3)])[0]) == 3


def test_the_tail_steps_only_its_live_rows_and_a_compiled_step_never_a_single_row(make_settings, tiny_model_dir,
                                                                                    monkeypatch):
    """As rows finish, the loop steps fewer of them (halving the slab's rows). Where the step is compiled (a GPU),
    not one alone: torch.compile compiles a step of one row anew (a size of 1 is specialised), seconds on a GPU to
    save nothing. Each page still gets the ids it gets alone."""
    engine = TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                              batch_size=4, **BUDGET))
    requests = [page(n, tokens) for n, tokens in enumerate((3, 20, 37, 70))]
    alone = [engine.generate_ids([request])[0] for request in requests]
    assert len(alone[3]) > len(alone[2]) + 16  # the last page decodes chunks on its own
    stepped: list[int] = []
    step = KvSlab.step
    monkeypatch.setattr(KvSlab, "step", lambda self, width, rows=0: stepped.append(rows) or step(self, width, rows))
    assert engine.generate_ids(requests) == alone
    assert stepped[0] == 4 and stepped[-1] == 1  # an eager step (the CPU): down to the one row left
    made = KvSlab.__init__

    def compiled(self: KvSlab, *args: object, **kwargs: object) -> None:
        made(self, *args, **kwargs)
        self._compiled = (layer_in, layer_out)  # as on a GPU; the CPU's step still runs eagerly

    monkeypatch.setattr(KvSlab, "__init__", compiled)
    engine._slabs.clear()
    stepped.clear()
    assert engine.generate_ids(requests) == alone
    assert stepped[0] == 4 and 2 in stepped and 1 not in stepped  # a compiled step: 2 rows at the fewest
