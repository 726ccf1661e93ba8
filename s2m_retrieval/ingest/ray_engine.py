"""Ray engine of index builds: Ray Data hashes and decodes archive files in parallel, an actor pool encodes.

Only the mapper moves to the cluster. The driver keeps everything that writes: it diffs the hashes against
SQL (`plan`), and hands the encoded batches, in archive order, to the same writer as the local engine. So
ids, shard files, SQL rows, incremental and resume behave exactly as `s2m index build` without Ray; a
killed driver leaves what a killed local build leaves. Workers read the archive by path: on a real cluster
it must be on storage every node mounts at the same path.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from s2m_retrieval.ingest.reader import PlanItem, file_sha256, read_batches
from s2m_retrieval.data.archive import ArchiveEntry, ReadStats
from s2m_retrieval.model.archive_encoder import ArchiveEncoder, check_outputs, load_encoder
from s2m_retrieval.errors import BadInputError, S2MError, VersionMismatchError

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install -e \".[ray]\" (or pip install \"ray[data]\")"
HASH_BATCH = 256  # files hashed per Ray task call


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: cluster address (None starts Ray on this machine), actor count, GPUs per actor."""

    address: str | None = None
    num_actors: int | None = None  # None: one actor per GPU when actors take GPUs, else CPUs - 1 (at least 1)
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        if self.num_actors is not None and self.num_actors < 1:
            raise BadInputError(f"--num-actors must be >= 1, got {self.num_actors}")
        if self.gpus_per_actor < 0:
            raise BadInputError(f"--gpus-per-actor must be >= 0, got {self.gpus_per_actor}")


def import_ray():
    """The `ray` module with Ray Data, or a one-line BadInputError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is an extra of ray: `ray` alone lacks it)
    except ImportError as exc:
        raise BadInputError(f"--engine ray needs Ray Data, which is not installed ({exc.name or exc}); "
                            f"install it with {INSTALL_HINT}") from None
    return ray


def _hash_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task: sha256 of each path ("" where unreadable: the driver hashes it again and reports why)."""
    out = []
    for path in batch["path"]:
        try:
            out.append(file_sha256(str(path)))
        except OSError:
            out.append("")
    return {"path": batch["path"], "sha256": np.array(out, dtype=object)}


def _decode_batch(batch: dict[str, np.ndarray], resolution: int, policy: str,
                  keep_tags: bool) -> dict[str, np.ndarray]:
    """Ray task: decode and square each planned file with the local reader; bad files pass through with a reason."""
    items: list[PlanItem] = [pickle.loads(b) for b in batch["item"]]
    stats = ReadStats()
    decoded = {}
    for got, images, sizes in read_batches(items, len(items), resolution, stats, policy=policy, keep_tags=keep_tags):
        for item, image, size in zip(got, images, sizes):
            decoded[item.path] = (item, image, size)
    bad = {path: reason for path, reason in stats.bad_files}
    n = len(items)
    out = {"idx": batch["idx"], "ok": np.zeros(n, bool), "item": np.empty(n, dtype=object),
           "reason": np.empty(n, dtype=object), "image": np.zeros((n, resolution, resolution, 3), np.uint8),
           "height": np.zeros(n, np.int64), "width": np.zeros(n, np.int64)}
    for j, item in enumerate(items):
        if item.path in decoded:
            item, image, (h, w) = decoded[item.path]
            out["ok"][j], out["image"][j], out["height"][j], out["width"][j] = True, image, h, w
            out["reason"][j] = ""
        else:
            out["reason"][j] = bad.get(item.entry.key, "unreadable")
        out["item"][j] = pickle.dumps(item)  # decoding may add labels (DICOM tags)
    return out


class EncodeActor:
    """Ray actor: loads the encoder once, then encodes the decoded images of each batch it is handed."""

    def __init__(self, make_encoder: Callable[[], ArchiveEncoder], version: str) -> None:
        # Ray hands the driver a worker's exception as text only: domain errors travel as data (`error` column).
        self.error: S2MError | None = None
        try:
            self.encoder = make_encoder()
            if self.encoder.version != version:
                raise VersionMismatchError(f"a Ray worker loaded encoder version {self.encoder.version}, the "
                                           f"driver {version}: install the same model files on every node")
        except S2MError as exc:
            self.error = exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded rows -> the same rows with the encoder's arrays as `out_<key>` (zeros for bad files)."""
        ok = batch["ok"].astype(bool)
        if self.error is None:
            r = self.encoder.resolution
            # A batch of only bad files still encodes one blank image so that every block has the same columns.
            images = batch["image"][ok] if ok.any() else np.zeros((1, r, r, 3), np.uint8)
            try:
                arrays = check_outputs(self.encoder, images, self.encoder.encode(images))
            except S2MError as exc:
                self.error = exc
        if self.error is not None:
            return {"idx": batch["idx"], "error": np.array([pickle.dumps(self.error)] * len(ok), dtype=object)}
        out = {k: batch[k] for k in ("idx", "ok", "item", "reason", "height", "width")}
        for key, array in arrays.items():
            full = np.zeros((len(ok),) + array.shape[1:], array.dtype)
            full[ok] = array[:int(ok.sum())]
            out[f"out_{key}"] = full
        return out


