"""Banned phrases live in :mod:`chat_common.guardrails`, shared with the model services (which apply a
profile's filter themselves when the gateway pushes it down, :mod:`chat_common.answer_filter`)."""

from chat_common.guardrails import Guardrail, StreamGuard

__all__ = ["Guardrail", "StreamGuard"]
