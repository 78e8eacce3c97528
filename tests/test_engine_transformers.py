"""The in-process Qwen3-VL engine, run for real on the tiny random-weight model (CPU, float32).

The tiny model's text is noise, so these tests check plumbing: token limits, batch order and left padding,
video timestamps, the loop guard, streaming and the errors a user sees.
"""
from __future__ import annotations

import threading

import pytest
import torch

from bench.engine_gpu import RowStop
from kb.engines import Engine, cuda_available
from kb.engines import transformers_qwen as tq
from kb.engines.guard import repeating_tail
from kb.engines.transformers_qwen import TransformersEngine
from kb.errors import ConfigError, EngineError
from kb.types import Request, VideoClip
from tests.engine_inputs import BUDGET, noise_image, prepared_in_time


@pytest.fixture
def engine(make_settings, tiny_model_dir) -> TransformersEngine:
    return TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu", **BUDGET))


def clip(indices: list[int], fps: float = 30.0, size: tuple[int, int] = (160, 120)) -> VideoClip:
    frames = [noise_image(i, size) for i in range(len(indices))]
    return VideoClip(frames=frames, frame_indices=indices, fps=fps, total_frames=10_000)


def three_requests() -> list[Request]:
    """Different images, prompts and limits; the last is text only (a question with no picture)."""
    return [Request(task="ocr", prompt="Read this page.", images=[noise_image(0, (120, 100))], max_new_tokens=5),
            Request(task="caption", prompt="What is in this picture? Answer in one long sentence.",
                    images=[noise_image(1, (200, 90))], max_new_tokens=17),
            Request(task="answer", prompt="x", system="Be brief.", max_new_tokens=30)]


def test_engine_describes_itself(engine):
    assert isinstance(engine, Engine)
    assert (engine.name, engine.device, engine.can_caption, engine.generative) == ("transformers", "cpu", True, True)
    assert next(engine._net.parameters()).dtype == torch.float32  # dtype auto on CPU


def test_batch_keeps_order_limits_and_matches_single_runs(engine):
    requests = three_requests()
    batched = engine.generate_ids(requests)
    assert len(batched) == 3
    for request, ids in zip(requests, batched):
        assert 0 < len(ids) <= request.max_new_tokens
    # Left padding must not change what greedy decoding produces: each row equals its request run alone.
    alone = [engine.generate_ids([r])[0] for r in requests]
    assert batched == alone
    texts = engine.generate(requests)
    assert texts == [engine.decode(ids) for ids in alone]


def test_batches_larger_than_batch_size_are_split_in_order(make_settings, tiny_model_dir, engine):
    small = TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                             batch_size=2, **BUDGET))
    requests = three_requests()
    assert small.generate_ids(requests) == engine.generate_ids(requests)