class RayEngine:
    """`--engine ray`: hashing and decoding as Ray Data tasks, encoding in an actor pool, writing on the driver.

    Use as a context manager: it connects to (or starts) Ray on entry, and stops a Ray it started on exit.
    `make_encoder` must be picklable: each actor calls it once to load the models.
    """

    def __init__(self, make_encoder: Callable[[], ArchiveEncoder], options: RayOptions = RayOptions()) -> None:
        self.make_encoder = make_encoder
        self.options = options
        self.ray = import_ray()
        self._started = False

    def __enter__(self) -> RayEngine:
        ray = self.ray
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset INFO lines; the CLI has its own bar
        if not ray.is_initialized():
            kwargs = dict(logging_level=logging.WARNING, log_to_driver=False)
            if self.options.address is None:  # a private local Ray, reachable on loopback only
                kwargs.update(include_dashboard=False, _node_ip_address="127.0.0.1")
            try:
                ray.init(address=self.options.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise BadInputError(f"cannot start or reach Ray at {self.options.address or 'this machine'}: "
                                    f"{first}") from None
            self._started = True
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False

    def _dataset(self, rows: list[dict]):
        ds = self.ray.data.from_items(rows)
        ds.context.enable_progress_bars = False
        return ds

    def _collect(self, ds) -> Iterator[dict[str, np.ndarray]]:
        """Blocks of a dataset in input order; a domain error a worker sent back is raised here."""
        ds.context.execution_options.preserve_order = True
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if "error" in block:
                raise pickle.loads(block["error"][0])
            yield block

    def hashes(self, entries: Sequence[ArchiveEntry]) -> dict[str, str]:
        """sha256 of every entry's file, computed on the cluster; unreadable files are left to the driver."""
        paths = [os.path.abspath(e.path) for e in entries]
        if not paths:
            return {}
        ds = self._dataset([{"path": p} for p in paths]).map_batches(_hash_batch, batch_size=HASH_BATCH)
        found = {}
        for block in self._collect(ds):
            found.update((p, h) for p, h in zip(block["path"], block["sha256"]) if h)
        return found

    def actor_count(self) -> int:
        """Actors to start: --num-actors, or what the cluster holds; refused when the cluster cannot hold them.

        Actors hold their CPU (and GPU) for the whole run, so a pool larger than the cluster would wait forever.
        """
        res = self.ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 0)), float(res.get("GPU", 0))
        g = self.options.gpus_per_actor
        n = self.options.num_actors
        if n is None:
            n = max(1, int(gpus // g)) if g else max(1, cpus - 1)
        if n > cpus or (g and n * g > gpus):
            have = f"{cpus} CPUs" + (f" and {gpus:g} GPUs" if g else "")
            raise BadInputError(f"the Ray cluster has {have}: {n} actors (1 CPU{f', {g:g} GPU' if g else ''} each) "
                                "do not fit; lower --num-actors or add nodes")
        return n

    def encoded_batches(self, encoder: ArchiveEncoder, todo: Sequence[PlanItem], batch_size: int, stats: ReadStats,
                        *, policy: str, keep_tags: bool) -> Iterator[tuple[list[PlanItem], dict[str, np.ndarray],
                                                                        list[tuple[int, int]]]]:
        """Encoded batches of `batch_size` good images in plan order (the order ids are given in), as the local engine."""
        if not todo:
            return
        gpus = self.options.gpus_per_actor
        pool = self.ray.data.ActorPoolStrategy(size=self.actor_count())
        rows = [{"idx": i, "item": pickle.dumps(item)} for i, item in enumerate(todo)]
        ds = (self._dataset(rows)
              .map_batches(_decode_batch, batch_size=batch_size,
                           fn_kwargs=dict(resolution=encoder.resolution, policy=policy, keep_tags=keep_tags))
              .map_batches(EncodeActor, batch_size=batch_size, compute=pool,
                           fn_constructor_args=(self.make_encoder, encoder.version),
                           num_cpus=1, **({"num_gpus": gpus} if gpus else {})))
        items, sizes, parts = [], [], {}
        for block in self._collect(ds):
            keys = [k for k in block if k.startswith("out_")]
            for j in range(len(block["idx"])):
                item = pickle.loads(block["item"][j])
                if not block["ok"][j]:
                    stats.record_bad(item.entry.key, str(block["reason"][j]))
                    log.warning("skipped %s: %s", item.entry.key, block["reason"][j])
                    continue
                stats.read += 1
                items.append(item)
                sizes.append((int(block["height"][j]), int(block["width"][j])))
                for k in keys:
                    parts.setdefault(k[4:], []).append(block[k][j])
                if len(items) == batch_size:
                    yield items, {k: np.stack(v) for k, v in parts.items()}, sizes
                    items, sizes, parts = [], [], {}
        if items:
            yield items, {k: np.stack(v) for k, v in parts.items()}, sizes


def ray_engine(spec: str, model: str | os.PathLike | None, fit: str | None, home: str | os.PathLike | None,
               options: RayOptions = RayOptions()) -> RayEngine:
    """A RayEngine whose actors load the encoder as the CLI does: `load_encoder(spec, model, fit, home)`.

    Model files are read by path on every node, so on a real cluster they must sit at the same path there.
    """
    return RayEngine(partial(load_encoder, spec, model, fit, home), options)
