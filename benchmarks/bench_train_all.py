"""Benchmark: CPU seconds per optimizer step of every `s2m train all` stage at 64 px, and sketch drawing speed.

Runs the real `train_all` for a few steps per stage (default network sizes and batches) on a phantom archive
and times each step by the process's CPU time, which a busy shared machine does not inflate the way it does
wall time. The first step of each stage (set-up, warm-up) is left out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from s2m_retrieval.data.phantom_archive import write_phantom_archive
from s2m_retrieval.training.budgets import BUDGETS, STAGES
from s2m_retrieval.training.pair_source import source_pairs
from s2m_retrieval.training.train_all import TrainAllOptions, train_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="Steps per stage (the first is not timed).")
    parser.add_argument("--images", type=int, default=64, help="Phantom archive size.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        write_phantom_archive(archive, n=args.images, size=64, seed=3)
        c0 = time.process_time()
        pairs = source_pairs(archive, 64, variants=4)
        sketches_per_s = pairs.sketches.shape[0] * pairs.sketches.shape[1] / (time.process_time() - c0)

        ticks: dict[str, list[float]] = {s: [] for s in STAGES}

        def progress(stage: str, step: int, total: int, loss: float) -> None:
            ticks[stage].append(time.process_time())

        options = TrainAllOptions(archive=archive, held_out=4, snapshot_every=10_000,
                                  overrides={"steps": {s: args.steps for s in STAGES}})
        train_all(options, Path(tmp) / "bundle", "cpu", echo=lambda line: None, progress=progress)
    per_step = {s: (t[-1] - t[0]) / (len(t) - 1) for s, t in ticks.items()}
    small = BUDGETS["small"].steps
    n_train = 2000 - 100  # 5 % held out
    estimate = {s: small[s] * per_step[s] for s in STAGES}
    estimate["pairs"] = n_train * 4 / sketches_per_s
    print(json.dumps({"threads": args.threads, "cpu_seconds_per_step_64px": {k: round(v, 3) for k, v in per_step.items()},
                      "sketches_per_cpu_second": round(sketches_per_s, 1),
                      "budget_small_2000_images_cpu_hours": {k: round(v / 3600, 2) for k, v in estimate.items()},
                      "total_cpu_hours": round(sum(estimate.values()) / 3600, 2)}, indent=2))


if __name__ == "__main__":
    main()
