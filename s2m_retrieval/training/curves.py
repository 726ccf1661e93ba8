"""Training curves: a run's scalars and sample grids as TensorBoard event files under RUN/tb/, the same scalars in
RUN/tb/scalars.csv (all there is without the `tensorboard` package), and RUN/curves.png of the losses at the end.

Every training loop logs through one `TrainCurves`: each step's progress report (losses, seconds per step) on
its way to the progress bar, the optimizers' learning rates beside it, sample grids once they are written,
and everything flushed at each resume snapshot (`latent.finish_step`). Scalars are means over windows of
steps, so a run keeps at most about `MAX_POINTS` points per curve however long it trains. A resumed run drops
what a killed process logged after its last snapshot (TensorBoard's purge_step, and the same rows of the CSV),
so a curve never doubles back.
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from index.atomic import replacing

TB_DIR = "tb"
CSV_FILE = "scalars.csv"
PNG_FILE = "curves.png"
SAMPLES_DIR = "samples"
CSV_FIELDS = ["step", "tag", "value", "wall_time"]
MAX_POINTS = 5000              # per curve: longer runs average over windows of steps
FLUSH_SECONDS = 30.0
PLOTTED = ("loss", "terms", "heldout")  # tag groups drawn in curves.png
_NUMBERED = re.compile(r"^(.*?)(\d+)$")  # sample grids are named <what><step>.png


def progress_scalars(p) -> dict[str, float]:
    """Scalars of one step's progress report: a GAN's (G and D losses, R1, kimg) or an E / H / inverter /
    baseline loop's (the fitted loss and its terms), and the seconds the step took."""
    if hasattr(p, "loss_g"):
        out = {"loss/G": p.loss_g, "loss/D": p.loss_d, "progress/kimg": p.kimg}
        if p.r1 is not None:
            out["terms/r1"] = p.r1
    else:
        out = {"loss/fitted": p.loss, **{f"terms/{k}": v for k, v in p.terms.items()}}
    out["time/sec_per_step"] = p.sec_per_step
    return out


def steps_per_point(total_steps: int) -> int:
    """Steps averaged into one logged point of a run of `total_steps`: at most `MAX_POINTS` points a curve."""
    return max(1, math.ceil(total_steps / MAX_POINTS))


