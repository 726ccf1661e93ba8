"""`s2m models ...`: the model bundles known by name, what one holds, its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Model bundles: list them, show one, (re)write a manifest.", no_args_is_help=True)

HOME = typer.Option(None, "--home", envvar="S2M_HOME", help="Home folder (default ~/.s2m); bundles by name live "
                                                            "in HOME/models/.")
JSON_OUT = typer.Option(False, "--json", help="Print machine-readable JSON.")
# The option of every command that uses models; resolve it with s2m_retrieval.model.bundle.resolve_model(model, home).
MODEL_HELP = "Model bundle: a name from `s2m models list` or a folder (default: the shipped phantom bundle)."


@app.command("list")
def list_models(home: Path = HOME, as_json: bool = JSON_OUT) -> None:
    """The shipped bundle and every bundle under HOME/models/, with the networks each holds."""
    from s2m_retrieval.model.bundle import list_bundles

    bundles = list_bundles(home)
    if as_json:
        typer.echo(json.dumps(bundles, indent=2))
        return
    width = max(len(b["name"]) for b in bundles)
    for b in bundles:
        missing = f"; missing {', '.join(b['missing'])}" if b["missing"] else ""
        typer.echo(f"{b['name']:<{width}}  {', '.join(b['networks']) or '-'}{missing}  ({b['path']})")


@app.command("show")
def show(
    name: str = typer.Argument("phantom", help="Bundle name (see `s2m models list`) or folder."),
    home: Path = HOME,
    as_json: bool = JSON_OUT,
) -> None:
    """A bundle's networks (version, size), training data, budget and end-of-training metrics."""
    from s2m_retrieval.model.bundle import NETWORKS, describe, resolve_model

    info = describe(resolve_model(name, home))
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    typer.echo(f"bundle {info['name']!r} in {info['path']}"
               + ("" if info["manifest_file"] else " (no bundle.json: shown from its checkpoints)"))
    for net, record in info["networks"].items():
        trained = record["trained"]
        how = ", ".join(f"{k} {trained[k]}" for k in ("step", "kimg", "mean_dice") if k in trained)
        typer.echo(f"  {net:<21} {record['version']}  {how}")
    for net in info["missing"]:
        typer.echo(f"  {net:<21} missing: needed for {NETWORKS[net]}")
    if info["stale"]:
        typer.echo(f"  stale manifest: {', '.join(info['stale'])} changed since it was written; rewrite it with "
                   f"`s2m models manifest {info['path']}`")
    archive, training = info.get("archive"), info.get("training")
    if archive:
        typer.echo(f"  archive   {archive['path']}: {archive['n_train']} training + {archive['n_held_out']} held-out "
                   f"images, fit {archive['fit']}, fingerprint {archive['fingerprint'][:16]}")
    if training:
        typer.echo(f"  training  {training['res']} px, budget {training['budget']}, steps "
                   + ", ".join(f"{k} {v}" for k, v in training["steps"].items()))
    metrics = info.get("metrics")
    if metrics:
        fd = metrics["domain_fd"]
        typer.echo(f"  metrics   domain FD {fd['generated']} (real vs real {fd['real_vs_real_floor']}); "
                   f"perceptual {metrics['perceptual_metric']}")
        for label, row in metrics["sketch_to_image"].items():
            typer.echo(f"            sketch -> {label}: {row if isinstance(row, str) else row}")
        typer.echo(f"            inversion: {metrics['inversion']}")


@app.command("manifest")
def manifest(
    folder: Path = typer.Argument(..., help="Bundle folder, e.g. s2m_retrieval/weights after new weights landed."),
    name: str = typer.Option(None, "--name", help="Bundle name to record (default: the old manifest's, else the "
                                                  "folder's; 'phantom' for the shipped one)."),
) -> None:
    """(Re)write FOLDER/bundle.json from the checkpoints it holds now, keeping its recorded data and metrics."""
    from s2m_retrieval.model.bundle import read_manifest, refresh_manifest

    path = refresh_manifest(folder, name)
    data = read_manifest(folder)
    typer.echo(f"wrote {path}: {', '.join(data['networks']) or 'no networks'}"
               + (f"; missing {', '.join(data['missing'])}" if data["missing"] else ""))


@app.command("compact")
def compact(
    folder: Path = typer.Argument(..., help="Bundle folder, e.g. s2m_retrieval/weights."),
    names: str = typer.Option("encoder,refiner,inverter,projector", "--networks",
                              help="Networks whose weights to store as float16 (comma-separated)."),
) -> None:
    """Store networks' weights as float16 (half the size) and re-stamp the checkpoints that record them; then
    rewrite bundle.json."""
    from s2m_retrieval.model.bundle import refresh_manifest
    from s2m_retrieval.model.compact import compact_bundle

    sizes = compact_bundle(folder, tuple(n.strip() for n in names.split(",") if n.strip()))
    for name, (before, after) in sizes.items():
        typer.echo(f"{name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    typer.echo(f"wrote {refresh_manifest(folder)}")
