from __future__ import annotations

import pytest

from chat_common.errors import APIError
from chat_common.protocol import ChatCompletionRequest
from chat_common.requests import parse_chat_request

USER = [{"role": "user", "content": "hi"}]


def test_minimal_request_and_defaults() -> None:
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": USER})
    assert request.stream is False
    assert request.token_limit is None
    assert request.stop_sequences is None


def test_unknown_fields_are_kept_not_rejected() -> None:
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": USER, "logit_bias": {}, "parallel_tool_calls": False}
    )
    assert request.model_extra == {"logit_bias": {}, "parallel_tool_calls": False}


def test_stop_as_string_or_list() -> None:
    assert ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "stop": "User:"}).stop_sequences == [
        "User:"
    ]
    assert ChatCompletionRequest.model_validate(
        {"model": "m", "messages": USER, "stop": ["a", "b"]}
    ).stop_sequences == ["a", "b"]


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": USER, "max_tokens": 5, "max_completion_tokens": 9}
    )
    assert request.token_limit == 9


def test_content_parts_are_joined() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        }
    )
    assert request.messages[0].text == "ab"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": USER, "max_tokens": -3}, "max_tokens"),
        ({"model": "m", "messages": USER, "temperature": 3}, "temperature"),
        ({"model": "m", "messages": USER, "n": 2}, "n"),
        ({"model": "m", "messages": USER, "stop": [""]}, "stop"),
        ({"model": "m", "messages": USER, "stop": ["x"] * 17}, "stop"),
        ({"messages": USER}, "model"),
    ],
)
def test_invalid_requests_name_the_parameter(body: dict[str, object], param: str) -> None:
    import orjson

    with pytest.raises(APIError) as caught:
        parse_chat_request(orjson.dumps(body))
    assert caught.value.status_code == 400
    assert caught.value.param is not None and caught.value.param.startswith(param)
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1, 2]", b'"text"'])
def test_body_that_is_not_a_json_object(raw: bytes) -> None:
    with pytest.raises(APIError) as caught:
        parse_chat_request(raw)
    assert caught.value.status_code == 400
    assert caught.value.code == "invalid_json"
