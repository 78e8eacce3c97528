"""A preallocated KV cache ("slab") for Qwen3-VL's language model, and a decode step over it that can be captured
as a CUDA graph.

Why: transformers' forward is launch-bound when decoding (about 1 000 small kernels per step, 50-60 ms a step on
an H200 whatever the batch), and its static cache compiles per batch shape and cannot take rows that join
mid-decode. Here every row of the slab holds its own tokens at columns [0, length of the row); a step writes each
row's new key/value at that row's own length, so rows that finished are refilled in place (continuous batching)
without reshaping anything, and the step has fixed shapes: on a GPU it is recorded once per row count and
replayed, with no host sync inside; attention reads each row only to its own length (decode_attention.py). Where
that kernel cannot run (a CPU, no Triton) attention reads every row to a width (a multiple of WIDTH_STEP) under a
mask, and a GPU step is recorded per width; on a CPU the step runs eagerly.

Decoding only: the prompt (images, video, multimodal RoPE) goes through the model's own forward, and its cache is
copied into the slab. Generated tokens are text, whose three RoPE positions are equal, so plain RoPE is exact.

fp8 cache (`kv_cache`, settings' KB_KV_CACHE=fp8; "auto" keeps bf16 for now, see FP8_BY_DEFAULT): at 128 rows a
step reads ~3.5x more bytes of keys and values than of weights, and the bf16 kernel reads them at the card's
bandwidth, so halving the cache's bytes was meant to take ~4 ms off a 12 ms step. An fp8 slab stores keys and
values as float8_e4m3fn with one bf16 scale per (row, key/value head, column), i.e. per token and head, computed
from that vector's own maximum when it is written (`quantize`): the prompt's cache in `load`, each step's new
key/value in the step. Why that granularity: vLLM's default fp8 cache and TensorRT-LLM's use one static scale per
tensor (1.0, or calibrated offline on a data set), which needs calibration data we do not have and clips where a
layer's keys range past e4m3's 448 (vLLM measured Qwen2-7B's perplexity 34.8 with unit scales against 22.6 with
scales measured at run time); vLLM's newer `fp8_per_token_head` mode (its Triton backend; FlashInfer's is under
review) computes one scale per token and head at write time, as here. It needs no calibration, never clips (each
vector's largest element maps to 448, whatever Qwen's outlier key channels reach; e4m3 being a float, the other
channels keep their ~3 % precision beside a 50x outlier: tests/test_kv_fp8.py), is batch-invariant (a row's
scales depend on that row alone) and costs 2 bytes per 128: 1.6 % more than half of the bf16 cache. The kernel
dequantises in registers; the masked path (no kernel) dequantises the columns it reads. Measured on the H200
(docs/benchmarks.md): half the memory, but no faster a step (the kernel's fp8 path moves half the bf16 kernel's
bytes/s: Nsight Compute finds it bound by instruction issue, the bf16 path by DRAM; FlashInfer's decode kernels are
no faster over an fp8 cache either; vLLM's FlashAttention-3 build is, but ships only inside vLLM's wheel: run Z),
so it is opt-in.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from kb.config import KV_CACHES
from kb.engines import decode_attention as spans
from kb.engines.fp8_weights import Fp8Linear, project, projections
from kb.errors import ConfigError

log = logging.getLogger(__name__)

# Masked attention (no per-row kernel) reads the first `width` columns of every row, width a multiple of this: a
# few recorded steps cover all lengths, and no step reads more than WIDTH_STEP - 1 columns past the longest row.
WIDTH_STEP = 256
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # e4m3's largest finite value
# What "auto" picks where the GPU has fp8: off, because on the H200 the fp8 step is no faster than bf16 (11.8 against
# 11.7 ms at 128 rows with one write a layer, 3.98 against 3.66 ms at one row) and greedy ids batched == alone held
# for 2 of 6 pages against 5 of 6 (docs/benchmarks.md, "fp8 KV cache: the conversion is not the limit"). Turn on
# once the kernel reads fp8 at the card's bandwidth.
FP8_BY_DEFAULT = False
# The step writes each layer's new key/value (fp8: and their scales) with one launch (decode_attention.write_step)
# where the kernel runs; False: with index writes, two a layer (fp8: four). Same bytes; measured on the H200 at 128
# rows 11.7 against 12.0 ms a step (bf16), 11.8 against 12.5 (fp8).
ONE_WRITE = True
# An fp8 slab's values stored column-major (head_dim x columns per row and key/value head; the tensors keep their
# (rows, heads, columns, head_dim) shape as a transposed view): the kernel's second product then reads them without
# transposing bytes in shared memory, which is what holds its fp8 path at half the bf16 path's bytes/s (read from
# the compiled kernel; docs/benchmarks.md, run I). Off: timed on the H200 in run L, a 128-row step took 11.8 ms
# against 11.9 with values by row and 11.9 in bf16 (at one row 4.03 against 3.98 and 3.69), so the transposes were
# not what bounds the fp8 path, and batched == alone held for 2 of 6 pages.
FP8_VALUES_BY_COLUMN = False


# A projection's weight as `layer_in`/`layer_out` take it: a matrix in the model's dtype, or an fp8 matrix and its
# per-output-channel scales (fp8_weights.py).
Weight = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
PLAIN_LINEARS = (torch.nn.Linear, Fp8Linear)
# One layer's weights in `layer_in`/`layer_out` order: norms are tensors, projections `Weight`s.
LayerWeights = tuple[Any, ...]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def fp8_supported(device: torch.device) -> bool:
    """Whether this device computes with float8_e4m3fn: a CUDA GPU of compute capability 8.9 (Ada) or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., head_dim) as float8_e4m3fn and one bf16 scale per vector (...,): x ~ fp8 * scale. The scale is
    rounded up to a bf16 value (so no element passes FP8_MAX); a vector of zeros gets a tiny scale, not 0/0."""
    top = x.abs().amax(-1).float()
    scale = (top * ((1 + 2 ** -7) / FP8_MAX)).clamp_min(1e-30).to(torch.bfloat16)
    stored = (x.float() / scale.float()[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return stored, scale


def dequantize(stored: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`quantize`'s inverse, in `dtype` (the masked attention's path and the tests)."""
    return (stored.float() * scale.float()[..., None]).to(dtype)


