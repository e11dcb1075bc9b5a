"""The transformers engine: the only module that imports torch, transformers and bitsandbytes (besides the
offline converter in :mod:`inference_hf.prepare`).

One :class:`HFEngine` serves every loaded model from **one worker thread** that owns them (transformers
models and their caches are not thread-safe, and on a CPU two models decoding at once only fight for
the same cores). The event loop hands it :class:`Sequence` objects through a bounded per-model queue
and gets :data:`EngineEvent` values back through each sequence's ``sink`` (called on the worker thread).
Loading happens on the caller's thread (slow, and it touches nothing the worker owns); the finished
model is then handed to the worker. Unloading asks the worker to let go of it.

Scheduling: continuous batching with one KV cache per batch
-----------------------------------------------------------
Each model keeps a running batch: a ``DynamicCache`` whose rows are right-aligned (left-padded) with a
2-D attention mask, and explicit per-row ``position_ids``. Every scheduler step:

1. drops sequences whose client went away (cancelled) from the batch: rows are removed from the cache
   with an index select before the next forward pass, so a dropped sequence costs at most the step
   that was already running;
2. admits waiting sequences up to ``max_batch_size``: their prompts are prefilled together in one
   forward pass (left-padded), their first tokens sampled, and their cache rows merged into the running
   batch by left-padding the shorter side with masked zeros;
3. decodes one token for every sequence in the batch in **one** forward pass, samples each row with
   its own parameters and generator, and retires rows that are finished (EOS, stop sequence, limit).
   Columns that became padding for every remaining row are trimmed.

Why not transformers' own continuous batching (``generate_batch`` / paged attention)? It takes one
generation config for all requests, while each request here carries its own sampling parameters,
penalties, seed and stop sequences, needs token-by-token streaming, and must be dropped the moment its
client leaves; its CPU path is also young. A plain ``DynamicCache`` works with every attention
implementation and with bitsandbytes layers. Why not step-wise dynamic batching (wait, then run a fixed
batch to the end)? A request arriving mid-generation would wait for the whole batch; here it joins at
the next step.

Merging rows of different ages needs per-row positions. Decoder-only models that take
``position_ids`` get them. Models that do not (and encoder-decoder models such as BART and BlenderBot,
whose decoders derive positions from the cache length) are never merged: sequences admitted in the
same step form a *cohort* batch of their own, and each step runs one forward pass per cohort. They
still share passes with whoever arrived together, and never see a shifted position.

Counters (:class:`EngineStats`: forward passes, decode steps, rows per decode pass, merges, cancelled
sequences) are kept per model for metrics and tests.
"""

from __future__ import annotations

import gc
import inspect
import logging
import random
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    DynamicCache,
    EncoderDecoderCache,
)
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import BaseModelOutput

from chat_common.generation import (
    EngineBusy,
    Failed,
    Finished,
    FinishReason,
    SamplingParams,
    Sequence,
    StopScanner,
    TemplateError,
    TextDelta,
)
from inference_hf.catalog import ModelSpec
from inference_hf.text import IncrementalDecoder

__all__ = [
    "EngineObserver",
    "EngineStats",
    "HFEngine",
    "LoadError",
    "ModelInfo",
    "ModelNotLoaded",
    "resolve_device",
    "sample_token",
]

logger = logging.getLogger(__name__)

PENALTY_WINDOW = 64
"""Tokens (prompt included) that repeat/presence/frequency penalties look back over, as llama.cpp does."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# -- what goes in and out ----------------------------------------------------------------------------
class ModelNotLoaded(Exception):
    """The model is not (or no longer) loaded in the engine."""


class LoadError(Exception):
    """The model could not be loaded; the message says why and what to change."""


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model turned out to be."""

    device: str
    dtype: str
    quantization: str
    memory_bytes: int
    context_length: int
    is_encoder_decoder: bool
    has_chat_template: bool
    batching: Literal["continuous", "cohort"]


@dataclass
class EngineStats:
    """Counters of one model since it was loaded (a copy; see :meth:`HFEngine.stats`)."""

    forward_passes: int = 0
    prefill_passes: int = 0
    decode_passes: int = 0
    decode_rows: int = 0
    """Sum over decode passes of the sequences in the pass: decode_rows / decode_passes is the mean batch."""
    max_batch_rows: int = 0
    merges: int = 0
    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    generated_tokens: int = 0
    waiting: int = 0
    running: int = 0


