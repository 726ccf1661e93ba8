"""Replacing a file atomically: write a temp file beside it, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """A temp path in `path`'s folder (hidden, `.NAME.*.tmp`, which index garbage collection removes); when the
    block ends without error it replaces `path`, readable by all (mkstemp makes 0600); on error it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data, *, fsync: bool = False, **dump) -> None:
    """`data` as JSON (plus a final newline) replacing `path` atomically; `dump` goes to json.dump."""
    with replacing(path, fsync=fsync) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, **dump)
        fh.write("\n")
