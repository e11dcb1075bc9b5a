"""The KV-cache batches the scheduler decodes, and the sequences in them.

:class:`CausalBatch`: decoder-only rows sharing one ``DynamicCache`` whose rows are right-aligned
(left-padded) with a 2-D attention mask and explicit per-row ``position_ids``; rows leave with an index
select (:meth:`CausalBatch.keep`) and newcomers join by left-padding the shorter side
(:meth:`CausalBatch.merge`). :class:`Seq2SeqBatch`: encoder-decoder rows that started together (a cohort),
never merged: their decoders derive positions from the cache length. :class:`Row` is one sequence in a
batch: its :class:`~chat_common.sequence.SequenceState` and its sampler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import BaseModelOutput

from chat_common.generation import FinishReason, Sequence
from chat_common.sequence import SequenceState
from inference_hf.engine.sampling import TokenSampler

if TYPE_CHECKING:
    from inference_hf.engine.loading import Loaded

__all__ = ["Batch", "CausalBatch", "Row", "Seq2SeqBatch"]


class Row:
    """One sequence inside a batch. ``error`` is set when something failed for this sequence alone (its
    sampling, or a token the model cannot take): the scheduler then ends it with :class:`Failed`."""

    def __init__(self, state: SequenceState, sampler: TokenSampler) -> None:
        self.state = state
        self.sampler = sampler
        self.error: str | None = None

    @property
    def seq(self) -> Sequence:
        return self.state.seq

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.state.finish_reason

    @property
    def done(self) -> bool:
        return self.state.done or self.error is not None

    def sample(self, logits: torch.Tensor) -> int:
        return self.sampler.sample(logits)

    def accept(self, token: int) -> None:
        """Take one sampled token: it joins the penalty window, its text goes to the client."""
        self.sampler.record(token)
        self.state.accept(token)


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = width
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _padded(lm: Loaded, rows: list[Row], *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' prompts as one ``[B, T]`` id tensor padded to the longest, and its attention mask."""
    prompts = [r.seq.prompt_tokens for r in rows]
    width = max(len(p) for p in prompts)
    ids, mask = [], []
    for p in prompts:
        pad = width - len(p)
        ids.append([lm.pad_id] * pad + p if left else p + [lm.pad_id] * pad)
        mask.append([0] * pad + [1] * len(p) if left else [1] * len(p) + [0] * pad)
    return torch.tensor(ids, device=lm.device), torch.tensor(mask, device=lm.device)


class CausalBatch:
    """Decoder-only rows sharing one left-padded ``DynamicCache``."""

    def __init__(
        self,
        rows: list[Row],
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
    def prefill(cls, lm: Loaded, rows: list[Row]) -> tuple[CausalBatch, torch.Tensor]:
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

    def forward(self, lm: Loaded) -> torch.Tensor:
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

    def merge(self, other: CausalBatch) -> None:
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


class Seq2SeqBatch:
    """Encoder-decoder rows that started decoding together (a cohort): no decoder padding at all."""

    mergeable = False

    def __init__(
        self, rows: list[Row], cache: Any, encoder_states: torch.Tensor, encoder_mask: torch.Tensor, last: torch.Tensor
    ) -> None:
        self.rows = rows
        self.cache = cache
        self.encoder_states = encoder_states
        self.encoder_mask = encoder_mask
        self.last = last

    @classmethod
    def prefill(cls, lm: Loaded, rows: list[Row]) -> tuple[Seq2SeqBatch, torch.Tensor]:
        ids, mask = _padded(lm, rows, left=False)  # the encoder reads the whole prompt: pad on the right
        states = lm.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        start = torch.full((len(rows),), lm.decoder_start_id, dtype=torch.long, device=lm.device)
        batch = cls(rows, EncoderDecoderCache(DynamicCache(), DynamicCache()), states, mask, start)
        return batch, batch.forward(lm)

    def forward(self, lm: Loaded) -> torch.Tensor:
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

    def merge(self, other: Seq2SeqBatch) -> None:  # pragma: no cover - never called (mergeable is False)
        raise NotImplementedError


Batch = CausalBatch | Seq2SeqBatch
