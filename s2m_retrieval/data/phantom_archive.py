"""Write a phantom archive folder (images/, masks/, labels.csv, classes.json) per the data contract."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from s2m_retrieval.data.classes import CLASS_NAMES
from s2m_retrieval.data.phantom import SUPPORTED_SIZES, make_phantom
from s2m_retrieval.errors import ArchiveError, BadInputError

GENERATOR_TAG = "s2m phantom v1"
_CHUNK = 50  # phantoms per worker task: large enough to amortise the hand-off, small for a smooth bar
LABEL_COLUMNS = ("tonsil_grade", "mallampati", "follicles", "uvula_length", "uvula_deviation",
                 "tongue_height", "redness", "exposure", "blur_px")


def phantom_id(index: int) -> str:
    """The stable id (and file stem) of phantom number `index`."""
    return f"ph{index:06d}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png_bytes(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_chunk(job: tuple[str, int, int, int, int]) -> list[dict]:
    """Render and write phantoms [lo, hi) of an archive; return their labels.csv rows."""
    out, seed, size, lo, hi = job
    out = Path(out)
    rows = []
    for index in range(lo, hi):
        image, label, params = make_phantom(seed, index, size)
        pid = phantom_id(index)
        _write_atomic(out / "images" / f"{pid}.png", _png_bytes(image))
        _write_atomic(out / "masks" / f"{pid}.png", _png_bytes(label))
        rows.append({"id": pid, "file": f"images/{pid}.png", **params.labels()})
    return rows


def _phantom_info(out: Path) -> dict | None:
    """classes.json of a phantom archive written by this tool, or None for any other folder."""
    try:
        info = json.loads((out / "classes.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("generator") == GENERATOR_TAG else None


def _existing_rows(out: Path) -> list[dict]:
    with (out / "labels.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _prepare(out: Path, seed: int, size: int, overwrite: bool, extend: bool) -> list[dict]:
    """Check what may be written into `out`; clear it for --overwrite; return the rows to keep for --extend."""
    if overwrite and extend:
        raise BadInputError("--overwrite and --extend exclude each other")
    if out.exists() and not out.is_dir():
        raise ArchiveError(f"{out} exists and is not a folder; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        if extend:
            raise ArchiveError(f"{out} holds no phantom archive to extend; drop --extend")
        return []
    info = _phantom_info(out)
    if not (overwrite or extend):
        raise ArchiveError(f"{out} is not empty; choose an empty --out, or --extend / --overwrite a phantom archive")
    if info is None:
        raise ArchiveError(f"{out} is not a phantom archive (no classes.json of `s2m data phantom`); "
                           "refusing to write into it")
    if extend:
        if (info.get("seed"), info.get("size")) != (seed, size):
            raise ArchiveError(f"{out} is a phantom archive of seed {info.get('seed')}, size {info.get('size')}; "
                               f"--extend needs the same --seed and --size")
        return _existing_rows(out)
    for sub in ("images", "masks"):
        for path in (out / sub).glob("ph*.png"):
            path.unlink()
    for name in ("labels.csv", "classes.json"):
        (out / name).unlink(missing_ok=True)
    return []


def write_phantom_archive(out: str | os.PathLike, n: int, size: int = 64, seed: int = 0,
                          start: int = 0, overwrite: bool = False, extend: bool = False,
                          workers: int | None = 1, progress: Callable[[int], None] | None = None) -> Path:
    """Generate phantoms `start .. start+n-1` into `out` (`workers` processes, None: all cores).

    Same arguments give byte-identical files, whatever the number of workers. `overwrite` replaces a
    phantom archive; `extend` adds to one of the same seed and size (labels.csv is merged).
    """
    if n < 1:
        raise BadInputError(f"--n must be at least 1, got {n}")
    if start < 0 or seed < 0:
        raise BadInputError(f"start and seed must be >= 0, got start={start}, seed={seed}")
    if size not in SUPPORTED_SIZES:
        raise BadInputError(f"--size must be one of {', '.join(map(str, SUPPORTED_SIZES))}, got {size}")
    out = Path(out)
    kept = _prepare(out, seed, size, overwrite, extend)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    chunks = [(str(out), seed, size, i, min(i + _CHUNK, start + n)) for i in range(start, start + n, _CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    rows = []
    if workers > 1:
        # Each phantom depends only on (seed, index), so workers cannot change the bytes written.
        ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
        with ctx.Pool(workers) as pool:
            for chunk_rows in pool.imap(_write_chunk, chunks):
                rows.extend(chunk_rows)
                if progress is not None:
                    progress(len(chunk_rows))
    else:
        for chunk in chunks:
            chunk_rows = _write_chunk(chunk)
            rows.extend(chunk_rows)
            if progress is not None:
                progress(len(chunk_rows))

    new_ids = {r["id"] for r in rows}
    rows = sorted([r for r in kept if r["id"] not in new_ids] + rows, key=lambda r: r["id"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "file", *LABEL_COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(out / "labels.csv", buf.getvalue().encode())
    classes = {"classes": {str(k): v for k, v in CLASS_NAMES.items()}, "seed": seed, "size": size,
               "generator": GENERATOR_TAG}
    _write_atomic(out / "classes.json", (json.dumps(classes, indent=2) + "\n").encode())
    return out
