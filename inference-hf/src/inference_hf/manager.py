"""Which configured models are loaded: on-demand loading, least-recently-used eviction under
``max_loaded_models``, keep-alive unloading, explicit load/unload, and GGUF preparation at start.

Runs on the event loop and never imports torch; it drives the engine through :class:`Loader` (the
engine's blocking ``load``/``unload``, called on worker threads). State changes happen between awaits,
so the event loop itself serializes them; one lock makes loads and unloads take turns (they compete for
the same memory anyway), while requests to a loaded model never touch it.

Unloading a model that has requests in flight is refused with 409 (explicit unload) or skipped
(keep-alive, eviction): running generations always finish.

While the service starts, a request for a model that is being prepared or loaded is answered 503 with
Retry-After at once (as inference-gguf does); afterwards a request for a model that is not loaded
loads it and waits for the load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from chat_common.answer_filter import FILTER_FIELD, FILTER_VERSION
from chat_common.errors import APIError
from inference_hf.catalog import ModelSpec, local_context_length
from inference_hf.prepare import PrepareError, is_prepared, prepare_gguf, prepared_dir, resolve_gguf

__all__ = ["Lease", "Loader", "ManagerObserver", "ModelManager", "ModelState"]

logger = logging.getLogger(__name__)

Status = Literal["unloaded", "preparing", "loading", "loaded", "unloading", "failed"]
SERVICE = "inference-hf"


class Loader(Protocol):
    """The engine, as far as this module is concerned (tests pass a fake)."""

    def load(self, spec: ModelSpec, location: str, *, max_batch_size: int, auto_8bit_above_bytes: float) -> Any: ...
    def unload(self, model_id: str) -> None: ...


class ManagerObserver(Protocol):
    def model_loaded(self, model: str, memory_bytes: int, load_s: float) -> None: ...
    def model_unloaded(self, model: str, reason: str) -> None: ...


@dataclass
class ModelState:
    spec: ModelSpec
    keep_alive_s: float
    status: Status = "unloaded"
    info: Any = None  # the engine's ModelInfo while loaded
    last_used: float | None = None
    in_flight: int = 0
    error: str | None = None
    load_task: asyncio.Task[None] | None = field(default=None, repr=False)


class Lease:
    """A request's hold on a loaded model: while any lease is held the model is not unloaded."""

    def __init__(self, manager: ModelManager, state: ModelState) -> None:
        self._manager = manager
        self.state = state
        self._released = False

    @property
    def model_id(self) -> str:
        return self.state.spec.id

    def release(self) -> None:
        """Idempotent; call it on the event loop thread."""
        if not self._released:
            self._released = True
            self.state.in_flight -= 1
            self.state.last_used = self._manager.clock()


