"""Banned phrases: matching rules, and streams that never let one through in any chunking."""

from __future__ import annotations

import itertools

import pytest

from gateway.guardrails import Guardrail

GUARD = Guardrail(["language model", "as an AI", "ban"], fallback="Let me check.")


def _stream(text: str, cuts: list[int]) -> tuple[str, str | None]:
    guard = GUARD.stream()
    out = []
    bounds = [0, *cuts, len(text)]
    for a, b in itertools.pairwise(bounds):
        out.append(guard.feed(text[a:b]))
    out.append(guard.finish())
    return "".join(out), guard.blocked


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("I am a Language Model.", "language model"),
        ("as an ai, I", "as an AI"),
        ("A BAN!", "ban"),
        ("ban", "ban"),
        ("language\nmodel", "language model"),
        ("the banner", None),
        ("urban", None),
        ("bans", None),
        ("languagemodel", None),
        ("a ban_x", None),
    ],
)
def test_case_insensitive_whole_words(text: str, found: str | None) -> None:
    assert GUARD.find(text) == found


def test_hold_is_the_longest_phrase_and_one_character() -> None:
    assert GUARD.hold == len("language model") + 1
    guard = GUARD.stream()
    text = "The Drift lasts thirty-two hours on a charge."
    released = guard.feed(text)
    assert released == text[: len(text) - GUARD.hold]
    assert guard.finish() == text[len(text) - GUARD.hold :]


CLEAN = "Our banner says: urban bans are not a thing; the model is a language-modelling one."
DIRTY = "Well, as an AI language model I cannot say."


@pytest.mark.parametrize("cut", range(1, len(DIRTY)))
def test_banned_phrase_never_released_one_cut(cut: int) -> None:
    released, blocked = _stream(DIRTY, [cut])
    assert blocked == "as an AI"
    assert GUARD.find(released) is None
    assert len(released) <= DIRTY.lower().index("as an ai")


def test_banned_phrase_never_released_every_two_cuts() -> None:
    for a, b in itertools.combinations(range(1, len(DIRTY), 2), 2):
        released, blocked = _stream(DIRTY, [a, b])
        assert blocked is not None, (a, b)
        assert "as an ai" not in released.lower()
        assert "language model" not in released.lower()


@pytest.mark.parametrize("cut", range(1, len(CLEAN)))
def test_clean_answer_passes_whole_in_any_cut(cut: int) -> None:
    assert _stream(CLEAN, [cut]) == (CLEAN, None)


def test_clean_answer_character_by_character() -> None:
    assert _stream(CLEAN, list(range(1, len(CLEAN)))) == (CLEAN, None)


def test_phrase_at_the_very_end_is_caught_by_finish() -> None:
    released, blocked = _stream("that is a ban", [11])
    assert blocked == "ban" and "ban" not in released.split()


def test_word_boundary_across_release_point() -> None:
    text = "x" * 40 + "urban" + "y"  # "ban" inside a word that straddles what was released
    assert _stream(text, [42]) == (text, None)


def test_empty_phrase_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        Guardrail(["  "], "x")
