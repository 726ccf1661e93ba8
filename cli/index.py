"""`s2m index ...`: build, add, remove, info, verify (imports of faiss/SQLAlchemy stay inside commands)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.models import MODEL_HELP
from cli.runtime import shared_options

app = typer.Typer(help="Build and inspect the archive index (FAISS vectors + SQL metadata).", no_args_is_help=True)

NAME = typer.Option("default", "--name", "--index", help="Index name (a folder under HOME/indexes/).")
HOME = typer.Option(None, "--home", envvar="S2M_HOME", help="Home folder (default ~/.s2m).")
DB = typer.Option(None, "--db", envvar="S2M_DB_URL",
                  help="Database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite HOME/s2m.db).")
JSON_OUT = typer.Option(False, "--json", help="Print machine-readable JSON.")
ENCODER = typer.Option("inverter", "--encoder",
                       help="Archive encoder and its options, e.g. inverter:iterations=2, inverter:perceptual=seg, "
                            "inverter:device=cuda, inverter:projector=0 (`fake`: tests only).")
MODEL = typer.Option(None, "--model", help=MODEL_HELP)
FIT = typer.Option(None, "--fit", help="How non-square images become square: crop or pad (default: as the "
                                       "bundle's training did).")
KEEP_TAGS = typer.Option(False, "--keep-tags", help="Also store DICOM tags that identify patients, visits and staff "
                                                    "(never stored without it).")
FRAMES = typer.Option(None, "--frames", help="Multi-frame DICOM files (cine, dose grids): index their first frame, "
                                             "their middle one (N//2), or all, each frame an entry of its own with "
                                             "its number in the `frame` label (default: the index's own choice; "
                                             "first for a new index; changing it needs --rebuild).")

# The options the index commands share, by parameter name (see cli.runtime.shared_options).
_shared = shared_options({"name": (str, NAME), "home": (Path, HOME), "db": (str, DB), "as_json": (bool, JSON_OUT),
                          "encoder": (str, ENCODER), "model": (str, MODEL), "fit": (str, FIT),
                          "keep_tags": (bool, KEEP_TAGS), "frames": (str, FRAMES)})


class _Bar:
    """tqdm progress bar (images/s) created on the first report, when the total is known."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar = None

    def __call__(self, n: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc=self.desc, disable=None, leave=False)
        self.bar.update(n)

    def close(self) -> None:
        """Remove the bar (the summary follows)."""
        if self.bar is not None:
            self.bar.close()


