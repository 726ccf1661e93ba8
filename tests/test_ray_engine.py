"""Ray engine: a local Ray cluster builds the same index as the local engine (ids, vectors, thumbs, resume)."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.layout import index_paths
from index.shards import ShardStore
from index.store import VectorStore
from s2m_retrieval.errors import BadInputError, VersionMismatchError
from s2m_retrieval.testing.fake_encoder import FakeEncoder, FakeEncoderConfig
from s2m_retrieval.ingest.report import verify_index
from s2m_retrieval.ingest.runner import BuildOptions, build_index

ENC = FakeEncoder()
# Ray Data copies its context, touching its own deprecated fields; not this project's warnings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray (2 CPUs, loopback only) for the whole session: starting Ray costs seconds."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the Ray engine tests, but Ray Data is not installed ({exc}); see .ci/setup")
        pytest.skip(f"Ray Data is not installed ({exc}); pip install -e '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def archive(phantom_archive, tmp_path):
    """The 24-image phantom archive plus a non-square JPEG and a broken file."""
    root = Path(shutil.copytree(phantom_archive, tmp_path / "archive"))
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(root / "images" / "wide.jpg")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def _engine(num_actors=2, make=FakeEncoder):
    from s2m_retrieval.ingest.ray_engine import RayEngine, RayOptions

    return RayEngine(make, RayOptions(num_actors=num_actors))


def _rows(home: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{home / 's2m.db'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT i.id, i.path, i.sha256, i.width, i.height, i.labels, v.shard, v.row "
                            "FROM images i JOIN vectors v ON v.image_id = i.id ORDER BY i.id").fetchall()


def _snapshot(home: Path) -> dict:
    """Everything a build leaves that must not depend on the engine: SQL rows, stored arrays, FAISS ids."""
    paths = index_paths(home, "default")
    rows = _rows(home)
    shards = ShardStore(paths.shards)
    where = [(shard, row) for *_, shard, row in rows]
    return {"rows": [r[:6] for r in rows], "vectors": shards.gather("vectors", where),
            "thumbs": shards.gather("thumbs", where),
            "faiss": sorted(VectorStore.load(paths.faiss_file, mmap=True).ids().tolist())}


def _same(a: dict, b: dict) -> None:
    assert a["rows"] == b["rows"] and a["faiss"] == b["faiss"]
    np.testing.assert_allclose(a["vectors"], b["vectors"], rtol=0, atol=1e-5)
    assert np.array_equal(a["thumbs"], b["thumbs"])


def test_ray_builds_the_same_index_as_local(ray_cluster, archive, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    opts = BuildOptions(batch_size=5)
    a = build_index(archive, ENC, home=local, options=opts)
    with _engine() as engine:
        b = build_index(archive, ENC, home=remote, options=opts, engine=engine)
    assert (b.added, b.skipped, b.total) == (a.added, a.skipped, a.total) == (25, 0, 25)
    assert b.bad == a.bad and [Path(p).name for p, _ in b.bad] == ["broken.png"]
    _same(_snapshot(local), _snapshot(remote))

    # Incremental: one file changed, one gone (pruned), one new; both engines agree again.
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(archive / "images" / "ph000003.png")
    (archive / "images" / "ph000005.png").unlink()
    Image.fromarray(np.full((64, 64, 3), 30, np.uint8)).save(archive / "images" / "zz_new.png")
    opts = BuildOptions(batch_size=5, prune=True)
    a = build_index(archive, ENC, home=local, options=opts)
    with _engine(num_actors=1) as engine:
        b = build_index(archive, ENC, home=remote, options=opts, engine=engine)
    assert (b.added, b.replaced, b.skipped, b.removed) == (a.added, a.replaced, a.skipped, a.removed) == (1, 1, 23, 1)
    _same(_snapshot(local), _snapshot(remote))
    assert verify_index(home=remote).ok


def test_ray_inverter_actors_match_local(ray_cluster, phantom_archive, tmp_path):
    # The real encoder path (load_encoder in each actor, torch there) with tiny random models.
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.testing.random_models import write_random_models
    from s2m_retrieval.ingest.ray_engine import RayOptions, ray_engine

    spec = f"inverter:models={write_random_models(tmp_path / 'models', seed=0)},perceptual=random"
    encoder = load_encoder(spec)
    build_index(phantom_archive, encoder, home=tmp_path / "local", options=BuildOptions(batch_size=8))
    with ray_engine(spec, None, None, None, RayOptions(num_actors=1)) as engine:
        build_index(phantom_archive, encoder, home=tmp_path / "ray", options=BuildOptions(batch_size=8),
                    engine=engine)
    a, b = _snapshot(tmp_path / "local"), _snapshot(tmp_path / "ray")
    assert a["rows"] == b["rows"] and a["faiss"] == b["faiss"] and len(a["rows"]) == 24
    np.testing.assert_allclose(a["vectors"], b["vectors"], rtol=0, atol=1e-4)
    assert np.abs(a["thumbs"].astype(int) - b["thumbs"].astype(int)).max() <= 1


def test_interrupted_ray_build_resumes(ray_cluster, archive, tmp_path):
    from s2m_retrieval.ingest.ray_engine import RayEngine, RayOptions

    class Interrupted(RayEngine):
        """Stops the driver after two batches, as Ctrl-C would."""

        def encoded_batches(self, *args, **kwargs):
            for n, batch in enumerate(super().encoded_batches(*args, **kwargs)):
                if n == 2:
                    raise KeyboardInterrupt
                yield batch

    home = tmp_path / "home"
    with Interrupted(FakeEncoder, RayOptions(num_actors=1)) as engine:
        with pytest.raises(KeyboardInterrupt):
            build_index(archive, ENC, home=home, options=BuildOptions(batch_size=4), engine=engine)
    assert len(_rows(home)) == 8
    with _engine(num_actors=1) as engine:
        resumed = build_index(archive, ENC, home=home, options=BuildOptions(batch_size=4), engine=engine)
    assert (resumed.skipped, resumed.added, resumed.total) == (8, 17, 25)
    build_index(archive, ENC, home=tmp_path / "local", options=BuildOptions(batch_size=4))
    _same(_snapshot(tmp_path / "local"), _snapshot(home))
    assert verify_index(home=home).ok


def test_worker_model_mismatch_is_a_domain_error(ray_cluster, archive, tmp_path):
    other = FakeEncoder(FakeEncoderConfig(seed=1))  # same shapes, another version: as if a node had other weights
    with _engine(num_actors=1, make=lambda: other) as engine:
        with pytest.raises(VersionMismatchError, match="Ray worker loaded encoder version"):
            build_index(archive, ENC, home=tmp_path / "home", engine=engine)
    with _engine(num_actors=3) as engine:
        with pytest.raises(BadInputError, match="2 CPUs: 3 actors"):
            build_index(archive, ENC, home=tmp_path / "other", engine=engine)


def test_cli_build_with_ray(ray_cluster, archive, tmp_path, runner):
    from cli.main import app

    home = str(tmp_path / "home")
    result = runner.invoke(app, ["index", "build", str(archive), "--home", home, "--encoder", "fake",
                                 "--engine", "ray", "--num-actors", "1", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "added 25" in result.stdout and "bad 1" in result.stdout
    assert ray_cluster.is_initialized()  # a Ray the CLI did not start is left running


def test_cli_says_how_to_get_ray_when_missing(archive, tmp_path, monkeypatch, capsys):
    from cli.main import _run, app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if not installed
    with pytest.raises(SystemExit) as code:
        _run(app, ["index", "build", str(archive), "--home", str(tmp_path), "--encoder", "fake", "--engine", "ray"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --engine ray needs Ray Data") and 'pip install -e ".[ray]"' in err
    for args in (["--engine", "spark"], ["--num-actors", "2"]):
        with pytest.raises(SystemExit):
            _run(app, ["index", "build", str(archive), "--home", str(tmp_path), "--encoder", "fake", *args])
        assert "--engine" in capsys.readouterr().err
    assert not (tmp_path / "indexes").exists()
