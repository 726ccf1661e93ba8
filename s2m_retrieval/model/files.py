"""Where the Sketch2MedI checkpoints come from: a model bundle (`--model NAME_OR_PATH`), by default the shipped one."""

from __future__ import annotations

import os
from pathlib import Path

from s2m_retrieval.networks.checkpoint import not_a_checkpoint_file, shipped_weights
from s2m_retrieval.errors import CheckpointError

# File names inside a models folder, as `s2m train ...` writes them; segmenter.pt is optional (the seg metric),
# so is projector.pt (without it an index is searched in weighted W+).
MODEL_FILES = ("generator", "encoder", "refiner", "inverter", "projector")
TRAIN_HINT = {"generator": "s2m train generator", "encoder": "s2m train encoder", "refiner": "s2m train refiner",
              "inverter": "s2m train inverter", "projector": "s2m train projector"}


def models_folder(models: str | os.PathLike | None, home: str | os.PathLike | None = None) -> Path:
    """The folder holding the checkpoints: the bundle `models` names (a name or a folder), else the shipped one."""
    from s2m_retrieval.model.bundle import resolve_model

    return resolve_model(models, home)


def model_files(models: str | os.PathLike | None, required: tuple[str, ...], purpose: str,
                hint: str = "") -> dict[str, Path | None]:
    """Checkpoint paths by component (None where absent); a missing required one is a one-line CheckpointError
    naming it, what it is needed for, how to get it, and `hint` (e.g. an alternative for tests)."""
    from s2m_retrieval.model.bundle import bundle_name, is_shipped

    folder = models_folder(models)
    files = {name: folder / f"{name}.pt" for name in MODEL_FILES}
    files = {name: path if path.is_file() else None for name, path in files.items()}
    missing = [name for name in required if files[name] is None]
    if missing:
        names = " and ".join(f"{m}.pt" for m in missing)
        if is_shipped(folder):
            many = len(missing) > 1
            raise CheckpointError(
                f"no trained {' and '.join(missing)} {'are' if many else 'is'} shipped yet ({names} missing in "
                f"{folder}), so {purpose} is not possible; train {'them' if many else 'it'} "
                f"({'; '.join(TRAIN_HINT[m] for m in missing)}) and place {'them' if many else 'it'} there"
                + (f", {hint}" if hint else ""))
        raise CheckpointError(f"model bundle {bundle_name(folder)!r} ({folder}) has no {names}, needed for {purpose}; "
                              f"finish its training with `s2m train all ARCHIVE --out {folder}`")
    return files


def segmenter_file(models: str | os.PathLike | None) -> Path | None:
    """A bundle's own segmenter.pt for the seg perceptual metric (None: use the shipped one)."""
    from s2m_retrieval.model.bundle import is_shipped

    folder = models_folder(models)
    if is_shipped(folder):
        return None
    path = folder / "segmenter.pt"
    return path if path.is_file() else None


def bundle_or_given(path: str | os.PathLike | None, model: str | os.PathLike | None, name: str,
                    purpose: str) -> Path:
    """The checkpoint given by hand, else the one of bundle `model` (default: shipped); missing is one line."""
    if path is not None:
        return weights_or_shipped(path, name)
    return model_files(model, (name,), purpose)[name]


def weights_or_shipped(path: str | os.PathLike | None, name: str) -> Path:
    """The given checkpoint, else the shipped one; a missing file is a one-line error saying what to do."""
    given = path is not None
    path = Path(path) if given else shipped_weights(name)
    if path.is_file():
        return path
    if given:
        raise not_a_checkpoint_file(path, name, f"{name} weights not found at {path}")
    raise CheckpointError(f"no trained {name} is shipped yet ({path} missing); train one with "
                          f"`{TRAIN_HINT.get(name, f's2m train {name}')}` and pass it with --{name}")
