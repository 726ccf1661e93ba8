"""Resumable training state: atomic saves, RNG states, the `latest.pt` reader."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from s2m_retrieval.errors import CheckpointError

STATE_FORMAT = "s2m-train/1"


def rng_state(data_gen: torch.Generator, device: torch.device) -> dict:
    """Global and data-order RNG states, so a resumed run draws the same batches."""
    state = {"cpu": torch.get_rng_state(), "data": data_gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, data_gen: torch.Generator, device: torch.device) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["cpu"])
    data_gen.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the run folder is meant to be shared like any output
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_train_state(path: str | os.PathLike) -> dict:
    """Read a `latest.pt` training state (weights_only, no pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"training state {path} is corrupt ({type(exc).__name__}); "
                              "delete it or train with resume off") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an s2m training state ({STATE_FORMAT})")
    return state
