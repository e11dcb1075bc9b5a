"""The batching engine on real models, driven directly (the service's own engine, models loaded once).

Timing never decides a result: a sequence's sink (called on the worker thread) holds the worker at a
known point while the test queues the next sequence, so "B arrives while A is decoding" is exact, and
the engine's counters say what was shared.
"""

from __future__ import annotations

import queue
import threading

import pytest

from chat_common.generation import EngineBusy, EngineEvent, Failed, Finished, SamplingParams, Sequence, TextDelta
from inference_hf.engine import EngineStats
from tests.inference_hf.conftest import Service
from tests.sampling import greedy


class Collector:
    """A sink; with ``hold`` it blocks the worker on the first text until ``release()``."""

    def __init__(self, hold: bool = False) -> None:
        self.events: queue.Queue[EngineEvent] = queue.Queue()
        self.reached = threading.Event()
        self._go = threading.Event()
        if not hold:
            self._go.set()

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, TextDelta) and not self.reached.is_set():
            self.reached.set()
            assert self._go.wait(60)
        self.events.put(event)

    def release(self) -> None:
        self._go.set()

    def result(self) -> tuple[str, Finished]:
        parts = []
        while True:
            event = self.events.get(timeout=120)
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                assert isinstance(event, Finished), event
                return "".join(parts), event


def _tokens(service: Service, model: str, text: str) -> list[int]:
    engine = service.engine
    return engine.tokenize(model, engine.render(model, [{"role": "user", "content": text}]))


def _run(service: Service, model: str, tokens: list[int], params: SamplingParams) -> tuple[str, Finished]:
    sink = Collector()
    service.engine.submit(model, Sequence(tokens, params, sink))
    return sink.result()


def _ensure(service: Service, model: str) -> None:
    assert service.client.post(f"/v1/models/{model}/load").status_code == 200


Answers = list[tuple[str, Finished]]


def _late_arrival(
    service: Service, model: str, a: list[int], b: list[int], params: SamplingParams
) -> tuple[Answers, Answers, EngineStats, EngineStats]:
    """A and B answered one after the other, then again with B submitted while A is mid-generation:
    (answers alone, answers together, engine stats before and after the second round)."""
    engine = service.engine
    alone = [_run(service, model, a, params), _run(service, model, b, params)]
    before = engine.stats(model)
    first, second = Collector(hold=True), Collector()
    engine.submit(model, Sequence(a, params, first))
    assert first.reached.wait(60)  # A was prefilled and is mid-generation; the worker waits in its sink
    engine.submit(model, Sequence(b, params, second))
    first.release()
    together = [first.result(), second.result()]
    return alone, together, before, engine.stats(model)


def test_a_late_request_joins_the_running_batch_and_answers_as_if_alone(service: Service) -> None:
    a = _tokens(service, "smol", "Tell me a story about a dragon.")
    b = _tokens(service, "smol", "List the primary colors.")
    alone, together, before, after = _late_arrival(service, "smol", a, b, greedy(12, ignore_eos=True))

    assert [t for t, _ in together] == [t for t, _ in alone]  # left padding and merging change nothing
    assert [e.completion_tokens for _, e in together] == [12, 12]
    assert after.merges - before.merges == 1
    assert after.max_batch_rows >= 2
    # 24 tokens: 2 from the two prefills, 22 from decode passes. Alone that is 22 passes; shared, B's
    # 11 decode tokens ride in A's passes: decode rows exceed decode passes by exactly the shared ones.
    passes = after.decode_passes - before.decode_passes
    rows = after.decode_rows - before.decode_rows
    assert rows == 22 and passes < rows
    assert after.prefill_passes - before.prefill_passes == 2


