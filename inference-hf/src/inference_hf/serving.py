"""Between the OpenAI protocol and the transformers engine: the model lease (a model in use is never
unloaded), the prompt from the tokenizer's chat template, and the engine's queue. The rest (context check,
sampling, streaming) is :class:`chat_common.engine_serving.EngineServing`, shared with inference-gguf."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from chat_common.context import access_fields, request_id
from chat_common.engine_serving import EngineServing, Prepared, event_bridge, template_messages
from chat_common.errors import APIError
from chat_common.generation import Sequence, TemplateError
from chat_common.protocol import ChatCompletionRequest
from inference_hf.engine import HFEngine, ModelNotLoaded
from inference_hf.manager import Lease, ModelManager
from inference_hf.metrics import ServiceMetrics

__all__ = ["ChatServing"]


class ChatServing(EngineServing):
    def __init__(
        self,
        engine: HFEngine,
        manager: ModelManager,
        metrics: ServiceMetrics,
        retry_after_s: int,
        default_max_tokens: int,
    ) -> None:
        super().__init__(metrics, retry_after_s, default_max_tokens)
        self.engine = engine
        self.manager = manager

    async def prepare(self, request: ChatCompletionRequest) -> Prepared:
        # No grammar-constrained sampling in this engine: response_format is refused, never ignored.
        self.refuse_unsupported(request, structured_output=False)
        lease = await self.manager.acquire(request.model)  # 404 unknown, 503 cannot load
        access_fields()["model"] = request.model
        try:
            return await self._queue(request, lease)
        except BaseException:
            lease.release()
            raise

    async def _queue(self, request: ChatCompletionRequest, lease: Lease) -> Prepared:
        model = request.model
        try:
            info = self.engine.info(model)
            prompt = await run_in_threadpool(self.engine.render, model, template_messages(request))
            tokens = await run_in_threadpool(self.engine.tokenize, model, prompt)
        except TemplateError as exc:
            raise self.template_failed(model, exc) from exc
        except ModelNotLoaded as exc:  # not expected while the lease is held; say so plainly if it happens
            raise _unloaded(model) from exc
        params = self.sampling(
            request,
            self.manager.state(model).spec.defaults,
            n_ctx=info.context_length,
            prompt_tokens=len(tokens),
            encoder_decoder=info.is_encoder_decoder,
        )
        # The lease ends when the engine is done with the sequence, whether or not anyone still listens.
        events, sink = event_bridge(on_final=lease.release)
        seq = Sequence(tokens, params, sink, request_id=request_id())
        try:
            return self.queue(request, seq, lambda s: self.engine.submit(model, s), events)
        except ModelNotLoaded as exc:
            raise _unloaded(model) from exc


def _unloaded(model: str) -> APIError:
    return APIError(503, f"The model '{model}' was unloaded; retry.", headers={"Retry-After": "1"})
