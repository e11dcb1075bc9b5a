"""Starting real services as subprocesses on free ports, for integration tests and benchmarks."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from scripts.local_redis import free_port

__all__ = ["ROOT", "Service", "free_port", "start_service"]

ROOT = Path(__file__).resolve().parents[1]


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the test process dies, so a killed or crashed test
    run leaves no service behind holding a port and a model in memory."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(
    name: str,
    args: list[str],
    env: dict[str, str],
    port: int,
    log_dir: Path,
    *,
    ready_path: str = "/ready",
    timeout_s: float = 120,
) -> Service:
    """Run ``python <args>`` with ``env`` added; wait until ``ready_path`` answers 200."""
    log_path = log_dir / f"{name}-{port}.log"
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
        )
    service = Service(name, f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{service.log()[-3000:]}")
        try:
            if httpx.get(service.url + ready_path, timeout=2).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    service.stop()
    raise RuntimeError(f"{name} not ready after {timeout_s}s:\n{service.log()[-3000:]}")
