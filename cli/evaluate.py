"""`s2m eval ...`: measure generation quality (and, later, retrieval precision)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Evaluate the models and the retrieval.", no_args_is_help=True)


@app.command("generation")
def generation(
    archive: Path = typer.Argument(..., help="Archive of real images (at least 2 x N)."),
    generator: Path = typer.Option(None, "--generator", help="Generator checkpoint (default: the shipped one)."),
    n: int = typer.Option(2000, "--n", help="Images per set."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter for the domain features (default: shipped)."),
    inception: bool = typer.Option(False, "--inception", help="Also standard FID (needs Inception-v3 weights)."),
    out: Path = typer.Option(None, "--out", help="Write the figures as JSON here."),
) -> None:
    """Domain Fréchet distance of G vs real, with the real-vs-real floor and a blurred-real baseline."""
    from s2m_retrieval.checkpoint import shipped_weights
    from s2m_retrieval.data.archive import load_archive_arrays
    from s2m_retrieval.errors import ArchiveError
    from s2m_retrieval.generation_report import generation_report
    from s2m_retrieval.networks.stylegan2 import load_generator
    from s2m_retrieval.segmentation import cached_segmenter

    G = load_generator(generator or shipped_weights("generator"))
    res = G.config.img_resolution
    images, _, _ = load_archive_arrays(archive, res, limit=2 * n)
    if len(images) < 2 * n:
        raise ArchiveError(f"{archive} has {len(images)} readable images; --n {n} needs {2 * n}")
    report = generation_report(G, images[:n], images[n:], cached_segmenter(segmenter), seed=seed)
    if inception:
        from s2m_retrieval.quality import frechet_distance, inception_features, inception_model

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