def test_pixel_budgets_bound_visual_tokens(engine):
    big, small = noise_image(1, (800, 600)), noise_image(2, (40, 40))
    inputs = engine.build_inputs([Request(task="caption", prompt="?", images=[big, small])])
    tokens = (inputs["image_grid_thw"].prod(-1) // 4).tolist()
    assert tokens[0] <= 16 and tokens[1] >= 4
    video = engine.build_inputs([Request(task="video", prompt="?", video=clip([0, 30], size=(640, 480)))])
    _, h, w = video["video_grid_thw"][0].tolist()
    assert h * w // 4 <= 16


def prompt_text(engine: TransformersEngine, request: Request) -> str:
    ids = engine.build_inputs([request])["input_ids"][0]
    return engine.tokenizer.decode(ids).replace(engine.processor.video_token, "")


def test_video_prompt_carries_true_timestamps(engine):
    text = prompt_text(engine, Request(task="video", prompt="Describe.", video=clip([3000, 3015, 3030, 3045])))
    # Qwen3-VL stamps each pair of frames with their mean time: (100.0+100.5)/2 and (101.0+101.5)/2.
    assert "<100.2 seconds><|vision_start|><|vision_end|><101.2 seconds><|vision_start|><|vision_end|>" in text
    assert text.count(" seconds>") == 2
    assert "<0.0 seconds>" not in text


def test_odd_frame_count_is_padded_and_generates(engine):
    request = Request(task="video", prompt="Describe.", video=clip([3000, 3015, 3030]), max_new_tokens=4)
    text = prompt_text(engine, request)
    # The last frame is repeated, so the last pair is stamped at that frame's own time (101.0 s).
    assert "<100.2 seconds>" in text and "<101.0 seconds>" in text and text.count(" seconds>") == 2
    assert len(engine.generate_ids([request])[0]) <= 4
    assert isinstance(engine.generate([request])[0], str)


def test_a_windows_cache_columns_bound_its_prompt_closely(engine):
    """The bulk cache is sized from `columns_bound`: never below what a window's prompt and answer take (or the
    window fails), and not twice it (frames go in pairs), which would halve the rows a GPU decodes at once."""
    for frames in (1, 3, 4, 10):
        request = Request(task="video", prompt="Describe.", max_new_tokens=40,
                          video=clip(list(range(0, 15 * frames, 15)), size=(640, 480)))
        needed = engine.build_inputs([request])["input_ids"].shape[1] + request.max_new_tokens + tq.DECODE_CHUNK
        bound = engine.columns_bound(request)
        assert needed <= bound <= needed + tq.TEMPLATE_TOKENS + 16 * ((frames + 1) // 2), frames


def test_row_stop_is_per_row():
    prompt_len = 5
    loop = list(range(100, 112)) * 4  # a 12-token line repeated 4 times
    varied = list(range(200, 248))
    ids = torch.tensor([[1] * prompt_len + loop, [1] * prompt_len + varied])
    stop = RowStop(prompt_len, limits=[500, 500], eos_ids=[7])
    assert stop(ids, None).tolist() == [True, False]
    assert stop.row_ids(0, loop + [0, 0]) == loop  # the padding added after the row stopped is cut away
    limited = RowStop(prompt_len, limits=[500, 48], eos_ids=[7])
    assert limited(ids, None).tolist() == [True, True]  # row 1 reached its own limit
    eos = RowStop(prompt_len, limits=[500, 500], eos_ids=[7])
    assert eos(torch.tensor([[1] * prompt_len + [3, 7], [1] * prompt_len + [3, 4]]), None).tolist() == [True, False]
    assert eos.row_ids(0, [3, 7, 0]) == [3]


def test_looping_row_stops_early_while_its_batch_mate_runs_to_its_limit(engine):
    # The tiny model repeats one token, a loop the guard cuts after 12 x 4 tokens instead of running to 200.
    looping = Request(task="ocr", prompt="Read.", images=[noise_image(5, (96, 96))], max_new_tokens=200)
    short = Request(task="ocr", prompt="Read this too.", images=[noise_image(6, (96, 96))], max_new_tokens=7)
    long_ids, short_ids = engine.generate_ids([looping, short])
    assert repeating_tail(long_ids) and len(long_ids) < 200
    assert len(short_ids) == 7


def test_stream_pieces_add_up_to_generate(engine):
    request = Request(task="answer", prompt="Question?", images=[noise_image(3, (100, 80))], max_new_tokens=20,
                      system="You answer.", history=[("user", "Hi"), ("assistant", "Hello")])
    pieces = list(engine.stream(request))
    assert pieces and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == engine.generate([request])[0]


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_nf4_without_gpu_is_a_config_error(make_settings, tiny_model_dir, device):
    if device == "auto" and cuda_available():
        pytest.skip("a CUDA GPU is present: auto picks it")
    settings = make_settings(engine="transformers", model=str(tiny_model_dir), quant="nf4", device=device)
    with pytest.raises(ConfigError) as err:
        TransformersEngine(settings)
    assert "KB_QUANT=none" in err.value.fix


@pytest.mark.parametrize("missing", ["folder", "Qwen/Qwen3-VL-0B-Missing"])
def test_missing_model_is_an_engine_error_naming_it(make_settings, tmp_path, missing):
    model = str(tmp_path / "no-such-model") if missing == "folder" else missing
    with pytest.raises(EngineError) as err:
        TransformersEngine(make_settings(engine="transformers", model=model, device="cpu"))
    assert model in str(err.value)
    assert "KB_MODEL" in err.value.fix and "KB_ENGINE=ocr" in err.value.fix
    if missing != "folder":  # a hub id can be fetched ahead of time; a folder path cannot
        assert f"hf download {model}" in err.value.fix


def test_refilled_batch_gives_each_request_its_lone_output(make_settings, tiny_model_dir, engine, monkeypatch):
    # Two rows decode at once; the long row keeps running while finished short rows are replaced by waiting ones.
    two = TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                           batch_size=2, **BUDGET))
    prepared_in_time(monkeypatch)
    requests = [Request(task="ocr", prompt="Read.", images=[noise_image(5, (96, 96))], max_new_tokens=200)]
    requests += [Request(task="ocr", prompt=f"Read page {n}.", images=[noise_image(10 + n, (64 + 16 * n, 80))],
                         max_new_tokens=3 + n) for n in range(5)]
    requests += [Request(task="answer", prompt="Short question?", max_new_tokens=6),
                 Request(task="video", prompt="Describe.", video=clip([3000, 3015, 3030, 3045]), max_new_tokens=5)]
    refilled = two.generate_ids(requests)
    stats = two.last_stats
    assert refilled == [engine.generate_ids([r])[0] for r in requests]
    assert [len(ids) for ids in refilled[1:]] == [3, 4, 5, 6, 7, 6, 5]  # each short row ran to its own cap
    # Finished rows were replaced while the long row decoded: almost no row-step was spent on a finished row
    # (one generate() per batch of two would idle the short partner of the long row for ~40 steps).
    assert stats.refills >= 5
    assert stats.tokens == sum(len(ids) for ids in refilled)
    assert stats.padding_share < 0.15, stats


