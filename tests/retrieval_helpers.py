"""Shared setup of the retrieval tests: two sets of tiny random models and an index built with the first."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PERCEPTUAL = "random"


@dataclass(frozen=True)
class Setup:
    """Models A (built the index), models B (another model set), the archive and the home holding index 'default'."""

    models: Path
    other_models: Path
    archive: Path
    home: Path

    @property
    def encoder_spec(self) -> str:
        """The --encoder spec that built the index."""
        return f"inverter:models={self.models},perceptual={PERCEPTUAL}"

    def private_home(self, dest: Path) -> Path:
        """A copy of the home folder for tests that damage it."""
        return Path(shutil.copytree(self.home, dest))


def make_setup(base: Path, archive: Path) -> Setup:
    """Build the setup under `base` once per session (a finished one is reused: both test modules call this)."""
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.ingest.runner import BuildOptions, build_index
    from s2m_retrieval.testing.random_models import write_random_models

    setup = Setup(models=base / "models_a", other_models=base / "models_b", archive=archive, home=base / "home")
    done = base / "done"
    if not done.exists():
        write_random_models(setup.models, seed=0)
        write_random_models(setup.other_models, seed=1)
        build_index(archive, load_encoder(setup.encoder_spec), home=setup.home, options=BuildOptions(batch_size=8))
        done.touch()
    return setup


def phantom_sketch(seed: int = 11, index: int = 0, size: int = 64) -> np.ndarray:
    """A clean line sketch [size, size] uint8 of a phantom that is not in the test archive."""
    from s2m_retrieval.data.phantom import make_phantom
    from s2m_retrieval.data.sketch import sketch_from_mask

    return sketch_from_mask(make_phantom(seed, index, size)[1], size)


def labels_csv(archive: Path) -> dict[str, dict]:
    """The archive's labels.csv rows by file stem (values as text)."""
    import csv

    with open(archive / "labels.csv", newline="") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def cli_error(capsys, args) -> tuple[int, str]:
    """(exit code, stderr) of an `s2m` command that must fail with one line and no traceback."""
    import pytest

    from cli.main import _run, app

    with pytest.raises(SystemExit) as code:
        _run(app, args)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return code.value.code, err
