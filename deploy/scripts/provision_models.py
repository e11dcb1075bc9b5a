"""Fill the models volume that inference-gguf reads: the one-shot ``provision-models`` job of deploy/compose.yaml.

``--source DIR``: every ``*.gguf`` file in DIR (not walked) is copied into ``--target``. ``SWITCHBOARD_MODEL_URLS``
(or ``--url``, repeatable): each http(s) URL is downloaded into ``--target`` under its last path segment. A file that
is already there with the same size is left alone, so the job can run again; every file is written to a temporary
name first and renamed when complete, so a reader never sees half a model. Standard library only: it runs in the
inference-gguf image as it is.

Exit status 0 when every file is in place, 1 (with one line per failure on stderr) otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

__all__ = ["main", "provision"]


def _write(target: Path, name: str, source: BinaryIO, size: int | None) -> str:
    final = target / name
    if size is not None and final.is_file() and final.stat().st_size == size:
        return f"kept {final} ({size} bytes, already there)"
    partial = target / f".{name}.partial"
    with partial.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    os.replace(partial, final)
    return f"wrote {final} ({final.stat().st_size} bytes)"


def provision(target: Path, source: Path | None, urls: list[str]) -> tuple[list[str], list[str]]:
    """Copy and download the models into ``target``; (what was done, what failed), one line each."""
    done: list[str] = []
    failed: list[str] = []
    target.mkdir(parents=True, exist_ok=True)
    if source is not None and source.is_dir():
        for path in sorted(source.glob("*.gguf")):
            with path.open("rb") as handle:
                done.append(_write(target, path.name, handle, path.stat().st_size))
    for url in urls:
        name = Path(urllib.parse.urlparse(url).path).name
        if not url.startswith(("http://", "https://")) or not name:
            failed.append(f"{url}: not an http(s) URL that ends in a file name")
            continue
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                length = response.headers.get("Content-Length")
                done.append(_write(target, name, response, int(length) if length else None))
        except (OSError, ValueError) as exc:
            (target / f".{name}.partial").unlink(missing_ok=True)
            failed.append(f"{url}: {exc}")
    return done, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Copy and download GGUF models into a models folder.")
    parser.add_argument("--target", type=Path, required=True, help="the models folder (the volume)")
    parser.add_argument("--source", type=Path, help="a folder whose *.gguf files are copied")
    parser.add_argument("--url", action="append", default=[], help="a GGUF file to download (repeatable)")
    args = parser.parse_args(argv)
    urls = args.url + os.environ.get("SWITCHBOARD_MODEL_URLS", "").replace(",", " ").split()
    done, failed = provision(args.target, args.source, urls)
    for line in done:
        print(line)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    if not done and not failed:
        print(f"nothing to provision: no *.gguf in {args.source} and no SWITCHBOARD_MODEL_URLS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
