"""Measuring helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import statistics
import time


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    """Median wall time of fn() in milliseconds after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def rss_mib() -> dict[str, float]:
    """Resident memory of this process (anonymous and file-backed) in MiB, from /proc."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out
