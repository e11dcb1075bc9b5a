"""Between the OpenAI protocol and the engines: validation against the model, sampling defaults,
the thread-to-event-loop bridge, and the SSE stream."""

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
from inference_gguf.catalog import SamplingDefaults
from inference_gguf.engine import (
    EngineBusy,
    EngineEvent,
    Failed,
    Finished,
    LlamaEngine,
    SamplingParams,
    Sequence,
    TemplateError,
    TextDelta,
)
from inference_gguf.metrics import ServiceMetrics

__all__ = ["ChatServing", "ClientGone", "Prepared"]

# Roles most chat templates know; "developer" is OpenAI's newer name for "system".
_ROLE_FOR_TEMPLATE = {"developer": "system"}


class ClientGone(Exception):
    """The client disconnected before a non-streamed answer was complete; the generation was cancelled."""


class Prepared:
    """A validated request, bound to its engine, with its events arriving on an asyncio queue."""

    def __init__(self, engine: LlamaEngine, request: ChatCompletionRequest, seq: Sequence,
                 events: asyncio.Queue[EngineEvent]) -> None:
        self.engine = engine
        self.request = request
        self.seq = seq
        self.events = events
        self.id = completion_id()
        self.created = int(time.time())


class ChatServing:
    def __init__(self, engines: dict[str, LlamaEngine], defaults: dict[str, SamplingDefaults],
                 metrics: ServiceMetrics, retry_after_s: int) -> None:
        self.engines = engines
        self.defaults = defaults
        self.metrics = metrics
        self.retry_after_s = retry_after_s

    def engine_for(self, model: str) -> LlamaEngine:
        engine = self.engines.get(model)
        if engine is None:
            raise APIError(404, f"The model '{model}' does not exist. Available models: "
                           f"{', '.join(sorted(self.engines))}.", param="model", code="model_not_found")
        if not engine.loaded:
            raise APIError(503, f"The model '{model}' is still loading; retry shortly.",
                           headers={"Retry-After": "5"})
        return engine

    async def prepare(self, request: ChatCompletionRequest) -> Prepared:
        """Validate against the model and queue the request; raises APIError (nothing is queued then)."""
        engine = self.engine_for(request.model)
        access_fields()["model"] = request.model
        messages = [{"role": _ROLE_FOR_TEMPLATE.get(m.role, m.role), "content": m.text}
                    for m in request.messages]
        try:
            prompt = engine.render(messages)
        except TemplateError as exc:
            self.metrics.rejected.labels(request.model, "template").inc()
            raise APIError(400, str(exc), param="messages") from exc
        tokens = await run_in_threadpool(engine.tokenize, prompt)
        params = self._sampling(request, engine, len(tokens))

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def sink(event: EngineEvent) -> None:  # runs on the engine thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        seq = Sequence(tokens, params, sink, request_id=request_id())
        try:
            engine.submit(seq)
        except EngineBusy as exc:
            self.metrics.rejected.labels(request.model, "queue_full").inc()
            raise APIError(429, f"{exc}; retry after {self.retry_after_s}s.", code="queue_full",
                           headers={"Retry-After": str(self.retry_after_s)}) from exc
        return Prepared(engine, request, seq, events)

    def _sampling(self, request: ChatCompletionRequest, engine: LlamaEngine, prompt_tokens: int) -> SamplingParams:
        n_ctx = engine.n_ctx
        if prompt_tokens >= n_ctx:
            self.metrics.rejected.labels(request.model, "context").inc()
            raise APIError(400, f"This model's maximum context length is {n_ctx} tokens, but the messages "
                           f"use {prompt_tokens} tokens. Shorten the messages.",
                           param="messages", code="context_length_exceeded")
        room = n_ctx - prompt_tokens
        requested = request.token_limit
        if requested is not None and requested > room:
            self.metrics.rejected.labels(request.model, "context").inc()
            raise APIError(400, f"This model's maximum context length is {n_ctx} tokens. However, you "
                           f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the messages, "
                           f"{requested} in the completion). Reduce max_tokens or the messages.",
                           param="max_tokens", code="context_length_exceeded")
        d = self.defaults[request.model]
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
        # Built as a dict: one chunk per token, and OpenAI's exact shape (finish_reason null until the end).
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
