"""Between the OpenAI protocol and the llama.cpp engines: which engine serves the model, the prompt from the
model's own template, and the engine's queue. The rest (context check, sampling, streaming) is
:class:`chat_common.engine_serving.EngineServing`, shared with inference-hf."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from chat_common.context import access_fields, request_id
from chat_common.engine_serving import EngineServing, GenerationMetrics, Prepared, event_bridge, template_messages
from chat_common.errors import APIError
from chat_common.generation import SamplingDefaults, TemplateError
from chat_common.protocol import ChatCompletionRequest
from inference_gguf.engine import LlamaEngine
from inference_gguf.structured import GrammarSequence, grammar_for

__all__ = ["ChatServing"]


class ChatServing(EngineServing):
    def __init__(
        self,
        engines: dict[str, LlamaEngine],
        defaults: dict[str, SamplingDefaults],
        metrics: GenerationMetrics,
        retry_after_s: int,
        default_max_tokens: int,
    ) -> None:
        super().__init__(metrics, retry_after_s, default_max_tokens)
        self.engines = engines
        self.defaults = defaults

    def engine_for(self, model: str) -> LlamaEngine:
        engine = self.engines.get(model)
        if engine is None:
            raise APIError(
                404,
                f"The model '{model}' does not exist. Available models: {', '.join(sorted(self.engines))}.",
                param="model",
                code="model_not_found",
            )
        if not engine.loaded:
            raise APIError(503, f"The model '{model}' is still loading; retry shortly.", headers={"Retry-After": "5"})
        return engine

    async def prepare(self, request: ChatCompletionRequest) -> Prepared:
        engine = self.engine_for(request.model)
        access_fields()["model"] = request.model
        self.refuse_unsupported(request, structured_output=True)  # response_format: llama.cpp grammars
        try:
            prompt = engine.render(template_messages(request))
        except TemplateError as exc:
            raise self.template_failed(request.model, exc) from exc
        extra = request.model_extra or {}
        grammar = grammar_for(extra.get("response_format"))
        if grammar is not None and not await run_in_threadpool(engine.grammar_compiles, grammar):
            raise APIError(
                400,
                f"The model '{request.model}' cannot follow this response_format (llama.cpp rejected its grammar).",
                param="response_format",
                code="invalid_response_format",
            )
        tokens = await run_in_threadpool(engine.tokenize, prompt)
        params = self.sampling(request, self.defaults[request.model], n_ctx=engine.n_ctx, prompt_tokens=len(tokens))
        events, sink = event_bridge()
        seq = GrammarSequence(tokens, params, sink, request_id=request_id(), grammar=grammar)
        return self.queue(request, seq, engine.submit, events)