def _report(summary, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        for line in summary.lines():
            typer.echo(line)


@app.command("build")
@_shared
def build(
    archive: Path = typer.Argument(..., help="Archive folder (images, optional masks/ and labels.csv)."),
    factory: str = typer.Option(None, "--factory",
                                help="FAISS factory, e.g. Flat, IVF256,Flat, HNSW32, PCA256,Flat, IVF1024,PQ32 "
                                     "(default: the index's own, or chosen by archive size)."),
    batch: int = typer.Option(64, "--batch", "--batch-size",
                              help="Images per batch (per encoder call, shard file and SQL transaction)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Forget the index's vectors and encode everything again."),
    prune: bool = typer.Option(False, "--prune", help="Remove entries whose files are gone from the archive."),
    engine: str = typer.Option("local", "--engine", help="Where images are decoded and encoded: local (this "
                                                         "process) or ray (a Ray cluster; needs the ray extra)."),
    address: str = typer.Option(None, "--address", help="Ray cluster: auto (the one this node belongs to) or "
                                                        "ray://HOST:10001 (default: start Ray on this machine)."),
    num_actors: int = typer.Option(None, "--num-actors", help="Ray encoder actors, each loading the models once "
                                                              "(default: one per GPU, else CPUs - 1)."),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", help="GPUs each Ray actor takes (0: CPU only)."),
    *, name, home, db, as_json, encoder, model, fit, keep_tags, frames,
) -> None:
    """Index ARCHIVE: add new images, replace changed ones, skip unchanged ones; resumable after a kill."""
    from contextlib import nullcontext

    from s2m_retrieval.data.dicom import check_frame_choice
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.ingest.runner import BuildOptions, build_index

    ray = None
    if engine == "ray":
        from s2m_retrieval.ingest.ray_engine import RayOptions, ray_engine

        ray = ray_engine(encoder, model, fit, home, RayOptions(address, num_actors, gpus_per_actor))
    elif engine != "local":
        raise BadInputError(f"unknown --engine {engine!r} (local or ray)")
    elif address is not None or num_actors is not None or gpus_per_actor:
        raise BadInputError("--address, --num-actors and --gpus-per-actor apply to --engine ray")
    if frames is not None:
        check_frame_choice(frames)  # before any model is loaded
    enc = load_encoder(encoder, model, fit, home)
    options = BuildOptions(name=name, factory=factory, batch_size=batch, rebuild=rebuild, prune=prune,
                           keep_tags=keep_tags, frames=frames)
    bar = _Bar(f"index {name}")
    try:
        with ray or nullcontext():
            summary = build_index(archive, enc, home=home, db_url=db, options=options, progress=bar, engine=ray)
    finally:
        bar.close()
    _report(summary, as_json)


@app.command("add")
@_shared
def add(
    files: list[Path] = typer.Argument(..., help="Image files to add (or re-encode when changed)."),
    *, name, home, db, as_json, encoder, model, fit, keep_tags, frames,
) -> None:
    """Add individual image files to an existing index (`s2m index build` creates one)."""
    from index.layout import index_paths
    from s2m_retrieval.data.dicom import check_frame_choice
    from s2m_retrieval.model.archive_encoder import load_encoder
    from s2m_retrieval.ingest.runner import BuildOptions, add_files
    from s2m_retrieval.storage.db import resolve_home

    index_paths(resolve_home(home), name).require()  # a mistyped --name must not start a new index
    if frames is not None:
        check_frame_choice(frames)  # before any model is loaded
    enc = load_encoder(encoder, model, fit, home)
    bar = _Bar(f"index {name}")
    try:
        summary = add_files(files, enc, home=home, db_url=db,
                            options=BuildOptions(name=name, keep_tags=keep_tags, frames=frames), progress=bar)
    finally:
        bar.close()
    _report(summary, as_json)
    if summary.bad and not (summary.added or summary.replaced or summary.skipped):
        from s2m_retrieval.errors import BadImageError

        raise BadImageError(f"none of the {len(summary.bad)} files given was added (reasons above)")


@app.command("remove")
def remove(
    items: list[str] = typer.Argument(
        ..., help="What to remove, each one of: the image id `retrieve` shows (a number), a file path, the file "
                  "stem (e.g. ph000003) or the `id` column of the archive's labels.csv. A key that names "
                  "several images is refused, except the path of a multi-frame DICOM file: it removes all its "
                  "frames (one frame goes by its image id)."),
    name: str = NAME,
    home: Path = HOME,
    db: str = DB,
) -> None:
    """Remove images from an index by image id, path, file stem or labels id; prints the paths removed.
    Builds and rebuilds of the index leave them out afterwards, until `s2m index add` names them again."""
    from s2m_retrieval.ingest.sync import remove_entries

    report = remove_entries(items, name=name, home=home, db_url=db)
    typer.echo(f"removed {len(report.removed)} from index {name!r}; {report.total} vectors left (later builds leave "
               "them out; `s2m index add PATH` brings one back)")
    for path in sorted(report.removed.values()):
        typer.echo(f"  removed: {path}")
    for key in report.not_found:
        typer.echo(f"  not in the index: {key}")


@app.command("info")
def info(name: str = NAME, home: Path = HOME, db: str = DB, as_json: bool = JSON_OUT) -> None:
    """Show an index's model stamp, counts, disk use and recent builds."""
    from s2m_retrieval.ingest.report import index_info

    data = index_info(name=name, home=home, db_url=db)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    st = data["stamp"]
    mib = 1 << 20
    typer.echo(f"index {data['name']!r} in {data['folder']}")
    typer.echo(f"  database     {data['database']}")
    typer.echo(f"  model        {st['model_name']} {st['model_version']} (dim {st['dim']}, {st['resolution']} px)")
    space = f"; projector {data['projector']} (retrieval space)" if data.get("projector") else ""
    typer.echo(f"  metric       {st['metric']}; vectors: {st['weighting']}{space}")
    typer.echo(f"  faiss        {st['factory']} ({st['faiss_metric']}), {data['faiss_vectors']} vectors, "
               f"{data['faiss_bytes'] / mib:.1f} MiB; shards {data['shard_bytes'] / mib:.1f} MiB")
    typer.echo(f"  sql rows     {data['sql_rows']}")
    typer.echo(f"  frames       {st['frames']} (of multi-frame DICOM files)")
    for b in data["builds"]:
        typer.echo(f"  build {b['id']:>4}  {b['status']:<11} {b['started_at']}  +{b['added']} ~{b['replaced']} "
                   f"-{b['removed']} ={b['skipped']} bad {b['bad']}  {b['source'] or ''}")


@app.command("verify")
def verify(
    name: str = NAME,
    hashes: bool = typer.Option(False, "--hashes", help="Also re-hash every image file (slow)."),
    home: Path = HOME,
    db: str = DB,
    as_json: bool = JSON_OUT,
) -> None:
    """Check that FAISS ids match SQL rows, stamps agree, and shard and image files are present."""
    from s2m_retrieval.ingest.report import verify_index

    report = verify_index(name=name, home=home, db_url=db, check_hashes=hashes)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in report.checked.items())
        typer.echo(f"index {name!r}: {'ok' if report.ok else 'PROBLEMS'} ({counts})")
        for line in report.problems:
            typer.echo(f"  problem: {line}")
        for line in report.warnings:
            typer.echo(f"  warning: {line}")
    if not report.ok:
        raise typer.Exit(1)
