"""The real archive encoder: inverter (ReStyle iterations, optional optimisation) -> W+ -> weighted vector -> (the
bundle's projector P, when it has one) -> FAISS vector."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.model.latent_space import DEFAULT_WEIGHTING, LatentWeighting, w_plus_to_vectors
from s2m_retrieval.networks.encoders import Encoder
from s2m_retrieval.networks.projector import LatentProjector
from s2m_retrieval.networks.stylegan2 import Generator
from s2m_retrieval.model.perceptual import SEG_BACKENDS, PerceptualDistance

# The metric a new index is built for (and re-ranked with): `seg` pooled to 8x8, whose compact features are
# stored per image, so a query computes features for x̂ only (re-rank of 100: ~15 ms against ~250-370 ms
# from thumbs). Same retrieval precision as exact `seg` on 200 unseen-style queries x 3,000 phantoms
# (acc@10 0.115 vs 0.110, P@10 0.321 vs 0.321, mAP@10 0.182 vs 0.181; README, Evaluation).
INDEX_BACKEND = "seg-pool8"

FORMAT = "inverter/1"


class InverterEncoder:
    """ArchiveEncoder over G + the inverter: vectors are weighted W+ codes, projected into the retrieval space by P
when a projector is given (`query_vectors` maps E's codes of sketches into the same space), thumbs the images
at G's resolution.

    Thumbs (uint8, 12 KiB at 64 px) are what the perceptual re-rank reads at query time, so it never decodes
    archive files; full perceptual features are too big to store per image (~464 KiB for seg at 64 px), but a
    cacheable metric's compact ones ("seg-pool8", 22 KiB) are stored as "features" and re-ranked from directly.
    `version` hashes what the stored arrays depend on: G and inverter weights, the inversion settings, the
    weighting, the projector, and the perceptual metric (used by optimisation steps, and the metric the re-rank
    is for). The sketch encoder E and the refiner H are not in it: they can be retrained against the same G
    without re-indexing the archive (Sketch2MedI.from_checkpoints checks they were trained against this G; a
    projector is trained on E's codes, so a new E needs a new projector, and that one a new index).
    """

    name = "inverter"

    def __init__(self, G: Generator, inverter: Encoder, perceptual: PerceptualDistance, *, versions: dict[str, str],
                 weighting: LatentWeighting = DEFAULT_WEIGHTING, iterations: int | None = None,
                 optimise_steps: int = 0, fit: str = "crop", device: str | torch.device = "cpu",
                 projector: LatentProjector | None = None) -> None:
        from s2m_retrieval.data.archive import FIT_POLICIES

        if fit not in FIT_POLICIES:
            raise BadInputError(f"unknown fit policy {fit!r} (crop or pad)")
        self.fit = fit  # how archive images are squared before inversion (the build's reader applies it)
        self.device = torch.device(device)
        # channels_last: G's batched forward (build batches) is ~3x faster on CPU in that layout, same numbers.
        self.G = G.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.inverter = inverter.to(self.device).eval().requires_grad_(False)
        self.perceptual = perceptual.to(self.device)
        self.latent_weighting = weighting
        restyle = bool(inverter.config.extra_channels)
        self.iterations = (3 if restyle else 1) if iterations is None else int(iterations)
        if self.iterations < 1 or (self.iterations > 1 and not restyle) or optimise_steps < 0:
            raise BadInputError(f"inverter iterations must be >= 1 (1 for a non-ReStyle inverter) and optimise "
                                f"steps >= 0, got {self.iterations} and {optimise_steps}")
        self.optimise_steps = int(optimise_steps)
        self.versions = {"generator": versions["generator"], "inverter": versions["inverter"]}
        self.w_avg = self.G.w_avg.detach().cpu().numpy()
        self.w_plus_dim = weighting.dim(G.num_ws, G.config.w_dim)
        self.projector = None if projector is None else projector.to(self.device).eval().requires_grad_(False)
        if projector is not None:
            pc = projector.config
            if (pc.in_dim, pc.weighting) != (self.w_plus_dim, weighting.spec()):
                raise CheckpointError(f"the projector reads {pc.in_dim}-d vectors of weighting {pc.weighting}, the "
                                      f"index's are {self.w_plus_dim}-d of {weighting.spec()}: retrain it "
                                      f"(`s2m train projector`) or build with the weighting it was trained for")
            self.versions["projector"] = versions["projector"]
        self.dim = self.w_plus_dim if projector is None else projector.config.dim

    @classmethod
    def load(cls, models: str | os.PathLike | None = None, perceptual: str = INDEX_BACKEND,
             weighting: LatentWeighting = DEFAULT_WEIGHTING, iterations: int | None = None,
             optimise_steps: int = 0, device: str = "cpu", fit: str = "crop",
             projector: bool = True) -> InverterEncoder:
        """From a model bundle (name or folder; None: the shipped one): generator.pt, inverter.pt and, when the
        bundle has one and `projector` is on, projector.pt (else vectors stay weighted W+)."""
        from s2m_retrieval.networks.checkpoint import check_lineage, load_checkpoint, version_hash
        from s2m_retrieval.model.files import model_files, segmenter_file
        from s2m_retrieval.networks.projector import load_projector
        from s2m_retrieval.networks.stylegan2 import load_generator
        from s2m_retrieval.model.perceptual import load_perceptual
        from s2m_retrieval.networks.encoders import load_inverter

        files = model_files(models, ("generator", "inverter"), "indexing an archive with real W+ codes",
                            hint="or for tests and development only pass --encoder fake")
        names = ("generator", "inverter") + (("projector",) if projector and files["projector"] else ())
        payloads = {name: load_checkpoint(files[name], kind=name) for name in names}
        versions = {name: version_hash(p) for name, p in payloads.items()}
        check_lineage(payloads, versions, {name: ("generator", "inverter") for name in names[1:]})
        metric = load_perceptual(perceptual, device, checkpoint=segmenter_file(models) if perceptual in SEG_BACKENDS else None)
        return cls(load_generator(payloads["generator"], device), load_inverter(payloads["inverter"], device), metric,
                   versions=versions, weighting=weighting, iterations=iterations, optimise_steps=optimise_steps,
                   fit=fit, device=device,
                   projector=load_projector(payloads["projector"], device) if "projector" in payloads else None)

    @classmethod
    def from_options(cls, options: dict[str, str]) -> InverterEncoder:
        """From `--encoder inverter:models=DIR,perceptual=seg,iterations=3,optimise=0,fit=crop,coarse=1,...`
        (`projector=0`: weighted W+ vectors even when the bundle has a projector)."""
        options = dict(options)
        known = {"models", "perceptual", "iterations", "optimise", "device", "coarse", "medium", "fine", "keep_zero",
                 "fit", "projector"}
        unknown = set(options) - known
        if unknown:
            raise BadInputError(f"inverter encoder: unknown options {sorted(unknown)} (known: {sorted(known)})")
        weights = [f"{k}={options.pop(k)}" for k in ("coarse", "medium", "fine") if k in options]
        if options.pop("keep_zero", "0") not in ("0", "false", ""):
            weights.append("keep_zero")
        projector = options.pop("projector", "1")
        if projector not in ("0", "1", "false", "true"):
            raise BadInputError(f"inverter encoder: projector={projector!r} must be 0 or 1")
        try:
            iterations = int(options["iterations"]) if "iterations" in options else None
            optimise = int(options.get("optimise", 0))
        except ValueError as exc:
            raise BadInputError(f"inverter encoder: bad option value ({exc})") from None
        return cls.load(options.get("models"), options.get("perceptual", INDEX_BACKEND),
                        LatentWeighting.parse(",".join(weights)), iterations, optimise, options.get("device", "cpu"),
                        options.get("fit", "crop"), projector=projector in ("1", "true"))

    @property
    def metric(self) -> str:
        """The perceptual metric version the stored thumbs are re-ranked with."""
        return self.perceptual.version

    @property
    def resolution(self) -> int:
        """G's resolution: archive images are squared to it, thumbs are stored at it."""
        return self.G.config.img_resolution

    @property
    def config(self) -> dict:
        """Everything the stored arrays depend on (stored in model_versions; the engine rebuilds from it)."""
        config = {"encoder": FORMAT, "generator": self.versions["generator"], "inverter": self.versions["inverter"],
                  "weighting": self.latent_weighting.to_dict(), "iterations": self.iterations,
                  "optimise_steps": self.optimise_steps, "perceptual": self.metric, "resolution": self.resolution,
                  "num_ws": self.G.num_ws, "w_dim": self.G.config.w_dim, "fit": self.fit}
        if self.projector is not None:  # absent, not None, without one: indexes of W+ vectors keep their version
            config["projector"] = self.versions["projector"]
        return config

    @property
    def version(self) -> str:
        """Model version stamp: hash of `config`."""
        return "inv-" + hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def weighting(self) -> str:
        """The stamp's `weighting` field, e.g. "wplus:coarse=1,medium=0.5,fine=0.1"."""
        return self.latent_weighting.stamp()

    def w_plus(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB images [B, H, W, 3] -> W+ [B, num_ws, w_dim] (on the CPU)."""
        from s2m_retrieval.model.pipeline import image_batch
        from s2m_retrieval.model.inversion import invert

        x = image_batch(images, self.resolution).to(self.device)
        w = invert(self.inverter, self.G, x, self.iterations, self.optimise_steps, self.perceptual)
        return w.cpu()

    def vectors(self, w_plus: torch.Tensor) -> np.ndarray:
        """Image codes W+ [B, num_ws, w_dim] (the inverter's) -> FAISS vectors [B, dim]: weighted, then through
        P's archive head when there is a projector."""
        return self._project(w_plus, "archive")

    def query_vectors(self, w_plus: torch.Tensor) -> np.ndarray:
        """E's codes of sketches W+ [B, num_ws, w_dim] -> FAISS vectors [B, dim] (P's query head); without a
        projector the same as `vectors`."""
        return self._project(w_plus, "query")

    def _project(self, w_plus: torch.Tensor, side: str) -> np.ndarray:
        weighted = w_plus_to_vectors(w_plus, self.w_avg, self.latent_weighting)
        if self.projector is None:
            return weighted
        with torch.inference_mode():
            out = self.projector(torch.from_numpy(weighted).to(self.device), side)
        return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """[B, R, R, 3] uint8 -> {"vectors": [B, dim] float32, "thumbs": [B, R, R, 3] uint8, and for a cacheable
        metric "features": [B, D] fp16, the re-rank's features of each image}."""
        from s2m_retrieval.query.ranking import to_model_input

        r = self.resolution
        if images.ndim != 4 or images.shape[1:] != (r, r, 3) or images.dtype != np.uint8:
            raise ValueError(f"inverter encoder expects uint8 [B, {r}, {r}, 3], got {images.dtype} {images.shape}")
        out = {"vectors": self.vectors(self.w_plus(images)), "thumbs": np.ascontiguousarray(images)}
        if self.perceptual.cacheable:
            with torch.inference_mode():
                out["features"] = self.perceptual.pack(self.perceptual.features(to_model_input(images).to(self.device)))
        return out
