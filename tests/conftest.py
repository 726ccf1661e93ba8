"""Shared fixtures: seeded tiny phantom archives, CLI runner."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory):
    """A 24-image 64 px phantom archive (seed 7), made once per test session."""
    from s2m_retrieval.data.phantom_archive import write_phantom_archive

    out = tmp_path_factory.mktemp("phantoms") / "archive"
    write_phantom_archive(out, n=24, size=64, seed=7)
    return out


@pytest.fixture
def runner():
    """A Typer CliRunner that keeps stderr apart from stdout."""
    from typer.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # newer Click keeps stderr apart by default
        return CliRunner()
