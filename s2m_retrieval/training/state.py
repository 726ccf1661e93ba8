"""Resumable training state: atomic saves, RNG states, the `latest.pt` reader, what changed since a state."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from s2m_retrieval.errors import CheckpointError
from s2m_retrieval.networks.checkpoint import STATE_FORMAT  # defined there: the checkpoint reader tells states apart

MAX_CHANGES = 6  # fields a message lists


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
        raise CheckpointError(f"training state {path} is corrupt ({type(exc).__name__}); delete it, or start "
                              "over (--fresh, or resume=False in Python)") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an s2m training state ({STATE_FORMAT})")
    return state


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.12g}"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _changes(before: dict, now: dict, labels: dict, prefix: str) -> list[str]:
    out = []
    for name in sorted(before.keys() & now.keys()):
        a, b = before[name], now[name]
        label = f"{prefix}{labels.get(name, name)}".strip()
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, labels, f"{label} ")
        elif a != b:
            out.append(f"{label} {_show(a)} -> {_show(b)}")
    return out


def describe_changes(before: dict, now: dict, labels: dict | None = None) -> str:
    """'name old -> new' for each field both dicts hold that differs, '; '-joined ('' when none). A field one of
    them lacks (a file written before it was recorded) is not judged; dicts in dicts are compared field by field,
    their fields named after them (`labels`: a field's name in messages, '' for none)."""
    changes = _changes(before, now, labels or {}, "")
    more = len(changes) - MAX_CHANGES
    return "; ".join(changes[:MAX_CHANGES]) + (f"; and {more} more" if more > 0 else "")
