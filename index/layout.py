"""On-disk layout of a named index under the home folder, and the lock that keeps one writer per index."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from s2m_retrieval.errors import BadInputError, IndexBusyError, IndexMissingError

INDEXES_DIR = "indexes"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class IndexPaths:
    """Files of one index: `<home>/indexes/<name>/{index.faiss, manifest.json, shards/, .lock, rebuild.json}`."""

    home: Path
    name: str

    @property
    def root(self) -> Path:
        """The index folder."""
        return self.home / INDEXES_DIR / self.name

    @property
    def faiss_file(self) -> Path:
        """The FAISS index (derived from SQL + shards; rebuilt when lost)."""
        return self.root / "index.faiss"

    @property
    def manifest(self) -> Path:
        """The stamp: model version, metric, dim, factory, count."""
        return self.root / "manifest.json"

    @property
    def shards(self) -> Path:
        """Per-batch `.npy` arrays, the durable copy of every vector and thumbnail."""
        return self.root / "shards"

    @property
    def rebuild_file(self) -> Path:
        """The images a `--rebuild` is re-encoding, kept until a build finishes: a killed rebuild loses none."""
        return self.root / "rebuild.json"

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the one process writing this index."""
        return self.root / ".lock"

    def exists(self) -> bool:
        """Whether the index has been created (its manifest is written first)."""
        return self.manifest.is_file()

    def require(self) -> IndexPaths:
        """Self, or IndexMissingError naming the indexes that do exist."""
        if not self.exists():
            known = list_indexes(self.home)
            hint = f"existing: {', '.join(known)}" if known else "none exist yet"
            raise IndexMissingError(f"no index named {self.name!r} under {self.home / INDEXES_DIR} ({hint}); "
                                    f"create it with `s2m index build ARCHIVE --name {self.name}`")
        return self


def check_name(name: str) -> str:
    """An index name usable as a folder name, or BadInputError."""
    if not NAME_RE.match(name):
        raise BadInputError(f"index name {name!r} must be letters, digits, '_', '-' or '.' (at most 128)")
    return name


def index_paths(home: Path, name: str) -> IndexPaths:
    """The paths of index `name` under `home`."""
    return IndexPaths(Path(home), check_name(name))


def list_indexes(home: Path) -> list[str]:
    """Names of the indexes under `home` (folders that have a manifest)."""
    base = Path(home) / INDEXES_DIR
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "manifest.json").is_file())


class IndexLock:
    """An exclusive, non-blocking flock on the index folder; the kernel drops it if the process dies."""

    def __init__(self, paths: IndexPaths) -> None:
        self.paths = paths
        self._fd: int | None = None

    def __enter__(self) -> IndexLock:
        import fcntl

        self.paths.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise IndexBusyError(f"index {self.paths.name!r} is being written by another process (pid {holder}); "
                                 "wait for it to finish and rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    @staticmethod
    def held(paths: IndexPaths) -> bool:
        """Whether a live process holds the index for writing now (a killed one's lock is gone)."""
        import fcntl

        try:
            fd = os.open(paths.lock_file, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
