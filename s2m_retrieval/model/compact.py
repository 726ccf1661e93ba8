"""Halve a bundle's checkpoints on disk: float32 weights stored as float16, dependents re-stamped.

Shipped weights must stay small. Networks compute in float32 either way (loading casts into the modules'
float32 parameters); only the stored precision drops. A network's version is a hash of its stored weights, so
halving one changes its version, and every checkpoint that records it (`<name>_version` in its meta, e.g. H
records the E it was trained with) is re-stamped in the same pass, in dependency order.
"""

from __future__ import annotations

import os
from pathlib import Path

from s2m_retrieval.networks.checkpoint import load_checkpoint, save_checkpoint, version_hash

# Dependency order: a network's version is final before anything that records it is rewritten.
ORDER = ("generator", "segmenter", "encoder", "inverter", "refiner", "projector", "pix2pix", "embedding")


def compact_bundle(folder: str | os.PathLike, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Store `names`' float32 tensors as float16 and re-stamp every checkpoint of the folder that records a
    changed version; return {file name: (bytes before, bytes after)} of the files rewritten."""
    import torch

    folder = Path(folder)
    changed: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for name in ORDER:
        path = folder / f"{name}.pt"
        if not path.is_file():
            continue
        payload = load_checkpoint(path, kind=name)
        before = version_hash(payload)
        meta = dict(payload.get("meta") or {})
        restamp = {f"{dep}_version": changed[dep] for dep in changed if f"{dep}_version" in meta}
        state = payload["state_dict"]
        halve = name in names and any(v.dtype == torch.float32 for v in state.values())
        if halve:
            state = {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}
        if not halve and not restamp:
            continue
        size = path.stat().st_size
        save_checkpoint(path, kind=name, config=payload["config"], state_dict=state, w_avg=payload.get("w_avg"),
                        meta=meta | restamp)
        after = version_hash(load_checkpoint(path, kind=name))
        if after != before:
            changed[name] = after
        sizes[path.name] = (size, path.stat().st_size)
    return sizes
