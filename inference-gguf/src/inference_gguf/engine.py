"""The llama.cpp engine: model, context, chat template, and the worker thread that batches.

One :class:`LlamaEngine` per model. A dedicated worker thread owns the llama context (it is not
thread-safe) and runs :class:`inference_gguf.scheduler.Scheduler`: continuous batching over ``n_slots``
sequences, each slot with a KV cache of the whole context that it keeps for prompt-prefix reuse. The event loop hands
the engine :class:`Sequence` objects through a bounded queue (full: :class:`EngineBusy`, a 429) and gets
:data:`EngineEvent` values back through each sequence's ``sink`` callback (called on the worker thread).

What happens *after* a token is sampled (detokenize, stop sequences, limits, cancellation) is
:class:`chat_common.sequence.SequenceState`, shared with inference-hf; this engine gives it the model's
token pieces (:class:`chat_common.sequence.ByteDecoder`) and end-of-generation test.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import queue
import threading
import time
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chat_common.generation import EngineBusy, Failed, Sequence, TemplateError
from chat_common.sequence import ByteDecoder, SequenceState
from inference_gguf.sampling import grammar_compiles
from inference_gguf.scheduler import SHUTDOWN, BatchObserver, EngineStats, Scheduler

__all__ = ["LlamaEngine", "default_slots"]

logger = logging.getLogger(__name__)

_backend_ready = threading.Lock()
_backend_initialised = False


KV_BUDGET_TOKENS = 32768


def default_slots(n_ctx: int) -> int:
    """Slots when the setting is 0. Every slot has a KV cache of the whole context, so the default keeps
    their sum near 32,768 tokens: 4 slots for the bundled model's 8,192, 8 at most, 1 at least."""
    return max(1, min(8, KV_BUDGET_TOKENS // max(n_ctx, 1)))


class LlamaEngine:
    """One GGUF model, its chat template and its worker thread."""

    def __init__(
        self,
        model_id: str,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int | None,
        n_batch: int,
        n_gpu_layers: int,
        flash_attn: bool,
        max_queue: int,
        observer: BatchObserver,
        n_slots: int = 0,
        cpu_repack: bool = False,
        verbose: bool = False,
    ) -> None:
        self.model_id = model_id
        self.path = path
        self._n_ctx_setting = n_ctx
        self._n_threads = n_threads
        self._n_batch = n_batch
        self._n_gpu_layers = n_gpu_layers
        self._flash_attn = flash_attn
        self._n_slots_setting = n_slots
        self._cpu_repack = cpu_repack
        self._verbose = verbose
        self._queue: queue.Queue[Sequence] = queue.Queue(maxsize=max_queue)
        self._observer = observer
        self._model: Any = None
        self._ctx: Any = None
        self._scheduler: Scheduler | None = None
        self._template: jinja2.Template | None = None
        self._thread: threading.Thread | None = None
        self._special_text: dict[str, str] = {}
        self._pieces: list[bytes] = []
        self._add_bos = False
        self._n_ctx = 0
        self.n_slots = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the weights and create the context (slow: call it off the event loop); start the worker."""
        global _backend_initialised
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if self._verbose else logging.ERROR)
        with _backend_ready:
            if not _backend_initialised:
                llama_cpp.llama_backend_init()
                _backend_initialised = True
        started = time.perf_counter()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if self._n_gpu_layers == -1 else self._n_gpu_layers
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
        mparams.use_extra_bufts = self._cpu_repack
        model = LlamaModel(path_model=str(self.path), params=mparams, verbose=self._verbose)
        try:
            self._n_ctx = self._n_ctx_setting or int(model.n_ctx_train())
            self.n_slots = self._n_slots_setting or default_slots(self._n_ctx)
            n_batch = min(self._n_batch, self._n_ctx)
            cpus = multiprocessing.cpu_count()
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = self._n_ctx
            cparams.n_batch = n_batch
            cparams.n_ubatch = min(n_batch, 512)
            cparams.n_seq_max = self.n_slots
            # One KV stream per slot, each of the whole context: a sequence attends to its own cells only, so
            # its answer is the one it gets alone (a unified cache changes the attention's rounding).
            cparams.kv_unified = False
            cparams.n_ctx = self._n_ctx * self.n_slots
            cparams.n_threads = self._n_threads or max(cpus // 2, 1)
            cparams.n_threads_batch = self._n_threads or cpus
            cparams.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if self._flash_attn
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
            cparams.no_perf = True
            ctx = llama_cpp.llama_init_from_model(model.model, cparams)
            if ctx is None:
                raise RuntimeError(f"llama.cpp could not create a context of {self._n_ctx} tokens for {self.path}")
        except BaseException:
            model.close()  # type: ignore[no-untyped-call]
            raise
        self._model, self._ctx = model, ctx
        vocab = model.vocab
        self._is_eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        self._add_bos = bool(model.add_bos_token())
        self._pieces = _pieces(llama_cpp, vocab, int(model.n_vocab()))
        self._special_text = {
            "bos_token": self._token_text(model.token_bos()),
            "eos_token": self._token_text(model.token_eos()),
        }
        source = model.metadata().get("tokenizer.chat_template")
        if source:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_template_error
            self._template = env.from_string(source)
        else:
            logger.warning("model %s has no chat template in its GGUF metadata", self.model_id)
        self._scheduler = Scheduler(
            model_id=self.model_id,
            ctx=ctx,
            n_ctx=self._n_ctx,
            n_batch=n_batch,
            n_slots=self.n_slots,
            n_vocab=len(self._pieces),
            vocab=vocab,
            waiting=self._queue,
            observer=self._observer,
            new_state=self._new_state,
        )
        self._thread = threading.Thread(target=self._scheduler.run, name=f"engine-{self.model_id}", daemon=True)
        self._thread.start()
        logger.info(
            "model loaded",
            extra={
                "model": self.model_id,
                "path": str(self.path),
                "n_ctx": self._n_ctx,
                "n_slots": self.n_slots,
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    def close(self) -> None:
        import llama_cpp

        if self._thread is not None:
            while True:  # make room for the shutdown marker; waiting sequences are cancelled
                try:
                    self._queue.put_nowait(SHUTDOWN)
                    break
                except queue.Full:
                    self._drop_one_waiting()
            self._thread.join(timeout=30)
            self._thread = None
        self._scheduler = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._model.close()
            self._model = None

    @property
    def loaded(self) -> bool:
        return self._ctx is not None

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def stats(self) -> EngineStats:
        """The worker's counters (batching and prompt reuse)."""
        assert self._scheduler is not None, "load() first"
        return self._scheduler.stats

    def busy_slots(self) -> int:
        return 0 if self._scheduler is None else self._scheduler.busy_slots()

    # -- prompt ------------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt exactly as the model's own chat template writes it, ready for the assistant's turn."""
        if self._template is None:
            raise TemplateError(f"model '{self.model_id}' has no chat template in its GGUF metadata")
        try:
            return self._template.render(messages=messages, add_generation_prompt=True, **self._special_text)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template of '{self.model_id}' rejected the messages: {exc}") from exc

    def tokenize(self, prompt: str) -> list[int]:
        add_bos = self._add_bos and not prompt.startswith(self._special_text["bos_token"])
        return list(self._model.tokenize(prompt.encode(), add_bos=add_bos, special=True))

    def _token_text(self, token: int) -> str:
        return bytes(self._model.detokenize([token], special=True)).decode("utf-8", errors="replace")

    def grammar_compiles(self, grammar: str) -> bool:
        """Whether llama.cpp accepts this GBNF grammar for the model's vocabulary."""
        return grammar_compiles(self._model.vocab, grammar)

    def _new_state(self, seq: Sequence, limit: int) -> SequenceState:
        return SequenceState(seq, decoder=ByteDecoder(self._pieces), is_eos=self._is_eog, limit=limit)

    # -- requests ----------------------------------------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        """Queue a sequence; raises :class:`EngineBusy` when the queue is full. The one sequence the scheduler
        has taken out to wait for a free slot counts as waiting too, so at most ``max_queue`` ever wait."""
        scheduler = self._scheduler
        held = 1 if scheduler is not None and scheduler.holding else 0
        if self._queue.qsize() + held >= self._queue.maxsize:  # only submit() adds: no race past the limit
            raise EngineBusy(f"model '{self.model_id}' has {self._queue.maxsize} requests waiting")
        try:
            self._queue.put_nowait(seq)
        except queue.Full:
            raise EngineBusy(f"model '{self.model_id}' has {self._queue.maxsize} requests waiting") from None
        self._observer.queue_depth(self.model_id, self._queue.qsize())

    def _drop_one_waiting(self) -> None:
        try:
            seq = self._queue.get_nowait()
        except queue.Empty:
            return
        if seq is not SHUTDOWN:
            seq.sink(Failed("the model is shutting down"))


def _pieces(llama_cpp: Any, vocab: Any, n_vocab: int) -> list[bytes]:
    """Each token's text as bytes (special tokens render as nothing), looked up per sampled token."""
    size = 256
    buf = ctypes.create_string_buffer(size)
    out = []
    for token in range(n_vocab):
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, False)
        out.append(buf.raw[:n] if n > 0 else b"")
    return out


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)
