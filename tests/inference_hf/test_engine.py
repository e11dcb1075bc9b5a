"""The batching engine on real models, driven directly (the service's own engine, models loaded once).

Timing never decides a result: a sequence's sink (called on the worker thread) holds the worker at a
known point while the test queues the next sequence, so "B arrives while A is decoding" is exact, and
the engine's counters say what was shared.
"""

from __future__ import annotations

import queue

import pytest
import torch

from chat_common.generation import EngineBusy, EngineEvent, Failed, Finished, SamplingParams, Sequence, TextDelta
from inference_hf.engine import EngineStats, TokenSampler
from tests.engines import Collector
from tests.inference_hf.conftest import Service
from tests.sampling import greedy


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


class _FailingSampler(TokenSampler):
    """The real sampler, but its draw raises, or returns a token id the model cannot take."""

    def __init__(self, seq: Sequence, device: torch.device, *, token: int | None = None) -> None:
        super().__init__(seq, device)
        self._token = token

    def sample(self, logits: torch.Tensor) -> int:
        if self._token is None:
            raise RuntimeError("sampler exploded")
        return self._token


def _sampler_failing_for(
    service: Service, monkeypatch: pytest.MonkeyPatch, victim: set[int], token: int | None = None
) -> None:
    """Sequences whose id is in ``victim`` get a failing sampler (through the scheduler's sampler seam)."""

    def new_sampler(seq: Sequence, device: torch.device) -> TokenSampler:
        if id(seq) in victim:
            return _FailingSampler(seq, device, token=token)
        return TokenSampler(seq, device)

    monkeypatch.setattr(service.engine.scheduler, "new_sampler", new_sampler)


def test_a_failing_sampler_fails_its_sequence_not_the_worker(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    _ensure(service, "bart-templated")
    events: queue.Queue[EngineEvent] = queue.Queue()
    tokens = _tokens(service, "bart-templated", "hi")
    seq = Sequence(tokens, greedy(3, temperature=0.5), events.put)
    _sampler_failing_for(service, monkeypatch, {id(seq)})
    service.engine.submit("bart-templated", seq)
    event = events.get(timeout=60)
    assert isinstance(event, Failed) and "sampler exploded" in event.message
    monkeypatch.undo()
    assert _run(service, "bart-templated", tokens, greedy(2, ignore_eos=True))[1].completion_tokens == 2


def _beside_a_victim(
    service: Service, monkeypatch: pytest.MonkeyPatch, victim_tokens: list[int], token: int | None = None
) -> tuple[tuple[str, Failed | Finished], tuple[str, Finished], tuple[str, Finished]]:
    """A healthy sequence and a victim admitted in the same step (a held blocker makes them arrive
    together) and decoded in one batch: (the victim's outcome, the healthy one's answer, its answer alone)."""
    healthy_tokens = _tokens(service, "smol", "List the primary colors.")
    params = greedy(8, ignore_eos=True)
    alone = _run(service, "smol", healthy_tokens, params)
    blocker = Collector(hold=True)
    service.engine.submit("smol", Sequence(_tokens(service, "smol", "Hi"), greedy(3, ignore_eos=True), blocker))
    assert blocker.reached.wait(60)
    victim, healthy = Collector(), Collector()
    victim_seq = Sequence(victim_tokens, params, victim)
    _sampler_failing_for(service, monkeypatch, {id(victim_seq)}, token)
    service.engine.submit("smol", victim_seq)
    service.engine.submit("smol", Sequence(healthy_tokens, params, healthy))
    blocker.release()
    assert blocker.result()[1].completion_tokens == 3  # the blocker went on too
    return victim.outcome(), healthy.result(), alone


def test_a_sequence_whose_sampling_raises_fails_alone(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    before = service.engine.stats("smol")
    (_, failed), together, alone = _beside_a_victim(service, monkeypatch, _tokens(service, "smol", "Tell me a joke."))
    assert isinstance(failed, Failed) and "sampler exploded" in failed.message
    assert together == alone
    after = service.engine.stats("smol")
    assert after.failed - before.failed == 1 and after.prefill_passes - before.prefill_passes == 3


def test_a_token_the_model_cannot_take_fails_its_sequence_alone(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = _tokens(service, "smol", "Tell me a joke.")
    outside = 10**6  # no SmolLM2 token has this id (its vocabulary has 49,152)
    (_, failed), together, alone = _beside_a_victim(service, monkeypatch, prompt, token=outside)
    assert isinstance(failed, Failed) and str(outside) in failed.message
    assert together == alone


def test_a_prompt_with_an_unknown_token_id_is_refused_and_its_batch_mates_go_on(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = [*_tokens(service, "smol", "Tell me a joke."), 10**6]
    before = service.engine.stats("smol")
    (text, failed), together, alone = _beside_a_victim(service, monkeypatch, bad)
    assert isinstance(failed, Failed) and "vocabulary" in failed.message and text == ""
    assert together == alone
    after = service.engine.stats("smol")
    assert after.prefill_passes - before.prefill_passes == 3  # alone, the blocker, the healthy one: no pass for it


def test_a_sequence_finished_by_its_first_token_leaves_a_running_one_alone(service: Service) -> None:
    engine = service.engine
    running = Collector(hold=True)
    engine.submit("smol", Sequence(_tokens(service, "smol", "Count to ten."), greedy(6, ignore_eos=True), running))
    assert running.reached.wait(60)
    short = Collector()
    engine.submit("smol", Sequence(_tokens(service, "smol", "Hi"), greedy(1), short))
    running.release()
    assert short.result()[1].completion_tokens == 1
    assert running.result()[1].completion_tokens == 6
