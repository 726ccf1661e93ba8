"""Benchmark: `s2m retrieve` as a user runs it: N sketches in one `--batch` command vs N single commands, and a
`--server` call against a warm `s2m serve` vs a cold local call; ratios measured in the same run.

Everything is a real `s2m` subprocess with the shipped models over an index this script builds in a temp folder
(or --workdir): `s2m data phantom`, `s2m index build`, then `s2m eval make-queries` draws the sketches ("unseen"
style, 256 px). (a) `s2m retrieve --batch QUERIES --json` once against `s2m retrieve SKETCH --json` once a sketch:
total wall times, their ratio (issue target >= 3x) and whether every query got the same hits and scores.
(b) `s2m retrieve SKETCH --server URL --json` against an `s2m serve` warmed by two calls: median wall time a call
(target <= 1 s) against the median single local call of (a), and whether the answers match the local ones.
Run: `OMP_NUM_THREADS=1 python benchmarks/bench_cli.py [--n 100] [--images 300] [--server-calls 10]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import REPO, S2M, start_server

SCORE_TOLERANCE = 1e-5


def s2m(*args, timed: bool = False):
    """Run `s2m ARGS` to completion (a failure ends the benchmark); stdout, and the wall seconds when `timed`."""
    t0 = time.perf_counter()
    done = subprocess.run([*S2M, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"s2m {' '.join(map(str, args))} failed ({done.returncode}): {done.stderr.strip()}")
    return (done.stdout, seconds) if timed else done.stdout


def prepare(work: Path, images: int, n: int) -> tuple[Path, Path]:
    """An index of an `images`-phantom archive built with the shipped models, and `n` query sketches of it:
    (home, queries folder). Reused when `work` already holds them (the archive and index whatever their size)."""
    archive, home, queries = work / "archive", work / "home", work / f"queries_{n}"
    if not (archive / "labels.csv").is_file():
        s2m("data", "phantom", "--n", images, "--size", 64, "--seed", 3, "--out", archive)
    if not (home / "indexes" / "default").is_dir():
        s2m("index", "build", archive, "--home", home)
    if not (queries / "manifest.csv").is_file():
        s2m("eval", "make-queries", archive, "--n", n, "--seed", 5, "--out", queries)
    return home, queries


def hits(record: dict) -> list[tuple[int, float]]:
    return [(h["id"], h["score"]) for h in record["hits"]]


def same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """Same ids in the same order and scores within SCORE_TOLERANCE."""
    return [i for i, _ in a] == [i for i, _ in b] and all(abs(x - y) <= SCORE_TOLERANCE
                                                          for (_, x), (_, y) in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="Sketches of (a).")
    ap.add_argument("--images", type=int, default=300, help="Phantom archive size of the index.")
    ap.add_argument("--server-calls", type=int, default=10, help="Timed `--server` calls of (b).")
    ap.add_argument("--workdir", type=Path, help="Keep the archive, index and sketches here (reused by reruns).")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="s2m-bench-cli-") as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        home, queries = prepare(work, args.images, args.n)
        sketches = sorted((queries / "sketches").glob("*.png"))[:args.n]
        print(f"setup: {args.images}-image index, shipped models, {len(sketches)} sketches "
              f"({time.perf_counter() - t0:.1f} s); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")

        out, batch_s = s2m("retrieve", "--batch", queries, "--json", "--home", home, timed=True)
        batched = {Path(r["sketch"]).name: hits(r) for r in map(json.loads, out.splitlines())}
        single_s, single = [], {}
        for sketch in sketches:
            out, seconds = s2m("retrieve", sketch, "--json", "--home", home, timed=True)
            single_s.append(seconds)
            single[sketch.name] = hits(json.loads(out))
        batch_same = sorted(batched) == sorted(single) and all(same(batched[k], single[k]) for k in single)

        proc, url = start_server(["--home", str(home), "--concurrency", "1"])
        try:
            for sketch in sketches[:2]:  # warm-up: the server's first queries start its threads and caches
                s2m("retrieve", sketch, "--json", "--server", url)
            server_s, server_same = [], True
            for i in range(args.server_calls):
                sketch = sketches[i % len(sketches)]
                out, seconds = s2m("retrieve", sketch, "--json", "--server", url, timed=True)
                server_s.append(seconds)
                server_same &= same(hits(json.loads(out)), single[sketch.name])
        finally:
            proc.terminate()
            proc.wait(30)

    singles_total = sum(single_s)
    report = {
        "batch": {"sketches": len(sketches), "one_command_s": round(batch_s, 2),
                  "single_commands_s": round(singles_total, 2),
                  "queries_per_s": {"batch": round(len(sketches) / batch_s, 2),
                                    "single": round(len(sketches) / singles_total, 2)},
                  "speedup": round(singles_total / batch_s, 2), "same_results": batch_same},
        "client": {"calls": len(server_s), "server_call_median_s": round(statistics.median(server_s), 3),
                   "server_call_max_s": round(max(server_s), 3),
                   "cold_local_call_median_s": round(statistics.median(single_s), 3),
                   "speedup": round(statistics.median(single_s) / statistics.median(server_s), 2),
                   "same_results": server_same},
    }
    print(json.dumps(report, indent=2))
    print(f"batch: {report['batch']['speedup']}x the single commands (target >= 3x), same results: {batch_same}")
    print(f"--server: {report['client']['server_call_median_s']} s a call (target <= 1 s) vs "
          f"{report['client']['cold_local_call_median_s']} s cold local, same results: {server_same}")
    if not (batch_same and server_same):
        sys.exit(1)


if __name__ == "__main__":
    main()
