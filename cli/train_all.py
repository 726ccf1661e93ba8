"""`s2m train all`: one resumable command from an archive folder to a model bundle, with a stage/ETA view."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cli.runtime import DEVICE_HELP


class StageView:
    """A bar per stage ('[2/5] generator') with step, loss and ETA; plain lines every 10 % when not a terminal."""

    def __init__(self, n_stages: int) -> None:
        import sys

        self.n_stages = n_stages
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.label = ""
        self.started: tuple[float, int] | None = None
        self.next_line = 0.0

    def start(self, index: int, stage: str, total: int) -> None:
        """A new stage begins (or resumes)."""
        self.close()
        self.label = f"[{index}/{self.n_stages}] {stage}"
        self.started = None
        self.next_line = 0.0
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", desc=self.label, dynamic_ncols=True)
        else:
            typer.echo(f"{self.label}: {total} steps", err=True)

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if self.started is None:  # the rate counts this process's steps only (a resumed stage starts late)
            self.started = (now, step - 1)
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        if step / total >= self.next_line or step == total:
            t0, s0 = self.started
            rate = (step - s0) / max(now - t0, 1e-9)
            eta = (total - step) / rate if rate > 0 else float("inf")
            typer.echo(f"{self.label}: step {step}/{total} ({100 * step / total:.0f}%), loss {loss:.4f}, "
                       f"ETA {_clock(eta)}", err=True)
            self.next_line = step / total + 0.1

    def close(self) -> None:
        """End the current bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def train_all(
    archive: Path = typer.Argument(..., help="Archive folder: images (PNG/JPEG/DICOM, any size), optional masks/ "
                                             "and labels.csv."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write (or resume). Under HOME/models/NAME it is "
                                                "usable as --model NAME."),
    res: int = typer.Option(64, "--res", help="Model resolution: 64, 128 or 256 (128 and 256 are for a GPU)."),
    budget: str = typer.Option("small", "--budget", help="small, medium or large: optimizer steps per stage "
                                                         "(see the README's budget table)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    fit: str = typer.Option("crop", "--fit", help="How non-square images become square: crop (centre) or pad "
                                                  "(black bars). Index builds with this bundle use the same."),
    segmenter: Path = typer.Option(None, "--segmenter",
                                   help="Segmenter for an archive without masks/ (default: the shipped phantom one)."),
    perceptual: str = typer.Option("seg", "--perceptual", help="Perceptual loss: seg (offline), lpips-alex, "
                                                               "lpips-vgg."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    pairs_per_image: int = typer.Option(4, "--pairs-per-image", help="Free-hand sketch variants drawn per image."),
    held_out: int = typer.Option(None, "--held-out", help="Images kept out of training for the metrics "
                                                          "(default: 5 %, 2 to 200)."),
    snapshot_every: int = typer.Option(100, "--snapshot-every", help="Steps between resume snapshots."),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0: torch's default)."),
    # Hidden: tiny networks and step counts for tests, e.g. '{"steps": {"generator": 2}, "encoder": {...}}'.
    config_json: str = typer.Option(None, "--config-json", hidden=True,
                                    help="JSON object: config overrides per network, plus steps and batch per stage."),
) -> None:
    """Train every network (segmenter, generator, encoder + latent D, refiner, inverter) into one model bundle;
    interrupt it anywhere and rerun the same command to resume."""
    import json

    from cli.runtime import setup_torch
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.training.budgets import STAGES
    from s2m_retrieval.training.train_all import TrainAllOptions, train_all as run

    overrides = {}
    if config_json:
        try:
            overrides = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"--config-json is not JSON ({exc.msg})") from None
        if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
            raise BadInputError("--config-json must be an object of objects")
    options = TrainAllOptions(archive=archive, res=res, budget=budget, fit=fit, perceptual=perceptual,
                              segmenter=segmenter, seed=seed, pairs_per_image=pairs_per_image, held_out=held_out,
                              snapshot_every=snapshot_every, overrides=overrides)
    dev = setup_torch(threads, device)
    view = StageView(len(STAGES))
    try:
        manifest = run(options, out, dev, echo=typer.echo, progress=view, stage_start=view.start)
    finally:
        view.close()
    from s2m_retrieval.model.bundle import read_manifest

    metrics = read_manifest(out)["metrics"]
    typer.echo(f"model bundle: {out} (manifest {manifest.name}, sample grids in {out / 'samples'}/, training curves "
               f"in {out / 'train'}/<stage>/: tensorboard --logdir {out / 'train'})")
    fd = metrics["domain_fd"]
    typer.echo(f"  domain FD {fd['generated']:.4g} (real vs real {fd['real_vs_real_floor']:.4g}, blurred real "
               f"{fd['blurred_real_baseline']:.4g}); perceptual metric {metrics['perceptual_metric']}")
    for name, row in metrics["sketch_to_image"].items():
        typer.echo(f"  sketch -> {name}: " + (row if isinstance(row, str) else
                                                f"perceptual {row['perceptual']:.4g}, DICE {row['dice']:.3f}"))
    inv = metrics["inversion"]
    typer.echo("  inversion: " + (inv if isinstance(inv, str) else
                                  f"perceptual {inv['perceptual']:.4g}, PSNR {inv['psnr']:.1f} dB"))
    typer.echo(f"next: s2m index build {archive} --model {out}")
