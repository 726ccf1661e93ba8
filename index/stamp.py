"""The stamp (manifest.json) beside every index: which model, metric, dim, factory and weighting made it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from index.atomic import write_json
from s2m_retrieval.errors import IndexCorruptError, VersionMismatchError

FORMAT = "s2m-index/1"


@dataclass
class IndexStamp:
    """What an index was built with; compared with the model in use before any query."""

    name: str
    model_version: str
    model_name: str
    metric: str
    dim: int
    factory: str
    weighting: str
    resolution: int
    faiss_metric: str = "L2"
    count: int = 0
    # Every SQL vector row with id <= synced_vector_id is reflected in index.faiss.
    synced_vector_id: int = 0
    # Shapes (without the batch axis) of the arrays stored per image in the shards, e.g. {"thumbs": [16, 16, 3]}.
    arrays: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    # The `database_id` of the database whose rows this index's shards belong to ("" in manifests made before it).
    database_id: str = ""
    # Which frames of multi-frame DICOM files the index holds (--frames first|middle|all); older manifests: first.
    frames: str = "first"
    format: str = FORMAT
    created_at: str = ""
    updated_at: str = ""

    def rebuild_hint(self) -> str:
        """The command that rebuilds this index."""
        return f"s2m index build ARCHIVE --name {self.name} --rebuild"

    def check(self, *, model_version: str | None = None, metric: str | None = None,
              dim: int | None = None) -> None:
        """Raise VersionMismatchError when the model in use is not the one that built this index."""
        wanted = {"model version": (self.model_version, model_version), "perceptual metric": (self.metric, metric),
                  "vector dim": (self.dim, dim)}
        for what, (have, want) in wanted.items():
            if want is not None and have != want:
                raise VersionMismatchError(
                    f"index {self.name!r} was built with {what} {have}, but the model in use has {want}; "
                    f"rebuild it: {self.rebuild_hint()}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_stamp(path: Path, stamp: IndexStamp) -> None:
    """Write the manifest atomically (temp file, fsync, rename)."""
    if not stamp.created_at:
        stamp.created_at = _now()
    stamp.updated_at = _now()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, dataclasses.asdict(stamp), fsync=True, indent=2, sort_keys=True)


def read_stamp(path: Path) -> IndexStamp:
    """Read a manifest; a damaged or foreign one raises IndexCorruptError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"index manifest {path} is unreadable ({str(exc)[:80]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexCorruptError(f"index manifest {path} is not in format {FORMAT}")
    known = {f.name for f in dataclasses.fields(IndexStamp)}
    try:
        return IndexStamp(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise IndexCorruptError(f"index manifest {path} misses fields ({exc})") from None
