"""The evaluation report: metrics.json, a Markdown table, precision@k curves and example queries (PNG)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

# Columns of the Markdown table, in order, with how each is printed.
TABLE_COLUMNS = ("acc@1", "acc@5", "acc@10", "mrr", "found", "P@1", "P@5", "P@10", "mAP@10")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _ms(value) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def markdown_table(report: dict) -> str:
    """Every variant x the metrics it has, plus its method's latency."""
    variants = report["variants"]
    columns = [c for c in TABLE_COLUMNS if any(c in v for v in variants.values())]
    extra = sorted({c for v in variants.values() for c in v if c.startswith(("acc@", "P@", "mAP@"))} - set(columns),
                   key=lambda c: (c.split("@")[0], int(c.split("@")[1])))
    columns += extra
    header = ["method / variant", *columns, "p50 ms", "p95 ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in variants.items():
        latency = report["latency_ms"].get(values["method"], {}) if values.get("timed") else {}
        cells = [name, *(_cell(values.get(c)) for c in columns), _ms(latency.get("p50")), _ms(latency.get("p95"))]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"{report['n_queries']} queries from {report['manifest']}; index {report['index']!r} "
             f"({report['index_size']} images, {report['factory']}), perceptual {report['perceptual']}.",
             "found: share of targets anywhere in the method's list (for Sketch2MedI: among the FAISS candidates, "
             "the first stage's recall@N).",
             (f"P@k and mAP@{max(report['ks'])}: relevant = same {', '.join(report['relevance'])} as the query; "
              if report["relevance"] else "no category metrics (give --relevance COLUMNS for P@k and mAP); ")
             + "latency: the timed variant of each method (one query, warm)."]
    if report.get("faiss_recall") is not None:
        notes.append(f"FAISS recall@{report['faiss_recall']['k']} vs exact search: {report['faiss_recall']['value']:.3f}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_report(report: dict, curves: dict[str, list[float]], examples, out: str | os.PathLike) -> dict[str, Path]:
    """Write metrics.json, report.md, precision_at_k.png and examples.png under `out`; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "table": out / "report.md"}
    _atomic_text(paths["metrics"], json.dumps(report | {"precision_curves": curves}, indent=2, default=_plain))
    _atomic_text(paths["table"], "# Retrieval evaluation\n\n" + markdown_table(report))
    if curves:
        paths["curves"] = out / "precision_at_k.png"
        _plot_curves(curves, report["relevance"], paths["curves"])
    if examples is not None:
        paths["examples"] = out / "examples.png"
        examples.save(paths["examples"])
    return paths


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON: {type(value)}")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _plot_curves(curves: dict[str, list[float]], relevance, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set_xlabel("k")
    ax.set_ylabel(f"precision@k (same {', '.join(relevance)})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def example_sheet(answers, view, variants: list[str], queries, n_queries: int = 4, k: int = 5):
    """A contact sheet: per example query, one row per variant: sketch | target | its top-k thumbs (the target
    marked "= target" where it was found)."""
    from s2m_retrieval.viz import contact_sheet

    where = {a: i for i, a in enumerate(view.archive_ids)}
    blank = np.zeros_like(view.thumbs[0])
    tiles, captions = [], []
    for q in range(min(n_queries, len(answers.sketches))):
        target = queries[q].target_id
        for name in variants:
            tiles += [answers.sketches[q], view.thumbs[where[target]] if target else blank]
            captions += [f"q{q} {name}"[:18], f"target {target}" if target else "held out"]
            ids = answers.lists[name][q][:k]
            tiles += [view.thumbs[where[i]] for i in ids] + [blank] * (k - len(ids))
            captions += [f"#{r + 1}" + (" = target" if i == target else f" {i}") for r, i in enumerate(ids)]
            captions += [""] * (k - len(ids))
    return contact_sheet(tiles, captions, cols=k + 2, tile_size=96)
