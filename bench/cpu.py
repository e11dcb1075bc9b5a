"""CPU time of processes over a benchmark pass. On a shared 2-core machine throughput moves by 10-25 % from
one run to the next; the CPU a process spent per request moves much less, and says where the cost went
(the gateway, Redis, the load generator)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CpuMeter"]


def cpu_seconds(pid: int) -> float:
    """Seconds of CPU the process ``pid`` has run (Linux: ``/proc/PID/schedstat``, nanoseconds)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


class CpuMeter:
    """``start()`` then ``per_request(n)``: each named process's CPU microseconds per request since."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def per_request(self, requests: int) -> dict[str, float]:
        return {name: (cpu_seconds(pid) - self._start[name]) * 1e6 / requests for name, pid in self.pids.items()}
