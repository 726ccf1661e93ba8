"""`s2m eval MANIFEST`: open the index, build the requested methods, answer every query, write the report."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.query.ranking import DEFAULT_ALPHA


@dataclass(frozen=True)
class EvalOptions:
    """What to measure: methods, cut-offs, relevance columns and the Sketch2MedI ablations."""

    methods: tuple[str, ...] = ("sketch2medi",)
    ks: tuple[int, ...] = (1, 5, 10)
    relevance: tuple[str, ...] = ()
    steps: tuple[int, ...] = ()           # refinement steps T to ablate (the engine's default T always runs)
    candidates: tuple[int, ...] = (100,)  # re-ranked candidate counts; the largest is the FAISS top-N
    alpha: float = DEFAULT_ALPHA
    limit: int | None = None              # first N queries only

    def __post_init__(self) -> None:
        from s2m_retrieval.evaluation.methods import METHODS

        unknown = [x for x in self.methods if x not in METHODS]
        if unknown or not self.methods:
            raise BadInputError(f"unknown --method {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
        if not self.ks or min(self.ks) < 1:
            raise BadInputError(f"--k needs cut-offs >= 1, got {','.join(map(str, self.ks)) or 'none'}")
        if min(self.steps, default=0) < 0 or not self.candidates or min(self.candidates) < 1:
            raise BadInputError("--steps must be >= 0 and --candidates >= 1")
        if max(self.candidates) < max(self.ks):
            raise BadInputError(f"--candidates {max(self.candidates)} is below the largest --k {max(self.ks)}")
        if self.limit is not None and self.limit < 1:
            raise BadInputError(f"--limit must be >= 1, got {self.limit}")
        if not 0 <= self.alpha <= 1:
            raise BadInputError(f"--alpha must be between 0 and 1, got {self.alpha}")


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    """'1,5,10' -> (1, 5, 10); a bad list is a one-line error naming the flag."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadInputError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _sketch2medi(engine, view, options: EvalOptions, paths: dict, device: str, n: int):
    from s2m_retrieval.evaluation.methods import Sketch2MediMethod

    return Sketch2MediMethod(engine, view, options.steps, options.candidates, options.alpha)


def _edge(engine, view, options: EvalOptions, paths: dict, device: str, n: int):
    from s2m_retrieval.evaluation.methods import EdgeMethod

    return EdgeMethod(view, n, paths.get("segmenter"))


def _pix2pix(engine, view, options: EvalOptions, paths: dict, device: str, n: int):
    from s2m_retrieval.evaluation.methods import Pix2PixMethod
    from s2m_retrieval.model.files import weights_or_shipped
    from s2m_retrieval.networks.pix2pix import load_pix2pix

    return Pix2PixMethod(view, load_pix2pix(weights_or_shipped(paths.get("pix2pix"), "pix2pix"), device),
                         engine.metric, n)


def _embedding(engine, view, options: EvalOptions, paths: dict, device: str, n: int):
    from s2m_retrieval.evaluation.methods import EmbeddingMethod
    from s2m_retrieval.model.files import weights_or_shipped
    from s2m_retrieval.networks.embedding import load_embedding

    return EmbeddingMethod(view, load_embedding(weights_or_shipped(paths.get("embedding"), "embedding"), device), n)


def _unpaired(name: str):
    def build(engine, view, options: EvalOptions, paths: dict, device: str, n: int):
        from s2m_retrieval.evaluation.methods import Pix2PixMethod

        return Pix2PixMethod(view, load_unpaired(name, paths.get(name), device), engine.metric, n, name=name,
                             timed=name)
    return build


# method name -> builder(engine, view, options, checkpoint paths by name, device, candidate count)
BUILDERS = {"sketch2medi": _sketch2medi, "edge": _edge, "pix2pix": _pix2pix, "embedding": _embedding,
            "cyclegan": _unpaired("cyclegan"), "unit": _unpaired("unit"), "ugatit": _unpaired("ugatit")}


def build_methods(engine, view, options: EvalOptions, *, pix2pix: str | os.PathLike | None,
                  embedding: str | os.PathLike | None, segmenter: str | os.PathLike | None, device: str = "cpu",
                  unpaired: dict[str, str | os.PathLike | None] | None = None):
    """The requested methods over the index's images; baselines load their checkpoints (default: shipped; the
    unpaired ones, cyclegan, unit and ugatit, ship none: `unpaired` maps each requested one to its file)."""
    from s2m_retrieval.errors import lookup

    paths = {"pix2pix": pix2pix, "embedding": embedding, "segmenter": segmenter, **(unpaired or {})}
    n = max(options.candidates)
    return [lookup(BUILDERS, name, "evaluation method")(engine, view, options, paths, device, n)
            for name in options.methods]