def test_gpu_rows_fill_free_memory_unless_batch_size_is_set(make_settings):
    from kb.engines import MAX_GPU_ROWS, gpu_rows

    kv_4b = 2 * 36 * 8 * 128 * 2  # Qwen3-VL-4B in bf16: 147 kB per token
    settings = make_settings()
    assert gpu_rows(settings, 130 * 2**30, kv_4b) == MAX_GPU_ROWS  # an H200 after loading the 4B model
    assert 10 <= gpu_rows(settings, 14 * 2**30, kv_4b) <= 20  # a 24 GB card
    assert gpu_rows(make_settings(batch_size=24), 130 * 2**30, kv_4b) == 24


def test_ingest_hands_the_engine_more_units_than_it_decodes_at_once(make_settings, tiny_model_dir):
    from kb.engines import UNITS_PER_ROW, batch_size_for

    settings = make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu", batch_size=3)
    small = TransformersEngine(settings)
    assert small.slots == 3
    assert batch_size_for(settings, small) == 3 * UNITS_PER_ROW


def test_streams_from_any_thread_generate_on_one_thread(engine):
    # A static cache's compiled decode step belongs to the thread that recorded it: the app streams from many
    # threads, so every stream (and the warm-up at start) must generate on the engine's one stream thread.
    import threading

    used = set()
    forward = engine._prompt_forward  # every answer's prompt runs through it

    def recording(*args, **kwargs):
        used.add(threading.get_ident())
        return forward(*args, **kwargs)

    engine._prompt_forward = recording
    assert engine.warm_up() > 0
    request = Request(task="answer", prompt="Question?", max_new_tokens=6)
    texts = []
    readers = [threading.Thread(target=lambda: texts.append("".join(engine.stream(request)))) for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert len(used) == 1 and threading.get_ident() not in used
    assert texts == [engine.generate([request])[0]] * 2


def test_sampled_answer_streams_within_its_limit_and_greedy_ones_repeat(engine):
    # temperature > 0 draws each token from the top_p head of the distribution; 0 decodes greedily (reproducible).
    sampled = Request(task="answer", prompt="Tell me something.", max_new_tokens=12, temperature=1.5, top_p=0.9)
    ids = list(engine._answer_tokens(sampled, threading.Event()))
    assert 0 < len(ids) <= 12
    greedy = Request(task="answer", prompt="Tell me something.", max_new_tokens=12)
    assert "".join(engine.stream(greedy)) == "".join(engine.stream(greedy)) == engine.generate([greedy])[0]


def test_bulk_cache_is_kept_between_calls_and_remade_for_longer_requests(make_settings, tiny_model_dir):
    two = TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                           batch_size=2, **BUDGET))
    short = [Request(task="answer", prompt="Short?", max_new_tokens=4)] * 3
    first = two.generate_ids(short)
    slab = two._slabs["bulk"]
    assert two.generate_ids(short) == first and two._slabs["bulk"] is slab  # same cache, same output
    long = Request(task="answer", prompt="Long?", max_new_tokens=slab.length + 10)
    assert len(two.generate_ids([long])[0]) <= long.max_new_tokens  # a longer request gets a longer cache
    assert two._slabs["bulk"].length >= slab.length + 10


