"""How retrieved passages enter a prompt: the ``retrieval`` field, the context budget, the system message."""

from __future__ import annotations

import pytest

from chat_common.errors import APIError
from chat_common.requests import chat_request
from gateway.retrieval import Passages, augment, query_of, retrieval_of
from gateway.tokens import estimate_tokens


def _hit(n: int, text: str = "Restart the router and try again.") -> dict[str, object]:
    return {
        "doc_id": f"kb-{n}",
        "chunk_id": f"kb-{n}#0",
        "title": f"Article {n}",
        "text": text,
        "source": None,
        "score": 1.0 - n / 10,
        "metadata": {"category": "network"},
    }


def _request(**extra: object):
    return chat_request({"model": "m", "messages": [{"role": "user", "content": "Wi-Fi drops?"}], **extra})


def test_retrieval_field_defaults_and_shorthand() -> None:
    assert retrieval_of(_request()) is None
    spec = retrieval_of(_request(retrieval="it-support"))
    assert spec is not None and (spec.collection, spec.top_k, spec.on_error) == ("it-support", 4, "fail")


@pytest.mark.parametrize(
    ("retrieval", "param"),
    [
        ({"collection": "it-support", "top_k": 0}, "retrieval.top_k"),
        ({"collection": "it-support", "top_k": 21}, "retrieval.top_k"),
        ({"collection": "../etc"}, "retrieval.collection"),
        ({"collection": "kb", "on_error": "ignore"}, "retrieval.on_error"),
        ({"collection": "kb", "topk": 3}, "retrieval.topk"),
        ({"top_k": 3}, "retrieval.collection"),
        (42, "retrieval"),
    ],
)
def test_a_malformed_retrieval_field_is_a_400_naming_it(retrieval: object, param: str) -> None:
    with pytest.raises(APIError) as caught:
        retrieval_of(_request(retrieval=retrieval))
    assert caught.value.status_code == 400
    assert caught.value.param == param


def test_the_query_is_the_last_user_message() -> None:
    chat = chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "VPN fails"},
            ],
        }
    )
    assert query_of(chat) == "VPN fails"
    with pytest.raises(APIError):
        query_of(chat_request({"model": "m", "messages": [{"role": "system", "content": "only system"}]}))


def test_passages_are_numbered_into_the_last_system_message() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Wi-Fi drops?"}]
    out = augment(messages, Passages([_hit(1), _hit(2)]), "Use the passages.")
    assert [m["role"] for m in out] == ["system", "user"]
    assert out[0]["content"].startswith("Be brief.\n\nUse the passages.\n\n[1] Article 1\n")
    assert "\n\n[2] Article 2\nRestart the router" in out[0]["content"]
    assert messages[0]["content"] == "Be brief."  # the request's own messages are not changed


def test_without_a_system_message_one_is_put_first() -> None:
    out = augment([{"role": "user", "content": "q"}], Passages([]), "Use the passages.")
    assert out[0] == {"role": "system", "content": "Use the passages.\n\n(No passage was found for this question.)"}


def test_passages_that_do_not_fit_are_dropped_lowest_score_first() -> None:
    hits = [_hit(n, "word " * 60) for n in range(1, 6)]  # each about 100 tokens with its title line
    one = estimate_tokens("Article 1\n" + "word " * 60) + 12
    kept = Passages.fitting(hits, budget=2 * one + 5)
    assert [h["doc_id"] for h in kept.hits] == ["kb-1", "kb-2"]
    assert [s["index"] for s in kept.sources()] == [1, 2]


def test_a_single_passage_too_long_for_the_budget_is_cut_at_a_word() -> None:
    kept = Passages.fitting([_hit(1, "alpha " * 500)], budget=60)
    assert len(kept.hits) == 1
    text = kept.hits[0]["text"]
    assert text.endswith(" …") and "alph …" not in text
    assert estimate_tokens(text) <= 60
    assert Passages.fitting([_hit(1, "alpha " * 500)], budget=10).hits == []
