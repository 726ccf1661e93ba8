"""Index consistency (issue 19): seeded random sequences of build / add / remove / rebuild / kill -9 during a build
and resume, checked after every step against a model of the image set the index must hold.

The model: a build adds the archive's files on disk (except those the user removed) and re-encodes changed ones;
`index add` adds files and undoes their removal; `index remove` drops images and remembers their paths; a rebuild
re-encodes exactly the images the index had that are still on disk, plus the archive's (files gone are listed); a
build killed with -9 and run again ends where the build would have. After each step SQL rows, FAISS ids, shard
rows, stored vectors, labels, the removals and `index verify` must agree with it.
"""

from __future__ import annotations

import csv
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.layout import IndexLock, index_paths
from index.shards import ShardStore
from index.stamp import read_stamp
from index.store import VectorStore
from s2m_retrieval.testing.fake_encoder import FakeEncoder, FakeEncoderConfig
from s2m_retrieval.ingest.report import index_info, verify_index
from s2m_retrieval.ingest.sync import remove_entries
from s2m_retrieval.ingest.runner import BuildOptions, add_files, build_index

REPO = Path(__file__).resolve().parents[1]
SIZE = 16
ENC_CONFIG = dict(resolution=SIZE, grid=4, thumb=4, dim=32)
ENC = FakeEncoder(FakeEncoderConfig(**ENC_CONFIG))
ENC_SPEC = "fake:" + ",".join(f"{k}={v}" for k, v in ENC_CONFIG.items())  # the same model version in a subprocess
SEQUENCES = [(0, "Flat"), (1, "HNSW16"), (2, "Flat"), (3, "HNSW16")]
STEPS = 8        # index operations per sequence; each killed build counts with its resume as one
KILL_DELAY = 0.15  # seconds per one-image batch of a build that is to be killed


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _sql(home: Path, query: str, *args):
    with sqlite3.connect(f"file:{home / 's2m.db'}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute(query, args).fetchall()


@dataclass
class World:
    """The files on disk, and the model of what the index must hold."""

    root: Path
    factory: str
    rng: random.Random
    disk: dict[str, int] = field(default_factory=dict)       # file -> content seed, for every file on disk
    indexed: dict[str, int] = field(default_factory=dict)    # the index's images -> content seed encoded
    removed: set[str] = field(default_factory=set)           # paths `index remove` took out
    unlabelled: set[str] = field(default_factory=set)        # archive files last encoded by `index add`
    labels: dict[str, dict] = field(default_factory=dict)    # labels.csv rows by stem
    serial: int = 0
    kills: int = 0                                           # builds killed part-way (not finished first)

    def __post_init__(self) -> None:
        self.archive = (self.root / "archive").resolve()
        self.outside = (self.root / "outside").resolve()
        self.home = self.root / "home"
        (self.archive / "images").mkdir(parents=True)
        self.outside.mkdir()

    # --- the disk -------------------------------------------------------------------------------------------

    def _write(self, path: str, seed: int) -> None:
        Image.fromarray(_pixels(seed)).save(path)
        self.disk[path] = seed

    def new_file(self, inside: bool = True) -> str:
        self.serial += 1
        stem = f"{'a' if inside else 'o'}{self.serial:03d}"
        path = str((self.archive / "images" if inside else self.outside) / f"{stem}.png")
        self._write(path, 1000 + self.serial)
        if inside:
            self.labels[stem] = {"id": stem, "grade": self.serial % 5, "side": self.rng.choice(["left", "right"])}
            with open(self.archive / "labels.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=["id", "grade", "side"])
                writer.writeheader()
                writer.writerows(self.labels.values())
        return path

    def change_disk(self) -> None:
        """A few random file changes: new archive or outside files, changed contents, deleted files."""
        for _ in range(self.rng.randint(0, 2)):
            kind = self.rng.choice(["new", "new", "outside", "modify", "delete"])
            files = sorted(self.disk)
            if kind in ("new", "outside") or not files:
                self.new_file(inside=kind != "outside")
            elif kind == "modify":
                self.serial += 1
                self._write(self.rng.choice(files), 5000 + self.serial)
            else:
                path = self.rng.choice(files)
                Path(path).unlink()
                del self.disk[path]

    def in_archive(self, path: str) -> bool:
        return path.startswith(str(self.archive) + "/")

    def archive_files(self) -> set[str]:
        return {p for p in self.disk if self.in_archive(p)}

    # --- what each operation must leave -----------------------------------------------------------------------

    def expect_build(self, prune: bool = False) -> tuple[dict[str, int], set[str], list[str]]:
        """(images, unlabelled, missing) after `index build ARCHIVE [--prune]`."""
        indexed, unlabelled = dict(self.indexed), set(self.unlabelled)
        for path in self.archive_files() - self.removed:
            if indexed.get(path) != self.disk[path]:
                indexed[path] = self.disk[path]
                unlabelled.discard(path)
        missing = sorted(p for p in self.indexed if self.in_archive(p) and p not in self.disk)
        for path in missing if prune else ():
            del indexed[path]
        return indexed, unlabelled, missing

    def expect_rebuild(self) -> tuple[dict[str, int], set[str], list[str]]:
        """(images, unlabelled, lost) after `index build ARCHIVE --rebuild`."""
        keep = (self.archive_files() - self.removed) | (set(self.indexed) & set(self.disk))
        lost = sorted(set(self.indexed) - set(self.disk))
        return {p: self.disk[p] for p in keep}, {p for p in self.unlabelled if not self.in_archive(p)}, lost

    # --- operations -----------------------------------------------------------------------------------------

    def options(self, **kw) -> BuildOptions:
        return BuildOptions(factory=self.factory, batch_size=self.rng.choice([1, 2, 3]), **kw)

    def build(self, prune: bool = False) -> str:
        indexed, unlabelled, missing = self.expect_build(prune)
        summary = build_index(self.archive, ENC, home=self.home, options=self.options(prune=prune))
        assert summary.missing == missing and summary.excluded == len(self.archive_files() & self.removed)
        assert summary.removed == (len(missing) if prune else 0) and summary.total == len(indexed)
        self.indexed, self.unlabelled = indexed, unlabelled
        return f"build{' --prune' if prune else ''}"

    def rebuild(self) -> str:
        indexed, unlabelled, lost = self.expect_rebuild()
        summary = build_index(self.archive, ENC, home=self.home, options=self.options(rebuild=True))
        assert summary.lost == lost and summary.excluded == len(self.archive_files() & self.removed)
        assert summary.added == summary.total == len(indexed)
        self.indexed, self.unlabelled = indexed, unlabelled
        return "rebuild"

    def add(self) -> str:
        candidates = sorted(p for p in self.disk if not self.in_archive(p) or p in self.removed or p in self.indexed)
        if not candidates:
            candidates = [self.new_file(inside=False)]
        files = self.rng.sample(candidates, min(len(candidates), self.rng.randint(1, 2)))
        summary = add_files(files, ENC, home=self.home, options=self.options())
        encoded = [p for p in files if self.indexed.get(p) != self.disk[p]]
        assert summary.added + summary.replaced == len(encoded) and summary.skipped == len(files) - len(encoded)
        for path in files:
            self.removed.discard(path)
            self.indexed[path] = self.disk[path]
        self.unlabelled |= {p for p in encoded if self.in_archive(p)}
        return f"add {len(files)}"

    def remove(self) -> str:
        if not self.indexed:
            return self.build()
        paths = self.rng.sample(sorted(self.indexed), min(len(self.indexed), self.rng.randint(1, 2)))
        keys = []
        for path in paths:  # by path, file stem or image id, as a user may name them
            how = self.rng.choice(["path", "stem", "id"])
            if how == "id":
                keys.append(str(_sql(self.home, "SELECT id FROM images WHERE path = ?", path)[0][0]))
            else:
                keys.append(path if how == "path" else Path(path).stem)
        report = remove_entries(keys, home=self.home)
        assert sorted(report.removed.values()) == sorted(paths) and not report.not_found
        for path in paths:
            del self.indexed[path]
            self.unlabelled.discard(path)
            self.removed.add(path)
        return f"remove {len(paths)}"

    def killed(self, rebuild: bool) -> str:
        """A CLI build killed with -9 after it committed a batch, then the build run again here."""
        if rebuild:
            if all(self.in_archive(p) for p in self.indexed):  # what a rebuild can lose: images from elsewhere
                path = self.new_file(inside=False)
                add_files([path], ENC, home=self.home, options=self.options())
                self.indexed[path] = self.disk[path]
            target = self.expect_rebuild()[:2]
        else:
            while len([p for p in self.archive_files() - self.removed if self.indexed.get(p) != self.disk[p]]) < 3:
                self.new_file()  # enough work that the kill lands part-way
            target = self.expect_build()[:2]
        before = set(self.indexed)
        landed = _kill_during_build(self, rebuild)
        self.kills += landed
        self.check_partial(before | set(target[0]) if not rebuild else set(target[0]))
        resume_rebuild = rebuild and self.rng.random() < 0.5  # the same command again, or a plain build
        build_index(self.archive, ENC, home=self.home, options=self.options(rebuild=resume_rebuild))
        self.indexed, self.unlabelled = target
        return (f"kill -9 {'--rebuild' if rebuild else 'build'} ({'part-way' if landed else 'had finished'}), "
                f"then {'--rebuild' if resume_rebuild else 'build'}")

    # --- checks ---------------------------------------------------------------------------------------------

    def rows(self) -> list[tuple]:
        return _sql(self.home, "SELECT i.id, i.path, i.labels, v.shard, v.row FROM vectors v "
                               "JOIN images i ON i.id = v.image_id WHERE v.index_name = 'default'")

    def check_partial(self, allowed: set[str]) -> None:
        """After a kill: committed rows are images the build was to hold, once each, with their shard rows;
        FAISS (as last saved) holds no id SQL lacks; the build shows as interrupted."""
        rows = self.rows()
        paths = [r[1] for r in rows]
        assert len(paths) == len(set(paths)) and set(paths) <= allowed, (sorted(set(paths) - allowed))
        assert _sql(self.home, "SELECT count(*) FROM images")[0][0] == len(rows)
        self.check_shards(rows, partial=True)
        paths_ = index_paths(self.home, "default")
        if paths_.faiss_file.is_file():
            assert set(VectorStore.load(paths_.faiss_file, mmap=True).ids().tolist()) <= {r[0] for r in rows}
        assert not IndexLock.held(paths_)
        assert "running" not in {b["status"] for b in index_info(home=self.home)["builds"]}

    def check_shards(self, rows, partial: bool = False) -> None:
        """Each row's shard holds the image's vector as encoded (after a kill: the old content's or the new's)."""
        shards = ShardStore(index_paths(self.home, "default").shards)
        for _, path, _, shard, row in rows:
            seeds = {self.indexed.get(path), *([self.disk.get(path)] if partial else [])} - {None}
            stored = shards.read(shard, "vectors")[row]
            assert any(np.allclose(stored, ENC.encode(_pixels(seed)[None])["vectors"][0], atol=1e-5)
                       for seed in seeds), path

    def check(self) -> None:
        rows = self.rows()
        by_path = {r[1]: r for r in rows}
        assert len(by_path) == len(rows) and set(by_path) == set(self.indexed), (
            sorted(set(by_path) ^ set(self.indexed)))
        assert _sql(self.home, "SELECT count(*) FROM images")[0][0] == len(rows)
        assert {p for (p,) in _sql(self.home, "SELECT path FROM removed_images")} == self.removed
        self.check_shards(rows)

        for image_id, path, labels, _, _ in rows:
            stem = Path(path).stem
            want = self.labels[stem] if self.in_archive(path) and path not in self.unlabelled else {}
            assert json.loads(labels) == want, (path, labels)

        paths = index_paths(self.home, "default")
        store = VectorStore.load(paths.faiss_file)
        ids = store.ids().tolist()
        assert sorted(ids) == sorted(by_path[p][0] for p in self.indexed) and len(ids) == len(set(ids))
        assert read_stamp(paths.manifest).count == len(ids)
        if self.indexed:  # FAISS holds each image's vector of the content indexed, under its id
            queries = np.concatenate([ENC.encode(_pixels(s)[None])["vectors"] for s in self.indexed.values()])
            dist, found = store.search(queries, 1)
            assert found[:, 0].tolist() == [by_path[p][0] for p in self.indexed] and dist.max() < 1e-4

        report = verify_index(home=self.home)
        gone = [p for p in self.indexed if p not in self.disk]
        assert len(report.problems) == (1 if gone else 0), report.problems
        assert not gone or f"{len(gone)} image files are missing on disk" in report.problems[0]
        assert not report.warnings, report.warnings
        assert "running" not in {b["status"] for b in index_info(home=self.home)["builds"]}


def _build_rows(home: Path, after: int) -> tuple[int, int] | None:
    """(status, rows committed) of the newest build after build id `after`, None before it starts."""
    try:
        found = _sql(home, "SELECT status, n_added + n_replaced FROM index_builds WHERE id > ? "
                           "AND source != 'remove' ORDER BY id DESC LIMIT 1", after)
    except sqlite3.Error:  # the database is being created
        return None
    return found[0] if found else None


def _kill_during_build(world: World, rebuild: bool) -> bool:
    """Run `s2m index build` in a subprocess and SIGKILL it once it committed a batch; whether it was killed
    part-way (False: it had finished first)."""
    last = _sql(world.home, "SELECT coalesce(max(id), 0) FROM index_builds")[0][0]
    cmd = [sys.executable, "-c", "from cli.main import main; main()", "index", "build", str(world.archive),
           "--home", str(world.home), "--batch", "1", "--factory", world.factory,
           "--encoder", f"{ENC_SPEC},delay={KILL_DELAY}", *(["--rebuild"] if rebuild else [])]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            state = _build_rows(world.home, last)
            if state is not None and state[1] >= 1 and state[0] == "running":
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            if proc.poll() is not None:
                assert proc.returncode == 0, proc.stderr.read()[-2000:]
                return False
            time.sleep(0.005)
        pytest.fail("the build made no progress")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _operations(rng: random.Random) -> list[str]:
    """A first build, then STEPS - 1 operations among which one killed build and one killed rebuild."""
    rest = [rng.choice(["build", "build-prune", "rebuild", "add", "add", "remove", "remove"]) for _ in range(STEPS - 3)]
    for kill in ("kill-build", "kill-rebuild"):
        rest.insert(rng.randint(0, len(rest)), kill)
    return ["build", *rest]


@pytest.mark.parametrize(("seed", "factory"), SEQUENCES, ids=[f"seed{s}-{f}" for s, f in SEQUENCES])
def test_random_sequences_keep_sql_faiss_and_shards_with_the_model(tmp_path, seed, factory):
    rng = random.Random(seed)
    world = World(tmp_path, factory, rng)
    for _ in range(5):
        world.new_file()
    for _ in range(2):
        world.new_file(inside=False)
    done = []
    for op in _operations(rng):
        if done:
            world.change_disk()
        step = {"build": world.build, "build-prune": lambda: world.build(prune=True), "rebuild": world.rebuild,
                "add": world.add, "remove": world.remove, "kill-build": lambda: world.killed(rebuild=False),
                "kill-rebuild": lambda: world.killed(rebuild=True)}[op]
        done.append(step())
        try:
            world.check()
        except AssertionError as exc:
            raise AssertionError(f"after steps {done}: {exc}") from exc
    print(f"seed {seed} ({factory}): {len(done)} steps, {world.kills} killed part-way: {'; '.join(done)}")
    assert len(done) == STEPS and world.kills >= 1


class _DiesAfter(FakeEncoder):
    """The test encoder, stopping the build (as a kill would) after `batches` batches."""

    def __init__(self, batches: int) -> None:
        super().__init__(ENC.cfg)
        self.left = batches

    def encode(self, images):
        if self.left == 0:
            raise RuntimeError("killed")
        self.left -= 1
        return super().encode(images)


@pytest.mark.parametrize("resume", ["build", "rebuild"])
def test_a_killed_rebuild_keeps_the_images_it_had_to_encode(tmp_path, resume):
    # Found by the sequences above: a rebuild wiped the index, then re-encoded the archive before the images added
    # from elsewhere; killed in between, those were gone for good (neither a build nor a rebuild knew of them).
    from s2m_retrieval.errors import IndexCorruptError

    world = World(tmp_path, "Flat", random.Random(0))
    for _ in range(4):
        world.new_file()
    extra = world.new_file(inside=False)
    build_index(world.archive, ENC, home=world.home)
    add_files([extra], ENC, home=world.home)
    with pytest.raises(RuntimeError, match="killed"):
        build_index(world.archive, _DiesAfter(1), home=world.home, options=BuildOptions(rebuild=True, batch_size=2))
    assert len(world.rows()) == 2
    report = verify_index(home=world.home)
    assert any("a rebuild was interrupted with 3 images still to encode" in p for p in report.problems), report

    summary = build_index(world.archive, ENC, home=world.home, options=BuildOptions(rebuild=resume == "rebuild"))
    assert summary.total == 5 and extra in {r[1] for r in world.rows()}
    assert not index_paths(world.home, "default").rebuild_file.exists() and verify_index(home=world.home).ok

    index_paths(world.home, "default").rebuild_file.write_text("{not json")
    with pytest.raises(IndexCorruptError, match="rebuild.json .* is damaged"):
        build_index(world.archive, ENC, home=world.home)
