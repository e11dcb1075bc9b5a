"""Loading a transformers model: device, dtype and bitsandbytes quantization, the tokenizer, and what
the scheduler needs to know about the model (:class:`Loaded`)."""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, BitsAndBytesConfig

from chat_common.generation import Sequence
from inference_hf.catalog import ModelSpec, declared_context_length
from inference_hf.engine.types import EngineStats, LoadError, ModelInfo

if TYPE_CHECKING:
    from inference_hf.engine.batches import Batch

__all__ = ["Loaded", "build", "quiet_8bit_cast_notice", "resolve_device"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(eq=False)
class Loaded:
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
    vocab_size: int
    """Rows of the input embedding: a token id the model can take is below it."""
    max_batch_size: int
    inbox: deque[Sequence] = field(default_factory=deque)
    batches: list[Batch] = field(default_factory=list)
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


def build(spec: ModelSpec, location: str, *, max_batch_size: int, auto_8bit_above_bytes: float) -> Loaded:
    """Load ``spec`` from ``location`` onto its device (slow; touches nothing the worker owns). Raises
    :class:`LoadError` for a device or quantization that cannot work; transformers' own errors pass through."""
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
    return Loaded(
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
        vocab_size=_vocab_size(model),
        max_batch_size=spec.max_batch_size or max_batch_size,
    )


def quiet_8bit_cast_notice() -> None:
    """Drop bitsandbytes' warning on every 8-bit matmul with float32 inputs (once per process)."""
    bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Drop8bitCastNotice) for f in bnb_log.filters):
        bnb_log.addFilter(_Drop8bitCastNotice())


def _context_length(config: Any, tokenizer: Any) -> int:
    declared = declared_context_length(lambda key: getattr(config, key, None))
    if declared is not None:
        return declared
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return 2048


def _vocab_size(model: Any) -> int:
    embeddings: Any = model.get_input_embeddings()
    return int(embeddings.weight.shape[0])
