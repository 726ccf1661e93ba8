"""Benchmark: `s2m serve` under 20 concurrent clients on loopback for a bounded time; errors, p50/p95, requests/s.

The server is a real `s2m serve` process (its own interpreter, as deployed) over the tiny random models of the
tests and an index of a seeded phantom archive built with them: the figures measure the service (HTTP, upload
decoding, the query thread pool, E + H + FAISS + re-rank at the tiny size), not the quality of trained weights.
Each client is a thread with one keep-alive connection sending a mix of requests: sketch queries (PNG sketches
of 256 px, base64 in JSON, as the page sends them), "more like this" queries and thumbnails. Exit code 1 when any
request failed.

The same run measures two servers over the same index, in turn for --rounds rounds (each round a fresh process):
unbatched (`--max-batch 1`, each sketch query alone on the models) and batched (sketch queries that meet share a
forward; `s2m serve`'s defaults unless --max-batch / --batch-wait-ms are given), and prints the batched/unbatched
ratios of requests/s, p50 and p95 over all rounds (the target: >= 2x requests/s, p95 not worse, 0 errors). Run:
`OMP_NUM_THREADS=1 python benchmarks/bench_service.py [--shipped] [--clients 20] [--seconds 25] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from timing import start_server



def make_setup(folder: Path, n: int, shipped: bool = False) -> tuple[Path, Path]:
    """Tiny random models (or the shipped bundle) and an index of an n-image phantom archive built with them:
    (home, models)."""
    from s2m_retrieval.model.bundle import shipped_folder
    from s2m_retrieval.data.phantom_archive import write_phantom_archive
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.ingest.runner import BuildOptions, build_index
    from s2m_retrieval.testing.random_models import write_random_models

    models, home, archive = folder / "models", folder / "home", folder / "archive"
    if shipped:
        models = shipped_folder()
        spec = "inverter"
    else:
        write_random_models(models, seed=0)
        spec = f"inverter:models={models},perceptual=random"
    write_phantom_archive(archive, n=n, size=64, seed=3)
    build_index(archive, load_encoder(spec), home=home, options=BuildOptions(batch_size=32))
    return home, models


def sketch_bodies(count: int, size: int = 256) -> list[bytes]:
    """JSON bodies of sketch queries: free-hand phantom sketches as base64 PNG, k=10, thumbnails included."""
    from PIL import Image

    from s2m_retrieval.data.phantom import make_phantom
    from s2m_retrieval.data.sketch import FreehandConfig, sketch_from_mask

    bodies = []
    for i in range(count):
        sketch = sketch_from_mask(make_phantom(11, i, 64)[1], size, freehand=FreehandConfig(), seed=i)
        buf = io.BytesIO()
        Image.fromarray(sketch).save(buf, format="PNG")
        bodies.append(json.dumps({"sketch": base64.b64encode(buf.getvalue()).decode(), "k": 10,
                                  "include_images": True}).encode())
    return bodies


class Client(threading.Thread):
    """One keep-alive connection sending requests of the mix until the deadline; records (kind, ms, ok)."""

    def __init__(self, port: int, deadline: float, mix: list[str], bodies: list[bytes], ids: list[int],
                 seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.deadline, self.mix, self.bodies, self.ids = port, deadline, mix, bodies, ids
        self.rng = random.Random(seed)
        self.records: list[tuple[str, float, bool]] = []
        self.failures: list[str] = []

    def request(self, conn: http.client.HTTPConnection, kind: str) -> tuple[int, bytes]:
        if kind == "sketch":
            conn.request("POST", "/v1/retrieve", body=self.rng.choice(self.bodies),
                         headers={"Content-Type": "application/json"})
        elif kind == "like":
            body = json.dumps({"like": self.rng.choice(self.ids), "k": 10}).encode()
            conn.request("POST", "/v1/retrieve", body=body, headers={"Content-Type": "application/json"})
        else:
            conn.request("GET", f"/v1/images/{self.rng.choice(self.ids)}")
        response = conn.getresponse()
        return response.status, response.read()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while time.monotonic() < self.deadline:
            kind = self.rng.choice(self.mix)
            t0 = time.perf_counter()
            try:
                status, body = self.request(conn, kind)
                ok = status == 200 and (kind == "image" or bool(json.loads(body)["hits"]))
                if not ok:
                    self.failures.append(f"{kind}: HTTP {status} {body[:120]!r}")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                ok = False
                self.failures.append(f"{kind}: {type(exc).__name__} {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.records.append((kind, (time.perf_counter() - t0) * 1e3, ok))
        conn.close()


def server_counts(port: int) -> tuple[int, float, float]:
    """From the server's /metrics: its count of /v1 requests (to check against the clients'), and the count and
    sum of its batch size histogram (forwards of the models, sketches in them)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    samples = [line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")]
    served = sum(float(v) for k, v in samples if k.startswith("s2m_http_requests_total{") and 'route="/v1/' in k)
    value = {k: float(v) for k, v in samples}
    return int(served), value.get("s2m_query_batch_size_count", 0.0), value.get("s2m_query_batch_size_sum", 0.0)


def summary(records: list[tuple[str, float, bool]], seconds: float) -> dict:
    """Count, errors, requests/s, p50/p95/max latency (ms)."""
    ms = [r[1] for r in records]
    return {"requests": len(records), "errors": sum(not r[2] for r in records),
            "req_per_s": round(len(records) / seconds, 1),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p95_ms": round(float(np.percentile(ms, 95)), 1) if ms else None,
            "max_ms": round(max(ms), 1) if ms else None}


@dataclass
class Measured:
    """What the clients saw of one server over its rounds, and what the server counted."""

    records: list = field(default_factory=list)   # (kind, ms, ok) of every request
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    served: int = 0                                # the server's own count of /v1 requests
    forwards: float = 0.0                          # forwards of the models (the batch size histogram's count)
    sketches: float = 0.0                          # sketches in them (its sum)

    def report(self, options: list[str], kinds: list[str]) -> dict:
        return {"options": " ".join(options) or "(s2m serve defaults)", "seconds": round(self.seconds, 1),
                "all": summary(self.records, self.seconds),
                "by_kind": {k: summary([r for r in self.records if r[0] == k], self.seconds) for k in kinds},
                "server_counted_requests": self.served,
                "sketches_per_forward": round(self.sketches / self.forwards, 2) if self.forwards else None}


def measure(home: Path, models: Path, args, bodies: list[bytes], mix: list[str], extra: list[str],
            into: Measured) -> None:
    """One round of one server (`s2m serve` with `extra` options, started afresh) under the clients."""
    proc, base = start_server(["--home", str(home), "--model", str(models), "--concurrency",
                                   str(args.concurrency), *extra], args.threads)
    try:
        port = int(base.rsplit(":", 1)[1])
        ids = list(range(1, args.images + 1))
        Client(port, time.monotonic() + 3, ["sketch", "like"], bodies, ids, seed=-1).run()  # warm-up
        served_before, forwards_before, batched_before = server_counts(port)
        deadline = time.monotonic() + args.seconds
        t_start = time.monotonic()
        clients = [Client(port, deadline, mix, bodies, ids, seed=i) for i in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        elapsed = time.monotonic() - t_start
        served, forwards, sketches = server_counts(port)
    finally:
        proc.terminate()
        proc.wait(30)
    into.records += [r for c in clients for r in c.records]
    into.failures += [f for c in clients for f in c.failures]
    into.seconds += elapsed
    into.served += served - served_before
    into.forwards += forwards - forwards_before
    into.sketches += sketches - batched_before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=25.0, help="Measured time of each server in each round.")
    ap.add_argument("--rounds", type=int, default=2, help="Rounds of unbatched then batched (the machine's load "
                                                          "drifts: alternating spreads it over both).")
    ap.add_argument("--images", type=int, default=200, help="Phantom archive size of the index.")
    ap.add_argument("--mix", default="sketch=8,like=1,image=1", help="Request kinds and their weights.")
    ap.add_argument("--concurrency", type=int, default=2, help="Server: queries (batches) computing at once.")
    ap.add_argument("--threads", type=int, default=1, help="Server: torch threads.")
    ap.add_argument("--max-batch", type=int, help="Batched server: --max-batch (default: s2m serve's).")
    ap.add_argument("--batch-wait-ms", type=int, help="Batched server: --batch-wait-ms (default: s2m serve's).")
    ap.add_argument("--shipped", action="store_true", help="Serve the shipped models instead of tiny random ones.")
    args = ap.parse_args()
    mix = [kind for part in args.mix.split(",") for kind in [part.split("=")[0]] * int(part.split("=")[1])]
    if not mix or set(mix) - {"sketch", "like", "image"}:
        raise SystemExit(f"--mix takes sketch, like and image weights, got {args.mix!r}")
    batching = [flag for flag, value in (("--max-batch", args.max_batch), ("--batch-wait-ms", args.batch_wait_ms))
                if value is not None for flag in (flag, str(value))]

    with tempfile.TemporaryDirectory(prefix="s2m-bench-service-") as tmp:
        t0 = time.perf_counter()
        home, models = make_setup(Path(tmp), args.images, args.shipped)
        bodies = sketch_bodies(32)
        kind = "the shipped models" if args.shipped else "tiny random models"
        print(f"setup: {args.images}-image index, {kind} ({time.perf_counter() - t0:.1f} s)")
        servers = {"unbatched": ["--max-batch", "1"], "batched": batching}
        seen = {name: Measured() for name in servers}
        for _ in range(args.rounds):
            for name, options in servers.items():
                measure(home, models, args, bodies, mix, options, seen[name])

    kinds = sorted(set(mix))
    runs = {name: seen[name].report(options, kinds) for name, options in servers.items()}
    unbatched, batched = runs["unbatched"]["all"], runs["batched"]["all"]
    ratio = {"req_per_s": round(batched["req_per_s"] / unbatched["req_per_s"], 2) if unbatched["req_per_s"] else None,
             "p50": round(batched["p50_ms"] / unbatched["p50_ms"], 2) if unbatched["p50_ms"] else None,
             "p95": round(batched["p95_ms"] / unbatched["p95_ms"], 2) if unbatched["p95_ms"] else None}
    failures = {name: measured.failures for name, measured in seen.items()}
    errors = sum(run["all"]["errors"] for run in runs.values())
    report = {"clients": args.clients, "images": args.images, "mix": args.mix, "rounds": args.rounds,
              "server": {"concurrency": args.concurrency, "threads": args.threads, "cpus": os.cpu_count()},
              **runs, "batched_vs_unbatched": ratio}
    print(json.dumps(report, indent=2))
    met = ratio["req_per_s"] is not None and ratio["req_per_s"] >= 2 and ratio["p95"] <= 1 and errors == 0
    print(f"batched / unbatched: requests/s x{ratio['req_per_s']}, p50 x{ratio['p50']}, p95 x{ratio['p95']}, "
          f"{errors} errors (target >= 2x requests/s, p95 not worse, 0 errors: {'met' if met else 'not met'})")
    for name, seen in failures.items():
        for failure in seen[:10]:
            print(f"failure ({name}):", failure)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
