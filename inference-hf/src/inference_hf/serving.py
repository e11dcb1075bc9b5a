"""Between the OpenAI protocol and the engine: the model lease, validation against the model, sampling
defaults, the worker-thread-to-event-loop bridge, and the SSE stream. Same semantics and errors as
inference-gguf, so a client cannot tell the two apart except by the models they serve."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from chat_common import sse
from chat_common.context import access_fields, request_id
from chat_common.errors import APIError
from chat_common.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ResponseMessage,
    Usage,
    completion_id,
)
from inference_hf.engine import (
    EngineBusy,
    EngineEvent,
    Failed,
    Finished,
    HFEngine,
    ModelInfo,
    ModelNotLoaded,
    SamplingParams,
    Sequence,
    TemplateError,
    TextDelta,
)
from inference_hf.manager import Lease, ModelManager
from inference_hf.metrics import ServiceMetrics

__all__ = ["ChatServing", "ClientGone", "Prepared"]

# Roles most chat templates know; "developer" is OpenAI's newer name for "system".
_ROLE_FOR_TEMPLATE = {"developer": "system"}


class ClientGone(Exception):
    """The client disconnected before a non-streamed answer was complete; the generation was cancelled."""


class Prepared:
    """A validated request, queued in the engine, with its events arriving on an asyncio queue."""

    def __init__(self, request: ChatCompletionRequest, seq: Sequence, events: asyncio.Queue[EngineEvent]) -> None:
        self.request = request
        self.seq = seq
        self.events = events
        self.id = completion_id()
        self.created = int(time.time())


class ChatServing:
    def __init__(self, engine: HFEngine, manager: ModelManager, metrics: ServiceMetrics, retry_after_s: int) -> None:
        self.engine = engine
        self.manager = manager
        self.metrics = metrics
        self.retry_after_s = retry_after_s

    async def prepare(self, request: ChatCompletionRequest) -> Prepared:
        """Validate against the model and queue the request; raises APIError (and holds nothing) on failure."""
        model = request.model
        lease = await self.manager.acquire(model)  # 404 unknown, 503 cannot load
        access_fields()["model"] = model
        try:
            return await self._queue(request, lease)
        except BaseException:
            lease.release()
            raise

    async def _queue(self, request: ChatCompletionRequest, lease: Lease) -> Prepared:
        model = request.model
        messages = [{"role": _ROLE_FOR_TEMPLATE.get(m.role, m.role), "content": m.text} for m in request.messages]
        try:
            info = self.engine.info(model)
            prompt = await run_in_threadpool(self.engine.render, model, messages)
            tokens = await run_in_threadpool(self.engine.tokenize, model, prompt)
        except TemplateError as exc:
            self.metrics.rejected.labels(model, "template").inc()
            raise APIError(400, str(exc), param="messages", code="chat_template") from exc
        except ModelNotLoaded as exc:  # not expected while the lease is held; say so plainly if it happens
            raise APIError(503, f"The model '{model}' was unloaded; retry.", headers={"Retry-After": "1"}) from exc
        params = self._sampling(request, info, len(tokens))

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def deliver(event: EngineEvent) -> None:  # on the event loop
            events.put_nowait(event)
            if not isinstance(event, TextDelta):
                lease.release()  # the engine is done with the sequence, whether anyone still listens

        def sink(event: EngineEvent) -> None:  # runs on the engine thread
            loop.call_soon_threadsafe(deliver, event)

        seq = Sequence(tokens, params, sink, request_id=request_id())
        try:
            self.engine.submit(model, seq)
        except EngineBusy as exc:
            self.metrics.rejected.labels(model, "queue_full").inc()
            raise APIError(429, f"{exc}; retry after {self.retry_after_s}s.", code="queue_full",
                           headers={"Retry-After": str(self.retry_after_s)}) from exc
        except ModelNotLoaded as exc:
            raise APIError(503, f"The model '{model}' was unloaded; retry.", headers={"Retry-After": "1"}) from exc
        return Prepared(request, seq, events)

    def _sampling(self, request: ChatCompletionRequest, info: ModelInfo, prompt_tokens: int) -> SamplingParams:
        n_ctx = info.context_length
        # An encoder-decoder model reads the prompt with its encoder and writes with its decoder: each
        # has the whole context; a decoder-only model fits both into one.
        too_long = prompt_tokens > n_ctx if info.is_encoder_decoder else prompt_tokens >= n_ctx
        if too_long:
            self.metrics.rejected.labels(request.model, "context").inc()
            raise APIError(400, f"This model's maximum context length is {n_ctx} tokens, but the messages "
                           f"use {prompt_tokens} tokens. Shorten the messages.",
                           param="messages", code="context_length_exceeded")
        room = n_ctx - 1 if info.is_encoder_decoder else n_ctx - prompt_tokens
        requested = request.token_limit
        if requested is not None and requested > room:
            self.metrics.rejected.labels(request.model, "context").inc()
            if info.is_encoder_decoder:
                message = (f"This model writes at most {room} tokens, but you requested {requested} "
                           "(max_tokens). Reduce max_tokens.")
            else:
                message = (f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                           f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in "
                           "the completion). Reduce max_tokens or the messages.")
            raise APIError(400, message, param="max_tokens", code="context_length_exceeded")
        d = self.manager.state(request.model).spec.defaults
        stop = request.stop_sequences
        return SamplingParams(
            temperature=_pick(request.temperature, d.temperature),
            top_p=_pick(request.top_p, d.top_p),
            top_k=_pick(request.top_k, d.top_k),
            min_p=_pick(request.min_p, d.min_p),
            repeat_penalty=_pick(request.repeat_penalty, d.repeat_penalty),
            presence_penalty=_pick(request.presence_penalty, d.presence_penalty),
            frequency_penalty=_pick(request.frequency_penalty, d.frequency_penalty),
            max_tokens=min(requested or d.max_tokens or room, room),
            stop=tuple(d.stop if stop is None else stop),
            seed=request.seed,
            ignore_eos=request.ignore_eos,
        )

    async def complete(self, prepared: Prepared, disconnected: Callable[[], Awaitable[None]]) -> ChatCompletion:
        """Wait for the whole answer; a client that goes away cancels the generation."""
        watcher = asyncio.ensure_future(disconnected())
        parts: list[str] = []
        try:
            while True:
                getter = asyncio.ensure_future(prepared.events.get())
                await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    raise ClientGone()
                event = getter.result()
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, Finished):
                    return self._completion(prepared, "".join(parts), event)
                else:
                    raise APIError(500, event.message)
        finally:
            watcher.cancel()
            prepared.seq.cancel()

    def _completion(self, prepared: Prepared, text: str, event: Finished) -> ChatCompletion:
        self._count_usage(event)
        return ChatCompletion(
            id=prepared.id, created=prepared.created, model=prepared.request.model,
            choices=[Choice(message=ResponseMessage(content=text), finish_reason=_reason(event))],
            usage=_usage(event),
        )

    async def stream(self, prepared: Prepared) -> AsyncIterator[bytes]:
        """SSE events; if the client disconnects the generator is closed and the sequence cancelled."""
        include_usage = bool(prepared.request.stream_options and prepared.request.stream_options.include_usage)
        try:
            yield self._chunk(prepared, {"role": "assistant", "content": ""})
            while True:
                event = await prepared.events.get()
                if isinstance(event, TextDelta):
                    yield self._chunk(prepared, {"content": event.text})
                elif isinstance(event, Finished):
                    self._count_usage(event)
                    yield self._chunk(prepared, {}, finish_reason=_reason(event))
                    if include_usage:
                        usage = ChatCompletionChunk(id=prepared.id, created=prepared.created,
                                                    model=prepared.request.model, choices=[], usage=_usage(event))
                        yield sse.event(usage.model_dump(mode="json"))
                    break
                elif isinstance(event, Failed):
                    yield sse.error_event(event.message)
                    break
            yield sse.DONE
        finally:
            prepared.seq.cancel()

    def _chunk(self, prepared: Prepared, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        # Built as a dict: one chunk per token, in OpenAI's exact shape (finish_reason null until the end).
        return sse.event({
            "id": prepared.id, "object": "chat.completion.chunk", "created": prepared.created,
            "model": prepared.request.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        })

    def _count_usage(self, event: Finished) -> None:
        fields = access_fields()
        fields["prompt_tokens"] = event.prompt_tokens
        fields["completion_tokens"] = event.completion_tokens


T = TypeVar("T")


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


def _reason(event: Finished) -> str:
    # "cancelled" never reaches a client: nobody is listening any more.
    return "length" if event.finish_reason == "length" else "stop"


def _usage(event: Finished) -> Usage:
    return Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                 total_tokens=event.prompt_tokens + event.completion_tokens)