@pytest.mark.parametrize("quant", ["none", "fp8"])
def test_slab_decoding_matches_the_models_own_forward(make_settings, tiny_model_dir, quant, monkeypatch):
    # The decode step over the KV slab reimplements a decoder layer for one token per row: its logits must be the
    # model's own (transformers' forward with its cache), for rows of different prompt lengths decoded together;
    # with fp8 weights, the model's own forward runs its Fp8Linear modules one projection at a time.
    from kb.engines.fp8_weights import Fp8Linear, quantize_weight
    from kb.engines.kv_slab import width_for

    monkeypatch.setattr(tq, "check_fp8_weights", lambda device: None)  # fp8 on the CPU: slow, but the same path
    fresh = TransformersEngine(make_settings(engine="transformers", model=str(tiny_model_dir), device="cpu",
                                             batch_size=2, quant=quant, **BUDGET))
    torch.manual_seed(0)
    for weight in fresh._net.parameters():  # larger random weights: logits that depend on every input
        weight.data.normal_(0, 0.3)
    for module in fresh._net.modules():
        if isinstance(module, Fp8Linear):
            module.weight, module.scale = quantize_weight(torch.randn(module.out_features, module.in_features) * 0.3)
    requests = three_requests()[:2]
    feed = torch.randint(0, 200, (2, 4))
    with torch.inference_mode():
        slab = fresh._slab("bulk", 2, max(fresh.columns_bound(r) for r in requests))
        prepared = fresh.prepare(requests)
        fresh.prefill(prepared, slab, [0, 1])
        stepped = []
        for n in range(4):
            slab.tokens.copy_(feed[:, n])
            slab.step(width_for(max(prepared.widths) + n + 1, slab.length))
            stepped.append(slab.logits.clone())
        for row, request in enumerate(requests):
            alone = fresh.prepare([request])
            out = fresh._net(**alone.inputs, position_ids=alone.positions, use_cache=True)
            cache, mask = out.past_key_values, alone.inputs["attention_mask"]
            for n in range(4):
                mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
                out = fresh._net(input_ids=feed[row:row + 1, n:n + 1], attention_mask=mask, cache=cache,
                                 position_ids=(alone.next_pos + n).view(1, 1, 1).expand(3, 1, 1), use_cache=True)
                cache = out.past_key_values
                assert torch.allclose(out.logits[0, -1], stepped[n][row], atol=1e-4), (row, n)
