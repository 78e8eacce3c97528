"""The in-process engine: Qwen3-VL (2B/4B/8B Instruct, or a local folder) through transformers 5.x.

Prompts (pictures, video, multimodal RoPE) go through the model's vision tower and its decoder layers packed;
decoding runs over a preallocated KV
cache (kb/engines/kv_slab.py), whose step is recorded once per cache width as a CUDA graph on a GPU. Bulk
generation is continuous batching (`generate_ids`): `slots` rows decode greedily, and rows that finish (end of
turn, token cap, loop guard) are replaced in place by waiting requests, whose processor work is prepared on CPU
threads while the GPU decodes. A batch handed over while another decodes (`submit`) joins the same loop, which
runs on a thread of its own (`_BulkLoop`). A group's prompts are prefilled packed, with no padding (`prefill`).
Answers stream from a one-row cache. Video frames keep their true `<t seconds>` stamps.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import TextIteratorStreamer

from kb import prompts
from kb.config import VISUAL_TOKEN_PIXELS, Settings
from kb.embed import user_cache_dir
from kb.engines import DEFAULT_BATCH, gpu_rows
from kb.engines.fp8_weights import check_fp8_weights, quantize_language_model
from kb.engines.guard import repeating_tail, trim_repetition
from kb.engines.kv_slab import (
    KvSlab,
    LayerWeights,
    layer_in,
    layer_out,
    plain_weights,
    rms,
    rotate_half,
    turn,
    width_for,
)
from kb.errors import ConfigError, EngineError
from kb.hub import hub_reachable
from kb.types import Request, VideoClip

log = logging.getLogger(__name__)
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
# Rows' worth of groups prepared beyond the free rows, as a share of the slab's rows. Rows that end together (video
# windows at their token cap) free a whole wave at once; with one group ahead the wave waited for the processor
# threads to prepare the rest (~3 s a wave for 128 windows on the 16-core H200 host: 10.5 s of a 57 s engine call,
# docs/benchmarks.md). With half the rows ahead the hour of video still waited 8.8-9.8 s (run L): the other half of
# each wave is prepared only once the wave ends, though a wave decodes for ~16 s and its 128 windows take the
# processor threads ~10 s. So a whole wave ahead: ~2 GB of pictures on the GPU and ~4 GB on the host at 128 rows
# (not yet measured on the GPU).
PREPARED_AHEAD = 1.0
# Waits for a prepared group longer than this are listed with when they happened (DecodeStats.long_waits).
LONG_WAIT_S = 0.05
# A loop's first group is prepared alone: the GPU waits for it and for nothing else, and groups prepared beside it
# share the host's cores and the GIL with it (the hour of video's loops waited 1.30-1.62 s for a first group
# prepared beside three others: docs/benchmarks.md, run S; alone 0.72-0.83 s, and its prefill ~0.5 s shorter, run T).
# The others start as soon as it is ready, while it runs (its rows decode meanwhile: 7-12 % padding on the hour).
FIRST_GROUP_ALONE = True
TEMPLATE_TOKENS = 64  # chat template around a request's own text (role markers, vision markers)
# Cache columns of the answer slab made at start: a long question with its retrieved passages and the answer.
ANSWER_COLUMNS = 8192
# In a process that answers (the app), the bulk cache is given back after this long without bulk decoding: calls
# of one ingest job follow each other closely and keep it. Remaking it costs ~6 s on an H200 (4.2 s to allocate the
# 68 GB, 0.8-1.6 s to record its steps; docs/benchmarks.md, "Decode step on GPU"), while holding it idle keeps half
# the card from the embedder, the answers' pictures and any other process.
BULK_IDLE_S = 30.0
# Processor threads of a bulk call: on the CPU a page's or a video window's pixel values take 0.1-0.35 CPU-s (resize,
# patch reshape, normalisation: torch CPU ops, which release the GIL), so one thread cannot keep a GPU fed with video
# windows; with that work on the GPU (PIXELS_ON_GPU) a window still takes ~40 CPU-ms to decode its frames. A quarter
# of the host's cores, at least one (the cores are shared with the picture loaders and the decode loop), at most
# PROCESSOR_THREADS_MAX. 8 threads on the 16-core H200 host were no better than 4 for an hour of video (processor
# waits 11.8 against 9.8 s, 126.3 against 125.9 s end to end: docs/benchmarks.md, run L).
PROCESSOR_THREADS_MAX = 4
# The processor's pixel work (resize, normalisation, patch layout) on the GPU where the engine runs on one: a video
# window's ~0.2 CPU-s becomes ~10 ms (docs/benchmarks.md, run N). False: on the CPU (bench.processor_gpu compares).
PIXELS_ON_GPU = True
# The warm-up request of a bulk ingest (`prepare_to_ingest`): blank pages, a few tokens each. Two of them, so that
# no size the compiled prefill sees is 1 (torch.compile specialises on 0 and 1 and would compile again for the
# real call's groups).
WARM_UP_PAGES = 2
WARM_UP_TOKENS = 4


def processor_threads(cores: int | None = None) -> int:
    """Threads that prepare a bulk call's requests (processor work) at once, from the host's cores."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(PROCESSOR_THREADS_MAX, cores // 4))


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


def nf4_config(device: str) -> Any:
    """BitsAndBytes 4-bit settings, or a ConfigError saying what is missing."""
    if not device.startswith("cuda"):
        raise ConfigError("quant 'nf4' needs a CUDA GPU (bitsandbytes 4-bit runs on GPU only)",
                          "run on a machine with an NVIDIA GPU, or set KB_QUANT=none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("quant 'nf4' needs the bitsandbytes package",
                          "pip install bitsandbytes, or set KB_QUANT=none")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
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


def build_messages(request: Request) -> list[dict[str, Any]]:
    """Chat messages: system, prior turns, then the user turn with its images, video and prompt."""
    messages = []
    if request.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
    for role, text in request.history:
        messages.append({"role": role, "content": [{"type": "text", "text": text}]})
    content: list[dict[str, Any]] = [{"type": "image"} for _ in request.images]
    if request.video is not None:
        content.append({"type": "video"})
    content.append({"type": "text", "text": request.prompt})
    messages.append({"role": "user", "content": content})
    return messages


def patch_embed_as_matmul(embed: Any) -> None:
    """Run the vision tower's patch embedding as the matrix product it is. Its Conv3d has kernel == stride (one
    non-overlapping 2x16x16 patch per output), which cuDNN runs as a slow generic convolution on some GPU and
    dtype combinations (transformers #45750; vLLM and SGLang make it a Linear); same weights, same result."""
    proj = embed.proj

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        weight = proj.weight.view(proj.out_channels, -1)
        return F.linear(hidden_states.reshape(-1, weight.shape[1]).to(weight.dtype), weight, proj.bias)

    embed.forward = forward


def speed_up_vision(net: Any, compiled: bool) -> None:
    """The vision tower as the serving engines run it: patches through one matrix product, and each block's work
    around attention as two fused (compiled, on a GPU) functions of its weights (`vision_in`, `vision_out`): in
    transformers' block, the LayerNorms, the RoPE in float32, GELU and the residual adds were about 110 of the
    270 ms the tower took for 16 pages on an H200. Attention stays torch's (cuDNN's fused kernel there: faster than
    one varlen flash-attention call over all the pictures, 89 vs 116 ms for 16 pages), one call per run of
    pictures of the same size, as one batch (`_PictureBounds`)."""
    visual = net.model.visual
    patch_embed_as_matmul(visual.patch_embed)
    if visual.config.hidden_act != "gelu_pytorch_tanh":
        return  # another activation: the blocks keep transformers' forward
    into, out_of = Compiled(vision_in, compiled), Compiled(vision_out, compiled)
    bounds = _PictureBounds()
    for block in visual.blocks:
        block.forward = _vision_block(block, into, out_of, bounds)


class Compiled:
    """A plain function of tensors compiled once with symbolic sizes (one copy for every layer and size), or
    plain; it runs plain from the first time compiling fails (logged), as the decode step does."""

    def __init__(self, function: Callable[..., Any], compiled: bool) -> None:
        self.plain = function
        self.function = torch.compile(function, dynamic=True) if compiled else function

    def __call__(self, *args: Any) -> Any:
        try:
            return self.function(*args)
        except Exception as err:  # noqa: BLE001 - the compiler failed: the same function uncompiled
            if self.function is self.plain:
                raise
            log.warning("compiling %s failed, it runs uncompiled: %s", self.plain.__name__, err)
            self.function = self.plain
            return self.plain(*args)


