"""The HTTP side of an inference engine, the same for inference-gguf and inference-hf: checking a request
against the model's context, sampling defaults, the bridge from the engine's thread to the event loop, the
non-streamed answer, the SSE stream, the chat route and the generation metrics. A client cannot tell the two
services apart except by the models they serve.

A service subclasses :class:`EngineServing` and implements :meth:`EngineServing.prepare` (find the model,
render and tokenize the prompt, queue a :class:`~chat_common.generation.Sequence`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import Response

from chat_common import sse
from chat_common.answer_filter import FILTER_HEADER, FilterSpec, StreamShaper, requested_filter
from chat_common.context import access_fields
from chat_common.errors import APIError
from chat_common.generation import (
    EngineBusy,
    EngineEvent,
    Failed,
    Finished,
    SamplingDefaults,
    SamplingParams,
    Sequence,
    TextDelta,
)
from chat_common.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ResponseMessage,
    Usage,
    completion_id,
)
from chat_common.requests import parse_chat_request
from chat_common.unsupported import refuse_unsupported

__all__ = [
    "ClientGone",
    "EngineServing",
    "GenerationMetrics",
    "Prepared",
    "event_bridge",
    "serve_chat",
    "template_messages",
]

# Roles most chat templates know; "developer" is OpenAI's newer name for "system".
_ROLE_FOR_TEMPLATE = {"developer": "system"}


def template_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
    """The messages as chat templates expect them."""
    return [{"role": _ROLE_FOR_TEMPLATE.get(m.role, m.role), "content": m.text} for m in request.messages]


class ClientGone(Exception):
    """The client disconnected before a non-streamed answer was complete; the generation was cancelled."""


class Prepared:
    """A validated request, queued in an engine, with its events arriving on an asyncio queue."""

    def __init__(self, request: ChatCompletionRequest, seq: Sequence, events: asyncio.Queue[EngineEvent]) -> None:
        self.request = request
        self.seq = seq
        self.events = events
        self.id = completion_id()
        self.created = int(time.time())


class GenerationMetrics:
    """The Prometheus series every inference service keeps, named ``{prefix}_...``, on the app's own
    registry; implements the observer calls both engines make."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.registry = registry
        self.requests = Counter(
            f"{prefix}_requests",
            "Finished generations by finish reason (stop, length, cancelled, error).",
            ["model", "finish_reason"],
            registry=registry,
        )
        self.rejected = Counter(
            f"{prefix}_rejected",
            "Requests refused before generation, by reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            f"{prefix}_prompt_tokens", "Prompt tokens processed.", ["model"], registry=registry
        )
        self.generation_tokens = Counter(
            f"{prefix}_generation_tokens", "Tokens generated (sampled and accepted).", ["model"], registry=registry
        )
        self.queue = Gauge(f"{prefix}_queue_depth", "Requests waiting for the model.", ["model"], registry=registry)
        self.running_sequences = Gauge(f"{prefix}_running", "Sequences generating now.", ["model"], registry=registry)
        self.loaded = Gauge(f"{prefix}_model_loaded", "1 while the model is loaded.", ["model"], registry=registry)
        self.first_token = Histogram(
            f"{prefix}_time_to_first_token_seconds",
            "From the start of decoding to the first token (prompt processing included).",
            ["model"],
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    # the engines' observer calls (on their worker threads; prometheus_client is thread-safe)
    def queue_depth(self, model: str, depth: int) -> None:
        self.queue.labels(model).set(depth)

    def running(self, model: str, count: int) -> None:
        self.running_sequences.labels(model).set(count)

    def tokens(self, model: str, count: int) -> None:
        if count:
            self.generation_tokens.labels(model).inc(count)

    def finished(self, model: str, event: Finished, first_token_s: float | None) -> None:
        self.requests.labels(model, event.finish_reason).inc()
        self.prompt_tokens.labels(model).inc(event.prompt_tokens)
        if first_token_s is not None:
            self.first_token.labels(model).observe(first_token_s)

    def failed(self, model: str) -> None:
        self.requests.labels(model, "error").inc()


class EngineServing:
    """Between the OpenAI protocol and an engine; subclasses implement :meth:`prepare`."""

    def __init__(self, metrics: GenerationMetrics, retry_after_s: int, default_max_tokens: int) -> None:
        self.metrics = metrics
        self.retry_after_s = retry_after_s
        # The answer length when neither the request nor the model's defaults set one (0: until the context is full).
        self.default_max_tokens = default_max_tokens

    async def prepare(self, request: ChatCompletionRequest) -> Prepared:
        """Validate against the model and queue the request; raises APIError (and queues nothing) on failure."""
        raise NotImplementedError

    # -- helpers for prepare() -----------------------------------------------------------------------------
    def refuse_unsupported(self, request: ChatCompletionRequest, *, structured_output: bool) -> None:
        """400 naming the first field the model would otherwise ignore (:mod:`chat_common.unsupported`)."""
        try:
            refuse_unsupported(request, structured_output=structured_output)
        except APIError:
            self.metrics.rejected.labels(request.model, "unsupported").inc()
            raise

    def template_failed(self, model: str, exc: Exception) -> APIError:
        self.metrics.rejected.labels(model, "template").inc()
        return APIError(400, str(exc), param="messages", code="chat_template")

    def queue(
        self,
        request: ChatCompletionRequest,
        seq: Sequence,
        submit: Callable[[Sequence], None],
        events: asyncio.Queue[EngineEvent],
    ) -> Prepared:
        """Hand ``seq`` to the engine through ``submit``; a full queue is 429 with ``Retry-After``."""
        try:
            submit(seq)
        except EngineBusy as exc:
            self.metrics.rejected.labels(request.model, "queue_full").inc()
            raise APIError(
                429,
                f"{exc}; retry after {self.retry_after_s}s.",
                code="queue_full",
                headers={"Retry-After": str(self.retry_after_s)},
            ) from exc
        return Prepared(request, seq, events)

    def sampling(
        self,
        request: ChatCompletionRequest,
        defaults: SamplingDefaults,
        *,
        n_ctx: int,
        prompt_tokens: int,
        encoder_decoder: bool = False,
    ) -> SamplingParams:
        """The request's sampling over the model's defaults, after checking that it fits the context: 400
        ``context_length_exceeded`` with the token counts when it does not.

        A decoder-only model fits prompt and answer into one context; an encoder-decoder model reads the
        prompt with its encoder and writes with its decoder, each with the whole context."""
        too_long = prompt_tokens > n_ctx if encoder_decoder else prompt_tokens >= n_ctx
        if too_long:
            self.metrics.rejected.labels(request.model, "context").inc()
            raise APIError(
                400,
                f"This model's maximum context length is {n_ctx} tokens, but the messages "
                f"use {prompt_tokens} tokens. Shorten the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        room = n_ctx - 1 if encoder_decoder else n_ctx - prompt_tokens
        requested = request.token_limit
        if requested is not None and requested > room:
            self.metrics.rejected.labels(request.model, "context").inc()
            if encoder_decoder:
                message = (
                    f"This model writes at most {room} tokens, but you requested {requested} "
                    "(max_tokens). Reduce max_tokens."
                )
            else:
                message = (
                    f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                    f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in "
                    "the completion). Reduce max_tokens or the messages."
                )
            raise APIError(400, message, param="max_tokens", code="context_length_exceeded")
        d = defaults
        stop = request.stop_sequences
        return SamplingParams(
            temperature=_pick(request.temperature, d.temperature),
            top_p=_pick(request.top_p, d.top_p),
            top_k=_pick(request.top_k, d.top_k),
            min_p=_pick(request.min_p, d.min_p),
            repeat_penalty=_pick(request.repeat_penalty, d.repeat_penalty),
            presence_penalty=_pick(request.presence_penalty, d.presence_penalty),
            frequency_penalty=_pick(request.frequency_penalty, d.frequency_penalty),
            # request, then the model's default, then the service's: a request without max_tokens ends, with
            # finish_reason "length", long before it could fill the context.
            max_tokens=min(requested or d.max_tokens or self.default_max_tokens or room, room),
            stop=tuple(d.stop if stop is None else stop),
            seed=request.seed,
            ignore_eos=request.ignore_eos,
        )

    # -- answering ----------------------------------------------------------------------------------------
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
                    _count_usage(event)
                    return ChatCompletion(
                        id=prepared.id,
                        created=prepared.created,
                        model=prepared.request.model,
                        choices=[Choice(message=ResponseMessage(content="".join(parts)), finish_reason=_reason(event))],
                        usage=_usage(event),
                    )
                else:
                    raise APIError(500, event.message)
        finally:
            watcher.cancel()
            prepared.seq.cancel()

    async def stream(self, prepared: Prepared, spec: FilterSpec | None = None) -> AsyncIterator[bytes]:
        """SSE events; if the client disconnects the generator is closed and the sequence cancelled.
        ``spec``: the answer filter the request pushed down (:mod:`chat_common.answer_filter`)."""
        include_usage = bool(prepared.request.stream_options and prepared.request.stream_options.include_usage)
        shaper = StreamShaper(spec) if spec is not None and spec.shapes_text else None
        try:
            yield _chunk(prepared, shaper.role if shaper is not None else {"role": "assistant", "content": ""})
            while True:
                event = await prepared.events.get()
                if isinstance(event, TextDelta):
                    if shaper is None:
                        yield _chunk(prepared, {"content": event.text})
                        continue
                    for delta, finish in shaper.feed(event.text):
                        yield _chunk(prepared, delta, finish)
                    if shaper.blocked:
                        break
                elif isinstance(event, Finished):
                    _count_usage(event)
                    if shaper is not None:
                        for delta, finish in shaper.finish():
                            yield _chunk(prepared, delta, finish)
                        if shaper.blocked:
                            break
                    yield _chunk(prepared, {}, finish_reason=_reason(event))
                    if include_usage:
                        usage = ChatCompletionChunk(
                            id=prepared.id,
                            created=prepared.created,
                            model=prepared.request.model,
                            choices=[],
                            usage=_usage(event),
                        )
                        yield sse.event(usage.model_dump(mode="json"))
                    break
                elif isinstance(event, Failed):
                    yield sse.error_event(event.message)
                    break
            yield sse.DONE
        finally:
            prepared.seq.cancel()


def event_bridge(
    on_final: Callable[[], None] | None = None,
) -> tuple[asyncio.Queue[EngineEvent], Callable[[EngineEvent], None]]:
    """An asyncio queue and the ``sink`` that fills it from the engine's thread (call on the event loop).
    ``on_final`` runs on the event loop once the engine is done with the sequence (its last event)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[EngineEvent] = asyncio.Queue()

    def deliver(event: EngineEvent) -> None:
        events.put_nowait(event)
        if on_final is not None and not isinstance(event, TextDelta):
            on_final()

    def sink(event: EngineEvent) -> None:  # on the engine thread
        loop.call_soon_threadsafe(deliver, event)

    return events, sink


async def serve_chat(request: Request, serving: EngineServing) -> Response:
    """``POST /v1/chat/completions`` of an inference service."""
    body = parse_chat_request(await request.body())
    spec = requested_filter(body)  # a bad one is a 400 before anything is queued
    prepared = await serving.prepare(body)
    headers = None
    if spec is not None:
        headers = {FILTER_HEADER: "1"}
        if spec.answer_model:  # after prepare, the request's model is only the name the answer gives
            prepared.request = prepared.request.model_copy(update={"model": spec.answer_model})
    if body.stream:
        return sse.EventStreamResponse(serving.stream(prepared, spec), on_close=prepared.seq.cancel, headers=headers)

    async def disconnected() -> None:  # the body has been read, so only a disconnect can arrive
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        completion = await serving.complete(prepared, disconnected)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; recorded as such in the access log
    if spec is not None:
        payload = StreamShaper.completion(spec, completion.model_dump(mode="json"))
        return Response(orjson.dumps(payload), media_type="application/json", headers=headers)
    return Response(completion.model_dump_json(), media_type="application/json")


def _chunk(prepared: Prepared, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    # Built as a dict: one chunk per token, in OpenAI's exact shape (finish_reason null until the end).
    return sse.event(
        {
            "id": prepared.id,
            "object": "chat.completion.chunk",
            "created": prepared.created,
            "model": prepared.request.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
    )


def _count_usage(event: Finished) -> None:
    fields = access_fields()
    fields["prompt_tokens"] = event.prompt_tokens
    fields["completion_tokens"] = event.completion_tokens


T = TypeVar("T")


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


def _reason(event: Finished) -> Literal["stop", "length"]:
    # "cancelled" never reaches a client: nobody is listening any more.
    return "length" if event.finish_reason == "length" else "stop"


def _usage(event: Finished) -> Usage:
    return Usage(
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.prompt_tokens + event.completion_tokens,
    )
