"""Index builds with the fake encoder: incremental, replace/prune, resume after kill -9, locks, CLI."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.layout import IndexLock, index_paths
from index.store import VectorStore
from s2m_retrieval.errors import (ArchiveError, DatabaseLockedError, IndexBusyError, IndexMissingError,
                                  VersionMismatchError)
from s2m_retrieval.testing.fake_encoder import FakeEncoder, FakeEncoderConfig
from s2m_retrieval.query.index_reader import open_index
from s2m_retrieval.ingest.report import verify_index
from s2m_retrieval.ingest.sync import remove_entries
from s2m_retrieval.ingest.runner import BuildOptions, add_files, build_index

REPO = Path(__file__).resolve().parents[1]
ENC = FakeEncoder()


@pytest.fixture
def archive(phantom_archive, tmp_path):
    """A private copy of the 24-image phantom archive (tests change its files)."""
    return Path(shutil.copytree(phantom_archive, tmp_path / "archive"))


def _sql(home: Path, query: str):
    with sqlite3.connect(f"file:{home / 's2m.db'}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute(query).fetchall()


def _faiss_ids(home: Path, name: str = "default") -> list[int]:
    return sorted(VectorStore.load(index_paths(home, name).faiss_file, mmap=True).ids().tolist())


def _sql_ids(home: Path, name: str = "default") -> list[int]:
    return sorted(r[0] for r in _sql(home, f"SELECT image_id FROM vectors WHERE index_name = '{name}'"))


def _build(archive, home, **kw):
    return build_index(archive, kw.pop("encoder", ENC), home=home, options=BuildOptions(**kw))


def test_incremental_build_skips_replaces_and_prunes(archive, tmp_path):
    home = tmp_path / "home"
    first = _build(archive, home, batch_size=5)
    assert (first.added, first.skipped, first.total, first.bad) == (24, 0, 24, [])
    again = _build(archive, home)
    assert (again.added, again.replaced, again.skipped) == (0, 0, 24)
    assert _faiss_ids(home) == _sql_ids(home) and len(_sql_ids(home)) == 24

    target = archive / "images" / "ph000003.png"
    image_id = _sql(home, f"SELECT id FROM images WHERE path = '{target}'")[0][0]
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(target)
    (archive / "images" / "ph000005.png").unlink()
    changed = _build(archive, home)
    assert (changed.added, changed.replaced, changed.skipped) == (0, 1, 22)
    assert changed.missing == [str(archive / "images" / "ph000005.png")] and changed.total == 24
    assert _faiss_ids(home) == _sql_ids(home)
    with open_index(home=home) as reader:  # FAISS holds the new vector under the same id
        new_vec = ENC.encode(np.full((1, 64, 64, 3), 200, np.uint8))["vectors"]
        dist, ids = reader.search(new_vec, 1)
        assert ids[0, 0] == image_id and dist[0, 0] < 1e-6
        assert reader.arrays("thumbs", [image_id]).shape == (1, 16, 16, 3)

    pruned = _build(archive, home, prune=True)
    assert (pruned.removed, pruned.total) == (1, 23)
    assert verify_index(home=home).ok
    assert len(_sql(home, "SELECT id FROM images")) == 23


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW16"])
def test_trainable_and_non_removable_factories(archive, tmp_path, factory):
    home = tmp_path / "home"
    assert _build(archive, home, factory=factory, batch_size=4).total == 24
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(archive / "images" / "ph000001.png")
    assert _build(archive, home).replaced == 1
    remove_entries([str(archive / "images" / "ph000002.png")], home=home)
    report = verify_index(home=home)
    assert report.ok, report.problems
    assert _faiss_ids(home) == _sql_ids(home) and len(_sql_ids(home)) == 23


@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_resume_replaces_stale_faiss_entries(archive, tmp_path, factory):
    # A kill after SQL committed a replacement but before FAISS was saved leaves the old vector under the id.
    home = tmp_path / "home"
    _build(archive, home, factory=factory)
    paths = index_paths(home, "default")
    old_faiss, old_manifest = paths.faiss_file.read_bytes(), paths.manifest.read_bytes()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(archive / "images" / "ph000002.png")
    (archive / "images" / "ph000009.png").unlink()
    assert _build(archive, home, prune=True).replaced == 1
    paths.faiss_file.write_bytes(old_faiss)
    paths.manifest.write_bytes(old_manifest)
    assert _build(archive, home).skipped == 23
    assert _faiss_ids(home) == _sql_ids(home) and len(_sql_ids(home)) == 23
    with open_index(home=home) as reader:
        new_vec = ENC.encode(np.full((1, 64, 64, 3), 90, np.uint8))["vectors"]
        dist, _ = reader.search(new_vec, 1)
        assert dist[0, 0] < 1e-6


def test_bad_files_are_counted_and_skipped(archive, tmp_path):
    (archive / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (archive / "images" / "empty.jpg").write_bytes(b"")
    summary = _build(archive, tmp_path / "home")
    assert summary.added == 24 and len(summary.bad) == 2
    assert {Path(p).name for p, _ in summary.bad} == {"broken.png", "empty.jpg"}
    assert any("bad: " in line for line in summary.lines())


def test_model_mismatch_needs_rebuild(archive, tmp_path):
    home = tmp_path / "home"
    _build(archive, home)
    other = FakeEncoder(FakeEncoderConfig(dim=64))
    with pytest.raises(VersionMismatchError, match="--rebuild"):
        _build(archive, home, encoder=other)
    with pytest.raises(VersionMismatchError, match="rebuild"):
        open_index(home=home, model_version=other.version)
    rebuilt = _build(archive, home, encoder=other, rebuild=True)
    assert rebuilt.added == 24
    open_index(home=home, model_version=other.version, metric=other.metric, dim=64).close()


def test_damaged_faiss_file_is_rebuilt_from_shards(archive, tmp_path):
    home = tmp_path / "home"
    _build(archive, home)
    paths = index_paths(home, "default")
    paths.faiss_file.write_bytes(b"junk")
    assert not verify_index(home=home).ok
    summary = _build(archive, home)
    assert summary.faiss_rebuilt and summary.skipped == 24 and summary.total == 24
    assert verify_index(home=home).ok


def test_locked_database_fails_cleanly_and_loses_nothing(archive, tmp_path, monkeypatch):
    home = tmp_path / "home"
    _build(archive, home)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(archive / "images" / "ph000007.png")
    holder = sqlite3.connect(home / "s2m.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setenv("S2M_DB_TIMEOUT", "0.2")
    try:
        with pytest.raises(DatabaseLockedError) as err:
            _build(archive, home)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in str(err.value) and "\n" not in str(err.value)
    summary = _build(archive, home)
    assert (summary.replaced, summary.skipped, summary.total) == (1, 23, 24)
    assert verify_index(home=home).ok


def test_second_writer_is_refused(archive, tmp_path):
    home = tmp_path / "home"
    _build(archive, home)
    with IndexLock(index_paths(home, "default")):
        with pytest.raises(IndexBusyError, match="another process"):
            _build(archive, home)


def test_add_files_and_missing_index(archive, tmp_path):
    home = tmp_path / "home"
    files = sorted((archive / "images").glob("*.png"))[:3]
    assert add_files(files, ENC, home=home).added == 3
    assert add_files(files[:1], ENC, home=home).skipped == 1
    with pytest.raises(IndexMissingError, match="no index named 'other'"):
        verify_index(home=home, name="other")


def test_removals_and_additions_survive_builds_and_rebuilds(archive, tmp_path):
    home = tmp_path / "home"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    extra = outside / "extra.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(extra)
    _build(archive, home)
    assert add_files([extra], ENC, home=home).added == 1
    gone = archive / "images" / "ph000007.png"
    assert list(remove_entries([str(gone)], home=home).removed.values()) == [str(gone)]
    paths = lambda: sorted(p for (p,) in _sql(home, "SELECT i.path FROM images i JOIN vectors v ON v.image_id = i.id"))
    expected = sorted({str(p) for p in (archive / "images").glob("*.png")} - {str(gone)} | {str(extra)})
    assert paths() == expected

    again = _build(archive, home)  # the removed file is still in the archive: it stays out
    assert (again.added, again.excluded, again.total) == (0, 1, 24) and paths() == expected
    assert any("left out 1 files removed" in line for line in again.lines())
    rebuilt = _build(archive, home, rebuild=True)  # the same set: the added file back, the removed one not
    assert (rebuilt.added, rebuilt.excluded, rebuilt.total) == (24, 1, 24) and paths() == expected
    labels = _sql(home, "SELECT labels FROM images WHERE path LIKE '%ph000002.png'")[0][0]
    assert "tonsil_grade" in labels  # archive images keep their labels through the rebuild
    assert _faiss_ids(home) == _sql_ids(home) and verify_index(home=home).ok

    extra.unlink()  # a file gone from disk cannot be re-encoded: the rebuild says so
    lost = _build(archive, home, rebuild=True)
    assert lost.lost == [str(extra)] and lost.total == 23
    assert any("not in the rebuilt index" in line for line in lost.lines())

    assert add_files([gone], ENC, home=home).added == 1  # naming it again undoes the removal
    assert _build(archive, home).excluded == 0 and str(gone) in paths()


def _write_tiny_archive(root: Path, n: int) -> None:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"t{i:04d}.png")


def _start_build(archive: Path, home: Path, delay: float) -> subprocess.Popen:
    encoder = f"fake:resolution=16,grid=4,thumb=4,dim=32,delay={delay}"
    cmd = [sys.executable, "-c", "from cli.main import main; main()", "index", "build", str(archive),
           "--home", str(home), "--batch", "4", "--encoder", encoder]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _count_rows(home: Path) -> int:
    try:
        return _sql(home, "SELECT count(*) FROM vectors")[0][0]
    except sqlite3.Error:  # database or table not created yet
        return 0


def _kill_when(proc: subprocess.Popen, home: Path, at_least: int, total: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _count_rows(home)
        if at_least <= rows < total:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return rows
        if proc.poll() is not None:
            pytest.fail(f"build ended (rc {proc.returncode}) before it could be killed: {proc.stderr.read()[-500:]}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("build made no progress")


def test_kill_9_and_resume(tmp_path):
    n = 240
    archive, home = tmp_path / "archive", tmp_path / "home"
    _write_tiny_archive(archive, n)
    killed_at = [_kill_when(_start_build(archive, home, 0.02), home, at_least=1, total=n)]
    killed_at.append(_kill_when(_start_build(archive, home, 0.02), home, at_least=killed_at[0] + 8, total=n))
    done = _start_build(archive, home, 0.0)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-1000:]
    assert "skipped" in out

    rows = _sql(home, "SELECT image_id, count(*) FROM vectors GROUP BY image_id")
    assert len(rows) == n and all(c == 1 for _, c in rows)
    assert len(_sql(home, "SELECT id FROM images")) == n
    assert _faiss_ids(home) == _sql_ids(home)
    statuses = [s for (s,) in _sql(home, "SELECT status FROM index_builds ORDER BY id")]
    assert statuses == ["interrupted", "interrupted", "done"], (statuses, killed_at)
    # Each killed build records the rows it committed (at least what was counted before the kill), and the
    # three builds' counts add up to the images indexed.
    added = [a for (a,) in _sql(home, "SELECT n_added FROM index_builds ORDER BY id")]
    assert added[0] >= killed_at[0] and added[0] + added[1] >= killed_at[1] and sum(added) == n, (added, killed_at)
    report = verify_index(home=home)
    assert report.ok and not report.warnings, (report.problems, report.warnings)


def test_cli_info_verify_remove_and_errors(archive, tmp_path, runner):
    from cli.main import app

    home = str(tmp_path / "home")
    result = runner.invoke(app, ["index", "build", str(archive), "--home", home, "--encoder", "fake", "--batch", "8"])
    assert result.exit_code == 0, result.output
    assert "added 24" in result.stdout
    result = runner.invoke(app, ["index", "info", "--home", home])
    assert result.exit_code == 0 and "Flat" in result.stdout and "sql rows     24" in result.stdout
    result = runner.invoke(app, ["index", "verify", "--home", home, "--json"])
    assert result.exit_code == 0 and '"ok": true' in result.stdout

    gone = archive / "images" / "ph000004.png"
    result = runner.invoke(app, ["index", "remove", "1", str(gone), "--home", home])
    assert result.exit_code == 0 and "removed 2" in result.stdout and "22 vectors left" in result.stdout
    (archive / "images" / "ph000006.png").unlink()
    result = runner.invoke(app, ["index", "verify", "--home", home])
    assert result.exit_code == 1 and "missing on disk" in result.stdout

    result = runner.invoke(app, ["index", "info", "--home", home, "--name", "nope"])
    assert result.exit_code != 0 and isinstance(result.exception, IndexMissingError)
    result = runner.invoke(app, ["index", "build", str(tmp_path / "nowhere"), "--home", home, "--encoder", "fake"])
    assert isinstance(result.exception, ArchiveError) and "not found" in str(result.exception)
    result = runner.invoke(app, ["index", "build", str(archive), "--home", home])
    # the default encoder is the shipped inverter: an index built with another model is refused, not mixed
    assert isinstance(result.exception, VersionMismatchError) and "--rebuild" in str(result.exception)
    result = runner.invoke(app, ["index", "info", "--home", home])
    assert result.exit_code == 0 and "22 vectors" in result.stdout  # nothing lost


def test_cli_errors_are_one_line_on_stderr(tmp_path, capsys):
    from cli.main import _run, app

    with pytest.raises(SystemExit) as code:
        _run(app, ["index", "verify", "--home", str(tmp_path)])
    err = capsys.readouterr().err
    assert code.value.code != 0 and err.startswith("error: no index named 'default'") and err.count("\n") == 1


def test_cli_help_does_not_import_heavy_modules():
    code = ("import sys; from cli.main import app; "
            "print(sorted(m for m in ('torch', 'faiss', 'sqlalchemy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert os.path.isfile(REPO / "migrations" / "versions" / "0001_initial.py")