def layer_in_fp8(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float, head_dim: int,
                 kv_heads: int, *weights: Any) -> tuple[torch.Tensor, ...]:
    """`layer_in` with its key and value quantized for an fp8 slab: query, key fp8, key scales, value fp8, value
    scales. One function, so that the compiled step fuses the quantizing into layer_in's own kernels."""
    query, key, value = layer_in(hidden, cos, sin, eps, head_dim, kv_heads, *weights)
    return (query, *quantize(key), *quantize(value))


class KvSlab:
    """`rows` rows of keys and values for every layer, `length` columns each, plus the decode state of each row:
    the token to feed next, its RoPE position, the row's length (its next free column) and tokens generated.

    Greedy picks honour `banned` (tokens never generated) and `eos` before `min_new` tokens. `kv_cache`: "bf16"
    keeps keys and values in the model's dtype, "fp8" as float8_e4m3fn with a scale per token and head (module
    docstring; an error where the device lacks fp8), "auto" the engine's choice (`use_fp8`: bf16 today).
    """

    def __init__(self, net: Any, rows: int, length: int, *, banned: torch.Tensor | None, eos: list[int],
                 min_new: int, graphs: bool, compiled: bool = True, kv_cache: str = "bf16") -> None:
        text = net.config.text_config
        self.lm = net.model.language_model
        self.lm_head = net.lm_head
        self.rows = rows
        self.length = _round_up(length, WIDTH_STEP)
        self.kv_heads = text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        device, dtype = net.lm_head.weight.device, net.lm_head.weight.dtype
        self.device, self.dtype = device, dtype
        group = text.num_attention_heads // self.kv_heads
        self.spans = spans.available(device, dtype, self.head_dim, group)
        self.fp8 = use_fp8(kv_cache, device, self.spans)
        shape = (rows, self.kv_heads, self.length, self.head_dim)
        # Zeros, not empty: masked columns still meet the values (0 x NaN would poison a row).
        stored = FP8 if self.fp8 else dtype
        self.keys = [torch.zeros(shape, dtype=stored, device=device) for _ in self.lm.layers]
        self.values = [_zeros_by_column(shape, stored, device) if self.fp8 and FP8_VALUES_BY_COLUMN else
                       torch.zeros(shape, dtype=stored, device=device) for _ in self.lm.layers]
        # fp8: each column's scale per row and key/value head (empty lists for a bf16 slab).
        scales = shape[:3] if self.fp8 else None
        self.key_scales = [torch.zeros(scales, dtype=torch.bfloat16, device=device)
                           for _ in self.lm.layers] if scales else []
        self.value_scales = [torch.zeros(scales, dtype=torch.bfloat16, device=device)
                             for _ in self.lm.layers] if scales else []
        self.tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.pos = torch.zeros(rows, dtype=torch.long, device=device)
        self.lens = torch.zeros(rows, dtype=torch.long, device=device)
        self.count = torch.zeros(rows, dtype=torch.long, device=device)
        self.row_index = torch.arange(rows, device=device)
        vocab = net.lm_head.weight.shape[0]
        self.banned = banned
        self.eos_mask = torch.zeros(vocab, dtype=torch.bool, device=device)
        if eos:
            self.eos_mask[torch.tensor(eos, device=device)] = True
        self.min_new = min_new
        self.rules: tuple[Any, ...] = ()  # what the owner made it for (rows, stopping rules): remade when they change
        self.graphs_on = graphs and device.type == "cuda"
        # Attention reads each row only to its own length (decode_attention.py) where the kernel runs (`spans`,
        # set above); elsewhere (a CPU, no Triton) torch's attention reads every row to the step's width under a
        # mask. `interpret` runs the kernel in Triton's interpreter (the CPU tests).
        self.interpret = False
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # by (rows stepped, width read)
        self._pool: Any = None
        self._logits: dict[tuple[int, int], torch.Tensor] = {}  # each recorded step's logits buffer
        self.logits: torch.Tensor | None = None  # the last step's logits (rows, vocab), for sampling
        self.eps = float(text.rms_norm_eps)
        self._weights = plain_weights(self.lm)
        # On a GPU the two halves of a layer are compiled (fused elementwise kernels: a recorded step is otherwise
        # ~2 000 small kernels, whose launch gaps cost more than the weights' reading at one row). Sizes are
        # symbolic, so one compiled copy serves every layer, row count and width.
        self._compiled: tuple[Any, Any] | None = None
        if self.graphs_on and compiled and self._weights is not None:
            self._compiled = (torch.compile(layer_in_fp8 if self.fp8 else layer_in, dynamic=True),
                              torch.compile(layer_out, dynamic=True))

    @property
    def bytes(self) -> int:
        tensors = [*self.keys, *self.values, *self.key_scales, *self.value_scales]
        return sum(t.numel() * t.element_size() for t in tensors)

    def fits(self, columns: int) -> bool:
        return columns <= self.length

    # ---- rows in and out ----------------------------------------------------------------------------------------
    def load(self, slots: list[int], cache: Any, widths: list[int], first: torch.Tensor, next_pos: torch.Tensor
             ) -> None:
        """Copy a prefilled group into `slots`: each row's last `width` cache columns (the group is left-padded)
        go to columns [0, width); the row then feeds `first` at RoPE position `next_pos`."""
        for n, layer in enumerate(cache.layers):
            group_width = layer.keys.shape[2]
            keys, values = layer.keys, layer.values
            if self.fp8:  # the whole group at once: one quantize per layer, not per row
                (keys, key_scales), (values, value_scales) = quantize(keys), quantize(values)
            for row, (slot, width) in enumerate(zip(slots, widths)):
                self.keys[n][slot, :, :width] = keys[row, :, group_width - width:]
                self.values[n][slot, :, :width] = values[row, :, group_width - width:]
                if self.fp8:
                    self.key_scales[n][slot, :, :width] = key_scales[row, :, group_width - width:]
                    self.value_scales[n][slot, :, :width] = value_scales[row, :, group_width - width:]
        index = torch.tensor(slots, device=self.device)
        self.tokens[index] = first
        self.pos[index] = next_pos
        self.lens[index] = torch.tensor(widths, device=self.device)
        self.count[index] = 1

    def move(self, source: int, target: int, width: int) -> None:
        """Move a row's first `width` columns and its state to another slot (compacting the rows before the tail
        of a run, so fewer rows are stepped)."""
        for cache in (*self.keys, *self.values, *self.key_scales, *self.value_scales):  # fp8: as stored
            cache[target, :, :width] = cache[source, :, :width]
        for state in (self.tokens, self.pos, self.lens, self.count):
            state[target] = state[source]

    # ---- the step -----------------------------------------------------------------------------------------------
    def step(self, width: int, rows: int = 0) -> torch.Tensor:
        """One decode step of the first `rows` rows (all when 0) over the first `width` columns (a multiple of
        WIDTH_STEP, at least the longest live row + 1); returns the picked tokens of all rows (also kept as the next
        input). Replays the recorded step on a GPU, recording it the first time this shape is used."""
        rows = rows or self.rows
        width = self.read_width(width)
        if not self.graphs_on:
            self._forward(width, rows)
            return self.tokens
        graph = self._graphs.get((rows, width))
        if graph is None:
            graph = self._record(width, rows)
        graph.replay()
        self.logits = self._logits[(rows, width)]
        return self.tokens

    def read_width(self, width: int) -> int:
        """The width a step is recorded for: with the per-row kernel, the slab's whole length (rows read only their
        own columns, so one recorded step serves every width); else the step's own width."""
        return self.length if self.spans else width

    def _record(self, width: int, rows: int) -> torch.cuda.CUDAGraph:
        # Warm-up runs change the state; it is put back before recording (recording itself computes nothing).
        saved = [t.clone() for t in (self.tokens, self.pos, self.lens, self.count)]
        side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            try:
                for _ in range(2):
                    self._forward(width, rows)
            except Exception as err:  # noqa: BLE001 - the compiler failed: the same step uncompiled
                if self._compiled is None:
                    raise
                log.warning("compiling the decode step failed, it runs uncompiled: %s", err)
                self._compiled = None
                for _ in range(2):
                    self._forward(width, rows)
        torch.cuda.current_stream(self.device).wait_stream(side)
        for tensor, value in zip((self.tokens, self.pos, self.lens, self.count), saved):
            tensor.copy_(value)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            self._forward(width, rows)
        assert self.logits is not None
        self._graphs[(rows, width)], self._logits[(rows, width)] = graph, self.logits
        return graph

    def tail_rows(self) -> list[int]:
        """The row counts a loop's tail steps, fewer as rows finish: the slab's rows halved while even, all of them
        first, down to 1, or to 2 where the step is compiled: torch.compile gives a size of 1 its own graph (2, 64
        and 128 rows share one), so a 1-row step compiles the layer halves again, to save nothing on a GPU, where a
        step at 1 or 2 rows costs the weights' reading. A worker's first loops spent 4.7 s (run T) and 8.1 s (run U)
        recording one step, and in run W the warm-up's recordings held back the first group; the 1-row step's
        compile is the likely cause (not GPU-measured)."""
        fewest = 2 if self._compiled is not None else 1
        counts = [self.rows]
        while counts[-1] % 2 == 0 and counts[-1] > fewest:
            counts.append(counts[-1] // 2)
        return counts

    def lacks(self, width: int, rows: int = 0) -> bool:
        """Whether the step of this shape is recorded when it first runs (a GPU slab that has not recorded it)."""
        return self.graphs_on and (rows or self.rows, self.read_width(width)) not in self._graphs

    def lacks_any(self, up_to: int, rows: int = 0) -> bool:
        """Whether `record_all(up_to, rows)` would record a step."""
        return any(self.lacks(width, rows) for width in self._widths(up_to))

    @property
    def recorded(self) -> int:
        """Steps recorded so far (0 where steps run eagerly)."""
        return len(self._graphs)

    def _widths(self, up_to: int) -> set[int]:
        return {self.read_width(w) for w in range(WIDTH_STEP, min(up_to, self.length) + 1, WIDTH_STEP)}

    def record_all(self, up_to: int, rows: int = 0) -> int:
        """Record the step of the first `rows` rows (all when 0) for every width up to `up_to` columns ahead of
        use (the app's warm-up); steps recorded in all."""
        for width in self._widths(up_to):
            if self.lacks(width, rows):
                self._record(width, rows or self.rows)
        return self.recorded

    def _forward(self, width: int, rows: int) -> None:
        lm = self.lm
        tokens, pos, lens, count = (t[:rows] for t in (self.tokens, self.pos, self.lens, self.count))
        hidden = lm.embed_tokens(tokens)[:, None]  # (rows, 1, hidden)
        cos, sin = lm.rotary_emb(hidden, pos.view(1, rows, 1).expand(3, rows, 1))
        cos, sin = cos[:, None], sin[:, None]  # (rows, 1, 1, head_dim): broadcast over heads
        write = lens.clamp(max=self.length - 1)  # finished rows keep stepping until refilled: stay inside
        seen = write + 1  # columns each row attends to, its new token's included
        visible = None if self.spans else spans.visible_columns(seen, width)
        into, out_of = (self._compiled if self.graphs_on and self._compiled else
                        (layer_in_fp8 if self.fp8 else layer_in, layer_out))
        at = (self.row_index[:rows], slice(None), write)  # each row's next free column
        for n, layer in enumerate(lm.layers):
            attn = layer.self_attn
            if self._weights:
                weights = self._weights[n]
                query, *new = into(hidden, cos[:, 0], sin[:, 0], self.eps, self.head_dim, self.kv_heads,
                                   *weights[:4])
            else:  # a quantized or otherwise special layer: its own modules
                query, key, value = _module_layer_in(layer, hidden, cos[:, 0], sin[:, 0], self.head_dim)
                new = [*quantize(key), *quantize(value)] if self.fp8 else [key, value]
            keys, values = self.keys[n][:rows], self.values[n][:rows]
            key_scales = value_scales = None
            if self.fp8:
                key_scales, value_scales = self.key_scales[n][:rows], self.value_scales[n][:rows]
            if self.spans and ONE_WRITE:  # one launch for the layer's two (fp8: four) index writes
                key, value = (new[0], new[2]) if self.fp8 else new
                spans.write_step(keys, values, key, value, write, key_scales, value_scales,
                                 key_scale=new[1] if self.fp8 else None, value_scale=new[3] if self.fp8 else None,
                                 interpret=self.interpret)
            elif key_scales is not None and value_scales is not None:
                # Written as bytes: index_put has no fp8 kernel on every build.
                keys.view(torch.uint8)[at] = new[0].view(torch.uint8)
                key_scales[at] = new[1]
                values.view(torch.uint8)[at] = new[2].view(torch.uint8)
                value_scales[at] = new[3]
            else:
                keys[at], values[at] = new
            # One query token per row, its query heads grouped per key/value head: the cache is read once.
            heads = query.shape[1]
            grouped = query.view(rows, self.kv_heads, heads // self.kv_heads, self.head_dim)
            if visible is None:
                out = spans.decode_attention(grouped, keys, values, seen, attn.scaling, interpret=self.interpret,
                                             key_scales=key_scales, value_scales=value_scales)
            else:
                keys, values = keys[:, :, :width], values[:, :, :width]
                if key_scales is not None and value_scales is not None:
                    keys = dequantize(keys, key_scales[:, :, :width], query.dtype)
                    values = dequantize(values, value_scales[:, :, :width], query.dtype)
                out = spans.masked_attention(grouped, keys, values, visible, attn.scaling)
            attended = out.reshape(rows, 1, heads * self.head_dim)
            if self._weights:
                hidden = out_of(hidden, attended, self.eps, *weights[4:])
            else:
                hidden = hidden + attn.o_proj(attended)
                hidden = hidden + layer.mlp(_rms_norm(layer.post_attention_layernorm, hidden))
        logits = self.lm_head(_rms_norm(lm.norm, hidden)[:, 0])
        self.logits = logits
        if self.banned is not None:
            logits = logits.masked_fill(self.banned[None], float("-inf"))
        if self.min_new:
            logits = logits.masked_fill((count < self.min_new)[:, None] & self.eos_mask[None], float("-inf"))
        tokens.copy_(logits.argmax(-1))
        pos.add_(1)
        lens.add_(1)
        count.add_(1)


def use_fp8(kv_cache: str, device: torch.device, kernel: bool) -> bool:
    """Whether a slab stores fp8 keys and values: `kv_cache` is the setting (KV_CACHES); `kernel`, whether the
    per-row kernel runs here (without it, "auto" keeps bf16: dequantising whole rows per step gains nothing).
    "auto" is bf16 while FP8_BY_DEFAULT is off."""
    if kv_cache not in KV_CACHES:
        raise ConfigError(f"kv_cache = {kv_cache!r} is not one of {', '.join(KV_CACHES)}",
                          "set KB_KV_CACHE to auto, bf16 or fp8")
    if kv_cache == "fp8" and not fp8_supported(device):
        raise ConfigError(f"kv_cache = 'fp8' needs a CUDA GPU of compute capability 8.9 or newer (device {device})",
                          "set KB_KV_CACHE to auto or bf16")
    return kv_cache == "fp8" or (kv_cache == "auto" and FP8_BY_DEFAULT and kernel and fp8_supported(device))


def _zeros_by_column(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros of `shape` (rows, heads, columns, head_dim) stored column-major in the last two dimensions."""
    rows, heads, columns, head_dim = shape
    return torch.zeros(rows, heads, head_dim, columns, dtype=dtype, device=device).transpose(2, 3)


def _rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    return rms(x, norm.weight, norm.variance_epsilon)


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The model's RMSNorm: computed in float32 and cast back before the weight, as the model does."""
    return torch.mul(weight, torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype))


def _module_layer_in(layer: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`layer_in` through a layer's own modules (a quantized or biased projection)."""
    attn, rows = layer.self_attn, hidden.shape[0]
    x = _rms_norm(layer.input_layernorm, hidden)
    query = _rms_norm(attn.q_norm, attn.q_proj(x).view(rows, -1, head_dim))
    key = _rms_norm(attn.k_norm, attn.k_proj(x).view(rows, -1, head_dim))
    value = attn.v_proj(x).view(rows, -1, head_dim)
    return turn(query, key, cos, sin) + (value,)


def turn(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE: queries and keys turn together."""
    heads = query.shape[1]
    turned = torch.cat((query, key), dim=1)
    turned = turned * cos + rotate_half(turned) * sin
    return turned[:, :heads], turned[:, heads:]


def layer_in(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float, head_dim: int, kv_heads: int,
             norm: torch.Tensor, qkv: Weight, q_norm: torch.Tensor, k_norm: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A decoder layer up to attention, for one token per row: the turned query and key, and the value.
    The query, key and value projections are one matrix product (`fuse_projections`). A plain function of
    tensors, so one compiled copy serves every layer."""
    rows = hidden.shape[0]
    x = rms(hidden, norm, eps)
    mixed = project(x, qkv).view(rows, -1, head_dim)  # (rows, heads + 2 kv_heads, head_dim)
    heads = mixed.shape[1] - 2 * kv_heads
    query = rms(mixed[:, :heads], q_norm, eps)
    key = rms(mixed[:, heads:heads + kv_heads], k_norm, eps)
    return turn(query, key, cos, sin) + (mixed[:, heads + kv_heads:],)


def layer_out(hidden: torch.Tensor, attended: torch.Tensor, eps: float, o_proj: Weight, norm: torch.Tensor,
              gate_up: Weight, down: Weight) -> torch.Tensor:
    """A decoder layer after attention: output projection, residual, the SiLU-gated MLP (gate and up one matrix
    product), residual."""
    hidden = hidden + project(attended, o_proj)
    gate, up = project(rms(hidden, norm, eps), gate_up).chunk(2, dim=-1)
    return hidden + project(torch.nn.functional.silu(gate) * up, down)


def plain_weights(lm: Any) -> list[LayerWeights] | None:
    """Each layer's weights in `layer_in`/`layer_out` order, or None when a layer is not plain (a projection
    quantized other than by fp8_weights.py, or biased; another activation): then the slab steps through the model's
    own modules."""
    weights: list[LayerWeights] = []
    for layer in lm.layers:
        attn = layer.self_attn
        linears = projections(layer)
        if any(type(m) not in PLAIN_LINEARS or getattr(m, "bias", None) is not None for m in linears) or \
                len({type(m) for m in linears}) > 1 or \
                type(layer.mlp.act_fn).__name__ not in ("SiLU", "SiLUActivation"):
            return None
        q, k, v, o, gate, up, down = linears
        weights.append((layer.input_layernorm.weight, fuse_projections([q, k, v]), attn.q_norm.weight,
                        attn.k_norm.weight, _weight(o), layer.post_attention_layernorm.weight,
                        fuse_projections([gate, up]), _weight(down)))
    return weights


def _weight(linear: torch.nn.Linear | Fp8Linear) -> Weight:
    return (linear.weight, linear.scale) if isinstance(linear, Fp8Linear) else linear.weight


def fuse_projections(linears: list[torch.nn.Module]) -> Weight:
    """One weight matrix holding these projections' outputs one after another (fp8: and one vector of their
    scales), so that one token's decode step reads them in one matrix product instead of several small ones (at one
    row, each product is a launch and a partly idle read). The modules' own weights become views into it: no second
    copy of the weights."""
    if isinstance(linears[0], Fp8Linear):
        return _fuse(linears, "weight"), _fuse(linears, "scale")
    return _fuse(linears, "weight")


def _fuse(linears: list[torch.nn.Module], name: str) -> torch.Tensor:
    """The modules' tensors `name` (weights or fp8 scales) as one, the modules' own tensors views into it."""
    owner, key = linears[0], FUSED + name
    fused: torch.Tensor | None = getattr(owner, key, None)
    if fused is not None and _views_into(fused, [getattr(m, name) for m in linears]):
        return fused  # fused when an earlier slab was made
    with torch.inference_mode(False), torch.no_grad():
        fused = torch.cat([getattr(m, name) for m in linears])
        at = 0
        for m in linears:
            rows = getattr(m, name).shape[0]
            view = fused[at:at + rows]
            if isinstance(m, Fp8Linear):
                setattr(m, name, view)  # a buffer
            else:
                m.weight = torch.nn.Parameter(view, requires_grad=False)
            at += rows
    setattr(owner, key, fused)
    return fused


FUSED = "_kb_fused_"  # + "weight" / "scale": where the first of the fused projections keeps the fused tensor


def _views_into(fused: torch.Tensor, parts: list[torch.Tensor]) -> bool:
    at = fused.data_ptr()
    for part in parts:
        if part.data_ptr() != at:
            return False
        at += part.numel() * part.element_size()
    return at == fused.data_ptr() + fused.numel() * fused.element_size()


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def width_for(columns: int, length: int) -> int:
    """The recorded width that covers `columns` columns."""
    return min(_round_up(max(1, columns), WIDTH_STEP), length)
