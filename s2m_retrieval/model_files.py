"""Where the Sketch2MedI checkpoints come from: the shipped weights folder or a models folder given by hand."""

from __future__ import annotations

import os
from pathlib import Path

from s2m_retrieval.checkpoint import shipped_weights
from s2m_retrieval.errors import CheckpointError

# File names inside a models folder, as `s2m train ...` writes them; segmenter.pt is optional (the seg metric).
MODEL_FILES = ("generator", "encoder", "refiner", "inverter")
TRAIN_HINT = {"generator": "s2m train generator", "encoder": "s2m train encoder", "refiner": "s2m train refiner",
              "inverter": "s2m train inverter"}


def models_folder(models: str | os.PathLike | None) -> Path:
    """The folder holding the checkpoints: `models`, else the package's shipped weights."""
    if models is None:
        return shipped_weights("generator").parent
    folder = Path(models)
    if not folder.is_dir():
        raise CheckpointError(f"models folder not found: {folder}")
    return folder


def model_files(models: str | os.PathLike | None, required: tuple[str, ...], purpose: str,
                hint: str = "") -> dict[str, Path | None]:
    """Checkpoint paths by component (None where absent); a missing required one is a one-line CheckpointError
    naming it, what it is needed for, how to get it, and `hint` (e.g. an alternative for tests)."""
    folder = models_folder(models)
    files = {name: folder / f"{name}.pt" for name in MODEL_FILES}
    files = {name: path if path.is_file() else None for name, path in files.items()}
    missing = [name for name in required if files[name] is None]
    if missing:
        names = " and ".join(f"{m}.pt" for m in missing)
        if models is None:
            many = len(missing) > 1
            raise CheckpointError(
                f"no trained {' and '.join(missing)} {'are' if many else 'is'} shipped yet ({names} missing in "
                f"{folder}), so {purpose} is not possible; train {'them' if many else 'it'} "
                f"({'; '.join(TRAIN_HINT[m] for m in missing)}) and place {'them' if many else 'it'} there"
                + (f", {hint}" if hint else ""))
        raise CheckpointError(f"models folder {folder} has no {names}, needed for {purpose}")
    return files


def segmenter_file(models: str | os.PathLike | None) -> Path | None:
    """A models folder's own segmenter.pt for the seg perceptual metric (None: use the shipped one)."""
    if models is None:
        return None
    path = Path(models) / "segmenter.pt"
    return path if path.is_file() else None


def weights_or_shipped(path: str | os.PathLike | None, name: str) -> Path:
    """The given checkpoint, else the shipped one; a missing file is a one-line error saying what to do."""
    given = path is not None
    path = Path(path) if given else shipped_weights(name)
    if path.is_file():
        return path
    if given:
        raise CheckpointError(f"{name} weights not found at {path}")
    raise CheckpointError(f"no trained {name} is shipped yet ({path} missing); train one with "
                          f"`{TRAIN_HINT.get(name, f's2m train {name}')}` and pass it with --{name}")
