from __future__ import annotations

from inference_gguf.engine import StopMatcher


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool, str]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True, ""
    return "".join(out), False, matcher.flush()


def test_no_stops_passes_text_through() -> None:
    assert _run([], ["a", "b"]) == ("ab", False, "")


def test_stop_split_across_tokens() -> None:
    assert _run(["User:"], ["Hello ", "Us", "er", ": more"]) == ("Hello ", True, "")


def test_partial_match_is_held_back_then_released() -> None:
    matcher = StopMatcher(["User:"])
    assert matcher.feed("Hi Us") == ("Hi ", False)
    assert matcher.feed("ually") == ("Usually", False)


def test_earliest_stop_wins() -> None:
    assert _run(["bb", "a"], ["xxbb a"]) == ("xx", True, "")


def test_text_held_at_the_end_is_flushed() -> None:
    assert _run(["\n\n\n"], ["line\n\n"]) == ("line", False, "\n\n")


def test_stop_at_the_very_start() -> None:
    assert _run(["Let me"], ["Let", " me explain"]) == ("", True, "")
