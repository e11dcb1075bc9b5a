"""Stop sequences in streamed text (both inference services use chat_common's StopScanner)."""

from __future__ import annotations

from chat_common.generation import StopScanner


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool, str]:
    scanner = StopScanner(stops)
    out = []
    for piece in pieces:
        text, stopped = scanner.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True, ""
    return "".join(out), False, scanner.flush()


def test_no_stops_passes_text_through() -> None:
    assert _run([], ["a", "b"]) == ("ab", False, "")


def test_stop_split_across_tokens() -> None:
    assert _run(["User:"], ["Hello ", "Us", "er", ": more"]) == ("Hello ", True, "")


def test_stop_sequence_across_pieces_holds_back_only_what_may_start_it() -> None:
    scanner = StopScanner(["</answer>"])
    assert scanner.feed("The answer is 4.</") == ("The answer is 4.", False)  # "</" held back
    assert scanner.feed("ans") == ("", False)
    assert scanner.feed("wer> and more") == ("", True)


def test_partial_match_is_held_back_then_released() -> None:
    scanner = StopScanner(["User:"])
    assert scanner.feed("Hi Us") == ("Hi ", False)
    assert scanner.feed("ually") == ("Usually", False)


def test_held_text_is_released_when_it_cannot_be_a_stop() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.feed("a ST") == ("a ", False)
    assert scanner.feed("ew") == ("STew", False)
    assert scanner.feed("ST") == ("", False)
    assert scanner.flush() == "ST"


def test_earliest_stop_wins() -> None:
    assert _run(["bb", "a"], ["xxbb a"]) == ("xx", True, "")
    assert StopScanner(["b", "a"]).feed("xxaxb") == ("xx", True)


def test_text_held_at_the_end_is_flushed() -> None:
    assert _run(["\n\n\n"], ["line\n\n"]) == ("line", False, "\n\n")


def test_stop_at_the_very_start() -> None:
    assert _run(["Let me"], ["Let", " me explain"]) == ("", True, "")
