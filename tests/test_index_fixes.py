"""Index safety: an index belongs to one database, remove by any name, failed first builds clean up, verify exits 1."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from index.layout import index_paths
from index.stamp import read_stamp, write_stamp
from s2m_retrieval.errors import BadInputError
from s2m_retrieval.testing.fake_encoder import FakeEncoder
from s2m_retrieval.query.index_reader import open_index
from s2m_retrieval.ingest.report import index_info, verify_index
from s2m_retrieval.ingest.sync import remove_entries
from s2m_retrieval.ingest.runner import BuildOptions, add_files, build_index

REPO = Path(__file__).resolve().parents[1]
ENC = FakeEncoder()


@pytest.fixture
def archive(phantom_archive, tmp_path):
    """A private copy of the 24-image phantom archive."""
    return Path(shutil.copytree(phantom_archive, tmp_path / "archive"))


def _files(home: Path) -> dict[str, bytes]:
    root = index_paths(home, "default").root
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def test_other_database_is_refused_before_touching_files(archive, tmp_path):
    home, other = tmp_path / "home", f"sqlite:///{tmp_path / 'other.db'}"
    build_index(archive, ENC, home=home, options=BuildOptions(batch_size=8))
    before = _files(home)
    image = str(archive / "images" / "ph000001.png")
    calls = [lambda: build_index(archive, ENC, home=home, db_url=other),
             lambda: add_files([image], ENC, home=home, db_url=other),
             lambda: remove_entries([image], home=home, db_url=other),
             lambda: verify_index(home=home, db_url=other),
             lambda: index_info(home=home, db_url=other),
             lambda: open_index(home=home, db_url=other)]
    for call in calls:
        with pytest.raises(BadInputError, match="belongs to another database.*the database it was built with"):
            call()
    assert _files(home) == before
    assert verify_index(home=home).ok  # still whole for its own database

    rebuilt = build_index(archive, ENC, home=home, db_url=other, options=BuildOptions(rebuild=True, batch_size=8))
    assert rebuilt.added == 24 and verify_index(home=home, db_url=other).ok


def test_manifest_without_identity_is_judged_by_its_rows(archive, tmp_path):
    home = tmp_path / "home"
    build_index(archive, ENC, home=home)
    manifest = index_paths(home, "default").manifest
    stamp = read_stamp(manifest)
    stamp.database_id = ""  # as written before the identity existed
    write_stamp(manifest, stamp)
    with pytest.raises(BadInputError, match="another database"):
        build_index(archive, ENC, home=home, db_url=f"sqlite:///{tmp_path / 'other.db'}")
    assert build_index(archive, ENC, home=home).skipped == 24  # its own database adopts it
    assert read_stamp(manifest).database_id


def test_shard_names_differ_between_builds_of_the_same_id(archive, tmp_path):
    build_index(archive, ENC, home=tmp_path / "a", options=BuildOptions(batch_size=8))
    build_index(archive, ENC, home=tmp_path / "b", options=BuildOptions(batch_size=8))
    a = set(p.name for p in (tmp_path / "a" / "indexes" / "default" / "shards").iterdir())
    b = set(p.name for p in (tmp_path / "b" / "indexes" / "default" / "shards").iterdir())
    assert len(a) == len(b) == 6 and not a & b


def test_remove_by_stem_labels_id_and_ambiguity(archive, tmp_path, runner):
    from cli.main import app

    home = tmp_path / "home"
    build_index(archive, ENC, home=home)
    copy = tmp_path / "elsewhere" / "ph000007.png"
    copy.parent.mkdir()
    shutil.copy(archive / "images" / "ph000007.png", copy)
    add_files([copy], ENC, home=home)

    result = runner.invoke(app, ["index", "remove", "ph000003", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert f"removed: {archive / 'images' / 'ph000003.png'}" in result.stdout and "24 vectors left" in result.stdout
    report = remove_entries(["ph000005"], home=home)  # labels.csv id (== stem in the phantom archive)
    assert list(report.removed.values()) == [str(archive / "images" / "ph000005.png")]
    with pytest.raises(BadInputError, match="'ph000007' names 2 images.*elsewhere/ph000007.png"):
        remove_entries(["ph000007"], home=home)
    result = runner.invoke(app, ["index", "remove", "--help"])
    assert "file stem" in result.stdout and "labels.csv" in result.stdout


def test_refused_factory_leaves_nothing_behind(archive, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(BadInputError, match="needs at least"):
        build_index(archive, ENC, home=home, options=BuildOptions(factory="IVF256,Flat"))
    assert not (home / "indexes").exists()
    build_index(archive, ENC, home=home, options=BuildOptions(name="other"))
    with pytest.raises(BadInputError, match="needs at least"):
        build_index(archive, ENC, home=home, options=BuildOptions(factory="IVF256,Flat"))
    assert sorted(p.name for p in (home / "indexes").iterdir()) == ["other"]


def test_cli_verify_exits_1_on_problems(archive, tmp_path):
    home = str(tmp_path / "home")
    build_index(archive, ENC, home=home)
    (archive / "images" / "ph000002.png").unlink()
    out = subprocess.run([sys.executable, "-m", "cli", "index", "verify", "--home", home], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "missing on disk" in out.stdout, out.stdout + out.stderr


def test_an_edited_labels_csv_reaches_unchanged_files_without_re_encoding(archive, tmp_path):
    from s2m_retrieval.storage import open_database
    from s2m_retrieval.storage.models import Image

    home = tmp_path / "home"
    build_index(archive, ENC, home=home, options=BuildOptions(batch_size=8))
    csv_path = archive / "labels.csv"
    lines = csv_path.read_text().splitlines()
    header, row = lines[0].split(","), lines[2].split(",")          # ph000001
    column = header.index("tonsil_grade")
    row[column] = "0" if row[column] != "0" else "4"
    lines[2] = ",".join(row)
    csv_path.write_text("\n".join(lines) + "\n")
    again = build_index(archive, ENC, home=home, options=BuildOptions(batch_size=8))
    assert (again.added, again.replaced, again.skipped, again.relabelled) == (0, 0, 24, 1)
    assert any("labels of 1 unchanged files updated" in line for line in again.lines())
    from sqlalchemy import select

    with open_database(home).session() as s:
        labels = s.scalar(select(Image.labels).where(Image.stem == "ph000001"))
    assert str(labels["tonsil_grade"]) == row[column]
    # files named by hand carry no labels: adding one again keeps what the archive gave it
    add_files([archive / "images" / "ph000001.png"], ENC, home=home)
    assert build_index(archive, ENC, home=home).relabelled == 0
