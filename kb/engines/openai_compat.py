"""The `openai` engine: Qwen3-VL behind an OpenAI-compatible server (vLLM, SGLang), over HTTP.

Images travel as data URIs; a video clip travels as vLLM's list of JPEG frames
(`data:video/jpeg;base64,<f1>,<f2>,...`) with its true fps and frame indices in `media_io_kwargs`, so the
model's prompt carries the real `<t seconds>` stamps even for a window deep into a long video. That field
needs the server flag `--trust-request-mm-kwargs`.
"""
from __future__ import annotations

import base64
import io
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from PIL import Image

from kb.config import Settings
from kb.engines.guard import trim_repetition
from kb.errors import EngineError, EngineUnavailable
from kb.types import Request, VideoClip

log = logging.getLogger(__name__)
T = TypeVar("T")

START_SERVER_FIX = (
    "start a server, e.g. `vllm serve Qwen/Qwen3-VL-4B-Instruct --trust-request-mm-kwargs --port 8000` "
    "and set KB_OPENAI_BASE_URL=http://localhost:8000/v1, or set KB_ENGINE=ocr to index without a model"
)
# A mild penalty against the loops Qwen3-VL falls into on tables; vLLM takes it as an extra sampling field.
REPETITION_PENALTY = 1.05
# How often (in characters) a stream is checked for a runaway loop.
STREAM_LOOP_CHECK = 200


@dataclass(frozen=True)
class Completion:
    """One answer with the server's token accounting (for throughput reports and for tests of what it saw)."""

    text: str
    prompt_tokens: int  # text + image + video tokens the server's processor made of the request
    completion_tokens: int
    finish_reason: str  # "stop", or "length" when max_new_tokens cut it


