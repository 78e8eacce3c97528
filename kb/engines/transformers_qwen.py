"""The in-process engine: Qwen3-VL (2B/4B/8B Instruct, or a local folder) through transformers 5.x.

Bulk generation is continuous batching (`generate_ids`): a running batch of `slots` rows decodes greedily, and
rows that finish (end of turn, token cap, loop guard) are replaced by waiting requests, whose processor work is
prepared on a CPU thread while the GPU decodes. Video frames keep their true `<t seconds>` stamps. Streaming
answers use transformers' own `generate()` (one row, optionally a static cache).
"""
from __future__ import annotations

import importlib.util
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kb.config import VISUAL_TOKEN_PIXELS, Settings
from kb.engines import DEFAULT_BATCH, gpu_rows
from kb.engines.guard import repeating_tail, trim_repetition
from kb.errors import ConfigError, EngineError
from kb.hub import hub_reachable
from kb.types import Request, VideoClip

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# nf4 quantizes the language model only: the vision tower and the output head stay in bf16 (they are small and
# lose the most accuracy when quantized). Names are module-path fragments of Qwen3VLForConditionalGeneration.
NF4_SKIP_MODULES = ["visual", "lm_head"]
TEMPORAL_PATCH = 2  # Qwen3-VL merges every 2 consecutive video frames into one temporal patch
MIN_VIDEO_FRAME_PIXELS = 4 * VISUAL_TOKEN_PIXELS  # floor per frame: tiny frames are upscaled to at least this
# Decode steps between two looks from the host (end of turn, loop guard, refilling finished rows): the tokens of a
# chunk come back in one device-to-host copy instead of one per step. A finished row idles at most this long.
DECODE_CHUNK = 16
# New rows join in groups of slots // REFILL_GROUPS: big enough for an efficient prefill, small enough that few
# rows sit finished while they wait for company.
REFILL_GROUPS = 8


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


def resolve_device(setting: str) -> str:
    """`auto` -> cuda when a GPU is present, else cpu; an explicit cuda device must exist."""
    if setting == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {setting!r} asked for, but torch sees no CUDA GPU",
                          "set KB_DEVICE=auto (or cpu), or install a CUDA build of torch")
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[setting]


def device_label(device: str) -> str:
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def nf4_config(device: str):
    """BitsAndBytes 4-bit settings, or a ConfigError saying what is missing."""
    if not device.startswith("cuda"):
        raise ConfigError("quant 'nf4' needs a CUDA GPU (bitsandbytes 4-bit runs on GPU only)",
                          "run on a machine with an NVIDIA GPU, or set KB_QUANT=none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("quant 'nf4' needs the bitsandbytes package",
                          "pip install bitsandbytes, or set KB_QUANT=none")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                              llm_int8_skip_modules=NF4_SKIP_MODULES)


def load_error(model: str, err: Exception) -> EngineError:
    """What went wrong loading `model` (a local folder or a hub id) and how to get it."""
    fallback = "or set KB_ENGINE=ocr to read documents without a model"
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model:
        if not Path(model).expanduser().is_dir():
            return EngineError(f"model folder {model} does not exist",
                               f"point KB_MODEL to a folder holding a Qwen3-VL model (config.json, *.safetensors) "
                               f"or to a hub id like Qwen/Qwen3-VL-4B-Instruct; {fallback}")
        return EngineError(f"cannot load the model in {model}: {err}",
                           f"check that the folder holds a complete Qwen3-VL model; {fallback}")
    return EngineError(f"cannot load model {model}: {err}",
                       f"download it first with `hf download {model}` (huggingface_hub's CLI), or point KB_MODEL "
                       f"to a local folder with the model; {fallback}")


def build_messages(request: Request) -> list[dict]:
    """Chat messages: system, prior turns, then the user turn with its images, video and prompt."""
    messages = []
    if request.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
    for role, text in request.history:
        messages.append({"role": role, "content": [{"type": "text", "text": text}]})
    content: list[dict] = [{"type": "image"} for _ in request.images]
    if request.video is not None:
        content.append({"type": "video"})
    content.append({"type": "text", "text": request.prompt})
    messages.append({"role": "user", "content": content})
    return messages


