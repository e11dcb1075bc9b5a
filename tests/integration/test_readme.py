"""The README's Python examples, run as a user would paste them, against the real stack (the bundled model
with the service's default answer length, no max_tokens in the examples): each must run to completion and
print what it promises. The subprocess timeout is a guard against a hang, not a speed check (the runaway
answers of issue 17 took minutes; the default answer length keeps these to seconds)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.services import ROOT, Service

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
DOCUMENTED_URL = "http://127.0.0.1:8000"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_examples_that_use_the_documented_url() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2 and DOCUMENTED_URL in blocks[0]


def test_the_readme_python_examples_run_to_completion(gateway: Service) -> None:
    # One script, in the README's order: later examples use the client the first one made.
    timed = [
        f"_t = time.monotonic()\n{block}\nprint(f'[example {i} took {{time.monotonic() - _t:.1f}} s]')"
        for i, block in enumerate(python_blocks())
    ]
    script = "import time\n" + "\n\n".join(timed).replace(DOCUMENTED_URL, gateway.url)
    done = subprocess.run(
        [sys.executable, "-c", script + "\nprint('\\nREADME-EXAMPLES-DONE')"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    print(done.stdout)  # with -s: what each example printed and how long it took
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("README-EXAMPLES-DONE")
    # The retrieval example prints the titles of the knowledge-base articles it used.
    assert "[" in done.stdout and "'" in done.stdout
