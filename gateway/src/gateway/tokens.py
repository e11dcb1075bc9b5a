"""Token estimates for fitting a prompt into a model's context, and the count an answer's ``usage`` gives.
The gateway has no tokenizer: the estimates are cautious (3 bytes a token; English BPE averages about 4),
and the model service still checks the real count and answers 400 when a prompt does not fit."""

from __future__ import annotations

from typing import Any

__all__ = ["BYTES_PER_TOKEN", "estimate_messages", "estimate_tokens", "usage_total"]

BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8  # chat-template framing around each message


def estimate_tokens(text: str) -> int:
    return len(text.encode()) // BYTES_PER_TOKEN + 1


def estimate_messages(messages: list[dict[str, Any]]) -> int:
    return sum(estimate_tokens(str(m.get("content") or "")) + TOKENS_PER_MESSAGE for m in messages)


def usage_total(usage: Any) -> int | None:
    """The tokens an answer's ``usage`` object counts: ``total_tokens``, else prompt plus completion; None
    when it says nothing."""
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    return sum(p for p in parts if isinstance(p, int)) if any(isinstance(p, int) for p in parts) else None
