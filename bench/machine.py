"""The line every benchmark prints about the machine it ran on. Ratios compare within one run; absolute
figures compare across runs only on the same CPU (an AVX-512 machine embeds and decodes about twice as fast
per core as an AVX2-only one), so the CPU model and its widest vector extension are part of the line."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

__all__ = ["describe"]


def describe() -> str:
    model, flags = "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if model != "unknown CPU" and flags:
                break
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model} ({vector}), {cpus} CPUs available, {platform.machine()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
