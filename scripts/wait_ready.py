"""Wait until a service's /ready answers 200, showing what it is still waiting for."""

from __future__ import annotations

import argparse
import os
import sys
import time

import httpx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--pid", type=int, help="give up if this process exits")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    last = ""
    while time.monotonic() < deadline:
        if args.pid and not _alive(args.pid):
            print("the services exited before becoming ready; see the log above", file=sys.stderr)
            return 1
        try:
            response = httpx.get(f"{args.url}/ready", timeout=2)
            if response.status_code == 200:
                return 0
            status = response.json().get("error", {}).get("message", response.text)
        except httpx.HTTPError as exc:
            status = f"not answering yet ({type(exc).__name__})"
        if status != last:
            print(f"waiting for {args.url}: {status}", file=sys.stderr)
            last = status
        time.sleep(0.5)
    print(f"{args.url} was not ready after {args.timeout:g}s: {last}", file=sys.stderr)
    return 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