class ModelManager:
    def __init__(
        self,
        specs: list[ModelSpec],
        loader: Loader,
        *,
        cache_dir: Path,
        max_loaded: int,
        keep_alive_s: float,
        max_batch_size: int,
        auto_8bit_above_bytes: float,
        retry_after_s: int,
        observer: ManagerObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._loader = loader
        self._cache_dir = cache_dir
        self._max_loaded = max_loaded
        self._max_batch_size = max_batch_size
        self._auto_8bit = auto_8bit_above_bytes
        self._retry_after_s = retry_after_s
        self._observer = observer
        self.clock = clock
        self.states = {
            s.id: ModelState(s, s.keep_alive_s if s.keep_alive_s is not None else keep_alive_s) for s in specs
        }
        self._lock = asyncio.Lock()
        self._pending_gguf: dict[Path, str | None] = {}  # GGUF -> preparation error (None while preparing)
        self.started = False  # preparation and preloading are over (whatever their outcome)
        self.created = int(clock())

    # -- start ------------------------------------------------------------------------------------
    async def start(self, *, preload: bool = True) -> None:
        """Prepare every GGUF the models need, then load the ``preload`` models that fit."""
        sources: dict[Path, list[ModelState]] = {}
        for state in self.states.values():
            if state.spec.gguf is not None:
                gguf = resolve_gguf(state.spec.gguf)
                if not is_prepared(prepared_dir(gguf, self._cache_dir)):
                    sources.setdefault(gguf, []).append(state)
        for gguf, states in sources.items():
            self._pending_gguf[gguf] = None
            for state in states:
                state.status = "preparing"
        for gguf, states in sources.items():
            logger.info(
                "preparing a Hugging Face model directory from a GGUF file (once)",
                extra={"gguf": str(gguf), "cache_dir": str(self._cache_dir)},
            )
            try:
                await asyncio.to_thread(prepare_gguf, gguf, self._cache_dir, progress=_ProgressLog(gguf.name))
                del self._pending_gguf[gguf]
                for state in states:
                    state.status = "unloaded"
            except Exception as exc:
                message = f"preparing {gguf.name} failed: {exc}"
                logger.exception("preparation failed", extra={"gguf": str(gguf)})
                self._pending_gguf[gguf] = message
                for state in states:
                    state.status, state.error = "failed", message
        if preload:
            for state in self.states.values():
                if not state.spec.preload or state.status == "failed":
                    continue
                if self._loaded_count() >= self._max_loaded:
                    logger.warning(
                        "not preloading: INFERENCE_HF_MAX_LOADED_MODELS reached; it loads on first use",
                        extra={"model": state.spec.id},
                    )
                    continue
                try:
                    await self._ensure_loaded(state)
                except APIError:
                    pass  # recorded on the state; /ready reports it
        self.started = True

    def readiness(self) -> tuple[Literal["ready", "starting", "failed"], str]:
        """Ready once start-up is over and every preloaded model loaded; else why not."""
        failed = [s for s in self.states.values() if s.status == "failed" and s.spec.preload]
        if failed:
            return "failed", "; ".join(f"'{s.spec.id}': {s.error}" for s in failed)
        if not self.started:
            busy = [s.spec.id for s in self.states.values() if s.status in ("preparing", "loading")]
            return "starting", f"preparing or loading model(s): {', '.join(busy) or 'starting'}"
        return "ready", ""

    # -- requests ---------------------------------------------------------------------------------
    def state(self, model_id: str) -> ModelState:
        state = self.states.get(model_id)
        if state is None:
            raise APIError(
                404,
                f"The model '{model_id}' does not exist. Available models: {', '.join(self.states)}.",
                param="model",
                code="model_not_found",
            )
        return state

    async def acquire(self, model_id: str) -> Lease:
        """A lease on a loaded ``model_id``, loading it first if needed (404, 503 as APIError)."""
        state = self.state(model_id)
        if state.status == "loading" and not self.started:
            # Start-up: answer at once, as inference-gguf does, rather than hold the client for the load.
            raise APIError(
                503,
                f"The model '{model_id}' is still loading; retry shortly.",
                code="model_loading",
                headers={"Retry-After": "5"},
            )
        if state.status != "loaded":
            await self._ensure_loaded(state)
        state.in_flight += 1  # no await since the load finished: nothing can unload it in between
        state.last_used = self.clock()
        return Lease(self, state)

    async def load(self, model_id: str) -> ModelState:
        state = self.state(model_id)
        await self._ensure_loaded(state)
        state.last_used = self.clock()
        return state

    async def unload(self, model_id: str, *, reason: str = "request") -> ModelState:
        state = self.state(model_id)
        async with self._lock:
            if state.status != "loaded":
                return state
            if state.in_flight:
                raise APIError(
                    409,
                    f"The model '{model_id}' has {state.in_flight} request(s) in flight; unload "
                    "it once they have finished.",
                    code="model_busy",
                    headers={"Retry-After": "1"},
                )
            await self._unload_locked(state, reason)
        return state

    async def unload_idle(self) -> list[str]:
        """Unload every model idle for longer than its keep-alive; return their ids."""
        now = self.clock()
        expired = [
            s
            for s in self.states.values()
            if s.status == "loaded"
            and s.in_flight == 0
            and s.keep_alive_s >= 0
            and s.last_used is not None
            and now - s.last_used >= s.keep_alive_s
        ]
        done = []
        for state in expired:
            async with self._lock:
                if state.status == "loaded" and state.in_flight == 0:  # a request may have come meanwhile
                    await self._unload_locked(state, "keep_alive")
                    done.append(state.spec.id)
        return done

    async def run_keep_alive(self, interval_s: float) -> None:
        """Check the keep-alives forever (a background task of the app)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.unload_idle()
            except Exception:
                logger.exception("keep-alive check failed")

    # -- loading and unloading --------------------------------------------------------------------
    async def _ensure_loaded(self, state: ModelState) -> None:
        if state.status == "loaded":
            return
        gguf_error = self._gguf_problem(state.spec)
        if gguf_error is not None:
            raise gguf_error
        if state.load_task is None or state.load_task.done():
            state.load_task = asyncio.create_task(self._load(state))
            # Its outcome is read by whoever still waits; this keeps asyncio from warning when nobody does.
            state.load_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        # A client that goes away does not cancel the load others may be waiting for.
        await asyncio.shield(state.load_task)
        if state.status != "loaded":  # type: ignore[comparison-overlap]  # the load task changed it meanwhile
            raise APIError(
                503, f"The model '{state.spec.id}' could not be loaded: {state.error}", code="model_load_failed"
            )

    def _gguf_problem(self, spec: ModelSpec) -> APIError | None:
        if spec.gguf is None:
            return None
        try:
            gguf = resolve_gguf(spec.gguf)
        except PrepareError as exc:
            return APIError(503, f"The model '{spec.id}' cannot be prepared: {exc}", code="model_load_failed")
        if gguf not in self._pending_gguf:
            return None
        error = self._pending_gguf[gguf]
        if error is None:
            return APIError(
                503,
                f"The model '{spec.id}' is being prepared from {gguf.name} (first start); retry shortly.",
                code="model_preparing",
                headers={"Retry-After": "5"},
            )
        return APIError(503, f"The model '{spec.id}' cannot be served: {error}", code="model_load_failed")

    async def _load(self, state: ModelState) -> None:
        async with self._lock:
            if state.status == "loaded":
                return
            await self._make_room(state)
            spec = state.spec
            state.status, state.error = "loading", None
            started = time.perf_counter()
            try:
                location = spec.location(self._cache_dir)
                state.info = await asyncio.to_thread(
                    self._loader.load,
                    spec,
                    location,
                    max_batch_size=self._max_batch_size,
                    auto_8bit_above_bytes=self._auto_8bit,
                )
            except Exception as exc:
                state.status, state.error, state.info = "failed", str(exc) or type(exc).__name__, None
                logger.error("model failed to load", extra={"model": spec.id, "error": state.error})
                return
            state.status = "loaded"
            state.last_used = self.clock()
            if self._observer is not None:
                self._observer.model_loaded(
                    spec.id, int(getattr(state.info, "memory_bytes", 0)), time.perf_counter() - started
                )

    async def _make_room(self, incoming: ModelState) -> None:
        """Unload least recently used idle models until ``incoming`` fits; 503 when every loaded one is busy."""
        while self._loaded_count() >= self._max_loaded:
            idle = [s for s in self.states.values() if s.status == "loaded" and s.in_flight == 0]
            if not idle:
                busy = [s.spec.id for s in self.states.values() if s.status == "loaded"]
                raise APIError(
                    503,
                    f"Cannot load '{incoming.spec.id}': INFERENCE_HF_MAX_LOADED_MODELS="
                    f"{self._max_loaded} models are loaded and all are serving requests "
                    f"({', '.join(busy)}); retry shortly.",
                    code="models_busy",
                    headers={"Retry-After": str(self._retry_after_s)},
                )
            victim = min(idle, key=lambda s: s.last_used or 0.0)
            await self._unload_locked(victim, f"evicted for {incoming.spec.id}")

    async def _unload_locked(self, state: ModelState, reason: str) -> None:
        state.status = "unloading"
        try:
            await asyncio.to_thread(self._loader.unload, state.spec.id)
        finally:
            state.status, state.info = "unloaded", None
        logger.info("model unloaded", extra={"model": state.spec.id, "reason": reason})
        if self._observer is not None:
            self._observer.model_unloaded(state.spec.id, reason.split(" ")[0])

    def _loaded_count(self) -> int:
        return sum(1 for s in self.states.values() if s.status in ("loaded", "loading"))

    def loaded_memory_bytes(self) -> int:
        return sum(int(getattr(s.info, "memory_bytes", 0)) for s in self.states.values() if s.status == "loaded")

    # -- /v1/models -------------------------------------------------------------------------------
    def card(self, model_id: str) -> dict[str, Any]:
        state = self.state(model_id)
        spec, info = state.spec, state.info
        loaded = state.status == "loaded" and info is not None
        context = spec.max_context or (info.context_length if loaded else None)
        if context is None:
            try:
                context = local_context_length(spec.location(self._cache_dir))
            except PrepareError:
                context = None
        return {
            "id": spec.id,
            "object": "model",
            "created": self.created,
            "owned_by": SERVICE,
            "context_length": context,
            FILTER_FIELD: FILTER_VERSION,  # applies a pushed-down answer filter (chat_common.answer_filter)
            "state": {
                "loaded": loaded,
                "status": state.status,
                "device": info.device if loaded else None,
                "requested_device": spec.device,
                "quantization": info.quantization if loaded else spec.quantization_label(),
                "dtype": info.dtype if loaded else spec.dtype,
                "memory_bytes": info.memory_bytes if loaded else 0,
                "last_used": state.last_used,
                "keep_alive_s": state.keep_alive_s,
                "in_flight": state.in_flight,
                "batching": info.batching if loaded else None,
                "encoder_decoder": info.is_encoder_decoder if loaded else None,
                "error": state.error,
            },
        }

    def cards(self) -> list[dict[str, Any]]:
        return [self.card(model_id) for model_id in self.states]


class _ProgressLog:
    """Preparation progress as log lines (every 10%), for the service's JSON log."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._last: tuple[str, int] = ("", -1)

    def __call__(self, stage: str, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        step = percent // 10
        if (stage, step) != self._last:
            self._last = (stage, step)
            logger.info("preparing model", extra={"gguf": self._name, "stage": stage, "percent": percent})
