"""The in-process engine: Qwen3-VL (2B/4B/8B Instruct, or a local folder) through transformers 5.x.

Batches are generated in one `generate()` call with left padding; each row stops on its own (its token limit,
end of turn, or a loop) and video frames keep their true `<t seconds>` stamps.
"""
from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from kb.config import VISUAL_TOKEN_PIXELS, Settings
from kb.engines import batch_size_for
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
        return inputs.to(self._net.device)

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
        return kwargs, stop

    def generate_ids(self, requests: Sequence[Request]) -> list[list[int]]:
        """Generated token ids per request, in order; batches of at most `batch_size` requests each."""
        out: list[list[int]] = []
        size = batch_size_for(self.settings, self)
        for start in range(0, len(requests), size):
            out.extend(self._generate_batch(requests[start:start + size]))
        return out

    def _generate_batch(self, requests: Sequence[Request]) -> list[list[int]]:
        kwargs, stop = self._generate_kwargs(requests)
        prompt_len = stop.prompt_len
        try:
            with self._lock, torch.inference_mode():
                sequences = self._net.generate(**kwargs)
        except torch.cuda.OutOfMemoryError as err:
            raise EngineError(f"GPU out of memory while generating a batch of {len(requests)}",
                              "lower KB_BATCH_SIZE or KB_IMAGE_MAX_PIXELS, or set KB_QUANT=nf4") from err
        new = sequences[:, prompt_len:].tolist()
        return [stop.row_ids(row, tokens) for row, tokens in enumerate(new)]

    def decode(self, ids: list[int]) -> str:
        return trim_repetition(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(self, requests: Sequence[Request]) -> list[str]:
        return [self.decode(ids) for ids in self.generate_ids(requests)]

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

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            yield from (piece for piece in streamer if piece)
        finally:  # also when the reader stops early: end generation instead of running to the token limit
            stop.cancelled = True
            worker.join()
        if errors:
            raise EngineError(f"generation failed: {errors[0]}",
                              "see the log; lower KB_IMAGE_MAX_PIXELS if the GPU ran out of memory") from errors[0]
