"""Per-sequence sampling: llama.cpp's own sampler chain, one per sequence, built from its
:class:`~chat_common.generation.SamplingParams`.

The chain is the one llama-cpp-python's ``Llama.generate`` builds (which this service used before it
batched), so a request samples alike either way: repetition penalties over the last 64 generated tokens,
then greedy at temperature 0, else top-k, typical (1.0: off), top-p, min-p, temperature and a seeded draw.
A sequence with a grammar (``response_format``) gets llama.cpp's grammar sampler right after the
penalties, so only tokens the grammar allows can be drawn. A sequence at temperature 0 without penalties or
grammar is plain argmax: :attr:`SequenceSampler.greedy` tells the
engine so, and it takes the argmax of all such rows in one numpy call instead.
"""

from __future__ import annotations

import random
from typing import Any

from chat_common.generation import SamplingParams

__all__ = ["PENALTY_LAST_N", "SequenceSampler", "grammar_compiles"]

PENALTY_LAST_N = 64  # llama-cpp-python's default window (last_n_tokens_size)


class SequenceSampler:
    """A native sampler chain for one sequence; :meth:`close` frees it (the engine does, when the
    sequence ends)."""

    def __init__(self, params: SamplingParams, n_vocab: int, *, vocab: Any = None, grammar: str | None = None) -> None:
        import llama_cpp

        self._llama = llama_cpp
        p = params
        self.greedy = (
            grammar is None
            and p.temperature == 0.0
            and p.repeat_penalty == 1.0
            and p.presence_penalty == 0.0
            and p.frequency_penalty == 0.0
        )
        self._chain: Any = None
        if self.greedy:
            return  # argmax needs no native state
        seed = p.seed if p.seed is not None else random.getrandbits(32)
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                n_vocab, PENALTY_LAST_N, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            ),
        )
        if grammar is not None:
            constraint = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not constraint:
                llama_cpp.llama_sampler_free(chain)
                raise ValueError("llama.cpp rejected the grammar")
            add(chain, constraint)
        if p.temperature == 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add(chain, llama_cpp.llama_sampler_init_top_k(p.top_k))
            add(chain, llama_cpp.llama_sampler_init_typical(1.0, 1))
            add(chain, llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
            add(chain, llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(p.temperature))
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self._chain = chain

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits of batch position ``index`` (and record the token in the penalty window)."""
        return int(self._llama.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            self._llama.llama_sampler_free(self._chain)
            self._chain = None


def grammar_compiles(vocab: Any, grammar: str) -> bool:
    """Whether llama.cpp accepts ``grammar`` (root rule ``root``) for this vocabulary."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True
