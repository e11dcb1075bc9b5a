"""A ``llama_batch`` whose arrays are numpy buffers, filled a slice at a time.

``llama_decode`` only reads the struct, so the memory can be ours: token ids, positions, sequence ids and
the output flags of a whole prompt chunk are written with one numpy assignment each, never token by token
through ctypes. Every token belongs to exactly one sequence (``n_seq_id`` is 1 everywhere); the sequence
id pointers point into one contiguous int32 array, set once.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence as Seq
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["TokenBatch"]


class TokenBatch:
    """Room for ``capacity`` tokens; :meth:`clear`, :meth:`add` slices, then pass :attr:`struct` to
    ``llama_decode``. Not thread-safe: owned by the engine's worker thread."""

    def __init__(self, capacity: int) -> None:
        import llama_cpp

        self.capacity = capacity
        self.tokens = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        int_p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (int_p * capacity)(*(ctypes.cast(base + 4 * i, int_p) for i in range(capacity)))
        struct: Any = llama_cpp.llama_batch()  # ctypes pointers into the arrays above
        self.struct = struct
        struct.token = self.tokens.ctypes.data_as(int_p)
        struct.embd = ctypes.POINTER(ctypes.c_float)()
        struct.pos = self.pos.ctypes.data_as(int_p)
        struct.n_seq_id = self._n_seq_id.ctypes.data_as(int_p)
        struct.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(int_p))
        struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.n = 0

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens: Seq[int] | npt.NDArray[np.int32], seq_id: int, pos0: int, *, output_last: bool) -> int:
        """Append ``tokens`` of sequence ``seq_id`` at positions ``pos0...``; only the last one may ask for
        logits. Returns the batch index of the last token (the index ``llama_get_logits_ith`` takes)."""
        count = len(tokens)
        start, end = self.n, self.n + count
        assert 0 < count <= self.room, (count, self.room)
        self.tokens[start:end] = tokens
        self.pos[start:end] = np.arange(pos0, pos0 + count, dtype=np.int32)
        self.seq[start:end] = seq_id
        self.logits[start:end] = 0
        self.logits[end - 1] = 1 if output_last else 0
        self.n = end
        self.struct.n_tokens = end
        return end - 1
