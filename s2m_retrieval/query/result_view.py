"""How a retrieval result is shown: the text table of `s2m retrieve` and the contact sheet query | x_hat | top-k."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from s2m_retrieval.data.dicom import FRAME_LABEL

META_COLUMNS = 4  # label columns shown in the table (all of them are in --json)


@dataclass
class Hit:
    """One result row; distances: latent (Euclidean in the index's space) and perceptual; score: fused, lower is
    better."""

    rank: int
    id: int
    path: str
    latent_distance: float
    perceptual_distance: float | None
    score: float
    labels: dict = field(default_factory=dict)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def result_table(result) -> list[str]:
    """The human output: a provenance line, the ranked rows, a timings line."""
    p = result.provenance
    query = f"T={p['steps']}" if p["query"] == "sketch" else f"like {p['like']}"
    lines = [f"index {p['index']!r} ({p['index_size']} images, {p['factory']}), perceptual {p['perceptual']}, "
             f"{query}, alpha {p['alpha']:g} ({p['normalisation']}), {result.candidates} candidates"]
    if p["where"] or p["max_distance"] is not None:
        lines.append(f"filters: {', '.join(p['where']) or '-'}; max distance {_fmt(p['max_distance'])}")
    if not result.hits:
        lines.append("no image matches")
    else:
        paths = [h.path for h in result.hits]
        base = os.path.commonpath([os.path.dirname(x) for x in paths]) if len(paths) > 1 else os.path.dirname(paths[0])
        # The frame of a hit from a multi-frame file comes first: the path alone does not say which image it is.
        columns: list[str] = [FRAME_LABEL] if any(FRAME_LABEL in h.labels for h in result.hits) else []
        for hit in result.hits:
            columns += [c for c in hit.labels if c not in columns and c not in ("id", "file")]
        columns = columns[:META_COLUMNS]
        header = ["rank", "id", "path", "latent", "perceptual", "score"] + columns
        rows = [[str(h.rank), str(h.id), os.path.relpath(h.path, base), _fmt(h.latent_distance),
                 _fmt(h.perceptual_distance), f"{h.score:.3f}"] + [_fmt(h.labels.get(c)) for c in columns]
                for h in result.hits]
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
        lines.append(f"paths relative to {base}")
    lines.append("timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings_ms.items()))
    return lines


def write_result_sheet(result, out: str | os.PathLike) -> None:
    """Contact sheet query | x_hat | top-k (captions: rank and score), written atomically."""
    from s2m_retrieval.viz import contact_sheet, output_image_format

    out = Path(out)
    fmt = output_image_format(out)
    tiles = [result.query] + ([result.x_hat] if result.x_hat is not None else []) + list(result.thumbs)
    captions = ["query"] + ([f"x_hat T={result.provenance['steps']}"] if result.x_hat is not None else [])
    captions += [f"#{h.rank} score {h.score:.2f}" for h in result.hits]
    tile = max(96, result.thumbs.shape[1] if len(result.thumbs) else 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        contact_sheet(tiles, captions, cols=min(len(tiles), 6), tile_size=tile).save(tmp, format=fmt)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
