"""`s2m retrieve` (also installed as `retrieve`): sketch or "more like this" queries, one or a batch, answered here
or by a running `s2m serve` (--server); table, JSON or contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.models import MODEL_HELP
from cli.runtime import DEVICE_HELP

# Same values as s2m_retrieval.query.engine / .ranking (a test keeps them equal); importing those here would load
# numpy into `s2m --help`.
DEFAULT_K = 10
DEFAULT_CANDIDATES = 100
DEFAULT_ALPHA = 1.0
DEFAULT_NORMALISATION = "minmax"
# What these options choose is loaded by the server of --server, not here.
LOCAL_ONLY = {"index": "--index", "model": "--model", "perceptual": "--perceptual", "code": "--code",
              "device": "--device", "threads": "--threads", "home": "--home", "db": "--db"}


def retrieve(
    ctx: typer.Context,
    query: list[Path] = typer.Argument(None, metavar="SKETCH", help="Sketch image(s): dark strokes on white "
                                                                        "(transparent PNG is fine); several run as "
                                                                        "one batch."),
    batch: Path = typer.Option(None, "--batch", help="More sketches: a folder of sketch images (or one holding a "
                                                     "manifest.csv), or a CSV file with a sketch column (paths "
                                                     "relative to it, as `s2m eval` manifests)."),
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
    like: str = typer.Option(None, "--like", help="Query with an archive image (id or path; an id with --server) "
                                                  "instead of a sketch."),
    code: str = typer.Option(None, "--code",
                             help="Query vector: sketch (E's own W+ code, the default: E is trained for the index "
                                  "space), reinvert (x_hat through the archive inverter, as archive images) or "
                                  "blend (the mean of both)."),
    normalisation: str = typer.Option(DEFAULT_NORMALISATION, "--normalisation",
                                      help="How distances are normalised before fusing: minmax or rank."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON (one line a query, naming its "
                                                       "sketch, for several)."),
    sheet: Path = typer.Option(None, "--sheet", help="Write a contact sheet PNG: query | x_hat | top-k (several "
                                                     "sketches: a folder, one SKETCH_STEM.png a query)."),
    perceptual: str = typer.Option(None, "--perceptual", help="Perceptual metric (default: the one of the index)."),
    home: Path = typer.Option(None, "--home", envvar="S2M_HOME", help="Home folder (default ~/.s2m)."),
    db: str = typer.Option(None, "--db", envvar="S2M_DB_URL",
                           help="Database URL (default: SQLite HOME/s2m.db)."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0: torch's default)."),
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
    server: str = typer.Option(None, "--server", help="Ask a running `s2m serve` at this URL (e.g. "
                                                      "http://127.0.0.1:8000) instead of loading the models here."),
    token: str = typer.Option(None, "--token", envvar="S2M_SERVE_TOKEN",
                              help="The token of the --server (prefer the env var: a command line is visible to "
                                   "other users)."),
) -> None:
    """Find the archive images most like a sketch, or each of several (or, with --like, like an archive image)."""
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.query.filters import parse_where
    from s2m_retrieval.query.options import check_options, check_steps  # light: no torch on the --server path

    sketches = list(query or []) + (batch_sketches(batch) if batch is not None else [])
    many = batch is not None or len(sketches) > 1
    if not sketches and like is None:
        raise BadInputError("give a sketch image (s2m retrieve SKETCH.png) or --like ID_OR_PATH")
    if sketches and like is not None:
        raise BadInputError("give either a sketch image or --like ID_OR_PATH, not both")
    # Everything the user typed is checked before the index and the models are opened or the server is asked.
    if like is not None and steps is not None:
        raise BadInputError("--steps applies to sketch queries; --like skips E and H")
    _check_server_options(ctx, server, token)
    check_options(k, candidates, alpha, max_distance, normalisation)
    check_steps(steps)
    if sheet is not None:
        _check_sheet(sheet, many)
    parse_where(where)
    output = QueryOutput(as_json, sheet, many)
    options = dict(k=k, n_candidates=candidates, alpha=alpha, where=where, max_distance=max_distance,
                   normalisation=normalisation)
    if server is not None:
        _remote(server, token, sketches, like, options | {"steps": steps}, output)
    else:
        engine = dict(index=index, home=home, db=db, model=model, perceptual=perceptual, device=device,
                      threads=threads)
        run = _local_batch if many else _local
        run(engine, sketches, like, options, steps, code, output)
    output.finish()


def batch_sketches(path: Path) -> list[Path]:
    """The sketch files of --batch: a folder's image files by name (its manifest.csv instead, when it has one,
    as `s2m eval` reads a folder), or a CSV file's `sketch` column (paths relative to the file). A missing sketch
    file fails its own query later; a folder without sketches or a CSV without the column fails here."""
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.evaluation.manifest import MANIFEST_NAME

    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            from s2m_retrieval.data.image_io import is_image_name

            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and is_image_name(p.name))
            if not found:
                raise BadInputError(f"--batch {path}: the folder holds no sketch images and no {MANIFEST_NAME}")
            return found
        path = path / MANIFEST_NAME
    elif not path.is_file():
        raise BadInputError(f"--batch {path}: no such folder or CSV file")
    elif path.suffix.lower() != ".csv":
        raise BadInputError(f"--batch {path}: give a folder of sketches or a CSV file with a sketch column (single "
                            "sketches go as arguments: s2m retrieve A.png B.png)")
    from s2m_retrieval.data.csv_table import read_table

    columns, rows = read_table(path)
    if "sketch" not in columns:
        raise BadInputError(f"{path}: no sketch column (has {', '.join(c for c in columns if c) or 'none'}); a batch "
                            "CSV lists sketch files in a sketch column, as query manifests do")
    sketches = []
    for line, row in rows:
        if not (row.get("sketch") or "").strip():
            raise BadInputError(f"{path} line {line}: empty sketch path")
        sketch = Path(row["sketch"])
        sketches.append(sketch if sketch.is_absolute() else path.parent / sketch)
    if not sketches:
        raise BadInputError(f"{path}: the CSV lists no sketches")
    return sketches


class QueryOutput:
    """Prints each query as asked: a table, JSON, a sheet. One query prints as it always has; several print one
    table each headed by its sketch, or one JSON line each naming it, and write one sheet each into the --sheet
    folder; a failed one prints its one-line error and the others go on."""

    def __init__(self, as_json: bool, sheet: Path | None, many: bool) -> None:
        self.as_json, self.sheet, self.many = as_json, sheet, many
        self.shown = 0
        self.failures: list = []
        self._noted = False
        self._sheet_names: set[str] = set()

    def result(self, result, record: dict, table: list[str], sketch: Path | None = None) -> None:
        """One answered query: `result` as `result_view` reads it, `record` its JSON, `table` its lines."""
        from s2m_retrieval.query.result_view import write_result_sheet

        note = result.provenance.get("note")
        if note and not self._noted:  # the same for every query of a run
            typer.echo(f"note: {note}; pass --steps 0 to ask for that", err=True)
            self._noted = True
        sheet = self._sheet_path(sketch)
        if sheet is not None:
            write_result_sheet(result, sheet)
        record = record | {"sheet": None if sheet is None else str(sheet)}
        if self.many and self.as_json:
            typer.echo(json.dumps({"sketch": str(sketch)} | record))
        elif self.as_json:
            typer.echo(json.dumps(record, indent=2))
        else:
            if self.many:
                typer.echo(("\n" if self.shown or self.failures else "") + f"sketch {sketch}")
            for line in table:
                typer.echo(line)
            if sheet is not None:
                typer.echo(f"sheet: {sheet}")
        self.shown += 1

    def failure(self, sketch: Path, exc) -> None:
        """A query that failed on its own (its sketch): one error line; a JSON line too with --json."""
        typer.echo(f"error: {exc}", err=True)
        if self.as_json:
            typer.echo(json.dumps({"sketch": str(sketch), "error": str(exc)}))
        self.failures.append(exc)

    def finish(self) -> None:
        """Exit non-zero (the first failure's code) when any query failed."""
        if self.failures:
            typer.echo(f"{len(self.failures)} of {len(self.failures) + self.shown} queries failed", err=True)
            raise typer.Exit(self.failures[0].exit_code)

    def _sheet_path(self, sketch: Path | None) -> Path | None:
        if self.sheet is None or not self.many:
            return self.sheet
        stem, n = sketch.stem, 1
        while f"{stem}.png" in self._sheet_names:  # two sketches of one name: a.png, a-2.png
            n += 1
            stem = f"{sketch.stem}-{n}"
        self._sheet_names.add(f"{stem}.png")
        return self.sheet / f"{stem}.png"


def _check_server_options(ctx: typer.Context, server: str | None, token: str | None) -> None:
    """--token only with --server; with it, no option that chooses what is loaded (the server has loaded it)."""
    from s2m_retrieval.errors import BadInputError

    def typed(name: str) -> bool:  # on the command line, not from the environment or the default
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    if server is None:
        if token is not None and typed("token"):
            raise BadInputError("--token goes with --server URL (the token of a running s2m serve)")
        return
    local = [flag for name, flag in LOCAL_ONLY.items() if typed(name)]
    if local:
        raise BadInputError(f"{', '.join(local)}: with --server the server's index and models answer; leave "
                            f"{'these' if len(local) > 1 else 'it'} out (they are options of s2m serve)")


def _check_sheet(sheet: Path, many: bool) -> None:
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.viz import output_image_format

    if not many:
        output_image_format(sheet)
        return
    if (sheet.exists() and not sheet.is_dir()) or (not sheet.exists() and sheet.suffix):
        raise BadInputError(f"--sheet {sheet}: with several sketches --sheet names a folder (one SKETCH_STEM.png a "
                            "query)")
    output_image_format(sheet / "query.png")  # no file among its parents


def _open_engine(engine: dict):
    from cli.runtime import setup_torch
    from s2m_retrieval.model.bundle import resolve_model
    from s2m_retrieval.query.engine import RetrievalEngine

    models = resolve_model(engine["model"], engine["home"])
    device = setup_torch(engine["threads"], engine["device"])
    return RetrievalEngine.open(engine["index"], home=engine["home"], db_url=engine["db"], models=models,
                                perceptual=engine["perceptual"], device=device)


def _local(engine: dict, sketches: list[Path], like: str | None, options: dict, steps: int | None,
           code: str | None, output: QueryOutput) -> None:
    """One query on the models loaded here."""
    from s2m_retrieval.query.result_view import result_table
    from s2m_retrieval.query.engine import check_sketch, read_sketch

    sketch = check_sketch(read_sketch(sketches[0]), sketches[0]) if sketches else None
    with _open_engine(engine) as opened:
        if sketch is not None:
            result = opened.query_sketch(sketch, steps=steps, **({"code": code} if code else {}), **options,
                                         x_hat=output.sheet is not None)  # x_hat is shown on the sheet only
        else:
            result = opened.query_like(like, **options)
    output.result(result, result.to_dict(), result_table(result))


def _local_batch(engine: dict, sketches: list[Path], like: str | None, options: dict, steps: int | None,
                 code: str | None, output: QueryOutput) -> None:
    """Several sketch queries on the models loaded here once, read and run a batch at a time."""
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.query.result_view import result_table
    from s2m_retrieval.query.engine import QUERY_BATCH, check_sketch, read_sketch

    def read(path: Path):
        try:
            return check_sketch(read_sketch(path), path)
        except BadInputError as exc:
            return exc

    with _open_engine(engine) as opened:
        for start in range(0, len(sketches), QUERY_BATCH):
            paths = sketches[start:start + QUERY_BATCH]
            pages = [read(path) for path in paths]
            answers = iter(opened.query_sketches([p for p in pages if not isinstance(p, BadInputError)],
                                                 steps=steps, **({"code": code} if code else {}), **options,
                                                 x_hat=output.sheet is not None))
            for path, page in zip(paths, pages):
                if isinstance(page, BadInputError):
                    output.failure(path, page)
                    continue
                result = next(answers)
                output.result(result, result.to_dict(), result_table(result), path)


def _remote(server: str, token: str | None, sketches: list[Path], like: str | None, options: dict,
            output: QueryOutput) -> None:
    """Each query asked of the server, one request a query; per-sketch refusals stay per sketch."""
    from cli.client import Client, remote_table
    from s2m_retrieval.errors import BadInputError

    client = Client(server, token)
    images = output.sheet is not None
    if like is not None:
        if not like.strip().isdigit():
            raise BadInputError(f"--like {like!r}: with --server give an image id (the server's API takes ids, "
                                "not paths)")
        result = client.retrieve(options, like=int(like), images=images)
        output.result(result, result.record, remote_table(result, client.url))
        return
    for sketch in sketches:
        try:
            result = client.retrieve(options, sketch=sketch, images=images)
        except BadInputError as exc:
            if not output.many:
                raise
            output.failure(sketch, exc)
            continue
        output.result(result, result.record, remote_table(result, client.url), sketch if output.many else None)