class OpenAIEngine:
    """Talks to `settings.openai_base_url`; construction is cheap and sends nothing (see `check()`)."""

    name = "openai"
    can_caption = True
    generative = True
    slots = 0
    server_batched = True

    def __init__(self, settings: Settings, *, retries: int = 4, backoff: float = 1.0, timeout: float = 600.0,
                 connect_timeout: float = 10.0, repetition_penalty: float | None = REPETITION_PENALTY) -> None:
        self.settings = settings
        self.picture_pixels = settings.image_max_pixels  # pictures are scaled to this budget before it reads them
        self.model = settings.model
        self.device = settings.openai_base_url
        self.retries = retries
        self.backoff = backoff
        self.repetition_penalty = repetition_penalty
        self._senders: ThreadPoolExecutor | None = None  # the threads that keep requests in flight
        self._senders_made = threading.Lock()
        # Retries are ours (they know which errors are worth it); the client's own are switched off.
        self.client = openai.OpenAI(base_url=settings.openai_base_url, api_key=settings.openai_api_key or "EMPTY",
                                    max_retries=0, timeout=openai.Timeout(timeout, connect=connect_timeout))

    # ---- the Engine protocol -------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> list[str]:
        return [c.text for c in self.complete(requests)]

    def complete(self, requests: Sequence[Request]) -> list[Completion]:
        """`generate` with token counts: up to `settings.concurrency` requests in flight, results in order."""
        return self._gathered(requests).result()

    def submit(self, requests: Sequence[Request]) -> Future[list[str]]:
        """Hand over a batch while earlier ones are still in flight (`kb.engines.submitter`): its requests queue
        behind theirs on the same `settings.concurrency` senders, so the server's batch stays full while an earlier
        batch's longest answers finish, and a run of batches ends in one drained tail, not one per batch. The
        future holds the texts in request order, or the first error (the batch's requests not yet sent are then
        dropped); cancelling it drops those not yet sent."""
        texts: Future[list[str]] = Future()
        completions = self._gathered(requests)

        def done(whole: Future[list[Completion]]) -> None:
            if whole.cancelled() or not texts.set_running_or_notify_cancel():
                return
            try:
                texts.set_result([c.text for c in whole.result()])
            except BaseException as err:  # noqa: BLE001 - the batch's error goes to its caller
                texts.set_exception(err)

        completions.add_done_callback(done)
        texts.add_done_callback(lambda t: completions.cancel() if t.cancelled() else None)
        return texts

    def _gathered(self, requests: Sequence[Request]) -> Future[list[Completion]]:
        """Each request queued on the engine's senders; one future for all of them (`gather`)."""
        with self._senders_made:
            if self._senders is None:  # made once and kept: batches handed over back to back share them
                self._senders = ThreadPoolExecutor(max_workers=self.settings.concurrency,
                                                   thread_name_prefix="kb-openai")
        return gather([self._senders.submit(self._complete_one, r) for r in requests])

    def stream(self, request: Request) -> Iterator[str]:
        chunks = self._call(lambda: self.client.chat.completions.create(stream=True, **self._params(request)))
        text = ""
        checked = 0
        try:
            for chunk in self._guard_stream(chunks):
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if not piece:
                    continue
                text += piece
                yield piece
                if len(text) - checked >= STREAM_LOOP_CHECK:
                    checked = len(text)
                    if trim_repetition(text) != text:
                        log.warning("stopped a looping answer after %d characters", len(text))
                        return
        finally:
            chunks.close()

    # ---- health check ----------------------------------------------------------------------------------

    def served_models(self) -> list[str]:
        """The model names the server lists at /v1/models."""
        return [m.id for m in self._call(self.client.models.list).data]

    def check(self) -> None:
        """Raise EngineUnavailable if the server is down, EngineError if it does not serve `settings.model`."""
        served = self.served_models()
        if self.model not in served:
            raise EngineError(f"the server at {self.device} does not serve model {self.model!r}",
                              f"set KB_MODEL to one of the served models: {', '.join(served) or '(none)'}")

    # ---- one request -------------------------------------------------------------------------------------

    def _complete_one(self, request: Request) -> Completion:
        response = self._call(lambda: self.client.chat.completions.create(**self._params(request)))
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return Completion(text=trim_repetition(choice.message.content or "") if choice else "",
                          prompt_tokens=usage.prompt_tokens if usage else 0,
                          completion_tokens=usage.completion_tokens if usage else 0,
                          finish_reason=(choice.finish_reason if choice else None) or "stop")

    def _params(self, request: Request) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        # Not for transcription: a penalty on repeated tokens garbles tables ("| | |") and repeated numbers.
        if self.repetition_penalty is not None and request.task != "ocr":
            extra["repetition_penalty"] = self.repetition_penalty
        if request.video is not None:
            extra["media_io_kwargs"] = {"video": video_kwargs(request.video)}
        return {"model": self.model, "messages": self._messages(request), "max_tokens": request.max_new_tokens,
                "temperature": request.temperature, "top_p": request.top_p, "extra_body": extra}

    def _messages(self, request: Request) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages += [{"role": role, "content": text} for role, text in request.history]
        # Lossless PNG keeps small print sharp for transcription; JPEG keeps photos small on the wire.
        fmt = "PNG" if request.task == "ocr" else "JPEG"
        content: list[dict[str, Any]] = []
        for image in request.images:
            image = fit_pixels(image, self.settings.image_max_pixels, self.settings.image_min_pixels)
            content.append({"type": "image_url", "image_url": {"url": data_uri(image, fmt)}})
        if request.video is not None:
            content.append({"type": "video_url", "video_url": {"url": video_uri(request.video,
                                                                                  self.settings.video_max_pixels)}})
        content.append({"type": "text", "text": request.prompt})
        messages.append({"role": "user", "content": content})
        return messages

    # ---- errors and retries ------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one HTTP call, retrying what may pass (no connection, 5xx, 429) with exponential backoff."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (openai.APITimeoutError, openai.APIStatusError) as err:
                if not _retryable(err) or attempt == self.retries:
                    raise self._translate(err) from err
                problem: openai.APIError = err
            except openai.APIConnectionError as err:
                if attempt == self.retries:
                    raise self._translate(err) from err
                problem = err
            wait = min(self.backoff * 2 ** attempt, 30.0)
            log.warning("%s: %s; retrying in %.1f s", self.device, _short(problem), wait)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _guard_stream(self, chunks: Iterator[Any]) -> Iterator[Any]:
        """A stream that breaks after its first byte is not retried (the text is already shown): translate."""
        try:
            yield from chunks
        except openai.APIError as err:
            raise self._translate(err) from err

    def _translate(self, err: openai.APIError) -> EngineError:
        url = self.device
        if isinstance(err, openai.APITimeoutError):
            return EngineUnavailable(f"the model server at {url} did not answer in time",
                                     "check the server's load and log; lower KB_CONCURRENCY or KB_BATCH_SIZE",
                                     code="engine.timeout", params={"url": url})
        if isinstance(err, openai.APIConnectionError):
            return EngineUnavailable(f"cannot reach the model server at {url} ({_short(err)})", START_SERVER_FIX,
                                     code="engine.unreachable", params={"url": url, "detail": _short(err)})
        assert isinstance(err, openai.APIStatusError)
        status, detail = err.status_code, _short(err)
        if status in (401, 403):
            return EngineError(f"the server at {url} refused the API key ({status}: {detail})",
                               "set KB_OPENAI_API_KEY to a key the server accepts")
        if status == 404:
            return self._not_found(detail)
        if status == 429 or status >= 500:
            return EngineUnavailable(f"the model server at {url} keeps failing ({status}: {detail})",
                                     "read the server's log; lower KB_CONCURRENCY if it is overloaded",
                                     code="engine.failing", params={"url": url, "status": status, "detail": detail})
        return EngineError(f"the server at {url} rejected the request ({status}: {detail})", _bad_request_fix(detail))

    def _not_found(self, detail: str) -> EngineError:
        if "model" in detail.lower():
            try:
                served = ", ".join(self.served_models()) or "(none)"
            except EngineError:
                served = "see GET /v1/models"
            return EngineError(f"model {self.model!r} is not served at {self.device} ({detail})",
                               f"check KB_MODEL against the server's /v1/models list: {served}")
        return EngineError(f"{self.device} has no chat completions endpoint ({detail})",
                           "KB_OPENAI_BASE_URL must be the API root, usually ending in /v1")


