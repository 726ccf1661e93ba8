"""Query manifests: `sketch,target_id[,label columns]` CSV files, made from an archive or written by hand.

`sketch` is a path relative to the manifest's folder (or absolute); `target_id` is the file stem of the target
image in the indexed archive (empty for a query whose target is not indexed: category-level metrics only).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s2m_retrieval.data.query_styles import QUERY_STYLES, QueryStyle, draw_query, trace_edges  # noqa: F401
from s2m_retrieval.errors import ArchiveError, BadInputError

REQUIRED = ("sketch", "target_id")
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class Query:
    """One manifest row: the sketch file, the target's archive id (None when not indexed) and its labels."""

    sketch: Path
    target_id: str | None
    labels: dict = field(default_factory=dict)


def make_queries(archive: str | os.PathLike, out: str | os.PathLike, n: int, seed: int = 0, *,
                 style: str = "unseen", in_index: bool = True, segmenter: str | os.PathLike | None = None,
                 progress=None, stats=None) -> Path:
    """Draw `n` free-hand sketches of archive images picked at random (seeded) and write OUT/manifest.csv.

    Masks come from the archive's masks/ when it has them, else from the segmenter
    (a checkpoint; default the shipped one). With `in_index` the target
    ids name the images (they are expected in the index); without, the targets are held out and left empty.
    An image (or mask) that does not decode is skipped, counted in `stats` (a ReadStats) with its reason, and
    replaced by the next one of a seeded order; too few good images is an error that leaves no manifest.
    """
    from PIL import Image

    from s2m_retrieval.data.archive import ReadStats, read_image, read_mask, scan_archive
    from s2m_retrieval.errors import BadImageError

    if style not in QUERY_STYLES:
        raise BadInputError(f"unknown sketch style {style!r}; choose one of {', '.join(QUERY_STYLES)}")
    if n < 1:
        raise BadInputError(f"--n must be >= 1, got {n}")
    entries = scan_archive(archive)
    if len(entries) < n:
        raise ArchiveError(f"{archive} has {len(entries)} images; --n {n} needs at least that many")
    out = Path(out)
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        raise BadInputError(f"{manifest} already exists; give another --out or remove it")
    stats = stats if stats is not None else ReadStats()
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(entries), size=n, replace=False).tolist())
    chosen = set(picked)
    spare = [i for i in rng.permutation(len(entries)).tolist() if i not in chosen]  # replacements, in order
    columns: list[str] = []
    for i in picked:
        columns += [c for c in entries[i].labels if c not in columns and c not in ("id", "file")]
    (out / "sketches").mkdir(parents=True, exist_ok=True)
    rows = []
    while picked:
        index = picked.pop(0)
        entry = entries[index]
        try:
            if entry.mask_path is not None:
                mask = read_mask(entry.mask_path)
            else:
                from s2m_retrieval.model.segmentation import segment_images

                mask = segment_images([read_image(entry.path)], segmenter)[0]
            # A seed per (run seed, query) so one query's sketch never depends on which others were drawn.
            sketch = draw_query(mask, QUERY_STYLES[style], seed=seed * 1_000_003 + index,
                                image=read_image(entry.path) if QUERY_STYLES[style].source == "edges" else None)
        except BadImageError as exc:
            stats.record_bad(entry.path, str(exc).split(": ", 1)[-1])
            if not spare:
                for row in rows:  # nothing half-written: this run's sketches go with its manifest
                    (out / row["sketch"]).unlink(missing_ok=True)
                raise ArchiveError(f"{archive} has too few readable images for --n {n} ({stats.n_bad} unreadable "
                                   f"of {len(entries)})") from None
            picked.append(spare.pop(0))
            continue
        name = f"sketches/{entry.stem}.png"
        Image.fromarray(sketch).save(out / name)
        rows.append({"sketch": name, "target_id": entry.stem if in_index else "",
                     **{c: entry.labels.get(c, "") for c in columns}})
        if progress:
            progress(1)
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*REQUIRED, *columns], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest


def read_manifest(path: str | os.PathLike, relevance: tuple[str, ...] = ()) -> list[Query]:
    """The manifest's queries; a missing column, an unreadable or missing sketch file, or an empty manifest is a
    one-line BadInputError naming the file (and line)."""
    from s2m_retrieval.data.archive import parse_value
    from s2m_retrieval.data.csv_table import read_table
    from s2m_retrieval.data.image_io import input_file

    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise BadInputError(f"query manifest not found: {path}")
    columns, table = read_table(path)
    missing = [c for c in (*REQUIRED, *relevance) if c not in columns]
    if missing:
        raise BadInputError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(columns) or 'none'}; "
                            f"a manifest is sketch,target_id[,label columns])")
    queries = []
    for line, row in table:
        if not row.get("sketch"):
            raise BadInputError(f"{path} line {line}: empty sketch path")
        sketch = Path(row["sketch"])
        sketch = sketch if sketch.is_absolute() else path.parent / sketch
        try:
            input_file(sketch, "sketch")
        except BadInputError as exc:
            raise BadInputError(f"{path} line {line}: {exc}") from None
        for c in relevance:
            if row.get(c) in (None, ""):
                raise BadInputError(f"{path} line {line}: no value in relevance column {c!r}")
        labels = {k: parse_value(v) for k, v in row.items() if k not in REQUIRED and v not in (None, "")}
        queries.append(Query(sketch=sketch, target_id=(row["target_id"] or "").strip() or None, labels=labels))
    if not queries:
        raise BadInputError(f"{path}: the manifest has no queries")
    return queries
