"""The model services' side of a pushed-down answer filter (chat_common.answer_filter): the extension's
validation, and ``EngineServing.stream`` / the whole answer with it, fed decoded texts cut at every position.

The engine is the boundary here: its events are put on the queue the real serving code reads (what a
llama.cpp or transformers worker would deliver); tests/integration/test_profiles_real.py runs the same
path on the bundled model behind the real gateway."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
import pytest

from chat_common.answer_filter import FILTER_FIELD, FilterSpec, StreamShaper, requested_filter
from chat_common.engine_serving import EngineServing, GenerationMetrics, Prepared
from chat_common.errors import APIError
from chat_common.generation import Finished, SamplingParams, Sequence, TextDelta
from chat_common.guardrails import Guardrail
from chat_common.protocol import ChatCompletionRequest

THOUGHT = "<think>User wants the battery. Sheet says 32.</think>\n\nThe Drift lasts 32 hours."
SPEC = {"answer_model": "cern", "reasoning_tags": ["<think>", "</think>"], "banned": ["language model"]}


def request(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m1", "messages": [{"role": "user", "content": "Hi"}], "stream": True, **extra}
    )


def cuts_of(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


async def served(texts: list[str], spec: FilterSpec | None) -> tuple[list[dict[str, Any]], Sequence]:
    """The chunks ``EngineServing.stream`` sends for an engine that decodes ``texts``."""
    from prometheus_client import CollectorRegistry

    serving = EngineServing(GenerationMetrics(CollectorRegistry(), "test"), retry_after_s=1, default_max_tokens=0)
    events: asyncio.Queue[Any] = asyncio.Queue()
    for text in texts:
        events.put_nowait(TextDelta(text))
    events.put_nowait(Finished("stop", 5, len(texts)))
    seq = Sequence([1], SamplingParams(0.8, 0.95, 40, 0.05, 1.0, 0.0, 0.0, 64), lambda _: None)
    req = request()
    if spec is not None and spec.answer_model:
        req = req.model_copy(update={"model": spec.answer_model})
    out = [piece async for piece in serving.stream(Prepared(req, seq, events), spec)]
    assert out[-1] == b"data: [DONE]\n\n"
    return [orjson.loads(piece[6:]) for piece in out[:-1]], seq


def texts_of(chunks: list[dict[str, Any]], field: str) -> str:
    return "".join(c["choices"][0]["delta"].get(field) or "" for c in chunks)


def test_the_extension_is_read_and_checked() -> None:
    assert requested_filter(request()) is None
    spec = requested_filter(request(**{FILTER_FIELD: SPEC}))
    assert spec is not None and spec.reasoning_tags == ("<think>", "</think>") and spec.guardrail is not None
    assert spec.shapes_text
    assert not FilterSpec(answer_model="cern").shapes_text
    for bad in ({"banned": ["  "]}, {"reasoning_tags": ["<think>"]}, {"colour": "red"}, "yes", {"banned": "x"}):
        with pytest.raises(APIError) as caught:
            requested_filter(request(**{FILTER_FIELD: bad}))
        assert caught.value.status_code == 400 and caught.value.param == FILTER_FIELD


@pytest.mark.parametrize("cut", range(1, len(THOUGHT)))
async def test_stream_splits_reasoning_cut_anywhere(cut: int) -> None:
    chunks, _ = await served(cuts_of(THOUGHT, [cut, min(cut + 3, len(THOUGHT) - 1)]), FilterSpec.model_validate(SPEC))
    assert {c["model"] for c in chunks} == {"cern"}
    assert texts_of(chunks, "reasoning_content") == "User wants the battery. Sheet says 32."
    assert texts_of(chunks, "content") == "The Drift lasts 32 hours."
    fields = [k for c in chunks for k in c["choices"][0]["delta"] if k in ("reasoning_content", "content")]
    assert fields == sorted(fields, key=lambda k: k == "content")  # every reasoning chunk before any content
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("cut", range(1, 40))
async def test_stream_never_sends_a_banned_phrase(cut: int) -> None:
    text = "Hello there, I am a Language\nModel made to help you with everything."
    chunks, seq = await served(cuts_of(text, [cut, cut + 7]), FilterSpec.model_validate(SPEC))
    sent = texts_of(chunks[:-2], "content") + texts_of(chunks, "reasoning_content")
    assert Guardrail(["language model"], "").find(sent) is None and "Model" not in sent
    assert chunks[-2]["choices"][0]["delta"] == {"content": "I'm sorry, I can't help with that."}
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert seq.cancelled  # nothing more is decoded for an answer that ended


async def test_without_a_filter_the_stream_is_as_before() -> None:
    chunks, _ = await served(["Hel", "lo"], None)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "Hel"}, {"content": "lo"}]
    renamed, _ = await served(["Hel", "lo"], FilterSpec(answer_model="x"))  # a rename does not touch the text
    assert [c["choices"][0]["delta"] for c in renamed] == [c["choices"][0]["delta"] for c in chunks]
    assert {c["model"] for c in renamed} == {"x"}


def test_whole_answer() -> None:
    def answer(content: str) -> dict[str, Any]:
        return {
            "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }

    spec = FilterSpec.model_validate(SPEC)
    split = StreamShaper.completion(spec, answer(THOUGHT))
    assert split["model"] == "cern"
    assert split["choices"][0]["message"] == {
        "role": "assistant",
        "content": "The Drift lasts 32 hours.",
        "reasoning_content": "User wants the battery. Sheet says 32.",
    }
    blocked = StreamShaper.completion(spec, answer("<think>as a language model</think>fine"))
    assert blocked["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "I'm sorry, I can't help with that."},
        "finish_reason": "content_filter",
    }
    plain = StreamShaper.completion(FilterSpec(), answer("<think>x</think>y"))
    assert plain["choices"][0]["message"]["content"] == "<think>x</think>y"