def gather(parts: list[Future[T]]) -> Future[list[T]]:
    """One future for several: their results in order once all are done, or the first one's error (the others
    are then cancelled: those not yet begun are dropped). Cancelling it cancels those not yet begun."""
    whole: Future[list[T]] = Future()
    left = [len(parts)]
    lock = threading.Lock()

    def settle(set_it: Callable[[], None]) -> None:
        try:
            set_it()
        except InvalidStateError:  # cancelled, or failed by another part, meanwhile
            pass

    def part_done(part: Future[T]) -> None:
        with lock:
            if whole.done():
                return
            if part.cancelled() or part.exception() is not None:
                problem = part.exception() if not part.cancelled() else InterruptedError("a request was cancelled")
                settle(lambda: whole.set_exception(problem))
            else:
                left[0] -= 1
                if left[0]:
                    return
                settle(lambda: whole.set_result([p.result() for p in parts]))
        for other in parts:  # after a failure (a no-op for those done)
            other.cancel()

    whole.add_done_callback(lambda w: [p.cancel() for p in parts] if w.cancelled() else None)
    if not parts:
        whole.set_result([])
    for part in parts:
        part.add_done_callback(part_done)
    return whole


# ---- payloads ----------------------------------------------------------------------------------------------

def fit_pixels(image: Image.Image, max_pixels: int, min_pixels: int = 0) -> Image.Image:
    """Scale to within [min_pixels, max_pixels] keeping the aspect ratio: the budget bounds the visual tokens."""
    w, h = image.size
    area = w * h
    if area > max_pixels:
        scale = math.sqrt(max_pixels / area)
    elif 0 < area < min_pixels:
        scale = math.sqrt(min_pixels / area)
    else:
        return image
    # floor keeps a downscale inside the budget; ceil keeps an upscale at or above the minimum
    rnd = math.floor if scale < 1 else math.ceil
    size = (max(1, rnd(w * scale)), max(1, rnd(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    # JPEG has no alpha or palette; PNG keeps grey and alpha as they are
    if image.mode not in (("RGB",) if fmt == "JPEG" else ("RGB", "RGBA", "L")):
        image = image.convert("RGB")
    # zlib level 1, not PNG's default 6: half the CPU on a scanned page (33 against 64 ms at 1.3 MP) for ~10 % more
    # bytes, and a bulk ingest encodes hundreds of pages a minute for a server that is usually on the same network
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def data_uri(image: Image.Image, fmt: str) -> str:
    return f"data:image/{fmt.lower()};base64,{encode(image, fmt)}"


def video_uri(clip: VideoClip, max_pixels: int) -> str:
    """vLLM's frame-list video: JPEG frames, base64, comma-separated."""
    frames = (encode(fit_pixels(f, max_pixels), "JPEG") for f in clip.frames)
    return "data:video/jpeg;base64," + ",".join(frames)


def video_kwargs(clip: VideoClip) -> dict[str, Any]:
    """Where the frames sit in the source, so the server's processor stamps their true times."""
    if len(clip.frame_indices) != len(clip.frames):
        raise EngineError(f"video clip has {len(clip.frames)} frames but {len(clip.frame_indices)} frame indices",
                          "this is a bug in the video reader: report it")
    return {"fps": float(clip.fps), "total_num_frames": int(clip.total_frames),
            "frames_indices": [int(i) for i in clip.frame_indices]}


# ---- error helpers -------------------------------------------------------------------------------------

def _retryable(err: openai.APIError) -> bool:
    if isinstance(err, openai.APIStatusError):
        return err.status_code == 429 or err.status_code >= 500
    return False  # a read timeout means a slow server: asking again would wait as long again


def _short(err: openai.APIError) -> str:
    """The server's own message when its JSON body has one, else the client's."""
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        if message:
            return str(message)[:500]
    cause = err.__cause__
    return f"{err.message}: {cause}" if cause and str(cause) else err.message


def _bad_request_fix(detail: str) -> str:
    text = detail.lower()
    if "context length" in text or "too long" in text or "max_model_len" in text or "maximum" in text:
        return ("the prompt plus images does not fit the server's context: lower KB_IMAGE_MAX_PIXELS or "
                "KB_VIDEO_MAX_PIXELS, or start the server with a larger --max-model-len")
    if "media_io_kwargs" in text or "trust" in text:
        return "start the server with --trust-request-mm-kwargs (needed to send a video's true timestamps)"
    if "image" in text or "video" in text:
        return "the image or video could not be decoded by the server: check the input file"
    return "read the server's message above; the server may not support this model or field"
