"""Sampling parameters for the engine tests of both inference services."""

from __future__ import annotations

from chat_common.generation import SamplingParams

__all__ = ["greedy"]


def greedy(max_tokens: int, **kw: object) -> SamplingParams:
    """Greedy decoding with every other filter and penalty neutral; ``kw`` overrides any field."""
    base: dict[str, object] = dict(
        temperature=0.0,
        top_p=1.0,
        top_k=40,
        min_p=0.05,
        repeat_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=max_tokens,
    )
    return SamplingParams(**{**base, **kw})  # type: ignore[arg-type]
