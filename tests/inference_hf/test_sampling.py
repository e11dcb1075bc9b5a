"""The per-sequence sampler: llama.cpp's order and semantics, on small logits."""

from __future__ import annotations

import torch

from chat_common.generation import SamplingParams
from inference_hf.engine import sample_token


def _params(**kw: object) -> SamplingParams:
    base = dict(
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        repeat_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=1,
    )
    return SamplingParams(**{**base, **kw})  # type: ignore[arg-type]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


LOGITS = torch.tensor([1.0, 3.0, 2.9, -1.0, 0.5])


def test_temperature_zero_is_greedy() -> None:
    assert sample_token(LOGITS, _params(temperature=0.0), [], None) == 1


def test_top_k_one_is_greedy_whatever_the_seed() -> None:
    assert {sample_token(LOGITS, _params(top_k=1), [], _gen(s)) for s in range(20)} == {1}


def test_top_p_and_min_p_keep_only_the_head() -> None:
    seen = {sample_token(LOGITS, _params(top_p=0.5), [], _gen(s)) for s in range(50)}
    assert seen <= {1, 2} and len(seen) == 2
    seen = {sample_token(LOGITS, _params(min_p=0.5), [], _gen(s)) for s in range(50)}
    assert seen == {1, 2}  # exp(2.9 - 3) > 0.5, the rest is far below


def test_same_seed_same_choice() -> None:
    flat = torch.zeros(1000)
    assert sample_token(flat, _params(), [], _gen(7)) == sample_token(flat, _params(), [], _gen(7))
    assert len({sample_token(flat, _params(), [], _gen(s)) for s in range(10)}) > 5


def test_penalties_follow_llama_cpp() -> None:
    # repeat penalty divides positive logits and multiplies negative ones of tokens in the window
    assert sample_token(LOGITS, _params(temperature=0.0, repeat_penalty=2.0), [1], None) == 2
    assert sample_token(torch.tensor([-1.0, -1.5]), _params(temperature=0.0, repeat_penalty=2.0), [0], None) == 1
    # frequency grows with the count, presence does not
    logits = torch.tensor([5.0, 4.0])
    assert sample_token(logits, _params(temperature=0.0, frequency_penalty=0.6), [0, 0], None) == 1
    assert sample_token(logits, _params(temperature=0.0, presence_penalty=0.6), [0, 0], None) == 0
    assert sample_token(logits, _params(temperature=0.0, presence_penalty=1.5), [0], None) == 1
    # only the last 64 tokens count
    three = torch.tensor([5.0, 4.0, 0.0])
    assert sample_token(three, _params(temperature=0.0, presence_penalty=1.5), [0] + [2] * 63, None) == 1
    assert sample_token(three, _params(temperature=0.0, presence_penalty=1.5), [0] + [2] * 64, None) == 0
