"""`s2m train all --budget`: optimizer steps per stage, network sizes per resolution, measured costs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from s2m_retrieval.errors import BadInputError

STAGES = ("segmenter", "generator", "encoder", "refiner", "inverter")
# Batch sizes per stage: those of the single `s2m train ...` commands.
BATCH = {"segmenter": 16, "generator": 32, "encoder": 16, "refiner": 8, "inverter": 16}
# Generator widths per resolution (StyleGAN's channel_base / res, capped by channel_max): the 64 px one is the
# shipped G, small enough for 2 CPU cores; the larger ones are meant for a GPU.
GENERATOR_CHANNELS = {64: (1024, 128), 128: (4096, 256), 256: (8192, 256)}
RESOLUTIONS = tuple(GENERATOR_CHANNELS)


@dataclass(frozen=True)
class Budget:
    """Optimizer steps of each stage (the generator's steps at its batch of 32)."""

    name: str
    steps: dict

    def kimg(self) -> float:
        """Thousands of images the generator's discriminator sees."""
        return self.steps["generator"] * BATCH["generator"] / 1000


# small: a first bundle in a few CPU hours at 64 px (its generator sees 96 kimg, about the shipped one's 104);
# medium: a long night on a CPU or an hour on a GPU; large: GPU territory (pSp / e4e / HyperStyle train for
# 10^5+ steps at 256 px).
BUDGETS = {
    "small": Budget("small", {"segmenter": 600, "generator": 3000, "encoder": 4000, "refiner": 2000,
                              "inverter": 3000}),
    "medium": Budget("medium", {"segmenter": 1500, "generator": 10000, "encoder": 20000, "refiner": 10000,
                                "inverter": 20000}),
    "large": Budget("large", {"segmenter": 3000, "generator": 50000, "encoder": 100000, "refiner": 50000,
                              "inverter": 100000}),
}

# CPU seconds per optimizer step at 64 px with the default networks and the batches above, one torch thread:
# the slowest of three runs of `python benchmarks/bench_train_all.py` (process CPU time, on a 2-core machine
# shared with two training jobs, which still inflated E, H and the inverter by up to 1.7x between runs; the
# fastest run: 0.18, 0.58, 0.25, 0.48, 0.84). So these are upper bounds; wall time on an idle machine of this
# kind is about the same with one thread, a little less with two.
CPU_SECONDS_PER_STEP_64 = {"segmenter": 0.21, "generator": 0.59, "encoder": 0.42, "refiner": 0.66, "inverter": 1.25}
# Free-hand sketches drawn per CPU second while making the training pairs (same runs: 87 to 137).
CPU_SKETCHES_PER_S = 87.0
# One GPU: an estimate, not a measurement (no GPU was at hand): networks this small at 64 px are bound by kernel
# launches more than by arithmetic, so ~10x the one-thread CPU speed is assumed; sketches are drawn on the CPU.
GPU_SPEEDUP_ESTIMATE = 10.0


def estimate_seconds(steps: dict, n_images: int, variants: int = 4, gpu: bool = False) -> dict:
    """Seconds per stage (and 'pairs' for drawing the sketches) of `s2m train all` at 64 px from the figures above."""
    speed = GPU_SPEEDUP_ESTIMATE if gpu else 1.0
    out = {stage: steps[stage] * CPU_SECONDS_PER_STEP_64[stage] / speed for stage in STAGES}
    out["pairs"] = n_images * variants / CPU_SKETCHES_PER_S
    return out


# Config parts --config-json may override (tests use tiny networks), besides "steps" and "batch" per stage.
CONFIG_PARTS = ("segmenter", "generator", "encoder", "discriminator", "refiner", "inverter")

@dataclass(frozen=True)
class TrainAllOptions:
    """What `s2m train all` was asked for; everything but device and threads is the run's plan."""

    archive: Path
    res: int = 64
    budget: str = "small"
    fit: str = "crop"
    perceptual: str = "seg"
    segmenter: Path | None = None     # for archives without masks (default: the shipped phantom segmenter)
    seed: int = 0
    pairs_per_image: int = 4
    held_out: int | None = None       # default: 5 % of the archive, between 2 and 200 images
    snapshot_every: int = 100         # optimizer steps between resume snapshots
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from s2m_retrieval.data.archive import FIT_POLICIES

        if self.res not in RESOLUTIONS:
            raise BadInputError(f"--res must be one of {', '.join(map(str, RESOLUTIONS))}, got {self.res}")
        if self.budget not in BUDGETS:
            raise BadInputError(f"--budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        if self.fit not in FIT_POLICIES:
            raise BadInputError(f"--fit must be crop or pad, got {self.fit!r}")
        if self.pairs_per_image < 1 or self.snapshot_every < 1 or (self.held_out is not None and self.held_out < 2):
            raise BadInputError("--pairs-per-image and --snapshot-every must be >= 1, --held-out >= 2")
        unknown = set(self.overrides) - set(CONFIG_PARTS) - {"steps", "batch"}
        if unknown:
            raise BadInputError(f"--config-json: unknown parts {sorted(unknown)} "
                                f"(known: {', '.join(CONFIG_PARTS)}, steps, batch)")

    def steps(self, stage: str) -> int:
        """Optimizer steps of a stage: the budget's, unless overridden."""
        return int(self.overrides.get("steps", {}).get(stage, BUDGETS[self.budget].steps[stage]))

    def batch(self, stage: str) -> int:
        """Batch size of a stage."""
        return int(self.overrides.get("batch", {}).get(stage, BATCH[stage]))

    def part(self, name: str) -> dict:
        """Config field overrides of one network."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.overrides.get(name, {}).items()}