def even_clip(clip: VideoClip) -> VideoClip:
    """Pad an odd frame count by repeating the last frame (and its index).

    Qwen3-VL encodes frames in pairs (temporal patch 2) and stamps each pair with the mean time of its two
    frames; a lone last frame has no partner, and a one-frame clip is refused by the resizer. Repeating the
    last frame is what the reference pipeline does, and it keeps the stamp of that pair at the frame's true time.
    """
    if len(clip.frames) % TEMPORAL_PATCH == 0:
        return clip
    return VideoClip(frames=clip.frames + clip.frames[-1:], frame_indices=clip.frame_indices + clip.frame_indices[-1:],
                     fps=clip.fps, total_frames=clip.total_frames)


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
            if generated >= limit or tail[-1] in self.eos_ids or repeating_tail(tail, self.ngram, self.repeats):
                self.stopped_at[row] = generated
        done = [stop is not None for stop in self.stopped_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def row_ids(self, row: int, new_tokens: list[int]) -> list[int]:
        """The tokens row `row` really generated: cut where it stopped and at its limit, end-of-turn dropped."""
        stop = self.stopped_at[row]
        ids = new_tokens[:stop if stop is not None else len(new_tokens)][:self.limits[row]]
        return ids[:-1] if ids and ids[-1] in self.eos_ids else ids


class TransformersEngine:
    name = "transformers"
    can_caption = True
    generative = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = settings.model
        self._device = resolve_device(settings.device)
        self.device = device_label(self._device)
        quant = nf4_config(self._device) if settings.quant == "nf4" else None
        self._net, self.processor = self._load(resolve_dtype(settings.dtype, self._device), quant)
        self.tokenizer = self.processor.tokenizer
        # Left padding keeps every prompt's last token at the end of the batch, where generation continues.
        self.tokenizer.padding_side = "left"
        eos = self._net.generation_config.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [self.tokenizer.eos_token_id])
        self._lock = threading.Lock()  # one generate() at a time on the shared model (Streamlit runs threads)
        # Every streamed answer is generated on this one thread: a static cache's compiled decode step (CUDA graphs)
        # belongs to the thread that recorded it, so a stream from any other thread would fail.
        self._stream_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-stream")
        # Measured once: free memory later depends on what the caching allocator keeps.
        self._free_after_load = torch.cuda.mem_get_info(self._device)[0] if self._device.startswith("cuda") else 0
        self.last_stats: DecodeStats | None = None

    def _load(self, dtype: torch.dtype, quant):
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        kwargs = {"dtype": dtype, "attn_implementation": "sdpa"}
        if quant is not None:
            kwargs["quantization_config"] = quant
        if self._device != "cpu":
            kwargs["device_map"] = self._device
        # Cached or local weights load without the network; a download is tried only when the hub answers,
        # so an offline machine fails in seconds instead of after minutes of retries.
        local_only = Path(self.model).exists() or not hub_reachable()
        try:
            model = Qwen3VLForConditionalGeneration.from_pretrained(self.model, local_files_only=local_only, **kwargs)
            processor = AutoProcessor.from_pretrained(self.model, local_files_only=local_only)
        except (OSError, ValueError) as err:
            raise load_error(self.model, err) from err
        # The language model only: the vision tower has no padding mask and keeps plain sdpa.
        model.config.text_config._attn_implementation = GROUPED_ATTENTION
        return model.eval(), processor

    def _chat_text(self, request: Request) -> str:
        text = self.processor.apply_chat_template(build_messages(request), tokenize=False, add_generation_prompt=True)
        # The chat template wraps a video as <vision_start><video_pad><vision_end>, and transformers 5.x expands
        # only the pad into "<t seconds><vision_start>…<vision_end>" per frame pair, nesting the markers. The model
        # was trained on the flat layout (Qwen's processor replaced the whole wrapper): leave just the pad.
        p = self.processor
        return text.replace(p.vision_start_token + p.video_token + p.vision_end_token, p.video_token)

    def build_inputs(self, requests: Sequence[Request]):
        """Processor output for a batch (left-padded tensors on the model's device), with every key generate needs."""
        return self.cpu_inputs(requests).to(self._net.device)

    def cpu_inputs(self, requests: Sequence[Request]):
        """Processor output for a batch, left-padded, still on the CPU (built on a worker thread while decoding)."""
        texts = [self._chat_text(r) for r in requests]
        images = [img.convert("RGB") for r in requests for img in r.images]
        clips = [even_clip(r.video) for r in requests if r.video is not None]
        s = self.settings
        kwargs: dict = {"images_kwargs": {"size": {"shortest_edge": s.image_min_pixels,
                                                   "longest_edge": s.image_max_pixels}}}
        if clips:
            from transformers.video_utils import VideoMetadata

            # Frames are already sampled: the metadata carries their absolute indices, so the stamps are true times.
            # The budget is per frame (max_video_tokens); the total cap only guards against absurd clip lengths.
            kwargs["videos_kwargs"] = {
                "do_sample_frames": False, "cap_pixels_per_frame": True,
                "max_video_tokens": max(1, s.video_max_pixels // VISUAL_TOKEN_PIXELS),
                "size": {"shortest_edge": min(MIN_VIDEO_FRAME_PIXELS, s.video_max_pixels),
                         "longest_edge": s.video_max_pixels * max(len(c.frames) for c in clips)},
                "video_metadata": [VideoMetadata(total_num_frames=c.total_frames, fps=c.fps,
                                                 frames_indices=list(c.frame_indices)) for c in clips]}
        inputs = self.processor(text=texts, images=images or None,
                                videos=[[f.convert("RGB") for f in c.frames] for c in clips] or None,
                                padding=True, return_tensors="pt", **kwargs)
        return inputs

    def _generate_kwargs(self, requests: Sequence[Request]) -> tuple[dict, RowStop]:
        inputs = self.build_inputs(requests)
        limits = [r.max_new_tokens for r in requests]
        stop = RowStop(inputs["input_ids"].shape[1], limits, self.eos_ids)
        # Greedy: OCR must be reproducible. No repetition_penalty: it corrupts tables (| and - must repeat).
        kwargs = dict(**inputs, max_new_tokens=max(limits), do_sample=False, temperature=None, top_p=None,
                      top_k=None, stopping_criteria=StoppingCriteriaList([stop]),
                      pad_token_id=self.tokenizer.pad_token_id)
        if self.settings.generation_cache == "static" and self._device != "cpu":
            kwargs["cache_implementation"] = "static"
        if len(requests) == 1 and requests[0].temperature > 0:  # an answer with the user's sampling settings
            kwargs.update(do_sample=True, temperature=requests[0].temperature, top_p=requests[0].top_p)
        return kwargs, stop

    @property
    def slots(self) -> int:
        """Rows decoded at once: KB_BATCH_SIZE, or on a GPU what its free memory held after loading, else 8."""
        if self.settings.batch_size or not self._device.startswith("cuda"):
            return self.settings.batch_size or DEFAULT_BATCH
        return gpu_rows(self.settings, self._free_after_load, self.kv_bytes_per_token())

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token of one row takes (keys and values of every layer)."""
        text = self._net.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * self._net.dtype.itemsize

    def generate_ids(self, requests: Sequence[Request]) -> list[list[int]]:
        """Generated token ids per request, in order: continuous batching over `slots` rows (see `_Refill`)."""
        if not requests:
            return []
        try:
            with self._lock, torch.inference_mode():
                run = _Refill(self, requests)
                ids = run.run()
        except torch.cuda.OutOfMemoryError as err:
            raise EngineError(f"GPU out of memory while decoding {self.slots} rows at once",
                              "lower KB_BATCH_SIZE or KB_IMAGE_MAX_PIXELS, or set KB_QUANT=nf4") from err
        self.last_stats = run.stats
        return ids

    def prepare(self, requests: Sequence[Request]) -> _Prepared:
        """CPU work for a group of new rows: processor output and each row's multimodal RoPE positions."""
        inputs = self.cpu_inputs(requests)
        mask = inputs["attention_mask"]
        if inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None:
            positions, deltas = self._net.model.get_rope_index(
                inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
                video_grid_thw=inputs.get("video_grid_thw"), attention_mask=mask)
        else:  # text only: plain positions, counted over the real (unpadded) tokens
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
            deltas = torch.zeros(mask.shape[0], 1, dtype=torch.long)
        widths = mask.sum(-1)
        # The first generated token sits right after the prompt, in the prompt's own RoPE frame.
        next_pos = widths + deltas[:, 0].to(widths.dtype)
        return _Prepared(inputs, positions, next_pos, widths.tolist())

    def decode(self, ids: list[int]) -> str:
        return trim_repetition(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(self, requests: Sequence[Request]) -> list[str]:
        return [self.decode(ids) for ids in self.generate_ids(requests)]

    def warm_up(self) -> float:
        """Generate a short answer once, so the first user does not wait for it: with KB_GENERATION_CACHE=static this
        compiles the decode step (1-2.5 min on a GPU). Seconds it took."""
        started = time.perf_counter()
        for _ in self.stream(Request(task="answer", prompt="Say hello.", max_new_tokens=8)):
            pass
        return time.perf_counter() - started

    def stream(self, request: Request) -> Iterator[str]:
        kwargs, stop = self._generate_kwargs([request])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    self._net.generate(**kwargs, streamer=streamer)
            except Exception as err:  # noqa: BLE001 - any failure is re-raised in the caller's thread below
                errors.append(err)
                streamer.end()

        worker = self._stream_thread.submit(run)
        try:
            yield from (piece for piece in streamer if piece)
        finally:  # also when the reader stops early: end generation instead of running to the token limit
            stop.cancelled = True
            worker.result()
        if errors:
            raise EngineError(f"generation failed: {errors[0]}",
                              "see the log; lower KB_IMAGE_MAX_PIXELS if the GPU ran out of memory") from errors[0]


@dataclass
class _Prepared:
    inputs: dict
    positions: torch.Tensor  # (3, rows, prompt length): the prompt's multimodal RoPE positions
    next_pos: torch.Tensor  # (rows,): RoPE position of each row's first generated token
    widths: list[int]  # real (unpadded) prompt tokens per row
    indices: list[int] = field(default_factory=list)  # which requests of the call these rows are


@dataclass
class DecodeStats:
    """What one `generate_ids` call did: the work kept against the work computed (for the benchmark)."""

    requests: int = 0
    tokens: int = 0  # generated tokens kept in the outputs
    row_steps: int = 0  # rows x forward positions computed for generation (prefill's first token included)
    steps: int = 0  # decode forward passes
    refills: int = 0  # times new rows were prefilled into the running batch
    prefill_s: float = 0.0
    wait_s: float = 0.0  # time the GPU loop waited for the processor thread

    @property
    def padding_share(self) -> float:
        """Share of computed row-steps that produced nothing kept (finished rows still in the batch)."""
        return 1.0 - self.tokens / self.row_steps if self.row_steps else 0.0


@dataclass
class _Row:
    index: int  # position in the call's requests
    limit: int
    width: int  # cache columns this row fills (prompt + tokens fed back), counted from the right
    tokens: list[int] = field(default_factory=list)
    done: bool = False


class _Refill:
    """Continuous batching for one `generate_ids` call.

    The running batch is a left-padded DynamicCache: every row's content is the last `width` columns. Decoding runs
    in chunks of at most DECODE_CHUNK steps with no host sync inside; after each chunk the tokens come back in one
    copy, rows stop at end of turn, their token cap or a loop (kept exactly to the same tokens a lone run gives), and
    finished rows are cut out of the cache while prepared groups of waiting requests are prefilled and spliced in
    (their padding trimmed to the widest row). Greedy: the same request gives the same ids alone or in any batch.
    """

    def __init__(self, engine: TransformersEngine, requests: Sequence[Request]) -> None:
        self.engine, self.net, self.requests = engine, engine._net, requests
        self.device = engine._net.device
        self.slots = max(1, engine.slots)
        self.group = max(1, self.slots // REFILL_GROUPS)
        self.eos = torch.tensor(engine.eos_ids, device=self.device)
        config = self.net.generation_config
        self.min_new = int(getattr(config, "min_new_tokens", 0) or 0)
        suppress = list(getattr(config, "suppress_tokens", None) or [])
        self.suppress = torch.tensor(suppress, device=self.device) if suppress else None
        self.stats = DecodeStats(requests=len(requests))
        self.results: list[list[int] | None] = [None] * len(requests)
        self.rows: list[_Row] = []
        self.cache = None
        self.mask = self.pos = self.last = self.count = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-processor")
        self.waiting: deque[int] = deque(range(len(requests)))
        self.prepared: deque[Future] = deque()

    # ---- CPU side: processor work prepared ahead ------------------------------------------------------
    def _prepare_ahead(self, rows_wanted: int) -> None:
        """Keep enough groups in preparation to fill `rows_wanted` free rows plus one group more."""
        queued = sum(len(f.indices) for f in self.prepared)
        while self.waiting and queued < rows_wanted + self.group:
            take = [self.waiting.popleft() for _ in range(min(self.group, len(self.waiting)))]
            future = self.pool.submit(self._prepare, take)
            future.indices = take
            self.prepared.append(future)
            queued += len(take)

    def _prepare(self, indices: list[int]) -> _Prepared:
        prepared = self.engine.prepare([self.requests[i] for i in indices])
        prepared.indices = indices
        return prepared

    # ---- the loop -----------------------------------------------------------------------------------------
    def run(self) -> list[list[int]]:
        try:
            self._prepare_ahead(self.slots)
            while self.rows or self.prepared:
                self._refill()
                if self.rows:
                    self._decode_chunk()
                    self._drop_finished()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return [ids or [] for ids in self.results]

    def _refill(self) -> None:
        live = sum(not r.done for r in self.rows)
        free = self.slots - live
        groups: list[_Prepared] = []
        while self.prepared and len(self.prepared[0].indices) <= free:
            # A due refill waits for the processor thread (normally a group ahead, so no wait): the batch a request
            # lands in then never depends on timing, and time spent waiting shows in stats.wait_s.
            started = time.perf_counter()
            groups.append(self.prepared.popleft().result())
            self.stats.wait_s += time.perf_counter() - started
            free -= len(groups[-1].indices)
            self._prepare_ahead(free)
        if groups:
            started = time.perf_counter()
            for prepared in groups:
                self._splice(*self._prefill(prepared))
            self.stats.refills += 1
            self.stats.prefill_s += time.perf_counter() - started

    def _prefill(self, prepared: _Prepared):
        inputs = {k: v.to(self.device) for k, v in prepared.inputs.items()}
        out = self.net(**inputs, position_ids=prepared.positions.to(self.device), use_cache=True, logits_to_keep=1)
        count = torch.zeros(len(prepared.indices), dtype=torch.long, device=self.device)
        first = self._pick(out.logits[:, -1], count)
        rows = [_Row(index=i, limit=self.requests[i].max_new_tokens, width=w)
                for i, w in zip(prepared.indices, prepared.widths)]
        self.stats.row_steps += len(rows)
        # The first token comes back at once (one small copy per group): rows capped at one token end here.
        for row, token in zip(rows, first.tolist()):
            self._accept(row, [token])
        return rows, out.past_key_values, inputs["attention_mask"], prepared.next_pos.to(self.device), first, count + 1

    def _pick(self, logits: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Greedy choice, honouring the generation config's suppressed tokens and minimum length."""
        if self.suppress is not None:
            logits[:, self.suppress] = float("-inf")
        if self.min_new:
            young = (count < self.min_new)[:, None] & torch.isin(torch.arange(logits.shape[-1], device=logits.device),
                                                                 self.eos)[None]
            logits = logits.masked_fill(young, float("-inf"))
        return logits.argmax(-1)

    def _decode_chunk(self) -> None:
        live = [r for r in self.rows if not r.done]
        if not live:
            return
        steps = min(DECODE_CHUNK, min(r.limit - len(r.tokens) for r in live))
        produced = []
        batch = len(self.rows)
        ones = torch.ones(batch, 1, dtype=self.mask.dtype, device=self.device)
        for _ in range(steps):
            self.mask = torch.cat([self.mask, ones], dim=1)
            out = self.net(input_ids=self.last[:, None], attention_mask=self.mask,
                           position_ids=self.pos.view(1, -1, 1).expand(3, -1, -1), past_key_values=self.cache,
                           use_cache=True, logits_to_keep=1)
            self.last = self._pick(out.logits[:, -1], self.count)
            self.pos, self.count = self.pos + 1, self.count + 1
            produced.append(self.last)
        for row in self.rows:
            row.width += steps
        self.stats.steps += steps
        self.stats.row_steps += batch * steps
        for row, new in zip(self.rows, torch.stack(produced, dim=1).tolist()):
            if not row.done:
                self._accept(row, new)

    def _accept(self, row: _Row, new: list[int]) -> None:
        """Add a row's new tokens up to where it stops: end of turn (dropped), its cap, or a loop (kept)."""
        eos = self.engine.eos_ids
        for token in new:
            if token in eos and len(row.tokens) >= self.min_new:
                row.done = True
                break
            row.tokens.append(token)
            if len(row.tokens) >= row.limit or repeating_tail(row.tokens):
                row.done = True
                break
        if row.done:
            self.results[row.index] = row.tokens
            self.stats.tokens += len(row.tokens)

    # ---- the cache: cut finished rows, splice new ones --------------------------------------------------------
    def _drop_finished(self) -> None:
        """Cut finished rows out now when no refill will (no work left): the batch shrinks instead of idling."""
        keep = [n for n, r in enumerate(self.rows) if not r.done]
        if len(keep) == len(self.rows) or (keep and self.prepared):
            return  # the next refill splices new rows in and drops the finished ones in the same copy
        if not keep:
            self.rows, self.cache = [], None
            return
        self._reshape([(self.rows, self.cache, self.mask, keep)], [self.pos, self.last, self.count], keep)

    def _splice(self, rows, cache, mask, pos, last, count) -> None:
        if self.cache is None or not self.rows:
            self._reshape([(rows, cache, mask, None)], None, None, new=(rows, pos, last, count))
            return
        keep = [n for n, r in enumerate(self.rows) if not r.done]
        self._reshape([(self.rows, self.cache, self.mask, keep), (rows, cache, mask, None)],
                      [self.pos, self.last, self.count], keep, new=(rows, pos, last, count))

    def _reshape(self, parts, state, keep, new=None) -> None:
        """One cache of the given parts' rows, right-aligned, trimmed to the widest row (one copy per layer)."""
        picked = []
        for rows, cache, mask, index in parts:
            chosen = rows if index is None else [rows[n] for n in index]
            picked.append((chosen, cache, mask, None if index is None else torch.tensor(index, device=self.device)))
        width = max(r.width for chosen, *_ in picked for r in chosen)

        def fit(tensor: torch.Tensor, index, seq_dim: int) -> torch.Tensor:
            if index is not None:
                tensor = tensor.index_select(0, index)
            length = tensor.shape[seq_dim]
            if length >= width:
                return tensor.narrow(seq_dim, length - width, width)
            pad = [0, 0] * (tensor.dim() - 1 - seq_dim) + [width - length, 0]
            return F.pad(tensor, pad)

        target = picked[0][1]
        for n, layer in enumerate(target.layers):
            keys = [fit(c.layers[n].keys, i, 2) for _, c, _, i in picked]
            values = [fit(c.layers[n].values, i, 2) for _, c, _, i in picked]
            layer.keys = keys[0] if len(keys) == 1 else torch.cat(keys)
            layer.values = values[0] if len(values) == 1 else torch.cat(values)
        self.mask = torch.cat([fit(m, i, 1) for _, _, m, i in picked])
        self.cache = target
        tensors = []
        if state is not None:
            index = torch.tensor(keep, device=self.device)
            tensors.append([t.index_select(0, index) for t in state])
        if new is not None:
            tensors.append(list(new[1:]))
        self.pos, self.last, self.count = (torch.cat(ts) for ts in zip(*tensors))
        self.rows = [r for chosen, *_ in picked for r in chosen]
