"""Slots: the sequences a llama context decodes together, and the KV cache each one keeps.

Slot ``i`` owns llama.cpp sequence id ``i`` and its own KV stream of ``n_ctx`` cells (the model's context:
a sequence never waits for room another one holds). :attr:`Slot.cache` mirrors exactly the tokens whose KV
that sequence holds (positions ``0..len-1``). A slot keeps its cache after its answer, so the next
request that starts with the same tokens (a session's next turn) evaluates only what is new:
:func:`pick_slot` chooses the idle slot with the longest common prefix.
"""

from __future__ import annotations

import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import numpy as np

from chat_common.sequence import SequenceState
from inference_gguf.sampling import SequenceSampler

__all__ = ["Slot", "common_prefix", "pick_slot"]


@dataclass(eq=False)
class Slot:
    seq_id: int
    cache: list[int] = field(default_factory=list)
    last_used: float = 0.0
    # set while the slot serves a sequence
    state: SequenceState | None = None
    sampler: SequenceSampler | None = None
    todo: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    next_token: int | None = None  # sampled, not yet decoded
    started: float = 0.0  # when it was assigned: prompts are evaluated oldest first

    @property
    def busy(self) -> bool:
        return self.state is not None

    def assign(self, state: SequenceState, sampler: SequenceSampler, reuse: int) -> None:
        """Serve ``state``'s sequence, keeping the first ``reuse`` cached tokens (the caller has removed the
        rest from the KV cache)."""
        prompt = state.seq.prompt_tokens
        del self.cache[reuse:]
        self.state, self.sampler = state, sampler
        self.todo = list(prompt[reuse:])
        self.next_token = None
        self.started = state.started

    def release(self) -> None:
        """The sequence is over; the cache stays for the next request."""
        if self.sampler is not None:
            self.sampler.close()
        self.state = self.sampler = None
        self.todo = []
        self.next_token = None
        self.last_used = time.monotonic()


def common_prefix(a: Seq[int], b: Seq[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


def pick_slot(slots: Seq[Slot], prompt: Seq[int]) -> tuple[Slot, int] | None:
    """The idle slot whose cache shares the longest prefix with ``prompt`` (the least recently used on a
    tie, so that other caches live on), and that prefix length; None when every slot is busy."""
    best: tuple[int, float, Slot] | None = None
    for slot in slots:
        if slot.busy:
            continue
        lcp = common_prefix(slot.cache, prompt)
        if best is None or lcp > best[0] or (lcp == best[0] and slot.last_used < best[1]):
            best = (lcp, slot.last_used, slot)
    return None if best is None else (best[2], best[0])