def summary_writer(log_dir: Path, purge_step: int):
    """torch's TensorBoard SummaryWriter on `log_dir`, or None when the `tensorboard` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, flush_secs=int(FLUSH_SECONDS))


class TrainCurves:
    """The scalar and image log of one run folder; `run_dir` None logs nothing (a loop asked for no files)."""

    def __init__(self, run_dir: str | os.PathLike | None, start_step: int = 0,
                 optimizers: Mapping[str, object] | None = None) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.start_step = int(start_step)        # the step a resumed run continues after (0: a fresh run)
        self.optimizers = dict(optimizers or {})  # name -> torch optimizer, whose lr is logged as lr/<name>
        self._tb = None
        self._csv = None
        self._rows = None
        self._window: dict[str, list[float]] = {}
        self._last_time = time.monotonic()
        self._last_flush = time.monotonic()
        # Grids already there were logged by an earlier process, except on a fresh start its unnumbered ones
        # (the GAN's reals.png is written just before its loop opens the log).
        self._seen = {p.name: p.stat().st_mtime_ns for p in self._sample_files()
                      if self.start_step > 0 or _NUMBERED.match(p.stem)}

    def wrap(self, report: Callable | None) -> Callable:
        """A progress callback that logs each report, then hands it to `report` (a bar, train all's view)."""
        def logged(p) -> None:
            self.report(p)
            if report is not None:
                report(p)
        return logged

    def report(self, p) -> None:
        """Log one step's progress report (see `progress_scalars`), averaged over the step's window."""
        self.add(p.step, progress_scalars(p), steps_per_point(p.total_steps), last=p.step >= p.total_steps)

    def add(self, step: int, scalars: Mapping[str, float], every: int = 1, last: bool = True,
            timed: bool = False) -> None:
        """One training step's scalars (with `timed`, also the seconds since the previous timed step), written
        with the learning rates as means over the steps since the last write when `step` ends a window of
        `every` steps (see `steps_per_point`), or when `last`."""
        if self.run_dir is None:
            return
        now = time.monotonic()
        values = dict(scalars)
        if timed:
            values["time/sec_per_step"] = now - self._last_time
        self._last_time = now
        for tag, value in values.items():
            self._window.setdefault(tag, []).append(float(value))
        if step % every and not last:
            return
        means = {tag: sum(v) / len(v) for tag, v in self._window.items()}
        self._window = {}
        self.metrics(step, means | {f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()})

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars written as they are, e.g. held-out metrics measured at `step`."""
        if self.run_dir is None:
            return
        self._open()
        wall = time.time()
        for tag, value in sorted(values.items()):
            if self._tb is not None:
                self._tb.add_scalar(tag, float(value), step, walltime=wall)
            self._rows.writerow([step, tag, repr(float(value)), f"{wall:.3f}"])
        if time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()

    def samples(self) -> None:
        """Put the sample grids written under RUN/samples/ since the last call into the event file, each at the
        step in its name (`encoder0000500.png`: tag samples/encoder, step 500; `reals.png`: the start step)."""
        if self.run_dir is None:
            return
        for path in self._sample_files():
            mtime = path.stat().st_mtime_ns
            if self._seen.get(path.name) == mtime:
                continue
            self._seen[path.name] = mtime
            self._open()
            if self._tb is not None:
                import numpy as np
                from PIL import Image

                numbered = _NUMBERED.match(path.stem)
                tag, step = (numbered.group(1), int(numbered.group(2))) if numbered else (path.stem, self.start_step)
                with Image.open(path) as img:
                    pixels = np.asarray(img.convert("RGB"))
                self._tb.add_image(f"samples/{tag}", pixels, step, dataformats="HWC")

    def flush(self) -> None:
        """Everything logged so far onto disk (called at each resume snapshot)."""
        if self._tb is not None:
            self._tb.flush()
        if self._csv is not None:
            self._csv.flush()
            os.fsync(self._csv.fileno())
        self._last_flush = time.monotonic()

    def close(self) -> Path | None:
        """Flush and close the log, draw RUN/curves.png of the losses; return its path (None if nothing logged)."""
        if self._csv is None:
            return None
        self.flush()
        if self._tb is not None:
            self._tb.close()
        self._csv.close()
        self._tb = self._csv = self._rows = None
        return draw_curves(self.run_dir)

    def _sample_files(self) -> list[Path]:
        folder = None if self.run_dir is None else self.run_dir / SAMPLES_DIR
        return sorted(folder.glob("*.png")) if folder is not None and folder.is_dir() else []

    def _open(self) -> None:
        if self._csv is not None:
            return
        tb = self.run_dir / TB_DIR
        tb.mkdir(parents=True, exist_ok=True)
        path = tb / CSV_FILE
        if path.is_file():
            _keep_rows_until(path, self.start_step)
        fresh = not path.is_file()
        self._csv = open(path, "a", newline="", encoding="utf-8")
        self._rows = csv.writer(self._csv)
        if fresh:
            self._rows.writerow(CSV_FIELDS)
        # Events of a killed process past its last snapshot are hidden, as the CSV rows are dropped.
        self._tb = summary_writer(tb, purge_step=self.start_step + 1)


def _keep_rows_until(path: Path, step: int) -> None:
    """Rewrite a scalars CSV atomically without its rows past `step`."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh)]
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step] if rows else [CSV_FIELDS]
    if len(kept) == len(rows):
        return
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(kept)


def read_scalars(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """A run's logged scalars from RUN/tb/scalars.csv: {tag: [(step, value), ...]} in step order."""
    path = Path(run_dir) / TB_DIR / CSV_FILE
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return series
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            series.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return {tag: sorted(points) for tag, points in series.items()}


def _smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's exponential moving average, debiased so the start is not pulled towards 0."""
    out, avg = [], 0.0
    for i, value in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight ** i))
    return out


def draw_curves(run_dir: str | os.PathLike) -> Path | None:
    """RUN/curves.png: one panel per loss, loss term and held-out metric (raw and smoothed), written atomically;
    None when the run logged none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    series = {tag: points for tag, points in read_scalars(run_dir).items() if tag.split("/")[0] in PLOTTED}
    if not series:
        return None
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (tag, points) in enumerate(sorted(series.items()), start=1):
        ax = fig.add_subplot(rows, cols, i)
        steps, values = [s for s, _ in points], [v for _, v in points]
        smooth = len(values) > 20
        ax.plot(steps, values, color="C0", linewidth=0.8, alpha=0.35 if smooth else 1.0,
                marker="o" if len(values) == 1 else None)
        if smooth:
            ax.plot(steps, _smooth(values, 0.9), color="C0", linewidth=1.6)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / PNG_FILE
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