def test_a_cancelled_sequence_leaves_the_batch_before_the_next_forward_pass(service: Service) -> None:
    engine = service.engine
    tokens = _tokens(service, "smol", "Count from one to one hundred.")
    texts = 0
    events: queue.Queue[EngineEvent] = queue.Queue()

    def sink(event: EngineEvent) -> None:  # on the worker thread, between two forward passes
        nonlocal texts
        events.put(event)
        if isinstance(event, TextDelta):
            texts += 1
            if texts == 3:
                seq.cancel()

    seq = Sequence(tokens, greedy(200, ignore_eos=True), sink)
    other = Collector()
    before = engine.stats("smol")
    engine.submit("smol", seq)
    engine.submit("smol", Sequence(_tokens(service, "smol", "Hi"), greedy(10, ignore_eos=True), other))
    while not isinstance(event := events.get(timeout=120), Finished):
        pass
    assert event.finish_reason == "cancelled"
    assert event.completion_tokens == texts == 3  # no token was generated for it after the cancel
    _, finished = other.result()
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 10)  # its batch-mate went on
    after = engine.stats("smol")
    assert after.cancelled - before.cancelled == 1
    assert after.generated_tokens - before.generated_tokens == 13


def test_encoder_decoder_late_arrival_decodes_in_its_own_cohort(service: Service) -> None:
    _ensure(service, "bart-templated")
    info = service.engine.info("bart-templated")
    assert info.is_encoder_decoder and info.batching == "cohort"
    a = _tokens(service, "bart-templated", "hello there")
    b = _tokens(service, "bart-templated", "a different and longer question, with more words in it")
    alone, together, before, after = _late_arrival(service, "bart-templated", a, b, greedy(6, ignore_eos=True))
    assert [t for t, _ in together] == [t for t, _ in alone]  # decoder positions never shifted
    assert after.merges == before.merges  # BART's decoder positions come from the cache: never merged
    assert after.decode_rows - before.decode_rows == 10


def test_encoder_decoder_arrivals_in_the_same_step_share_passes(service: Service) -> None:
    _ensure(service, "bart-templated")
    engine = service.engine
    blocker = Collector(hold=True)  # holds the worker so that the next two arrive together
    engine.submit("bart-templated", Sequence(_tokens(service, "bart-templated", "wait"), greedy(2), blocker))
    assert blocker.reached.wait(60)
    before = engine.stats("bart-templated")
    sinks = [Collector(), Collector()]
    for text, sink in zip(["one", "two two"], sinks, strict=True):
        engine.submit(
            "bart-templated", Sequence(_tokens(service, "bart-templated", text), greedy(5, ignore_eos=True), sink)
        )
    blocker.release()
    blocker.result()
    assert [s.result()[1].completion_tokens for s in sinks] == [5, 5]
    after = engine.stats("bart-templated")
    assert after.prefill_passes - before.prefill_passes == 1  # both prompts encoded in one pass
    assert after.max_batch_rows >= 2


def test_same_seed_same_sample(service: Service) -> None:
    tokens = _tokens(service, "smol", "Tell me a story.")
    params = greedy(10, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    assert _run(service, "smol", tokens, params)[0] == _run(service, "smol", tokens, params)[0]


def test_full_queue_is_refused(service: Service) -> None:
    _ensure(service, "bart-templated")
    engine = service.engine
    tokens = _tokens(service, "bart-templated", "hi")
    holder = Collector(hold=True)
    engine.submit("bart-templated", Sequence(tokens, greedy(2, ignore_eos=True), holder))
    assert holder.reached.wait(60)  # the worker is held: whatever comes now waits in the queue
    waiting = [Collector(), Collector()]
    for sink in waiting:
        engine.submit("bart-templated", Sequence(tokens, greedy(1), sink))  # INFERENCE_HF_MAX_QUEUE=2
    with pytest.raises(EngineBusy):
        engine.submit("bart-templated", Sequence(tokens, greedy(1), lambda e: None))
    assert engine.stats("bart-templated").waiting == 2
    holder.release()
    for sink in [holder, *waiting]:
        assert isinstance(sink.result()[1], Finished)


def test_a_failing_step_fails_its_sequences_not_the_worker(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    _ensure(service, "bart-templated")
    import inference_hf.engine as engine_module

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("sampler exploded")

    monkeypatch.setattr(engine_module, "sample_token", broken)
    events: queue.Queue[EngineEvent] = queue.Queue()
    tokens = _tokens(service, "bart-templated", "hi")
    service.engine.submit("bart-templated", Sequence(tokens, greedy(3, temperature=0.5), events.put))
    event = events.get(timeout=60)
    assert isinstance(event, Failed) and "sampler exploded" in event.message
    monkeypatch.undo()
    assert _run(service, "bart-templated", tokens, greedy(2, ignore_eos=True))[1].completion_tokens == 2
