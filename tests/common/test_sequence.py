"""The per-sequence state both engines share, driven with a small byte-piece vocabulary (the way llama.cpp
hands token text over: bytes per token, characters possibly split across tokens). The engines' own tests run
it on real models."""

from __future__ import annotations

from chat_common.generation import EngineEvent, Finished, Sequence, TextDelta
from chat_common.sequence import ByteDecoder, SequenceState
from tests.sampling import greedy

PIECES = [b"Hello", b" wor", b"ld", b"\xe2\x82", b"\xac", b"!", b""]  # 3 + 4: the euro sign, split
HELLO, WOR, LD, EURO_HEAD, EURO_TAIL, BANG, EOS = range(len(PIECES))


def _state(limit: int = 10, **params: object) -> tuple[SequenceState, list[EngineEvent]]:
    events: list[EngineEvent] = []
    seq = Sequence([0, 1, 2], greedy(limit, **params), events.append)
    return SequenceState(seq, decoder=ByteDecoder(PIECES), is_eos=lambda t: t == EOS, limit=limit), events


def _text(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def _feed(state: SequenceState, tokens: list[int]) -> int:
    """Tokens accepted until the state said it is finished."""
    for n, token in enumerate(tokens, 1):
        if state.accept(token):
            return n
    return len(tokens)


def test_text_streams_token_by_token_and_a_split_character_comes_out_whole() -> None:
    state, events = _state()
    _feed(state, [HELLO, EURO_HEAD, EURO_TAIL, BANG])
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", "\u20ac", "!"]
    assert not state.done


def test_the_limit_ends_with_length_and_counts_every_token() -> None:
    state, events = _state(limit=3)
    assert _feed(state, [HELLO, WOR, LD, BANG]) == 3
    assert _text(events) == "Hello world"
    assert state.finished_event() == Finished("length", 3, 3)


def test_end_of_sequence_ends_with_stop_and_is_counted_unless_ignored() -> None:
    state, events = _state()
    assert _feed(state, [HELLO, EOS, WOR]) == 2
    assert (_text(events), state.finished_event()) == ("Hello", Finished("stop", 3, 2))
    state, events = _state(limit=3, ignore_eos=True)
    assert _feed(state, [HELLO, EOS, WOR]) == 3
    assert (_text(events), state.finish_reason) == ("Hello wor", "length")


def test_a_stop_sequence_across_tokens_is_cut_and_never_streamed() -> None:
    state, events = _state(stop=("o w",))
    assert _feed(state, [HELLO, WOR, LD]) == 2
    assert (_text(events), state.finish_reason) == ("Hell", "stop")


def test_text_held_for_a_possible_stop_is_released_when_it_turns_out_not_to_be_one() -> None:
    state, events = _state(limit=2, stop=("o!",))
    assert _feed(state, [HELLO, WOR]) == 2  # "o" was held after "Hello"; " wor" decides: not a stop
    assert (_text(events), state.finish_reason) == ("Hello wor", "length")
    state, events = _state(limit=1, stop=("o!",))
    assert _feed(state, [HELLO]) == 1  # held at the limit: flushed with the end
    assert (_text(events), state.finish_reason) == ("Hello", "length")


def test_a_stop_sequence_completed_by_the_flushed_tail_is_cut() -> None:
    """Held-back text plus the decoder's flushed tail (an incomplete character: U+FFFD) go through the stop
    scanner; a sequence used to release them unchecked."""
    state, events = _state(limit=2, stop=("o\ufffd",))
    assert _feed(state, [HELLO, EURO_HEAD]) == 2
    assert (_text(events), state.finish_reason) == ("Hell", "stop")


def test_a_cancelled_sequence_ends_without_counting_the_token() -> None:
    state, events = _state()
    _feed(state, [HELLO])
    state.seq.cancel()
    assert state.accept(WOR) is True
    assert (_text(events), state.finished_event()) == ("Hello", Finished("cancelled", 3, 1))
