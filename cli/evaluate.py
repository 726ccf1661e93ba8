"""`s2m eval ...`: retrieval precision of a query manifest (`s2m eval MANIFEST`), query manifests, and the
generation quality of the models."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.core import TyperGroup

from cli.retrieve import DEFAULT_ALPHA
from cli.runtime import DEVICE_HELP, shared_options

# Options both evaluations take alike (see cli.runtime.shared_options): the unpaired baselines' checkpoints (none is
# shipped; a method or row of one runs only when its file is given), threads and device.
_shared = shared_options({
    "cyclegan": (Path, typer.Option(None, "--cyclegan",
                                    help="CycleGAN checkpoint (`s2m train cyclegan`; none shipped).")),
    "unit": (Path, typer.Option(None, "--unit", help="UNIT checkpoint (`s2m train unit`; none shipped).")),
    "ugatit": (Path, typer.Option(None, "--ugatit", help="U-GAT-IT checkpoint (`s2m train ugatit`; none shipped).")),
    "threads": (int, typer.Option(0, "--threads", help="Torch CPU threads (0: torch's default).")),
    "device": (str, typer.Option("cpu", "--device", help=DEVICE_HELP)),
})


class _ManifestDefault(TyperGroup):
    """`s2m eval MANIFEST ...` is `s2m eval retrieval MANIFEST ...`: a first word that names no command is a
    manifest."""

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["retrieval", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_ManifestDefault, no_args_is_help=True,
                  help="Evaluate retrieval (s2m eval MANIFEST --index NAME) and the models.")


@app.command("make-queries")
def make_queries(
    archive: Path = typer.Argument(..., help="Archive folder to draw query sketches of (its masks/, else the "
                                             "segmenter's label maps)."),
    out: Path = typer.Option(..., "--out", help="Folder for manifest.csv and sketches/."),
    n: int = typer.Option(200, "--n", help="Number of queries."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the pick and of the free-hand strokes."),
    style: str = typer.Option("unseen", "--style", help="Sketch style: unseen (never seen in training: rounder "
                                                        "outlines, big canvas, thick pen), traced (a second held-out "
                                                        "style: the image's own edges traced, no mask), or train."),
    in_index: bool = typer.Option(True, "--in-index/--held-out",
                                  help="Targets are in the index (instance metrics), or held out (target_id "
                                       "left empty: category metrics only)."),
    segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter for archives without masks."),
) -> None:
    """Draw free-hand query sketches of archive images into a manifest (sketch,target_id,<labels>)."""
    from tqdm import tqdm

    from s2m_retrieval.data.archive import ReadStats
    from s2m_retrieval.evaluation.manifest import make_queries as make

    stats = ReadStats()
    with tqdm(total=n, unit="sketch", desc="queries", disable=None, leave=False) as bar:
        path = make(archive, out, n, seed, style=style, in_index=in_index, segmenter=segmenter,
                    progress=bar.update, stats=stats)
    skipped = f"; skipped {stats.n_bad} unreadable images" if stats.n_bad else ""
    typer.echo(f"{n} queries ({style} style) of {archive}: {path}{skipped}")
    for file, reason in stats.bad_files[:10]:
        typer.echo(f"  bad: {file}: {reason}")


@app.command("retrieval")
@_shared
def retrieval(
    manifest: Path = typer.Argument(..., help="Query manifest CSV (sketch,target_id[,label columns]) or its folder."),
    index: str = typer.Option("default", "--index", "--name", help="Index name (a folder under HOME/indexes/)."),
    out: Path = typer.Option(..., "--out", help="Report folder: metrics.json, report.md, PNG plots."),
    k: str = typer.Option("1,5,10", "--k", help="Cut-offs, comma-separated."),
    relevance: str = typer.Option("", "--relevance", help="Label columns for category relevance, e.g. "
                                                          "tonsil_grade,mallampati (all must match)."),
    method: str = typer.Option("sketch2medi", "--method",
                               help="Methods, comma-separated: sketch2medi, edge, pix2pix, embedding, cyclegan, "
                                    "unit, ugatit."),
    steps: str = typer.Option("", "--steps", help="Sketch2MedI refinement steps T to ablate, e.g. 0,1,2,3,4,5 "
                                                  "(the default T always runs)."),
    candidates: str = typer.Option("100", "--candidates", help="Re-ranked candidate counts to ablate, e.g. "
                                                               "20,50,100 (the largest is the FAISS top-N)."),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", help="Fused score weight of the latent distance (the "
                                                             "query default; 1: latent distance alone)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N queries."),
    pix2pix: Path = typer.Option(None, "--pix2pix", help="pix2pix checkpoint (`s2m train pix2pix`; none shipped)."),
    embedding: Path = typer.Option(None, "--embedding", help="Embedding baseline checkpoint (`s2m train embedding`; "
                                                             "none shipped)."),
    segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter of the edge baseline (default: shipped)."),
    home: Path = typer.Option(None, "--home", envvar="S2M_HOME", help="Home folder (default ~/.s2m)."),
    db: str = typer.Option(None, "--db", envvar="S2M_DB_URL", help="Database URL (default: SQLite HOME/s2m.db)."),
    model: str = typer.Option(None, "--model", help="Model bundle (name or folder) the index was built with "
                                                    "(default: the shipped phantom bundle)."),
    perceptual: str = typer.Option(None, "--perceptual", help="Perceptual metric (default: the one of the index)."),
    *, cyclegan, unit, ugatit, threads, device,
) -> None:
    """Retrieval precision of every query of MANIFEST against index NAME, for each method, in one run."""
    from tqdm import tqdm

    from cli.runtime import setup_torch
    from s2m_retrieval.evaluation.evaluate import EvalOptions, evaluate, parse_ints, write_path
    from s2m_retrieval.evaluation.manifest import read_manifest
    from s2m_retrieval.model.bundle import resolve_model
    from s2m_retrieval.evaluation.report import markdown_table
    from s2m_retrieval.query.engine import RetrievalEngine

    options = EvalOptions(methods=tuple(x.strip() for x in method.split(",") if x.strip()),
                          ks=parse_ints(k, "--k"), relevance=tuple(x.strip() for x in relevance.split(",") if x.strip()),
                          steps=parse_ints(steps, "--steps"), candidates=parse_ints(candidates, "--candidates"),
                          alpha=alpha, limit=limit)
    given = {"pix2pix": pix2pix, "embedding": embedding, "cyclegan": cyclegan, "unit": unit, "ugatit": ugatit}
    unused = [name for name, path in given.items() if path is not None and name not in options.methods]
    if unused:  # else the missing row could pass for a method that was evaluated
        typer.echo(f"note: {', '.join('--' + name for name in unused)} given, but --method does not run "
                   f"{'it' if len(unused) == 1 else 'them'} (add {','.join(unused)} to --method)", err=True)
    out = write_path(out)
    queries = read_manifest(manifest, options.relevance)[:limit]  # a bad manifest fails before models load
    models = resolve_model(model, home)
    dev = setup_torch(threads, device)
    with RetrievalEngine.open(index, home=home, db_url=db, models=models, perceptual=perceptual,
                              device=dev) as engine:
        with tqdm(total=len(queries), unit="query", desc="eval", disable=None, leave=False) as bar:
            report, paths = evaluate(manifest, engine, options, out, pix2pix=pix2pix, embedding=embedding,
                                     segmenter=segmenter, device=dev, queries=queries, progress=bar.update,
                                     unpaired={"cyclegan": cyclegan, "unit": unit, "ugatit": ugatit})
    typer.echo(markdown_table(report), nl=False)
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command("generation")
def generation(
    archive: Path = typer.Argument(..., help="Archive of real images (at least 2 x N)."),
    generator: Path = typer.Option(None, "--generator", help="Generator checkpoint (default: the shipped one)."),
    n: int = typer.Option(2000, "--n", min=2, help="Images per set."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter for the domain features (default: shipped)."),
    inception: bool = typer.Option(False, "--inception", help="Also standard FID (needs Inception-v3 weights)."),
    out: Path = typer.Option(None, "--out", help="Write the figures as JSON here."),
) -> None:
    """Domain Fréchet distance of G vs real, with the real-vs-real floor and a blurred-real baseline."""
    from s2m_retrieval.model.files import weights_or_shipped
    from s2m_retrieval.data.archive import load_archive_arrays
    from s2m_retrieval.errors import ArchiveError
    from s2m_retrieval.generation.report import generation_report
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.model.segmentation import cached_segmenter

    G = load_generator(weights_or_shipped(generator, "generator"))
    res = G.config.img_resolution
    images, _, _ = load_archive_arrays(archive, res, limit=2 * n)
    if len(images) < 2 * n:
        raise ArchiveError(f"{archive} has {len(images)} readable images; --n {n} needs {2 * n}")
    report = generation_report(G, images[:n], images[n:], cached_segmenter(segmenter), seed=seed)
    if inception:
        from s2m_retrieval.generation.quality import frechet_distance, inception_features, inception_model

        model = inception_model()
        report["fid_inception"] = frechet_distance(inception_features(report["samples"], model),
                                                   inception_features(images[:n], model))
    report.pop("samples")
    typer.echo(f"domain Fréchet distance (segmenter features), {n} vs {n} images:")
    typer.echo(f"  generated vs real       {report['fd_generated']:10.4f}")
    typer.echo(f"  real vs real (floor)    {report['fd_floor_real_vs_real']:10.4f}")
    typer.echo(f"  blurred real (baseline) {report['fd_baseline_blurred_real']:10.4f}")
    if "fid_inception" in report:
        typer.echo(f"  standard FID (Inception) {report['fid_inception']:9.3f}")
    for name in ("generated", "real"):
        a = report[f"anatomy_{name}"]
        typer.echo(f"  anatomy found in {name:9s}: tongue {a['tongue']:.3f}  uvula {a['uvula']:.3f}  "
                   f"both tonsils {a['both_tonsils']:.3f}  all {a['all']:.3f}")
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")


@app.command("sketch2medi")
@_shared
def sketch2medi(
    generator: Path = typer.Option(None, "--generator", help="Generator G (default: the shipped one)."),
    encoder: Path = typer.Option(None, "--encoder", help="E trained with the latent discriminator (row E + D)."),
    encoder_alone: Path = typer.Option(None, "--encoder-alone", help="E trained with --no-adv (row E alone)."),
    refiner: Path = typer.Option(None, "--refiner", help="H, trained on one of the two encoders (rows E + H, T)."),
    pix2pix: Path = typer.Option(None, "--pix2pix", help="The pix2pix baseline (row pix2pix)."),
    inverter: Path = typer.Option(None, "--inverter", help="The archive inverter (inversion table)."),
    segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter S for DICE, domain FD and the seg metric "
                                                           "(default: the shipped one)."),
    metrics: str = typer.Option("seg,lpips-alex", "--metrics",
                                help="Perceptual distances, comma-separated (seg, lpips-alex, lpips-vgg); one "
                                     "whose weights are missing shows as n/a."),
    n: int = typer.Option(200, "--n", help="Held-out sketches."),
    seed: int = typer.Option(0, "--seed", min=0, help="Phantom seed of the held-out set."),
    start: int = typer.Option(1_000_000, "--start", min=0, help="First held-out phantom index (training uses 0..N-1)."),
    sets: str = typer.Option("synthesized,unseen", "--sets",
                             help="Sketch sets of the same held-out phantoms, comma-separated: synthesized (S's "
                                  "free-hand, the training style), unseen and traced (make-queries' held-out "
                                  "styles); each set minus synthesized is the generalization gap."),
    freehand: float = typer.Option(1.0, "--freehand", help="Free-hand strength of the synthesized set "
                                                           "(x the default; training draws x2; 0: clean)."),
    steps: int = typer.Option(5, "--steps", help="Largest refinement T: rows T = 1..steps."),
    optimise_steps: int = typer.Option(20, "--optimise-steps", help="Per-image optimisation steps after the "
                                                                   "inverter's iterations (0: no such row)."),
    batch: int = typer.Option(32, "--batch", help="Batch size."),
    out: Path = typer.Option(None, "--out", help="Folder for sketch_quality.md, .json and samples.png."),
    *, cyclegan, unit, ugatit, threads, device,
) -> None:
    """Sketch -> image quality (perceptual distance, DICE via S, domain FD, a real-vs-x̂ classifier as realism proxy)
    of E, E + D, E + H (T), pix2pix and the unpaired baselines on held-out phantoms, per sketch set with the gap
    to the synthesized set, and the archive inverter's quality and images/s."""
    from tqdm import tqdm

    from s2m_retrieval.model.files import weights_or_shipped
    from s2m_retrieval.errors import BadInputError, PerceptualWeightsMissing
    from s2m_retrieval.evaluation.evaluate import write_path
    from s2m_retrieval.model.perceptual import load_perceptual
    from s2m_retrieval.model.segmentation import cached_segmenter, segmenter_path
    from s2m_retrieval.generation.sketch_quality import (NA_MISSING, held_out_phantoms, load_models, parse_sets,
                                                         quality_markdown, redraw, sample_sheet, sketch_sets_quality)

    from cli.runtime import setup_torch

    device = setup_torch(threads, device)
    if steps < 0 or optimise_steps < 0 or batch < 1:
        raise BadInputError("--steps and --optimise-steps must be >= 0, --batch >= 1")
    out = None if out is None else write_path(out)  # a file there fails now, not after the evaluation
    names = parse_sets(sets)
    models = load_models(weights_or_shipped(generator, "generator"), encoder, encoder_alone, refiner, pix2pix,
                         inverter, device, cyclegan=cyclegan, unit=unit, ugatit=ugatit)
    seg_path = segmenter_path(segmenter)
    loaded = {}
    for name in [m.strip() for m in metrics.split(",") if m.strip()]:
        try:
            loaded[name] = load_perceptual(name, device, checkpoint=seg_path if name == "seg" else None)
        except PerceptualWeightsMissing as exc:
            loaded[name] = NA_MISSING
            typer.echo(f"{name}: {NA_MISSING}: {exc}", err=True)
    if not loaded:
        raise BadInputError("--metrics names no perceptual distance")
    with tqdm(unit="step", desc="eval", disable=None, leave=False) as bar:
        def progress(stage: str, done: int, total: int) -> None:
            bar.set_description(stage)
            bar.total = total
            bar.n = done
            bar.refresh()

        held = held_out_phantoms(n, models.G.config.img_resolution, seed, start, freehand,
                                 lambda d, t: progress(f"held-out phantoms, {names[0]} sketches", d, t), names[0])
        held = {names[0]: held} | {name: redraw(held, name, lambda d, t, name=name: progress(f"{name} sketches", d, t))
                                   for name in names[1:]}
        report, outputs = sketch_sets_quality(held, models, cached_segmenter(seg_path), loaded, max_steps=steps,
                                              optimise_steps=optimise_steps, batch=batch, progress=progress)
    table = quality_markdown(report)
    typer.echo(table, nl=False)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sketch_quality.md").write_text(table)
        (out / "sketch_quality.json").write_text(json.dumps(report, indent=2) + "\n")
        sheets = {name: out / ("samples.png" if k == 0 else f"samples_{name}.png") for k, name in enumerate(names)}
        for name, path in sheets.items():
            sample_sheet(held[name], outputs[name]).save(path)
        typer.echo(f"wrote {out / 'sketch_quality.md'}, {out / 'sketch_quality.json'}, "
                   + ", ".join(f"{path} ({name} sketches)" for name, path in sheets.items()))
