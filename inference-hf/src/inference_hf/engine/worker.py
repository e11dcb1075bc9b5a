"""The engine: every loaded transformers model of the service and the one worker thread that runs them.

Transformers models and their caches are not thread-safe, and on a CPU two models decoding at once only
fight for the same cores, so one worker thread owns them all and runs a
:class:`~inference_hf.engine.scheduler.Scheduler` step per model in turn. The event loop hands it
:class:`~chat_common.generation.Sequence` objects through a bounded per-model queue (full:
:class:`~chat_common.generation.EngineBusy`) and gets events back through each sequence's ``sink`` (called
on the worker thread). Loading happens on the caller's thread (slow, and it touches nothing the worker
owns); the finished model is then handed to the worker. Unloading asks the worker to let go of it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from dataclasses import replace
from typing import Any

import torch

from chat_common.generation import EngineBusy, Sequence, TemplateError
from inference_hf.catalog import ModelSpec
from inference_hf.engine.loading import Loaded, build, quiet_8bit_cast_notice
from inference_hf.engine.scheduler import Scheduler
from inference_hf.engine.types import EngineStats, HFObserver, LoadError, ModelInfo, ModelNotLoaded

__all__ = ["HFEngine"]

logger = logging.getLogger(__name__)


class HFEngine:
    """Every loaded transformers model of the service and the worker thread that runs them."""

    def __init__(self, *, max_queue: int, observer: HFObserver, num_threads: int | None = None) -> None:
        self._max_queue = max_queue
        self._observer = observer
        self._num_threads = num_threads
        self._cond = threading.Condition()
        self._models: dict[str, Loaded] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.scheduler = Scheduler(observer, self._cond)
        quiet_8bit_cast_notice()

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._num_threads:
            torch.set_num_threads(self._num_threads)
        self._thread = threading.Thread(target=self._run, name="hf-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the worker; sequences still running or waiting end with :class:`Failed`."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        for model_id in list(self._models):
            self._release(self._models.pop(model_id), "the service is shutting down")
        gc.collect()

    # -- loading ------------------------------------------------------------------------------------
    def load(self, spec: ModelSpec, location: str, *, max_batch_size: int, auto_8bit_above_bytes: float) -> ModelInfo:
        """Load ``spec`` from ``location`` and hand it to the worker. Slow: call it off the event loop."""
        if spec.id in self._models:
            return self._models[spec.id].info
        started = time.perf_counter()
        try:
            loaded = build(spec, location, max_batch_size=max_batch_size, auto_8bit_above_bytes=auto_8bit_above_bytes)
        except LoadError:
            raise
        except Exception as exc:  # transformers and bitsandbytes raise all sorts; the message is what matters
            raise LoadError(f"{type(exc).__name__}: {exc}") from exc
        with self._cond:
            self._models[spec.id] = loaded
        logger.info(
            "model loaded",
            extra={
                "model": spec.id,
                "location": location,
                "device": loaded.info.device,
                "dtype": loaded.info.dtype,
                "quantization": loaded.info.quantization,
                "memory_bytes": loaded.info.memory_bytes,
                "batching": loaded.info.batching,
                "load_s": round(time.perf_counter() - started, 2),
            },
        )
        return loaded.info

    def unload(self, model_id: str) -> None:
        """Let go of a model: its sequences end with :class:`Failed`, its memory is returned. Blocks until done."""
        with self._cond:
            loaded = self._models.get(model_id)
            if loaded is None:
                return
            loaded.closing = True
            self._cond.notify_all()
        worker = self._thread
        if worker is not None and worker.is_alive() and threading.current_thread() is not worker:
            loaded.closed.wait()
        else:
            with self._cond:
                self._models.pop(model_id, None)
            self._release(loaded, f"the model '{model_id}' was unloaded")
        on_cuda = loaded.device.type == "cuda"
        del loaded
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    def _release(self, loaded: Loaded, reason: str) -> None:
        """Fail whatever the model still holds and drop every reference to its weights and caches."""
        for batch in loaded.batches:
            for row in batch.rows:
                self.scheduler.fail(loaded, row.seq, reason)
        while loaded.inbox:
            self.scheduler.fail(loaded, loaded.inbox.popleft(), reason)
        loaded.batches.clear()
        loaded.model = None
        loaded.tokenizer = None
        loaded.closed.set()

    # -- questions about a loaded model (any thread) ------------------------------------------------
    def _get(self, model_id: str) -> Loaded:
        loaded = self._models.get(model_id)
        if loaded is None or loaded.closing:
            raise ModelNotLoaded(f"model '{model_id}' is not loaded")
        return loaded

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._models

    def info(self, model_id: str) -> ModelInfo:
        return self._get(model_id).info

    def stats(self, model_id: str) -> EngineStats:
        loaded = self._get(model_id)
        return replace(loaded.stats, waiting=len(loaded.inbox), running=loaded.running)

    def weak_model(self, model_id: str) -> weakref.ref[Any]:
        """A weak reference to the model object (it dies once the model is unloaded and collected)."""
        return weakref.ref(self._get(model_id).model)

    def render(self, model_id: str, messages: list[dict[str, str]]) -> str:
        """The prompt as the model's chat template writes it, ready for the assistant's turn."""
        loaded = self._get(model_id)
        tokenizer = loaded.tokenizer
        if not tokenizer.chat_template:
            raise TemplateError(
                f"the model '{model_id}' has no chat template: its tokenizer defines none. Set "
                "chat_template in its entry of the models config (INFERENCE_HF_MODELS_CONFIG)."
            )
        try:
            return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        except Exception as exc:  # jinja2 errors, including the template's own raise_exception()
            raise TemplateError(f"the chat template of '{model_id}' rejected the messages: {exc}") from exc

    def tokenize(self, model_id: str, prompt: str) -> list[int]:
        loaded = self._get(model_id)
        # A rendered chat prompt already carries the special tokens a decoder-only model expects; an
        # encoder takes its own (BART's <s> ... </s>, T5's </s>).
        encoded = loaded.tokenizer(prompt, add_special_tokens=loaded.info.is_encoder_decoder)
        return list(encoded["input_ids"])

    # -- requests -----------------------------------------------------------------------------------
    def submit(self, model_id: str, seq: Sequence) -> None:
        """Queue a sequence; :class:`EngineBusy` when the model's queue is full."""
        with self._cond:
            loaded = self._get(model_id)
            if len(loaded.inbox) >= self._max_queue:
                raise EngineBusy(f"model '{model_id}' has {len(loaded.inbox)} requests waiting")
            loaded.inbox.append(seq)
            depth = len(loaded.inbox)
            self._cond.notify_all()
        self._observer.queue_depth(model_id, depth)

    # -- worker thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not any(
                        m.closing or m.inbox or m.batches for m in self._models.values()
                    ):
                        self._cond.wait()
                    if self._stopping:
                        return
                    models = list(self._models.values())
                for loaded in models:
                    if loaded.closing:
                        with self._cond:
                            self._models.pop(loaded.model_id, None)
                        self._release(loaded, f"the model '{loaded.model_id}' was unloaded")
                        continue
                    try:
                        self.scheduler.step(loaded)
                    except Exception as exc:  # a failure ends this model's sequences, never the worker
                        logger.exception("generation step failed", extra={"model": loaded.model_id})
                        for batch in loaded.batches:
                            for row in batch.rows:
                                self.scheduler.fail(loaded, row.seq, f"generation failed: {exc}")
                        loaded.batches.clear()
                    self._observer.running(loaded.model_id, loaded.running)
                del models