class EngineObserver(Protocol):
    """Receives the engine's counters as they change (the service turns them into Prometheus metrics)."""

    def queue_depth(self, model: str, depth: int) -> None: ...
    def running(self, model: str, count: int) -> None: ...
    def forward(self, model: str, kind: str, rows: int) -> None: ...
    def tokens(self, model: str, count: int) -> None: ...
    def finished(self, model: str, event: Finished, first_token_s: float | None) -> None: ...
    def failed(self, model: str) -> None: ...


# -- sampling ---------------------------------------------------------------------------------------
def sample_token(
    logits: torch.Tensor, params: SamplingParams, history: list[int], generator: torch.Generator | None
) -> int:
    """One token from one row of logits, in llama.cpp's order: penalties, top-k, top-p, min-p, temperature.

    ``history`` is the prompt and the tokens generated so far (the penalties look at its last
    :data:`PENALTY_WINDOW`). Temperature 0 is greedy.
    """
    logits = logits.float()
    if history and (params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty):
        window = torch.tensor(history[-PENALTY_WINDOW:], device=logits.device)
        ids, counts = torch.unique(window, return_counts=True)
        picked = logits[ids]
        if params.repeat_penalty != 1.0:
            picked = torch.where(picked > 0, picked / params.repeat_penalty, picked * params.repeat_penalty)
        picked = picked - counts.to(picked.dtype) * params.frequency_penalty - params.presence_penalty
        logits = logits.clone()
        logits[ids] = picked
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    if 0 < params.top_k < logits.numel():
        values, indices = torch.topk(logits, params.top_k)
    elif params.top_p < 1.0 or params.min_p > 0:
        values, indices = torch.sort(logits, descending=True)
    else:
        values, indices = logits, None
    if indices is not None and (params.top_p < 1.0 or params.min_p > 0):
        probs = torch.softmax(values, dim=-1)
        keep = torch.ones_like(probs, dtype=torch.bool)
        if params.top_p < 1.0:
            before = torch.cumsum(probs, dim=-1) - probs  # mass of the better candidates
            keep &= before < params.top_p
        if params.min_p > 0:
            keep &= probs >= params.min_p * probs[0]
        keep[0] = True
        values, indices = values[keep], indices[keep]
    probs = torch.softmax(values / params.temperature, dim=-1)
    choice = int(torch.multinomial(probs, 1, generator=generator))
    return choice if indices is None else int(indices[choice])


# -- one sequence inside a batch --------------------------------------------------------------------
class _Row:
    """A sequence's decoding state: text, stop sequences, limits, sampler."""

    def __init__(
        self, seq: Sequence, *, tokenizer: Any, eos_ids: frozenset[int], limit: int, device: torch.device
    ) -> None:
        self.seq = seq
        self.params = seq.params
        self.eos_ids = eos_ids
        self.limit = limit
        self.history = list(seq.prompt_tokens[-PENALTY_WINDOW:])
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = StopScanner(seq.params.stop)
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.generator: torch.Generator | None = None
        if seq.params.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seq.params.seed if seq.params.seed is not None else random.getrandbits(63))

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def sample(self, logits: torch.Tensor) -> int:
        return sample_token(logits, self.params, self.history, self.generator)

    def accept(self, token: int) -> None:
        """Take one sampled token: emit its text, and finish the sequence when it should end."""
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        self.completion_tokens += 1  # an end-of-sequence token counts too: it was generated
        self.history.append(token)
        if len(self.history) > 4 * PENALTY_WINDOW:
            del self.history[:-PENALTY_WINDOW]
        eos = token in self.eos_ids
        if eos and not self.params.ignore_eos:
            self.finish("stop", flush=True)
            return
        if not eos:
            text = self.decoder.push(token)
            if text:
                out, stopped = self.stops.feed(text)
                if out:
                    self.seq.sink(TextDelta(out))
                if stopped:  # the stop sequence and whatever follows it are not part of the answer
                    self.finish("stop")
                    return
        if self.completion_tokens >= self.limit:
            self.finish("length", flush=True)

    def finish(self, reason: FinishReason, *, flush: bool = False) -> None:
        self.finish_reason = reason
        if flush:
            tail, stopped = self.stops.feed(self.decoder.flush())
            tail += "" if stopped else self.stops.flush()
            if tail:
                self.seq.sink(TextDelta(tail))

    def event(self) -> Finished:
        assert self.finish_reason is not None
        return Finished(self.finish_reason, len(self.seq.prompt_tokens), self.completion_tokens)