def load_unpaired(name: str, path: str | os.PathLike | None, device: str = "cpu"):
    """The sketch -> image translator of unpaired baseline `name` (cyclegan, unit, ugatit) from its checkpoint;
    none is shipped, so a missing path is a one-line CheckpointError saying how to train one."""
    from s2m_retrieval.errors import CheckpointError
    from s2m_retrieval.model.files import weights_or_shipped
    from s2m_retrieval.networks.cyclegan import load_cyclegan
    from s2m_retrieval.networks.ugatit import load_ugatit
    from s2m_retrieval.networks.unit import load_unit

    if path is None:
        raise CheckpointError(f"no {name} weights are shipped; train them with `s2m train {name} ARCHIVE --out DIR` "
                              f"and pass DIR/{name}.pt with --{name}")
    load = {"cyclegan": load_cyclegan, "unit": load_unit, "ugatit": load_ugatit}[name]
    return load(weights_or_shipped(path, name), device)


def evaluate(manifest: str | os.PathLike, engine, options: EvalOptions, out: str | os.PathLike, *,
             pix2pix=None, embedding=None, segmenter=None, device: str = "cpu", queries=None,
             progress: Callable[[int], None] | None = None,
             unpaired: dict | None = None) -> tuple[dict, dict[str, Path]]:
    """Run the evaluation (on `queries` when the manifest was already read); return the report and the files."""
    from s2m_retrieval.evaluation import report as rp
    from s2m_retrieval.evaluation.archive_view import read_archive_view
    from s2m_retrieval.evaluation.manifest import read_manifest
    from s2m_retrieval.evaluation.runner import (Relevance, check_targets, precision_curve, run_methods,
                                                 variant_metrics)

    queries = read_manifest(manifest, options.relevance)[:options.limit] if queries is None else queries
    view = read_archive_view(engine)
    name = engine.reader.stamp.name
    if not len(view):
        raise BadInputError(f"index {name!r} is empty; build it first")
    check_targets(queries, view, name)
    methods = build_methods(engine, view, options, pix2pix=pix2pix, embedding=embedding, segmenter=segmenter,
                            device=device, unpaired=unpaired)
    answers = run_methods(queries, methods, progress)
    timed = {m.timed for m in methods}
    relevance = Relevance.of(queries, view, options.relevance) if options.relevance else None
    variants = {v: {"method": answers.method_of[v], "timed": v in timed,
                    **variant_metrics(lists, queries, options.ks, relevance)}
                for v, lists in _ordered(answers.lists, timed).items()}
    latency = {name: {"p50": _ms(secs, 50), "p95": _ms(secs, 95)} for name, secs in answers.seconds.items()}
    stamp = engine.reader.stamp
    report = {"manifest": str(manifest), "index": name, "index_size": len(view), "factory": stamp.factory,
              "perceptual": engine.metric.version, "models": dict(engine.pipeline.versions),
              "n_queries": len(queries), "ks": list(options.ks), "relevance": list(options.relevance),
              "variants": variants, "latency_ms": latency,
              "faiss_recall": _faiss_recall(methods)}
    curves = ({v: precision_curve(answers.lists[v], queries, relevance, max(options.ks))
               for v in sorted(timed, key=list(variants).index)} if relevance else {})
    examples = rp.example_sheet(answers, view, sorted(timed, key=list(variants).index), queries)
    return report, rp.write_report(report, curves, examples, out)


def _ordered(lists: dict, timed: set[str]) -> dict:
    """The timed (main) variant of each method first, then the ablations."""
    return {v: lists[v] for v in sorted(lists, key=lambda v: (v not in timed, list(lists).index(v)))}


def _ms(seconds: Sequence[float], q: float) -> float:
    from s2m_retrieval.evaluation.metrics import percentile_ms

    return percentile_ms([s * 1e3 for s in seconds], q)


def _faiss_recall(methods) -> dict | None:
    for method in methods:
        recall = getattr(method, "faiss_recall", None)
        if recall is not None:
            return recall
    return None


def write_path(out: str | os.PathLike) -> Path:
    """The report folder; an existing file there is an error."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"--out {path} is a file; give a folder")
    return path
