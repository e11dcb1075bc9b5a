"""The reasoning splitter: whole answers, and streams cut at every position (pure functions)."""

from __future__ import annotations

import itertools

import pytest

from gateway.reasoning import ReasoningSplitter, split_reasoning

ANSWER = "<think>The user asks about <b>battery</b>. Section 2.</think>\n\nThe Drift lasts 32 hours."


def _streamed(text: str, cuts: list[int], open_tag: str = "<think>", close_tag: str = "</think>") -> tuple[str, str]:
    splitter = ReasoningSplitter(open_tag, close_tag)
    reasoning, content = [], []
    bounds = [0, *cuts, len(text)]
    for a, b in itertools.pairwise(bounds):
        r, c = splitter.feed(text[a:b])
        reasoning.append(r)
        content.append(c)
    r, c = splitter.finish()
    return "".join(reasoning) + r, "".join(content) + c


def test_whole_answer_is_split_and_tags_dropped() -> None:
    assert split_reasoning(ANSWER) == ("The user asks about <b>battery</b>. Section 2.", "The Drift lasts 32 hours.")


def test_answer_without_tags_is_all_content() -> None:
    assert split_reasoning("Hello <think> there") == (None, "Hello <think> there")
    assert split_reasoning("") == (None, "")


def test_unclosed_tag_is_reasoning_to_the_end() -> None:
    assert split_reasoning("  <think>still thinking </thi") == ("still thinking </thi", "")


@pytest.mark.parametrize("cut", range(1, len(ANSWER)))
def test_one_cut_at_every_position(cut: int) -> None:
    assert _streamed(ANSWER, [cut]) == split_reasoning(ANSWER)


def test_every_character_its_own_piece() -> None:
    assert _streamed(ANSWER, list(range(1, len(ANSWER)))) == split_reasoning(ANSWER)


@pytest.mark.parametrize("cut", range(1, 30))
def test_two_cuts_around_the_close_tag(cut: int) -> None:
    at = ANSWER.index("</think>")
    cuts = sorted({max(1, at - 10 + cut // 2), at - 10 + cut})
    assert _streamed(ANSWER, cuts) == split_reasoning(ANSWER)


def test_configurable_tags_cut_everywhere() -> None:
    text = "[[r]]plan[[/r]]done"
    for cut in range(1, len(text)):
        assert _streamed(text, [cut], "[[r]]", "[[/r]]") == ("plan", "done")


def test_nothing_is_held_back_that_cannot_be_a_tag() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>abc") == ("abc", "")
    assert splitter.feed("de</th") == ("de", "")  # "</th" could begin the close tag
    assert splitter.feed("ink>  ans") == ("", "ans")
    assert splitter.feed("wer <") == ("", "wer <")  # after the reasoning, tags are plain text
