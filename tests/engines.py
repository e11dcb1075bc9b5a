"""Sinks and observers for the engine tests of both inference services (the engines call them on their
worker threads)."""

from __future__ import annotations

import queue
import threading

from chat_common.generation import EngineEvent, Failed, Finished, TextDelta

__all__ = ["Collector", "Observer"]


class Collector:
    """A sequence's sink that keeps its events; with ``hold`` it blocks the worker on the first text until
    :meth:`release`, so that a test knows exactly where the engine is (``reached``)."""

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

    def outcome(self) -> tuple[str, Finished | Failed]:
        """The text and the last event, whichever it is."""
        parts = []
        while True:
            event = self.events.get(timeout=120)
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                return "".join(parts), event

    def result(self) -> tuple[str, Finished]:
        """The text and the :class:`Finished` event (anything else fails the test)."""
        text, event = self.outcome()
        assert isinstance(event, Finished), event
        return text, event


class Observer:
    """Every observer call of both engines; counts the generated tokens it is told of."""

    def __init__(self) -> None:
        self.generated = 0

    def tokens(self, model: str, count: int) -> None:
        self.generated += count

    def queue_depth(self, model: str, depth: int) -> None: ...
    def running(self, model: str, count: int) -> None: ...
    def finished(self, model: str, event: Finished, first_token_s: float | None) -> None: ...
    def failed(self, model: str) -> None: ...
    def step(self, model: str, sequences: int, tokens: int, decode_s: float, step_s: float) -> None: ...
    def prompt(self, model: str, reused: int, evaluated: int) -> None: ...
    def forward(self, model: str, kind: str, rows: int) -> None: ...