# -- batches ----------------------------------------------------------------------------------------
def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = width
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _padded(lm: _Loaded, rows: list[_Row], *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' prompts as one ``[B, T]`` id tensor padded to the longest, and its attention mask."""
    prompts = [r.seq.prompt_tokens for r in rows]
    width = max(len(p) for p in prompts)
    ids, mask = [], []
    for p in prompts:
        pad = width - len(p)
        ids.append([lm.pad_id] * pad + p if left else p + [lm.pad_id] * pad)
        mask.append([0] * pad + [1] * len(p) if left else [1] * len(p) + [0] * pad)
    return torch.tensor(ids, device=lm.device), torch.tensor(mask, device=lm.device)


class _CausalBatch:
    """Decoder-only rows sharing one left-padded ``DynamicCache``."""

    def __init__(
        self,
        rows: list[_Row],
        cache: Any,
        mask: torch.Tensor,
        positions: torch.Tensor,
        last: torch.Tensor,
        mergeable: bool,
    ) -> None:
        self.rows = rows
        self.cache = cache
        self.mask = mask  # [B, T]: 1 where the cache holds a real token
        self.positions = positions  # [B]: position of the next token
        self.last = last  # [B]: the token to feed next
        self.mergeable = mergeable

    @classmethod
    def prefill(cls, lm: _Loaded, rows: list[_Row]) -> tuple[_CausalBatch, torch.Tensor]:
        ids, mask = _padded(lm, rows, left=True)  # left: every row's next token lands in the same column
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {
            "attention_mask": mask,
            "past_key_values": DynamicCache(config=lm.model.config),
            "use_cache": True,
        }
        if lm.takes_positions:
            kwargs["position_ids"] = positions
        if lm.takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = lm.model(input_ids=ids, **kwargs)
        cache = out.past_key_values
        mergeable = lm.takes_positions and all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", ()))
        last = torch.zeros(len(rows), dtype=torch.long, device=lm.device)
        batch = cls(rows, cache, mask, positions[:, -1] + 1, last, mergeable)
        return batch, out.logits[:, -1, :]

    def forward(self, lm: _Loaded) -> torch.Tensor:
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        kwargs: dict[str, Any] = {"attention_mask": mask, "past_key_values": self.cache, "use_cache": True}
        if lm.takes_positions:
            kwargs["position_ids"] = self.positions[:, None]
        out = lm.model(input_ids=self.last[:, None], **kwargs)
        self.cache = out.past_key_values
        self.mask = mask
        self.positions = self.positions + 1
        last: torch.Tensor = out.logits[:, -1, :]
        return last

    def keep(self, indices: list[int]) -> None:
        index = torch.tensor(indices, device=self.mask.device)
        self.rows = [self.rows[i] for i in indices]
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.positions = self.positions[index]
        self.last = self.last[index]
        # Columns that are padding for every remaining row hold nothing anybody attends to. (Only plain
        # cache layers are cut; a sliding-window layer keeps its own bookkeeping.)
        occupied = self.mask.any(dim=0)
        first = int(torch.argmax(occupied.to(torch.int8))) if bool(occupied.any()) else 0
        if first > 0 and self.mergeable:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]
            self.mask = self.mask[:, first:]

    def merge(self, other: _CausalBatch) -> None:
        """Append ``other``'s rows: both sides are right-aligned to the longer one's cache length."""
        mine, theirs = self.mask.shape[1], other.mask.shape[1]
        width = max(mine, theirs)
        for a, b in zip(self.cache.layers, other.cache.layers, strict=True):
            a.keys = torch.cat([_pad_left(a.keys, width - mine, -2), _pad_left(b.keys, width - theirs, -2)])
            a.values = torch.cat([_pad_left(a.values, width - mine, -2), _pad_left(b.values, width - theirs, -2)])
        self.mask = torch.cat([_pad_left(self.mask, width - mine, 1), _pad_left(other.mask, width - theirs, 1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])
        self.rows += other.rows


class _Seq2SeqBatch:
    """Encoder-decoder rows that started decoding together (a cohort): no decoder padding at all."""

    mergeable = False

    def __init__(
        self, rows: list[_Row], cache: Any, encoder_states: torch.Tensor, encoder_mask: torch.Tensor, last: torch.Tensor
    ) -> None:
        self.rows = rows
        self.cache = cache
        self.encoder_states = encoder_states
        self.encoder_mask = encoder_mask
        self.last = last

    @classmethod
    def prefill(cls, lm: _Loaded, rows: list[_Row]) -> tuple[_Seq2SeqBatch, torch.Tensor]:
        ids, mask = _padded(lm, rows, left=False)  # the encoder reads the whole prompt: pad on the right
        states = lm.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        start = torch.full((len(rows),), lm.decoder_start_id, dtype=torch.long, device=lm.device)
        batch = cls(rows, EncoderDecoderCache(DynamicCache(), DynamicCache()), states, mask, start)
        return batch, batch.forward(lm)

    def forward(self, lm: _Loaded) -> torch.Tensor:
        out = lm.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=self.encoder_states),
            attention_mask=self.encoder_mask,
            decoder_input_ids=self.last[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        last: torch.Tensor = out.logits[:, -1, :]
        return last

    def keep(self, indices: list[int]) -> None:
        index = torch.tensor(indices, device=self.encoder_mask.device)
        self.rows = [self.rows[i] for i in indices]
        self.cache.batch_select_indices(index)
        self.encoder_states = self.encoder_states[index]
        self.encoder_mask = self.encoder_mask[index]
        self.last = self.last[index]

    def merge(self, other: _Seq2SeqBatch) -> None:  # pragma: no cover - never called (mergeable is False)
        raise NotImplementedError


_Batch = _CausalBatch | _Seq2SeqBatch


# -- one loaded model -------------------------------------------------------------------------------
@dataclass(eq=False)
class _Loaded:
    """A model, its tokenizer and its scheduler state. Everything but ``inbox`` belongs to the worker."""

    model_id: str
    model: Any
    tokenizer: Any
    info: ModelInfo
    device: torch.device
    eos_ids: frozenset[int]
    pad_id: int
    decoder_start_id: int
    takes_positions: bool
    takes_logits_to_keep: bool
    max_batch_size: int
    inbox: deque[Sequence] = field(default_factory=deque)
    batches: list[_Batch] = field(default_factory=list)
    stats: EngineStats = field(default_factory=EngineStats)
    closing: bool = False
    closed: threading.Event = field(default_factory=threading.Event)

    @property
    def running(self) -> int:
        return sum(len(b.rows) for b in self.batches)


_8BIT_CAST_NOTICE = "MatMul8bitLt: inputs will be cast"


class _Drop8bitCastNotice(logging.Filter):
    """bitsandbytes logs a warning on every 8-bit matmul with float32 inputs (its CPU path casts them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_8BIT_CAST_NOTICE)


def resolve_device(requested: str) -> str:
    """``auto`` picks cuda, then mps, then cpu; a device that is not there is a :class:`LoadError`."""
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda" and not cuda:
        raise LoadError("device 'cuda' was asked for but torch sees no CUDA GPU (a CPU-only torch, or no driver)")
    if requested == "mps" and not mps:
        raise LoadError("device 'mps' was asked for but this torch has no Apple MPS backend available")
    return requested


def _weights_bytes(location: str) -> int | None:
    path = Path(location)
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))


# -- the engine -------------------------------------------------------------------------------------
class HFEngine:
    """Every loaded transformers model of the service and the worker thread that runs them."""

    def __init__(self, *, max_queue: int, observer: EngineObserver, num_threads: int | None = None) -> None:
        self._max_queue = max_queue
        self._observer = observer
        self._num_threads = num_threads
        self._cond = threading.Condition()
        self._models: dict[str, _Loaded] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
        if not any(isinstance(f, _Drop8bitCastNotice) for f in bnb_log.filters):
            bnb_log.addFilter(_Drop8bitCastNotice())

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
            loaded = self._build(spec, location, max_batch_size, auto_8bit_above_bytes)
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

    def _build(self, spec: ModelSpec, location: str, max_batch_size: int, auto_8bit_above_bytes: float) -> _Loaded:
        device = resolve_device(spec.device)
        quantization = spec.quantization
        if quantization == "auto":
            size = _weights_bytes(location)
            quantization = "8bit" if device == "cuda" and size is not None and size > auto_8bit_above_bytes else "none"
        if quantization != "none" and device == "mps":
            raise LoadError(
                f"model '{spec.id}': bitsandbytes {quantization} quantization runs on CUDA or CPU, "
                "not on MPS; use quantization 'none' or device 'cpu'"
            )
        dtype = _DTYPES[spec.dtype] if spec.dtype != "auto" else (torch.float32 if device == "cpu" else torch.float16)
        trust = spec.trust_remote_code
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust)
        is_ed = bool(getattr(config, "is_encoder_decoder", False))
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust}
        if quantization == "4bit":
            opts = spec.bnb_4bit
            compute = dtype if opts.compute_dtype == "auto" else _DTYPES[opts.compute_dtype]
            kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
                load_in_4bit=True,
                bnb_4bit_quant_type=opts.quant_type,
                bnb_4bit_use_double_quant=opts.double_quant,
                bnb_4bit_compute_dtype=compute,
            )
        elif quantization == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
        kwargs["device_map"] = {"": device}  # straight onto the device, without a full copy in CPU memory first
        cls = AutoModelForSeq2SeqLM if is_ed else AutoModelForCausalLM
        model = cls.from_pretrained(location, **kwargs)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust)
        if spec.chat_template:
            tokenizer.chat_template = spec.chat_template

        gen = getattr(model, "generation_config", None)
        eos: set[int] = set()
        for source in (getattr(gen, "eos_token_id", None), config.eos_token_id, tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list | tuple):
                eos.update(int(t) for t in source)
        pad = next(
            (
                t
                for t in (tokenizer.pad_token_id, getattr(config, "pad_token_id", None), *sorted(eos))
                if isinstance(t, int)
            ),
            0,
        )
        start_candidates = (
            getattr(gen, "decoder_start_token_id", None),
            getattr(config, "decoder_start_token_id", None),
            getattr(config, "bos_token_id", None),
            pad,
        )
        start = next((t for t in start_candidates if isinstance(t, int)), 0)
        params = inspect.signature(model.forward).parameters
        takes_positions = "position_ids" in params and not is_ed
        first = next(model.parameters())
        context = spec.max_context or _context_length(config, tokenizer)
        info = ModelInfo(
            device=str(first.device),
            dtype=str(dtype).removeprefix("torch."),
            quantization=spec.quantization_label() if spec.quantization != "auto" else quantization,
            memory_bytes=int(model.get_memory_footprint()),
            context_length=context,
            is_encoder_decoder=is_ed,
            has_chat_template=bool(tokenizer.chat_template),
            batching="continuous" if takes_positions else "cohort",
        )
        return _Loaded(
            model_id=spec.id,
            model=model,
            tokenizer=tokenizer,
            info=info,
            device=first.device,
            eos_ids=frozenset(eos),
            pad_id=pad,
            decoder_start_id=start,
            takes_positions=takes_positions,
            takes_logits_to_keep="logits_to_keep" in params,
            max_batch_size=spec.max_batch_size or max_batch_size,
        )

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

    def _release(self, loaded: _Loaded, reason: str) -> None:
        """Fail whatever the model still holds and drop every reference to its weights and caches."""
        for batch in loaded.batches:
            for row in batch.rows:
                self._fail(loaded, row.seq, reason)
        while loaded.inbox:
            self._fail(loaded, loaded.inbox.popleft(), reason)
        loaded.batches.clear()
        loaded.model = None
        loaded.tokenizer = None
        loaded.closed.set()

    # -- questions about a loaded model (any thread) ------------------------------------------------
    def _get(self, model_id: str) -> _Loaded:
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
                        self._step(loaded)
                    except Exception as exc:  # a failure ends this model's sequences, never the worker
                        logger.exception("generation step failed", extra={"model": loaded.model_id})
                        for batch in loaded.batches:
                            for row in batch.rows:
                                self._fail(loaded, row.seq, f"generation failed: {exc}")
                        loaded.batches.clear()
                    self._observer.running(loaded.model_id, loaded.running)
                del models

    def _step(self, lm: _Loaded) -> None:
        """One scheduler step for one model: drop the cancelled, admit the waiting, decode one token each."""
        for batch in list(lm.batches):
            self._retire(lm, batch, cancelled_only=True)
        self._admit(lm)
        for batch in list(lm.batches):
            if not batch.rows:
                continue
            logits = batch.forward(lm)
            rows = len(batch.rows)
            lm.stats.forward_passes += 1
            lm.stats.decode_passes += 1
            lm.stats.decode_rows += rows
            lm.stats.max_batch_rows = max(lm.stats.max_batch_rows, rows)
            self._observer.forward(lm.model_id, "decode", rows)
            self._sample_all(lm, batch, logits)
            self._retire(lm, batch)

    def _admit(self, lm: _Loaded) -> None:
        room = lm.max_batch_size - lm.running
        if room <= 0 or not lm.inbox:
            return
        rows: list[_Row] = []
        with self._cond:
            while lm.inbox and len(rows) < room:
                seq = lm.inbox.popleft()
                if seq.cancelled:  # gone before it started
                    self._finish(
                        lm,
                        _Row(seq, tokenizer=lm.tokenizer, eos_ids=lm.eos_ids, limit=0, device=lm.device),
                        "cancelled",
                    )
                    continue
                limit = max(0, min(seq.params.max_tokens, self._room(lm, seq)))
                rows.append(_Row(seq, tokenizer=lm.tokenizer, eos_ids=lm.eos_ids, limit=limit, device=lm.device))
            depth = len(lm.inbox)
        self._observer.queue_depth(lm.model_id, depth)
        if not rows:
            return
        for row in [r for r in rows if r.limit == 0]:
            self._finish(lm, row, "length")
        rows = [r for r in rows if r.limit > 0]
        if not rows:
            return
        kind = _Seq2SeqBatch if lm.info.is_encoder_decoder else _CausalBatch
        try:
            batch, logits = kind.prefill(lm, rows)
            lm.stats.forward_passes += 1
            lm.stats.prefill_passes += 1
            lm.stats.admitted += len(rows)
            self._observer.forward(lm.model_id, "prefill", len(rows))
            self._sample_all(lm, batch, logits)
        except Exception as exc:  # these prompts fail; the running batch is untouched
            logger.exception("prefill failed", extra={"model": lm.model_id})
            for row in rows:
                self._fail(lm, row.seq, f"generation failed: {exc}")
            return
        self._retire(lm, batch)
        if not batch.rows:
            return
        target = next((b for b in lm.batches if b.mergeable and b.rows), None)
        if batch.mergeable and target is not None:
            target.merge(batch)  # type: ignore[arg-type]
            lm.stats.merges += 1
        else:
            lm.batches.append(batch)

    def _room(self, lm: _Loaded, seq: Sequence) -> int:
        """Tokens the sequence may still generate within the model's context."""
        if lm.info.is_encoder_decoder:
            return lm.info.context_length - 1
        return lm.info.context_length - len(seq.prompt_tokens)

    def _sample_all(self, lm: _Loaded, batch: _Batch, logits: torch.Tensor) -> None:
        tokens: list[int] = []
        generated = 0
        for i, row in enumerate(batch.rows):
            if row.done or row.seq.cancelled:
                tokens.append(lm.pad_id)
                continue
            token = row.sample(logits[i])
            tokens.append(token)
            row.accept(token)
            generated += 1
        batch.last = torch.tensor(tokens, dtype=torch.long, device=lm.device)
        lm.stats.generated_tokens += generated
        self._observer.tokens(lm.model_id, generated)

    def _retire(self, lm: _Loaded, batch: _Batch, *, cancelled_only: bool = False) -> None:
        """Remove finished (or, before a forward pass, cancelled) rows from the batch and report them."""
        keep: list[int] = []
        for i, row in enumerate(batch.rows):
            if row.seq.cancelled and not row.done:
                row.finish("cancelled")
            if row.done and (not cancelled_only or row.finish_reason == "cancelled"):
                self._report(lm, row)
            elif not row.done:
                keep.append(i)
        if len(keep) == len(batch.rows):
            return
        if keep:
            batch.keep(keep)
        else:
            lm.batches.remove(batch)

    def _finish(self, lm: _Loaded, row: _Row, reason: FinishReason) -> None:
        row.finish(reason)
        self._report(lm, row)

    def _report(self, lm: _Loaded, row: _Row) -> None:
        event = row.event()
        lm.stats.finished += 1
        if event.finish_reason == "cancelled":
            lm.stats.cancelled += 1
        logger.info(
            "generation finished",
            extra={
                "model": lm.model_id,
                "request_id": row.seq.request_id,
                "finish_reason": event.finish_reason,
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
                "duration_ms": round((time.perf_counter() - row.started) * 1000, 1),
            },
        )
        self._observer.finished(lm.model_id, event, row.first_token_s)
        row.seq.sink(event)

    def _fail(self, lm: _Loaded, seq: Sequence, message: str) -> None:
        lm.stats.failed += 1
        self._observer.failed(lm.model_id)
        seq.sink(Failed(message))


def _context_length(config: Any, tokenizer: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return 2048