class _PictureBounds:
    """How the vision tower's packed patches split into the pieces each attended within itself (a picture; a
    video's frame pairs, one piece a pair), as runs of consecutive pieces of one length (`equal_runs`). Read to the
    host once per forward (the tower hands the same tensor to all its blocks), not once per block."""

    def __init__(self) -> None:
        self._last: tuple[torch.Tensor, list[tuple[int, int, int]]] | None = None

    def __call__(self, cu_seqlens: torch.Tensor) -> list[tuple[int, int, int]]:
        if self._last is None or self._last[0] is not cu_seqlens:
            self._last = (cu_seqlens, equal_runs(cu_seqlens.tolist()))
        return self._last[1]


def equal_runs(edges: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive pieces of one length, from the pieces' edges: (first patch, patches a piece, pieces) each.

    A group of 16 video windows of 10 frames is 80 frame pairs of one size: one attention call over a batch of 80
    instead of 80 calls a block, each too small to fill the GPU and each paying the call's host time (24 blocks:
    1,920 calls a group). Pages of one size (a scanned document's) batch the same way."""
    runs: list[tuple[int, int, int]] = []
    for begin, end in zip(edges, edges[1:]):
        if runs and runs[-1][1] == end - begin:
            first, length, pieces = runs[-1]
            runs[-1] = (first, length, pieces + 1)
        else:
            runs.append((begin, end - begin, 1))
    return runs


def _vision_block(block: Any, into: Compiled, out_of: Compiled, bounds: _PictureBounds) -> Callable[..., Any]:
    """A Qwen3-VL vision block's forward over its own weights (same arguments as transformers' forward)."""
    attn, mlp = block.attn, block.mlp
    heads, eps = int(attn.num_heads), float(block.norm1.eps)

    def forward(hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        cos, sin = position_embeddings
        query, key, value = into(hidden_states, cos, sin, block.norm1.weight, block.norm1.bias, attn.qkv.weight,
                                 attn.qkv.bias, heads, eps)
        parts = []
        for first, length, pieces in bounds(cu_seqlens):
            # (pieces, heads, length, head_dim): each piece a batch entry, attended within itself
            q, k, v = (t[first:first + length * pieces].view(pieces, length, heads, -1).transpose(1, 2)
                       for t in (query, key, value))
            attended_run = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
            parts.append(attended_run.transpose(1, 2).reshape(length * pieces, heads, -1))
        attended = torch.cat(parts)
        out: torch.Tensor = out_of(hidden_states, attended.reshape(hidden_states.shape[0], -1), attn.proj.weight,
                                   attn.proj.bias, block.norm2.weight, block.norm2.bias, mlp.linear_fc1.weight,
                                   mlp.linear_fc1.bias, mlp.linear_fc2.weight, mlp.linear_fc2.bias, eps)
        return out

    return forward


def vision_in(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm_weight: torch.Tensor,
              norm_bias: torch.Tensor, qkv: torch.Tensor, qkv_bias: torch.Tensor, heads: int, eps: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A vision block up to attention: LayerNorm, the qkv projection, 2-D RoPE on query and key in float32 (as
    the model does). x (patches, hidden); returns query, key, value (patches, heads, head_dim)."""
    patches = x.shape[0]
    normed = F.layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps)
    query, key, value = F.linear(normed, qkv, qkv_bias).view(patches, 3, heads, -1).unbind(1)
    cos, sin = cos[:, None].float(), sin[:, None].float()
    turned = [(t.float() * cos + rotate_half(t.float()) * sin).to(x.dtype) for t in (query, key)]
    return turned[0], turned[1], value


def vision_out(x: torch.Tensor, attended: torch.Tensor, proj: torch.Tensor, proj_bias: torch.Tensor,
               norm_weight: torch.Tensor, norm_bias: torch.Tensor, fc1: torch.Tensor, fc1_bias: torch.Tensor,
               fc2: torch.Tensor, fc2_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """A vision block after attention: output projection, residual, LayerNorm, the GELU (tanh) MLP, residual."""
    x = x + F.linear(attended, proj, proj_bias)
    normed = F.layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps)
    return x + F.linear(F.gelu(F.linear(normed, fc1, fc1_bias), approximate="tanh"), fc2, fc2_bias)


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


def frames_tensor(clip: VideoClip) -> torch.Tensor:
    """A clip's frames as one (frames, 3, height, width) uint8 tensor, what the video processor stacks them into:
    made (and kept frames' JPEGs decoded) before the processor runs, outside the lock its GPU part holds."""
    return torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in clip.frames])).permute(0, 3, 1, 2)


def pack(inputs: Any, positions: torch.Tensor, config: Any) -> _Packed:
    """A left-padded processor batch as its prompts one after another with no padding (on the CPU)."""
    mask = inputs["attention_mask"].bool()
    rows, longest = mask.shape
    ids = inputs["input_ids"][mask]
    widths = mask.sum(-1)
    bounds = F.pad(widths.cumsum(0), (1, 0)).to(torch.int32)
    pictures = []
    for pixels_key, grid_key, token in (("pixel_values", "image_grid_thw", config.image_token_id),
                                        ("pixel_values_videos", "video_grid_thw", config.video_token_id)):
        if inputs.get(pixels_key) is not None:
            index = (ids == token).nonzero()[:, 0]
            pictures.append((inputs[pixels_key], inputs[grid_key], index))
    return _Packed(ids=ids, positions=positions[:, mask], bounds=bounds, longest=longest,
                   last=bounds[1:].long() - 1, columns=torch.arange(rows * longest).view(rows, longest)[mask],
                   pictures=pictures)


@dataclass
class _Packed:
    """A group's prompts one after another, no padding: what `TransformersEngine.prefill` runs."""

    ids: torch.Tensor  # (tokens,)
    positions: torch.Tensor  # (3, tokens): multimodal RoPE positions
    bounds: torch.Tensor  # (rows + 1,) int32: where each prompt begins, then the end
    longest: int  # tokens of the longest prompt
    last: torch.Tensor  # (rows,): each prompt's last token
    columns: torch.Tensor  # (tokens,): each token's place in a left-padded (rows x longest) layout
    pictures: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # pixel values, grid_thw, their tokens' places

    def to(self, device: torch.device, pixel_dtype: torch.dtype) -> _Packed:
        return _Packed(ids=self.ids.to(device), positions=self.positions.to(device), bounds=self.bounds.to(device),
                       longest=self.longest, last=self.last.to(device), columns=self.columns.to(device),
                       pictures=[(pixels.to(device).to(pixel_dtype), grid.to(device), index.to(device))
                                 for pixels, grid, index in self.pictures])

    def tensors(self) -> list[torch.Tensor]:
        return [self.ids, self.positions, self.bounds, self.last, self.columns,
                *(t for picture in self.pictures for t in picture)]


class _PromptCache:
    """A prefilled group's keys and values per layer, left-padded (rows, kv heads, longest, head_dim), the layout
    `KvSlab.load` copies from (as transformers' cache after a padded batch)."""

    def __init__(self, packed: _Packed) -> None:
        self.packed = packed
        self.rows = packed.bounds.shape[0] - 1
        self.layers: list[_PromptCache.Layer] = []

    @dataclass
    class Layer:
        keys: torch.Tensor
        values: torch.Tensor

    def add(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.layers.append(_PromptCache.Layer(self._padded(key), self._padded(value)))

    def _padded(self, packed: torch.Tensor) -> torch.Tensor:
        tokens, heads, dim = packed.shape
        # Zeros in the padding: it is never copied, but a whole-tensor reduction (an fp8 scale) must not meet NaN.
        padded = packed.new_zeros(self.rows * self.packed.longest, heads, dim)
        padded[self.packed.columns] = packed
        return padded.view(self.rows, self.packed.longest, heads, dim).transpose(1, 2)


class _FlashVarlen:
    """Whether torch's varlen flash-attention op (private: `aten._flash_attention_forward`) worked here so far."""

    usable = True


_flash_varlen = _FlashVarlen()


def prompt_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packed: _Packed,
                     scaling: float) -> torch.Tensor:
    """Causal attention of packed prompts, each within itself: query (tokens, heads, head_dim), key and value
    (tokens, kv heads, head_dim; grouped-query). On a GPU in half precision one varlen flash-attention call (no
    padding, no mask: blocks above the diagonal are skipped); elsewhere torch's attention prompt by prompt."""
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and _flash_varlen.usable:
        query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
        try:
            out: torch.Tensor = torch.ops.aten._flash_attention_forward(
                query, key, value, packed.bounds, packed.bounds, packed.longest, packed.longest, 0.0, True, False,
                scale=scaling)[0]
            return out
        except (RuntimeError, TypeError) as err:  # a private op: another torch may change or lack it
            _flash_varlen.usable = False
            log.warning("varlen flash attention is not usable here, prompts are attended one by one: %s", err)
    bounds = packed.bounds.tolist()
    q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # (heads, tokens, head_dim)
    parts = [F.scaled_dot_product_attention(q[:, a:b], k[:, a:b], v[:, a:b], is_causal=True, scale=scaling,
                                            enable_gqa=True).transpose(0, 1) for a, b in zip(bounds, bounds[1:])]
    return torch.cat(parts)


def module_layer_in(layer: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`layer_in` through a layer's own modules (a quantized projection): turned query and key, and value."""
    attn, tokens = layer.self_attn, hidden.shape[0]
    norm = layer.input_layernorm
    x = rms(hidden, norm.weight, norm.variance_epsilon)
    query = rms(attn.q_proj(x).view(tokens, -1, head_dim), attn.q_norm.weight, attn.q_norm.variance_epsilon)
    key = rms(attn.k_proj(x).view(tokens, -1, head_dim), attn.k_norm.weight, attn.k_norm.variance_epsilon)
    return turn(query, key, cos, sin) + (attn.v_proj(x).view(tokens, -1, head_dim),)


class TransformersEngine:
    name = "transformers"
    can_caption = True
    generative = True
    server_batched = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.picture_pixels = settings.image_max_pixels  # pictures are scaled to this budget before it reads them
        self.model = settings.model
        self._device = resolve_device(settings.device)
        self.device = device_label(self._device)
        if self._device.startswith("cuda"):
            keep_compile_caches()
        quant = nf4_config(self._device) if settings.quant == "nf4" else None
        if settings.quant == "fp8":
            check_fp8_weights(self._device)
        self._net, self.processor = self._load(resolve_dtype(settings.dtype, self._device), quant)
        if settings.quant == "fp8":
            saved = quantize_language_model(self._net.model.language_model)
            log.info("fp8 weights: the language model's projections take %.1f GB less", saved / 1e9)
            if self._device.startswith("cuda"):
                torch.cuda.empty_cache()  # the bf16 weights' memory back to the card: the KV slab is sized from it
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
        self._slabs: dict[str, KvSlab] = {}  # "bulk" and "answer" caches, kept with their recorded steps
        self._first_logits: torch.Tensor | None = None  # the last prefill's logits (answers sample from them)
        # Set by `prepare_to_answer` (a process that answers: the app): the bulk cache is then given back when bulk
        # decoding idles; a command-line ingest keeps it from one call to the next.
        self._answering = False
        self._bulk_calls = 0  # bulk decode loops so far: an idle release checks that none came since
        self._answers = _Waiting()  # answers waiting for the lock (`_answer_lock`)
        self._bulk = _BulkLoop(self)  # the one decode loop bulk calls join (`generate_ids`, `submit`)
        self._texts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-texts")  # `submit`'s ids to texts
        # Held while a bulk decode step is recorded (a CUDA graph capture, which another thread's GPU allocations or
        # launches break): the ingest's embedder and speech engine take it while bulk batches decode beside them.
        self.recording = threading.Lock()
        # Held by a processor thread while it copies a prepared group to the GPU, and by every recording of a decode
        # step: an answer may record while the processor threads of a bulk loop paused for it still prepare.
        self._copying = threading.Lock()
        self.processor_threads = processor_threads()  # threads preparing a bulk call's requests (`_Refill`)
        # Where processor threads copy prepared groups to the GPU (beside the stream that decodes).
        self._copy_stream: torch.cuda.Stream | None = None
        if self._device.startswith("cuda"):
            self._copy_stream = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
        self._weights: tuple[list[LayerWeights] | None] | None = None  # the prefill's layer weights
        self._compiled_layers: tuple[Any, Any] | None = None

    def _load(self, dtype: torch.dtype, quant: Any) -> tuple[Any, Any]:
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
            model: Any = Qwen3VLForConditionalGeneration.from_pretrained(
                self.model, local_files_only=local_only, **kwargs)  # type: ignore[arg-type]
            processor: Any = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                self.model, local_files_only=local_only)
        except (OSError, ValueError) as err:
            raise load_error(self.model, err) from err
        speed_up_vision(model, compiled=self._device.startswith("cuda"))
        return model.eval(), processor

    def _chat_text(self, request: Request) -> str:
        text = self.processor.apply_chat_template(build_messages(request), tokenize=False, add_generation_prompt=True)
        # The chat template wraps a video as <vision_start><video_pad><vision_end>, and transformers 5.x expands
        # only the pad into "<t seconds><vision_start>…<vision_end>" per frame pair, nesting the markers. The model
        # was trained on the flat layout (Qwen's processor replaced the whole wrapper): leave just the pad.
        p = self.processor
        return str(text).replace(p.vision_start_token + p.video_token + p.vision_end_token, p.video_token)

    def build_inputs(self, requests: Sequence[Request]) -> Any:
        """Processor output for a batch (left-padded tensors on the model's device), with every key generate needs."""
        return self.processor_inputs(requests).to(self._net.device)

    def processor_inputs(self, requests: Sequence[Request], on_gpu: bool = False) -> Any:
        """Processor output for a batch, left-padded, token ids on the CPU. `on_gpu` (a GPU engine's processor
        threads): the processor's pixel work (resize, normalisation, patch layout) runs on the copy stream beside
        decoding, and the pixel values stay there, in the vision tower's dtype; a video window's took a processor
        thread ~0.2 CPU-s on the CPU against ~10 ms this way (docs/benchmarks.md, run N). That part holds `_copying`,
        as every recording of a decode step does (a CUDA graph capture does not survive another thread's launches),
        so the pictures are decoded and stacked before it, on the calling thread, and the threads do that at once."""
        texts = [self._chat_text(r) for r in requests]
        images = [img.convert("RGB") for r in requests for img in r.images]
        clips = [even_clip(r.video) for r in requests if r.video is not None]
        videos = [frames_tensor(c) for c in clips]
        device = self._device if on_gpu else "cpu"

        def process() -> Any:
            return self.processor(text=texts, images=images or None, videos=videos or None, padding=True,
                                  return_tensors="pt", **self._processor_kwargs(clips, device))

        if not on_gpu:
            return process()
        assert self._copy_stream is not None
        with self._copying, torch.cuda.stream(self._copy_stream):
            inputs = process()
            for key in ("pixel_values", "pixel_values_videos"):
                if inputs.get(key) is not None:
                    inputs[key] = inputs[key].to(self._net.model.visual.dtype)
            self._copy_stream.synchronize()
        return inputs

    def _processor_kwargs(self, clips: list[VideoClip], device: str) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {"images_kwargs": {"size": {"shortest_edge": s.image_min_pixels,
                                                            "longest_edge": s.image_max_pixels}, "device": device}}
        if clips:
            from transformers.video_utils import VideoMetadata

            # Frames are already sampled: the metadata carries their absolute indices, so the stamps are true times.
            # The budget is per frame (max_video_tokens); the total cap only guards against absurd clip lengths.
            kwargs["videos_kwargs"] = {
                "do_sample_frames": False, "cap_pixels_per_frame": True, "device": device,
                "input_data_format": "channels_first",
                "max_video_tokens": max(1, s.video_max_pixels // VISUAL_TOKEN_PIXELS),
                "size": {"shortest_edge": min(MIN_VIDEO_FRAME_PIXELS, s.video_max_pixels),
                         "longest_edge": s.video_max_pixels * max(len(c.frames) for c in clips)},
                "video_metadata": [VideoMetadata(total_num_frames=c.total_frames, fps=c.fps,
                                                 frames_indices=list(c.frame_indices)) for c in clips]}
        return kwargs

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
        return int(2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * self._net.dtype.itemsize)

    def columns_bound(self, request: Request) -> int:
        """Cache columns a request can take at most: its text, its pictures at their pixel budget, its token cap."""
        s = self.settings
        words = " ".join([request.system, request.prompt, *(text for _, text in request.history)])
        columns = len(self.tokenizer(words)["input_ids"]) + TEMPLATE_TOKENS + request.max_new_tokens + DECODE_CHUNK
        columns += len(request.images) * (s.image_max_pixels // VISUAL_TOKEN_PIXELS)
        if request.video is not None:  # frames go in pairs (the last repeated): a frame's tokens and a stamp a pair
            columns += (len(request.video.frames) + 1) // 2 * (s.video_max_pixels // VISUAL_TOKEN_PIXELS + 16)
        return columns

    def _slab(self, kind: str, rows: int, columns: int) -> KvSlab:
        """The slab for bulk decoding or for answers, kept between calls (its recorded steps with it); made anew
        when the rows, the columns needed or the stopping rules changed. Called with no row live."""
        config = self._net.generation_config
        min_new = int(getattr(config, "min_new_tokens", 0) or 0)
        banned = tuple(getattr(config, "suppress_tokens", None) or ())
        rules = (rows, tuple(self.eos_ids), min_new, banned)
        slab = self._slabs.get(kind)
        if slab is not None and slab.rules == rules and slab.fits(columns):
            return slab
        if slab is not None:
            length = max(columns, slab.length)
            del self._slabs[kind], slab
            if self._device.startswith("cuda"):
                torch.cuda.empty_cache()
        else:
            length = columns
        banned_mask = None
        if banned:
            banned_mask = torch.zeros(self._net.lm_head.weight.shape[0], dtype=torch.bool, device=self._net.device)
            banned_mask[torch.tensor(banned, device=self._net.device)] = True
        try:
            slab = KvSlab(self._net, rows, length, banned=banned_mask, eos=self.eos_ids, min_new=min_new,
                          graphs=self._device.startswith("cuda"),
                          kv_cache=self.settings.kv_cache if kind == "bulk" else "bf16")  # answers: weights dominate
        except torch.cuda.OutOfMemoryError as err:
            # A slab that does not fit fails part made, and its frames hold the layers made so far (nearly all the
            # GPU: the warm-up's 256 rows of pages, docs/benchmarks.md run P) for as long as the error lives; the
            # warm-up's future keeps it, so every later call failed too.
            traceback.clear_frames(err.__traceback__)
            if self._device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise
        slab.rules = rules
        self._slabs[kind] = slab
        return slab

    def generate_ids(self, requests: Sequence[Request]) -> list[list[int]]:
        """Generated token ids per request, in order: continuous batching over `slots` rows (see `_Refill`)."""
        if not requests:
            return []
        return self._bulk.submit(requests).result()

    def submit(self, requests: Sequence[Request]) -> Future[list[str]]:
        """Hand the engine a batch while an earlier one may still decode: its requests join the running rows as
        they free (one decode loop over both, `_BulkLoop`), so a run of batches ends in one drained tail, not one
        per batch. The future holds the texts in request order once all of the batch's rows are done, or the
        error that failed this batch (not the others). Cancelling it (a run cut short) takes the batch out of the
        loop: its waiting requests are dropped and its rows stop after the chunk of steps they are in."""
        texts: Future[list[str]] = Future()

        def decoded(ids: Future[list[list[int]]]) -> None:
            if ids.cancelled() or not texts.set_running_or_notify_cancel():
                return  # its caller cancelled it
            try:
                texts.set_result([self.decode(row) for row in ids.result()])
            except BaseException as err:  # noqa: BLE001 - the batch's error (or decoding's) goes to its caller
                texts.set_exception(err)

        if not requests:
            texts.set_result([])
        else:  # decoded off the loop's thread (trimming loops costs ~1 ms a page), which goes on decoding
            ids = self._bulk.submit(requests)
            ids.add_done_callback(lambda ids: self._texts.submit(decoded, ids))
            texts.add_done_callback(lambda done: ids.cancel() if done.cancelled() else None)  # the loop drops it
        return texts

    def _bulk_slab(self, columns: int) -> tuple[KvSlab, float]:
        """The bulk slab for requests of up to `columns` cache columns, and the seconds it took to make it
        (allocated and zeroed: the GPU waited for, once per slab made) or 0 where the call found it made."""
        started = time.perf_counter()
        kept = self._slabs.get("bulk")
        slab = self._slab("bulk", self.slots, columns)
        if slab is kept:
            return slab, 0.0
        if self._device.startswith("cuda"):
            torch.cuda.synchronize(self._device)
        return slab, time.perf_counter() - started

    @contextmanager
    def _answer_lock(self) -> Iterator[None]:
        """The engine lock for the answer path; while an answer waits for it, bulk decoding admits no new batch,
        starts no new loop (`_BulkLoop`) and lets the lock go after its current chunk of steps (`_Refill`), so a
        question waits for at most DECODE_CHUNK steps of the rows decoding, not for them to end."""
        with self._answers.waiting():
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def prepare_to_answer(self) -> None:
        """This process answers questions (the app calls this through `load_in_background`): on a GPU, record the
        answer path now on the stream thread, so the first question compiles nothing; and give the bulk cache
        (most of the GPU's free memory) back once bulk decoding has idled BULK_IDLE_S seconds. A command-line
        ingest never calls this: it warms nothing it will not use and keeps its bulk cache between calls."""
        self._answering = True
        if self._device.startswith("cuda"):
            self._stream_thread.submit(self._warm_answers).add_done_callback(
                _log_failed_warm_up("answer path", "the first answer"))

    def prepare_to_ingest(self, video: bool = False, pages: bool = True) -> Future[None]:
        """A bulk ingest is coming (the pipeline calls this once it knows, while it still reads the files): on a
        GPU, do the first bulk call's one-time work now, on a thread of its own: make the bulk KV cache sized for
        what the files planned need, so the real call does not make it again: a page at the settings' pixel budget
        and token cap (`pages`), a video window (`video`), whichever is larger when both (a folder of videos only
        asks for no page's columns: a window needs ~2/3 of them, which let 256 rows of windows fit an H200 where
        256 rows of pages do not, docs/benchmarks.md run Q), and run a tiny request through `generate_ids`, which
        compiles the prefill and vision functions and records the decode steps (45 of 80 s of a fresh process's
        engine call for 192 pages on an H200: docs/benchmarks.md, run H). Returns at once; `generate_ids` waits on
        the lock. A failure is logged, never raised: the first real call does the work then. On a CPU: nothing to do
        (done)."""
        done: Future[None] = Future()
        if not self._device.startswith("cuda"):
            done.set_result(None)
            return done

        def warm() -> None:
            try:
                self._warm_bulk(video, pages)
                done.set_result(None)
            except BaseException as err:  # noqa: BLE001 - logged by the callback below; the real call tries again
                done.set_exception(err)

        done.add_done_callback(_log_failed_warm_up("bulk path", "the first engine call"))
        threading.Thread(target=warm, name="kb-warm-bulk", daemon=True).start()
        return done

    def _warm_bulk(self, video: bool, pages: bool = True) -> None:
        s = self.settings
        page = Image.new("RGB", (256, 256), "white")
        bounds: list[Request] = []
        if pages or not video:
            bounds.append(Request(task="ocr", prompt=prompts.OCR_PAGE, images=[page],
                                  max_new_tokens=s.max_page_tokens))
        if video:
            window = VideoClip(frames=[page] * s.video_window_frames, frame_indices=list(range(s.video_window_frames)),
                               fps=1.0, total_frames=s.video_window_frames)
            bounds.append(Request(task="video", prompt=prompts.VIDEO_WINDOW, video=window,
                                  max_new_tokens=s.max_video_tokens))
        with self._lock, torch.inference_mode():
            if self._bulk.running:  # a loop holds rows in the slab (paused for an answer): warm already
                return
            slab = self._slab("bulk", self.slots, max(self.columns_bound(r) for r in bounds))
            # A kept engine (a worker's later job) whose prefill ran and whose steps of all rows are recorded runs
            # no warm-up loop (its short tail recorded a step for 4.7 s: run T). What is left is the steps of a real
            # loop's tail (fewer rows), recorded here while the files are read and the GPU has nothing else to do,
            # not in the tail, where every stop holds up the last rows (8.1 s in run U).
            if self._compiled_layers is not None and not slab.lacks_any(slab.length, slab.rows):
                for rows in slab.tail_rows():
                    slab.record_all(slab.length, rows)
                return
        self.generate_ids([Request(task="ocr", prompt=prompts.OCR_PAGE, images=[page], max_new_tokens=WARM_UP_TOKENS)
                           for _ in range(WARM_UP_PAGES)])

    def _release_bulk_when_idle(self) -> None:
        calls = self._bulk_calls
        timer = threading.Timer(BULK_IDLE_S, self._release_bulk, args=(calls,))
        timer.daemon = True
        timer.start()

    def _release_bulk(self, calls: int) -> None:
        with self._lock:
            if calls != self._bulk_calls or "bulk" not in self._slabs:
                return  # a later call ran (its own timer decides), or nothing to give back
            log.info("bulk decoding idle for %s s: gave back its KV cache (%.1f GB)", BULK_IDLE_S,
                     self._slabs["bulk"].bytes / 1e9)
            self._drop_bulk_slab()

    def _drop_bulk_slab(self) -> None:
        """Give the bulk KV cache's memory back (the caller holds `_lock`; no loop holds rows in it)."""
        self._slabs.pop("bulk", None)
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()

    def prepare(self, requests: Sequence[Request]) -> _Prepared:
        """A processor thread's work for a group of new rows: processor output (its pixel work on the GPU where
        there is one), each row's multimodal RoPE positions, and the prompts packed one after another (`_Packed`),
        already copied to the GPU (this runs while the GPU decodes, so the prefill does not wait for the copy)."""
        inputs = self.processor_inputs(requests, on_gpu=self._copy_stream is not None and PIXELS_ON_GPU)
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
        packed = self._to_device(pack(inputs, positions, self._net.config))
        return _Prepared(inputs, positions, next_pos, widths.tolist(), requests=list(requests), packed=packed)

    def _to_device(self, packed: _Packed) -> _Packed:
        """The packed group on the model's device, pixel values in the vision tower's dtype. On a GPU the copy runs
        on a side stream, waited for here (on the calling thread), so it never stalls the decoding stream."""
        device, dtype = self._net.device, self._net.model.visual.dtype
        if self._copy_stream is None:
            return packed.to(device, dtype)
        with self._copying, torch.cuda.stream(self._copy_stream):
            moved = packed.to(device, dtype)
            self._copy_stream.synchronize()
        return moved

    def prefill(self, prepared: _Prepared, slab: KvSlab, slots: list[int]) -> list[int]:
        """Run a group's prompts through the model and load their cache into `slots` of the slab; the first token
        of each row (greedy), which the slab feeds next.

        The prompts run packed, one after another with no padding, as vLLM and SGLang run a prefill: the vision
        tower once for the group's pictures, then each decoder layer as one matrix product per projection over
        all the group's tokens, its two halves compiled on a GPU (the layer functions the decode step uses:
        kv_slab.layer_in/layer_out), and causal attention within each prompt through one varlen flash-attention
        call. transformers' forward instead padded every prompt to the group's longest, ran attention under a
        padding mask over the whole square, and each RMSNorm, RoPE and SiLU as separate kernels (over a third of
        its prefill's GPU time on an H200: docs/benchmarks.md)."""
        for width, request in zip(prepared.widths, prepared.requests):
            if width + request.max_new_tokens + DECODE_CHUNK > slab.length:  # columns_bound was too low
                raise EngineError(f"a prompt of {width} tokens does not fit the {slab.length}-column cache",
                                  "lower KB_IMAGE_MAX_PIXELS or KB_VIDEO_MAX_PIXELS, or report this as a bug")
        packed = prepared.packed
        assert packed is not None
        if packed.ids.is_cuda:  # made on a processor thread's stream, used on this one
            for tensor in packed.tensors():
                tensor.record_stream(torch.cuda.current_stream(packed.ids.device))
        logits, cache = self._prompt_forward(packed)
        self._first_logits = logits
        if slab.banned is not None:
            logits = logits.masked_fill(slab.banned[None], float("-inf"))
        if slab.min_new:
            logits = logits.masked_fill(slab.eos_mask[None], float("-inf"))
        first = logits.argmax(-1)
        slab.load(slots, cache, prepared.widths, first, prepared.next_pos.to(self._net.device))
        return [int(t) for t in first.tolist()]

    def _prompt_forward(self, packed: _Packed) -> tuple[torch.Tensor, _PromptCache]:
        """The language model over a packed group: the logits of each prompt's last token (rows, vocabulary) and
        every layer's keys and values, laid out left-padded as `KvSlab.load` reads them."""
        model = self._net.model
        lm = model.language_model
        hidden = lm.embed_tokens(packed.ids)
        deepstack: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        for pixels, grid, index in packed.pictures:
            seen = model.visual(pixels, grid_thw=grid)
            hidden[index] = seen.pooler_output.to(hidden.dtype)
            deepstack.append((index, list(seen.deepstack_features or [])))
        cos, sin = lm.rotary_emb(hidden[None], packed.positions[:, None])
        cos, sin = cos[0, :, None], sin[0, :, None]  # (tokens, 1, head_dim): the same turn for every head
        into, out_of = self._prefill_layers()
        text = self._net.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        eps, kv_heads = float(text.rms_norm_eps), int(text.num_key_value_heads)
        weights = self._plain_weights()
        cache = _PromptCache(packed)
        for n, layer in enumerate(lm.layers):
            if weights is not None:
                query, key, value = into(hidden, cos, sin, eps, head_dim, kv_heads, *weights[n][:4])
            else:  # a quantized layer: its own modules
                query, key, value = module_layer_in(layer, hidden, cos, sin, head_dim)
            attended = prompt_attention(query, key, value, packed, layer.self_attn.scaling)
            attended = attended.reshape(hidden.shape[0], -1)
            if weights is not None:
                hidden = out_of(hidden, attended, eps, *weights[n][4:])
            else:
                hidden = hidden + layer.self_attn.o_proj(attended)
                post = layer.post_attention_layernorm
                hidden = hidden + layer.mlp(rms(hidden, post.weight, post.variance_epsilon))
            for index, features in deepstack:  # DeepStack: the tower's earlier layers join the first text layers
                if n < len(features):
                    hidden[index] = hidden[index] + features[n].to(hidden.dtype)
            cache.add(key, value)
        return self._net.lm_head(rms(hidden[packed.last], lm.norm.weight, lm.norm.variance_epsilon)), cache

    def _plain_weights(self) -> list[LayerWeights] | None:
        if self._weights is None:
            self._weights = (plain_weights(self._net.model.language_model),)
        return self._weights[0]

    def _prefill_layers(self) -> tuple[Any, Any]:
        """The decoder layer's two halves for a prefill: compiled on a GPU (symbolic sizes: one compiled copy for
        every group), plain elsewhere."""
        if self._compiled_layers is None:
            compiled = self._device.startswith("cuda")
            self._compiled_layers = (Compiled(layer_in, compiled), Compiled(layer_out, compiled))
        return self._compiled_layers

    def decode(self, ids: list[int]) -> str:
        return trim_repetition(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(self, requests: Sequence[Request]) -> list[str]:
        return [self.decode(ids) for ids in self.generate_ids(requests)]

    def warm_up(self) -> float:
        """Generate a short answer once, so the first user does not wait for it, and on a GPU record the answer
        decode step for every cache width up to ANSWER_COLUMNS (one step where the per-row attention kernel runs;
        no recording when a question comes); seconds, once done. The app starts this without waiting
        (`prepare_to_answer`)."""
        started = time.perf_counter()
        self._stream_thread.submit(self._warm_answers).result()
        return time.perf_counter() - started

    def _warm_answers(self) -> None:
        """On the stream thread, which runs every answer (the answer records its slab's steps, `_answer_tokens`)."""
        with self._answer_lock(), torch.inference_mode():
            for _ in self._answer_tokens(Request(task="answer", prompt="Say hello.", max_new_tokens=8),
                                         threading.Event()):
                pass

    def _record_answer_steps(self, slab: KvSlab) -> None:
        """Record the answer slab's steps for every width it holds (at least ANSWER_COLUMNS) where it lacks them,
        holding `recording` (the ingest's embedder) and `_copying` (the processor threads of a bulk loop paused for
        this answer): nothing else launches GPU work during a capture."""
        if slab.lacks_any(slab.length):
            with self.recording, self._copying:
                slab.record_all(slab.length)

    def stream(self, request: Request) -> Iterator[str]:
        """An answer's text piece by piece, generated on the engine's stream thread over a one-row slab."""
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True)
        cancelled = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._answer_lock(), torch.inference_mode():
                    for token in self._answer_tokens(request, cancelled):
                        streamer.put(torch.tensor([token]))  # type: ignore[no-untyped-call]
            except Exception as err:  # noqa: BLE001 - any failure is re-raised in the caller's thread below
                errors.append(err)
            finally:
                streamer.end()  # type: ignore[no-untyped-call]

        worker = self._stream_thread.submit(run)
        try:
            yield from (piece for piece in streamer if piece)
        finally:  # also when the reader stops early: end generation instead of running to the token limit
            cancelled.set()
            worker.result()
        if errors:
            raise EngineError(f"generation failed: {errors[0]}",
                              "see the log; lower KB_IMAGE_MAX_PIXELS if the GPU ran out of memory") from errors[0]

    def _answer_tokens(self, request: Request, cancelled: threading.Event) -> Iterator[int]:
        """The tokens of one answer as they are made: greedy, or sampled with the request's temperature/top_p."""
        slab = self._slab("answer", 1, max(ANSWER_COLUMNS, self.columns_bound(request)))
        self._record_answer_steps(slab)  # a new slab's: before the answer, not during it
        prepared = self.prepare([request])
        row = _Row(index=0, limit=request.max_new_tokens, width=prepared.widths[0])
        token = self.prefill(prepared, slab, [0])[0]
        if request.temperature > 0:
            token = self._sample(slab, self._first_logits, request)
        # Greedy: the step after the one whose token the host waits for is already queued (its input stays on the
        # GPU), so the GPU never idles while the host checks and hands out a token; one step past the end is
        # computed and dropped.
        ahead: Callable[[], int] | None = None
        while not cancelled.is_set():
            kept = len(row.tokens)
            accept(row, [token], self.eos_ids, slab.min_new)
            yield from row.tokens[kept:]
            if row.done:
                return
            if request.temperature > 0:
                slab.step(width_for(row.width + 1, slab.length))
                row.width += 1
                token = self._sample(slab, slab.logits, request)
                continue
            if ahead is None:
                ahead = self._queue_step(slab, row)
            following = self._queue_step(slab, row)
            token, ahead = ahead(), following

    @staticmethod
    def _queue_step(slab: KvSlab, row: _Row) -> Callable[[], int]:
        """Queue one decode step of the answer row; a call that waits for its token, and only for it: on a GPU the
        token is copied to pinned host memory right behind the step (`.item()` would also wait for every step
        queued after it)."""
        picked = slab.step(width_for(row.width + 1, slab.length))[:1]
        row.width += 1
        if slab.device.type != "cuda":
            token = int(picked.item())
            return lambda: token
        host = torch.empty(1, dtype=picked.dtype, pin_memory=True)
        host.copy_(picked, non_blocking=True)
        copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
        copied.record(torch.cuda.current_stream(slab.device))

        def wait() -> int:
            copied.synchronize()
            return int(host[0])

        return wait

    @staticmethod
    def _sample(slab: KvSlab, logits: torch.Tensor | None, request: Request) -> int:
        """A token drawn from the top_p share of the distribution at the request's temperature; fed next."""
        assert logits is not None
        scores = logits[-1:].float() / request.temperature
        if slab.banned is not None:
            scores = scores.masked_fill(slab.banned[None], float("-inf"))
        probs = scores.softmax(-1)
        if request.top_p < 1:
            ordered, order = probs.sort(-1, descending=True)
            outside = ordered.cumsum(-1) - ordered > request.top_p  # keep the smallest head holding top_p
            probs = torch.zeros_like(probs).scatter(-1, order, ordered.masked_fill(outside, 0.0))
        token = torch.multinomial(probs, 1)[:, 0]
        slab.tokens.copy_(token)
        return int(token.item())


def _log_failed_warm_up(path: str, retried_by: str) -> Callable[[Future[None]], None]:
    """A done-callback for a warm-up that runs on its own: its failure is logged, never raised (`retried_by` does
    the same work later)."""
    def check(done: Future[None]) -> None:
        if done.exception() is not None:
            log.warning("warming up the %s failed (%s will try again): %s", path, retried_by, done.exception())
    return check


def keep_compile_caches() -> None:
    """Point torch's and Triton's compile caches into the user's cache folder, unless the user chose others: their
    defaults are under /tmp, gone with each boot or container, and a fresh process then compiles the engine's
    functions again (tens of seconds on an H200: docs/benchmarks.md, run H). Read when torch first compiles."""
    for variable, folder in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        os.environ.setdefault(variable, str(user_cache_dir() / "compile" / folder))


@dataclass
class _Prepared:
    inputs: Any
    positions: torch.Tensor  # (3, rows, prompt length): the prompt's multimodal RoPE positions
    next_pos: torch.Tensor  # (rows,): RoPE position of each row's first generated token
    widths: list[int]  # real (unpadded) prompt tokens per row
    indices: list[int] = field(default_factory=list)  # which requests of the call these rows are
    requests: list[Request] = field(default_factory=list)
    packed: _Packed | None = None  # the prompts with no padding, on the model's device (what prefill runs)


@dataclass
class DecodeStats:
    """What one bulk decode loop did (`_BulkLoop`: from an idle slab until no row is live; a `generate_ids` call
    alone is one loop, batches handed over while one decodes share it): the work kept against the work computed,
    and the one-time work of a loop that found nothing ready (for the benchmarks).

    One-time work: making the bulk KV cache (a call that finds it made by an earlier call skips it); the decode
    steps a call records (CUDA graph captures, and on the first the compile of the step's layer halves), counted
    where the slab lacks them: all rows at the start, each halving of the rows in the tail, so a later call on the
    same slab records none; and the first prefill group of a process, which compiles the prefill's layer halves
    and the vision tower's functions: `prefill_warm_up_s` is what it took beyond a later group's time for as many
    rows. Each figure is read where the call already waits for the GPU (a new cache is waited for once, recording
    synchronises, a group's first tokens come back to the host): the decode loop gains no sync."""

    requests: int = 0
    tokens: int = 0  # generated tokens kept in the outputs
    row_steps: int = 0  # rows x forward positions computed for generation (prefill's first token included)
    steps: int = 0  # decode forward passes
    refills: int = 0  # times new rows were prefilled into the running batch
    prefill_s: float = 0.0
    wait_s: float = 0.0  # time the GPU loop waited for the processor threads
    # Each wait for a prepared group longer than LONG_WAIT_S: (seconds after the loop began, seconds waited), in order.
    long_waits: list[tuple[float, float]] = field(default_factory=list, repr=False)
    slab_s: float = 0.0  # seconds making the bulk KV cache (allocated, zeroed); 0 where the call found it made
    recorded: int = 0  # decode steps recorded by this call (none where steps run eagerly: a CPU)
    record_s: float = 0.0  # seconds spent recording them, the compile they trigger included
    # Seconds of each prefill group, in order, the rows each loaded, and when each began (seconds after the loop
    # began: a group prefilled while the host is busy reading can be told apart; left out of the printed form: long).
    group_s: list[float] = field(default_factory=list, repr=False)
    group_rows: list[int] = field(default_factory=list, repr=False)
    group_at: list[float] = field(default_factory=list, repr=False)
    began: float = field(default_factory=time.perf_counter, repr=False)  # when the loop began (time.perf_counter)
    tail_s: float = 0.0  # seconds after the last group joined: the rows left draining, none waiting to join
    calls: int = 0  # batches (generate_ids or submit calls) this loop decoded
    joined_live: int = 0  # rows of a batch that joined while rows of an earlier batch still decoded
    answers_s: float = 0.0  # seconds the loop stood paused between two chunks while questions were answered

    @property
    def padding_share(self) -> float:
        """Share of computed row-steps that produced nothing kept (finished rows or empty slots in the batch)."""
        return 1.0 - self.tokens / self.row_steps if self.row_steps else 0.0

    @property
    def later_group_s_per_row(self) -> float:
        """Mean seconds per row of the prefill groups after the first (0 with a single group)."""
        rows = sum(self.group_rows[1:])
        return sum(self.group_s[1:]) / rows if rows else 0.0

    @property
    def prefill_warm_up_s(self) -> float:
        """What the first prefill group took beyond a later group's time for as many rows (its compile, in a fresh
        process); 0 with a single group, where nothing tells the two apart."""
        if len(self.group_s) < 2:
            return 0.0
        return max(0.0, self.group_s[0] - self.group_rows[0] * self.later_group_s_per_row)

    @property
    def warm_up_s(self) -> float:
        """The call's one-time seconds: making the KV cache, recording decode steps, the first group's excess."""
        return self.slab_s + self.record_s + self.prefill_warm_up_s


@dataclass
class _Row:
    index: int  # position in its batch's requests
    limit: int
    width: int  # cache columns this row fills (prompt + tokens fed back)
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    batch: _Batch | None = None  # the bulk batch it belongs to (None: an answer's row)


def accept(row: _Row, new: list[int], eos: list[int], min_new: int) -> None:
    """Add a row's new tokens up to where it stops: end of turn (dropped), its cap, or a loop (kept)."""
    for token in new:
        if token in eos and len(row.tokens) >= min_new:
            row.done = True
            return
        row.tokens.append(token)
        if len(row.tokens) >= row.limit or repeating_tail(row.tokens):
            row.done = True
            return


class _Batch:
    """One bulk call's requests (`generate_ids`, `submit`) in the decode loop: their ids as rows finish, and the
    future its caller waits on, set once all of them are done or with the error that failed this batch."""

    def __init__(self, requests: Sequence[Request], columns: int) -> None:
        self.requests = requests
        self.columns = columns  # cache columns its largest request can take (`columns_bound`)
        self.ids: Future[list[list[int]]] = Future()
        self.results: list[list[int] | None] = [None] * len(requests)
        self.left = len(requests)  # requests not done yet
        self.left_loop = False  # failed or cancelled: its rows stopped, its waiting requests dropped

    def finish(self) -> None:
        if not self.ids.done():
            self.ids.set_result([ids or [] for ids in self.results])

    def fail(self, error: BaseException) -> None:
        if not self.ids.done():
            self.ids.set_exception(error)


class _Waiting:
    """How many threads wait for something (the engine lock, for an answer); others can wait until none does."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        with self._changed:
            self._count += 1
        try:
            yield
        finally:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()

    def any(self) -> bool:
        return self._count > 0

    def wait_none(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._count == 0)


class _BulkLoop:
    """The engine's one bulk decode loop. Batches handed to it queue in order; a thread of its own decodes them
    under the engine lock, one `_Refill` loop at a time: a loop starts on an idle slab with the first queued
    batch and takes in each later batch that arrives while rows still decode (its requests join rows as they
    free), until no row is live. A batch needing more cache columns than the slab holds waits for the loop to
    drain (the slab is remade only with no row live); one handed over while an answer waits for the lock joins
    once the answer is done (the loop pauses for it between chunks). The thread ends when nothing is queued; the
    next batch starts another."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.queued: deque[_Batch] = deque()
        self._guard = threading.Lock()  # `queued` and `running`
        self.running = False

    def submit(self, requests: Sequence[Request]) -> Future[list[list[int]]]:
        batch = _Batch(requests, max(self.engine.columns_bound(r) for r in requests))
        with self._guard:
            self.queued.append(batch)
            if not self.running:
                self.running = True
                threading.Thread(target=self._run, name="kb-bulk", daemon=True).start()
        return batch.ids

    def take(self, slab: KvSlab | None) -> _Batch | None:
        """The next queued batch, if it may join the loop running on `slab` (None: it starts a new loop)."""
        with self._guard:
            while self.queued and self.queued[0].ids.cancelled():  # cancelled before it joined: never decoded
                self.queued.popleft()
            if not self.queued:
                return None
            if slab is not None and (self.engine._answers.any() or not slab.fits(self.queued[0].columns)):
                return None
            return self.queued.popleft()

    def _run(self) -> None:
        ended = False
        try:
            while True:
                self.engine._answers.wait_none()  # an answer waiting for the lock goes first
                with self._guard:
                    if not self.queued:
                        self.running, ended = False, True
                        break
                self._loop()
        finally:
            if not ended:  # a failure outside any batch's loop: no caller may wait forever
                with self._guard:
                    self.running, stranded = False, list(self.queued)
                    self.queued.clear()
                for batch in stranded:
                    batch.fail(EngineError("the engine's decode loop stopped", "see the log; run the ingest again"))
        if self.engine._answering:
            self.engine._release_bulk_when_idle()

    def _loop(self) -> None:
        engine = self.engine
        run: _Refill | None = None
        slab: KvSlab | None = None
        first = self.take(None)
        if first is None:  # every batch queued was cancelled
            return
        try:
            with engine._lock, torch.inference_mode():
                engine._bulk_calls += 1
                slab, made_s = engine._bulk_slab(first.columns)
                run = _Refill(engine, slab, self)
                run.stats.slab_s = made_s
                run.run(first)
        except BaseException as err:  # noqa: BLE001 - handed to the callers of every batch of the loop
            error = err
            taken = run.batches if run is not None else []
            if isinstance(err, torch.cuda.OutOfMemoryError):
                error = EngineError(f"GPU out of memory while decoding {engine.slots} rows at once",
                                    "lower KB_BATCH_SIZE or KB_IMAGE_MAX_PIXELS, or set KB_QUANT=nf4")
                error.__cause__ = err
                # The cache goes back: kept, every later loop would reuse it and fail too where it is what filled
                # the GPU (the warm-up's, made for full pages: 256 rows of them, docs/benchmarks.md, run O); the
                # next loop makes one for its own requests (a video window takes ~2/3 of a page's columns). The
                # error lives on with the callers, so the frames it went through must let go of the cache first.
                traceback.clear_frames(err.__traceback__)
                run = slab = None
                with engine._lock:
                    engine._drop_bulk_slab()
            for batch in taken if first in taken else [first, *taken]:  # failed before it joined: first too
                if batch.left == 0:  # done before the failure
                    batch.finish()
                else:
                    batch.fail(error)


class _Refill:
    """Continuous batching: one loop of `_BulkLoop` over the engine's slab, from idle until no row is live.

    Each slot of the slab holds one row. Decoding runs in chunks of at most DECODE_CHUNK steps with no host sync
    inside (recorded steps on a GPU); after each chunk the tokens come back in one copy, rows stop at end of turn,
    their token cap or a loop (kept exactly to the same tokens a lone run gives), and the slots of finished rows
    take prepared groups of waiting requests, prefilled and copied in. Waiting requests are those of the batch
    the loop began with and of every batch taken in since (`_BulkLoop.take`), in order; each batch goes back to
    its caller as soon as its last row is done. Greedy: the same request gives the same ids alone or in any batch.
    """

    def __init__(self, engine: TransformersEngine, slab: KvSlab, loop: _BulkLoop) -> None:
        self.engine, self.slab, self.loop = engine, slab, loop
        self.group = max(1, slab.rows // REFILL_GROUPS)
        self.stats = DecodeStats()
        self.batches: list[_Batch] = []  # taken into this loop, in order, until handed back or out of the loop
        self.slots: list[_Row | None] = [None] * slab.rows
        # Groups are prepared on several threads at once, and taken in the order they were asked for: the batch a
        # request lands in, and so every output, is the same with one thread or many. At most the free rows plus
        # PREPARED_AHEAD of the rows are in preparation or ready (`_prepare_ahead`), so memory does not grow with the
        # threads. A group holds requests of one batch only, so a failed preparation fails that batch alone.
        self.pool = ThreadPoolExecutor(max_workers=engine.processor_threads, thread_name_prefix="kb-processor")
        self.waiting: deque[tuple[_Batch, int]] = deque()
        self.prepared: deque[tuple[_Batch, list[int], Future[_Prepared]]] = deque()
        self.prepared_first: Future[_Prepared] | None = None  # the loop's first group (FIRST_GROUP_ALONE)
        self.tail_from: float | None = None  # when the last group had joined (stats.tail_s)

    def _join(self, batch: _Batch) -> None:
        self.batches.append(batch)
        self.waiting.extend((batch, n) for n in range(len(batch.requests)))
        self.stats.requests += len(batch.requests)
        self.stats.calls += 1
        self.tail_from = None  # rows waiting again: not the tail

    # ---- CPU side: processor work prepared ahead ------------------------------------------------------
    def _prepare_ahead(self, rows_wanted: int) -> None:
        """Keep enough groups in preparation to fill `rows_wanted` free rows, and PREPARED_AHEAD of the rows more
        (at least one group) for rows that free up while these are prepared."""
        queued = sum(len(indices) for _, indices, _ in self.prepared)
        ahead = max(self.group, int(self.slab.rows * PREPARED_AHEAD))
        while self.waiting and queued < rows_wanted + ahead and not self._first_group_in_preparation():
            batch, take = self.waiting[0][0], list[int]()
            while self.waiting and self.waiting[0][0] is batch and len(take) < self.group:
                take.append(self.waiting.popleft()[1])
            self.prepared.append((batch, take, self.pool.submit(self._prepare, batch, take)))
            self.prepared_first = self.prepared_first or self.prepared[-1][2]
            queued += len(take)

    def _first_group_in_preparation(self) -> bool:
        """Whether the loop's first group is still being prepared, alone (FIRST_GROUP_ALONE)."""
        return FIRST_GROUP_ALONE and self.prepared_first is not None and not self.prepared_first.done()

    def _prepare(self, batch: _Batch, indices: list[int]) -> _Prepared:
        prepared = self.engine.prepare([batch.requests[i] for i in indices])
        prepared.indices = indices
        return prepared

    # ---- the loop -----------------------------------------------------------------------------------------
    def live(self) -> list[_Row]:
        return [r for r in self.slots if r is not None and not r.done]

    def drained(self) -> bool:
        return not (self.live() or self.prepared or self.waiting)

    def run(self, first: _Batch) -> None:
        # The processor threads copy prepared groups to the GPU, which a CUDA graph capture does not survive: a
        # recording holds `_copying`, which their copies take (`_recording`). Steps of all rows are recorded now,
        # before any is prepared; those of fewer rows in the tail of the loop, when nothing is being prepared.
        self._recording(lambda: self.slab.record_all(self.slab.length, self.slab.rows),
                        self.slab.lacks_any(self.slab.length, self.slab.rows))
        try:
            self._join(first)
            self._prepare_ahead(self.slab.rows)
            while not self.drained():
                self._refill()
                if not self.prepared and not self.waiting and self.tail_from is None:
                    self.tail_from = time.perf_counter()
                if self.live():
                    self._decode_chunk()
                self._drop_cancelled()
                self._settle()
                self._let_answers_go()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _let_answers_go(self) -> float:
        """A question waiting for the engine goes now, between two chunks, not once the loop drains (a loop runs on
        while batches keep joining: a whole ingest). The engine lock is let go and taken back when the answers
        waiting are done; the processor threads go on preparing (an answer that records a step holds `_copying`).
        The rows keep their state in the bulk slab, which the answer path does not touch (it has its own). Returns
        the seconds it stood paused."""
        if not self.engine._answers.any() or self.drained():  # drained: the loop ends and lets the lock go
            return 0.0
        paused = time.perf_counter()
        self.engine._lock.release()
        try:
            self.engine._answers.wait_none()  # each answer waiting has taken the lock (and the last may hold it)
        finally:
            self.engine._lock.acquire()
        seconds = time.perf_counter() - paused
        self.stats.answers_s += seconds
        return seconds

    def _settle(self) -> None:
        """Hand back each batch whose rows are all done; when the loop has drained, its stats first (a lone
        `generate_ids` caller reads `last_stats` as soon as its batch is back)."""
        if self.drained():
            if self.tail_from is not None:  # the last chunk's tokens came back to the host: its steps are done
                self.stats.tail_s = time.perf_counter() - self.tail_from
            self.engine.last_stats = self.stats
        for batch in self.batches:
            if batch.left == 0:
                batch.finish()
        # Those handed back or out of the loop leave the list (a loop can take in thousands over an ingest).
        self.batches = [b for b in self.batches if b.left and not b.left_loop]

    def _fail(self, batch: _Batch, error: BaseException) -> None:
        """One batch failed (its processor work or its prefill): its caller gets the error, its rows stop, its
        waiting requests leave the loop; the other batches go on."""
        batch.fail(error)
        self._leave(batch)

    def _drop_cancelled(self) -> None:
        """Batches their callers cancelled (a run cut short: a job cancelled, Ctrl-C) leave the loop, so the GPU
        does not decode pages nobody will read (two batches in flight are minutes of an H200)."""
        for batch in self.batches:
            if batch.ids.cancelled() and not batch.left_loop:
                self._leave(batch)

    def _leave(self, batch: _Batch) -> None:
        """The batch's rows stop and its waiting requests leave the loop."""
        batch.left_loop = True
        self.waiting = deque(w for w in self.waiting if w[0] is not batch)
        self.prepared = deque(p for p in self.prepared if p[0] is not batch)
        for row in self.live():
            if row.batch is batch:
                row.done = True

    def _recording(self, work: Callable[[], object], may_record: bool) -> None:
        """Run `work` (which may record decode steps on the slab) and count the steps it recorded and its seconds.
        Recording synchronises with the GPU (a capture starts from an idle device), so the clock needs no sync of
        its own; work that recorded nothing adds no seconds. Work that may record holds the engine's `recording`
        lock, which GPU work on other threads (the ingest's embedder and speech engine) takes, and `_copying`, which
        the processor threads' copies to the GPU take."""
        before = self.slab.recorded
        started = time.perf_counter()
        if may_record:
            with self.engine.recording, self.engine._copying:
                work()
        else:
            work()
        recorded = self.slab.recorded - before
        if recorded:
            self.stats.recorded += recorded
            self.stats.record_s += time.perf_counter() - started

    def _refill(self) -> None:
        while (batch := self.loop.take(self.slab)) is not None:  # handed over while rows decode: they join
            self._join(batch)
        free = [n for n, r in enumerate(self.slots) if r is None or r.done]
        self._prepare_ahead(len(free))
        groups: list[tuple[_Batch, _Prepared, list[int]]] = []
        while self.prepared and len(self.prepared[0][1]) <= len(free):
            # Groups are taken in the order they were formed, so a group's requests never depend on timing. While
            # rows decode (or groups taken here will), a group still in preparation joins after the next chunk: a
            # batch just handed over (a video's windows as it is sampled) would otherwise stop every row for its
            # preparation, 1.1-2.7 s each time on the H200 (docs/benchmarks.md, run O). When a row joins changes no
            # output: a row's tokens do not depend on the rows beside it. With nothing to decode, the loop waits,
            # and the time shows in stats.wait_s.
            if not self.prepared[0][2].done() and (groups or self.live()):
                break
            started = time.perf_counter()
            batch, _, future = self.prepared.popleft()
            try:
                prepared = future.result()
            except Exception as err:  # noqa: BLE001 - this batch's request failed: the batch fails, not the loop
                self._fail(batch, err)
                continue
            finally:
                self._count_wait(started)
            taken, free = free[:len(prepared.indices)], free[len(prepared.indices):]
            groups.append((batch, prepared, taken))
            self._prepare_ahead(len(free))
        if groups:
            started = time.perf_counter()
            for batch, prepared, taken in groups:
                if batch.ids.done():
                    continue  # failed since its group was prepared
                try:
                    self._load(batch, prepared, taken)
                except Exception as err:  # noqa: BLE001 - as above
                    self._fail(batch, err)
                # A whole wave of groups takes seconds to load (128 rows: ~5 s on an H200); a question waits for
                # one group at most (docs/benchmarks.md, answers during a bulk loop). The pause is not prefill.
                started += self._let_answers_go()
            self.stats.refills += 1
            self.stats.prefill_s += time.perf_counter() - started

    def _count_wait(self, started: float) -> None:
        waited = time.perf_counter() - started
        self.stats.wait_s += waited
        if waited > LONG_WAIT_S:
            self.stats.long_waits.append((started - self.stats.began, waited))

    def _load(self, batch: _Batch, prepared: _Prepared, taken: list[int]) -> None:
        # Timed alone: the group's first tokens come back to the host at its end, and what ran before it (a decode
        # chunk, the group before) ended the same way, so the clock holds this group's GPU work and no other.
        started = time.perf_counter()
        first = self.engine.prefill(prepared, self.slab, taken)
        self.stats.group_s.append(time.perf_counter() - started)
        self.stats.group_at.append(started - self.stats.began)
        self.stats.group_rows.append(len(taken))
        self.stats.row_steps += len(taken)
        if any(row.batch is not batch for row in self.live()):  # an earlier batch still decodes
            self.stats.joined_live += len(taken)
        for slot, index, width, token in zip(taken, prepared.indices, prepared.widths, first):
            row = _Row(index=index, limit=batch.requests[index].max_new_tokens, width=width, batch=batch)
            self.slots[slot] = row
            self._accept(row, [token])  # rows capped at one token end here

    def _decode_chunk(self) -> None:
        live = self.live()
        # In the tail of the loop (nothing left to join) the live rows move to the first slots and only those are
        # stepped: finished rows stop costing a step each.
        rows = self._compact(len(live)) if not self.prepared and not self.waiting else self.slab.rows
        steps = min(DECODE_CHUNK, min(r.limit - len(r.tokens) for r in live))
        width = width_for(max(r.width for r in live) + steps, self.slab.length)
        # The chunk's first step records the step on a slab that lacks this shape (the tail's fewer rows).
        produced: list[torch.Tensor] = []
        self._recording(lambda: produced.append(self.slab.step(width, rows)[:rows].clone()),
                        self.slab.lacks(width, rows))
        produced += [self.slab.step(width, rows)[:rows].clone() for _ in range(steps - 1)]
        for row in live:
            row.width += steps
        self.stats.steps += steps
        self.stats.row_steps += rows * steps
        for slot, new in zip(self.slots, torch.stack(produced, dim=1).tolist()):
            if slot is not None and not slot.done:
                self._accept(slot, new)

    def _compact(self, live: int) -> int:
        """Move the live rows into the first `rows` slots, `rows` the fewest of the slab's `tail_rows` that hold
        them all."""
        rows = min((r for r in self.slab.tail_rows() if r >= live), default=self.slab.rows)
        free = [n for n in range(rows) if self.slots[n] is None or self.slots[n].done]  # type: ignore[union-attr]
        for source in range(rows, self.slab.rows):
            row = self.slots[source]
            if row is not None and not row.done:
                target = free.pop()
                self.slab.move(source, target, row.width)
                self.slots[target], self.slots[source] = row, None
        return rows

    def _accept(self, row: _Row, new: list[int]) -> None:
        accept(row, new, self.engine.eos_ids, self.slab.min_new)
        if row.done and row.batch is not None:
            row.batch.results[row.index] = row.tokens
            row.batch.left -= 1
            self.stats.tokens += len(row.tokens)
