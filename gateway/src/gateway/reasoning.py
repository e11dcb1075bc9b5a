"""The reasoning split lives in :mod:`chat_common.reasoning`, shared with the model services (which apply a
profile's filter themselves when the gateway pushes it down, :mod:`chat_common.answer_filter`)."""

from chat_common.reasoning import ReasoningSplitter, split_reasoning

__all__ = ["ReasoningSplitter", "split_reasoning"]
