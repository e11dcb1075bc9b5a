"""CUDA paths: bitsandbytes NF4 on a GPU, the memory saver it is meant to be there.

Skipped where torch sees no CUDA GPU (tests/conftest.py asks torch.cuda.is_available(): a CPU-only torch
on a GPU machine skips too); the CPU tests cover the same code with the device set to cpu.
"""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from chat_common.generation import EngineEvent, Finished, Sequence, TextDelta
from inference_hf.catalog import Bnb4bit, ModelSpec
from inference_hf.engine import HFEngine
from tests.engines import Observer
from tests.sampling import greedy


@pytest.mark.gpu("torch")
def test_cuda_nf4_loads_on_the_gpu_and_answers(prepared: Path) -> None:
    import torch

    engine = HFEngine(max_queue=4, observer=Observer())
    engine.start()
    try:
        full = engine.load(
            ModelSpec(id="full", source=str(prepared), device="cuda", dtype="float16"),
            str(prepared),
            max_batch_size=4,
            auto_8bit_above_bytes=4e9,
        )
        spec = ModelSpec(
            id="nf4",
            source=str(prepared),
            device="auto",
            quantization="4bit",
            dtype="float16",
            bnb_4bit=Bnb4bit(quant_type="nf4", double_quant=True, compute_dtype="float16"),
        )
        info = engine.load(spec, str(prepared), max_batch_size=4, auto_8bit_above_bytes=4e9)
        assert info.device.startswith("cuda") and info.quantization == "4bit-nf4"
        assert info.memory_bytes < full.memory_bytes / 2
        engine.unload("full")
        tokens = engine.tokenize("nf4", engine.render("nf4", [{"role": "user", "content": "What is 2+2?"}]))
        events: queue.Queue[EngineEvent] = queue.Queue()
        engine.submit("nf4", Sequence(tokens, greedy(8), events.put))
        text = []
        while not isinstance(event := events.get(timeout=120), Finished):
            assert isinstance(event, TextDelta), event
            text.append(event.text)
        assert "".join(text).strip() and event.completion_tokens <= 8
        allocated = torch.cuda.memory_allocated()
        engine.unload("nf4")
        assert torch.cuda.memory_allocated() < allocated  # the weights left the GPU
    finally:
        engine.close()
