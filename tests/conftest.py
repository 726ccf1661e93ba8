"""Shared fixtures: seeded tiny phantom archives, CLI runner."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory):
    """A 24-image 64 px phantom archive (seed 7), made once per test session."""
    from s2m_retrieval.data.phantom_archive import write_phantom_archive

    out = tmp_path_factory.mktemp("phantoms") / "archive"
    write_phantom_archive(out, n=24, size=64, seed=7)
    return out


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs torch on one thread: on two shared cores, more OpenMP threads stall on tiny tensors."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def setup(tmp_path_factory, phantom_archive):
    """Tiny random Sketch2MedI checkpoints and an index built with them over the phantom archive (once)."""
    from retrieval_helpers import make_setup

    return make_setup(tmp_path_factory.getbasetemp() / "retrieval", phantom_archive)


@pytest.fixture(scope="module")
def engine(setup):
    """A retrieval engine over the `setup` index, opened once per test module."""
    from s2m_retrieval.query.engine import RetrievalEngine

    with RetrievalEngine.open("default", home=setup.home, models=setup.models) as opened:
        yield opened


@pytest.fixture
def runner():
    """A Typer CliRunner that keeps stderr apart from stdout."""
    from typer.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # newer Click keeps stderr apart by default
        return CliRunner()


PG_ENV = "S2M_TEST_POSTGRES_URL"


@contextmanager
def fresh_postgres_database():
    """The URL of a new, empty PostgreSQL database from $S2M_TEST_POSTGRES_URL, dropped afterwards (skips the
    test where no server is configured)."""
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("S2M_REQUIRE_POSTGRES"):
            pytest.fail(f"S2M_REQUIRE_POSTGRES is set but {PG_ENV} is not: the PostgreSQL server did not start")
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. from `eval \"$(bash .ci/postgres.sh)\"`)")
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"s2m_test_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database (created and dropped around the test) from $S2M_TEST_POSTGRES_URL."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each storage test on SQLite, and on PostgreSQL when a server is configured."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 's2m.db'}"
    return request.getfixturevalue("postgres_url")
