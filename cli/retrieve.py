"""`s2m retrieve` (also installed as `retrieve`): sketch or "more like this" queries; table, JSON or contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.models import MODEL_HELP

# Same values as s2m_retrieval.retrieval / .ranking (a test keeps them equal); importing those here would load
# numpy into `s2m --help`.
DEFAULT_K = 10
DEFAULT_CANDIDATES = 100
DEFAULT_ALPHA = 0.5
DEFAULT_NORMALISATION = "minmax"


def retrieve(
    query: Path = typer.Argument(None, help="Sketch image: dark strokes on white (transparent PNG is fine)."),
    k: int = typer.Option(DEFAULT_K, "--k", help="Number of results."),
    index: str = typer.Option("default", "--index", "--name", help="Index name (a folder under HOME/indexes/)."),
    steps: int = typer.Option(None, "--steps", help="Refinement steps T of H (default: H's trained T; 0 without H)."),
    candidates: int = typer.Option(DEFAULT_CANDIDATES, "--candidates",
                                   help="FAISS candidates (by latent distance) to re-rank."),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha",
                                help="Score = alpha * latent + (1 - alpha) * perceptual, each normalised over the "
                                     "candidates; 1 skips the perceptual re-rank."),
    where: str = typer.Option(None, "--where", help="Metadata filter, e.g. 'tonsil_grade>=3, mallampati!=1'."),
    max_distance: float = typer.Option(None, "--max-distance", help="Drop candidates farther than this in the index's latent space (0..2 with a projector)."),
    like: str = typer.Option(None, "--like", help="Query with an archive image (id or path) instead of a sketch."),
    code: str = typer.Option(None, "--code",
                             help="Query vector: sketch (E's own W+ code, the default: E is trained for the index "
                                  "space), reinvert (x_hat through the archive inverter, as archive images) or "
                                  "blend (the mean of both)."),
    normalisation: str = typer.Option(DEFAULT_NORMALISATION, "--normalisation",
                                      help="How distances are normalised before fusing: minmax or rank."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    sheet: Path = typer.Option(None, "--sheet", help="Write a contact sheet PNG: query | x_hat | top-k."),
    perceptual: str = typer.Option(None, "--perceptual", help="Perceptual metric (default: the one of the index)."),
    home: Path = typer.Option(None, "--home", envvar="S2M_HOME", help="Home folder (default ~/.s2m)."),
    db: str = typer.Option(None, "--db", envvar="S2M_DB_URL",
                           help="Database URL (default: SQLite HOME/s2m.db)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0: torch's default)."),
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
) -> None:
    """Find the archive images most like a sketch (or, with --like, like an archive image)."""
    from s2m_retrieval.bundle import resolve_model
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.metadata_filter import parse_where
    from s2m_retrieval.retrieval import RetrievalEngine, check_options, check_sketch, check_steps, read_sketch

    if query is None and like is None:
        raise BadInputError("give a sketch image (s2m retrieve SKETCH.png) or --like ID_OR_PATH")
    if query is not None and like is not None:
        raise BadInputError("give either a sketch image or --like ID_OR_PATH, not both")
    # Everything the user typed is checked before the index and the models are opened.
    if like is not None and steps is not None:
        raise BadInputError("--steps applies to sketch queries; --like skips E and H")
    check_options(k, candidates, alpha, max_distance, normalisation)
    check_steps(steps)
    if sheet is not None:
        from s2m_retrieval.viz import output_image_format

        output_image_format(sheet)
    parse_where(where)
    sketch = check_sketch(read_sketch(query), query) if query is not None else None
    models = resolve_model(model, home)
    from cli.runtime import setup_torch

    device = setup_torch(threads, device)
    options = dict(k=k, n_candidates=candidates, alpha=alpha, where=where, max_distance=max_distance,
                   normalisation=normalisation)
    with RetrievalEngine.open(index, home=home, db_url=db, models=models, perceptual=perceptual,
                              device=device) as engine:
        if sketch is not None:
            result = engine.query_sketch(sketch, steps=steps, **({"code": code} if code else {}), **options)
        else:
            result = engine.query_like(like, **options)
    from s2m_retrieval.result_view import result_table, write_result_sheet

    if result.provenance.get("note"):
        typer.echo(f"note: {result.provenance['note']}; pass --steps 0 to ask for that", err=True)

    if sheet is not None:
        write_result_sheet(result, sheet)
    if as_json:
        typer.echo(json.dumps(result.to_dict() | {"sheet": None if sheet is None else str(sheet)}, indent=2))
        return
    for line in result_table(result):
        typer.echo(line)
    if sheet is not None:
        typer.echo(f"sheet: {sheet}")
