"""Measuring helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `s2m` of this checkout (not whichever is installed), as a command line.
S2M = [sys.executable, "-c", "import sys; from cli.main import main; sys.argv = ['s2m'] + sys.argv[1:]; main()"]


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


def start_server(options: list[str], threads: int = 1) -> tuple[subprocess.Popen, str]:
    """`s2m serve --port 0 OPTIONS` on a free loopback port with `threads` torch threads; the process and its base
    URL once it answers."""
    proc = subprocess.Popen([*S2M, "serve", "--port", "0", "--threads", str(threads), "--log-level", "warning",
                             *options], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": str(threads)})
    line = proc.stdout.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, found.group(1)
