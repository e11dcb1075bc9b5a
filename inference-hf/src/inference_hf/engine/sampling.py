"""Per-sequence sampling in torch, in llama.cpp's order and with its semantics, so that a model answers
alike on either inference service: :func:`sample_token` for one row of logits, :class:`TokenSampler` for one
sequence (its seeded generator and the penalty window)."""

from __future__ import annotations

import random

import torch

from chat_common.generation import SamplingParams, Sequence

__all__ = ["PENALTY_WINDOW", "TokenSampler", "sample_token"]

PENALTY_WINDOW = 64
"""Tokens (prompt included) that repeat/presence/frequency penalties look back over, as llama.cpp does."""


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


class TokenSampler:
    """One sequence's sampler: its parameters, its generator (seeded by the request, else at random) and the
    tokens its penalties look back over."""

    def __init__(self, seq: Sequence, device: torch.device) -> None:
        self.params = seq.params
        self.history = list(seq.prompt_tokens[-PENALTY_WINDOW:])
        self.generator: torch.Generator | None = None
        if seq.params.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seq.params.seed if seq.params.seed is not None else random.getrandbits(63))

    def sample(self, logits: torch.Tensor) -> int:
        return sample_token(logits, self.params, self.history, self.generator)

    def record(self, token: int) -> None:
        """A token the sequence generated (it joins the penalty window)."""
        self.history.append(token)
        if len(self.history) > 4 * PENALTY_WINDOW:
            del self.history[:-PENALTY_WINDOW]
