"""The Sketch2MedI pipeline: G, sketch encoder E, refiner H, archive inverter, retrieval-space projector P and a
perceptual metric as one model."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F

from s2m_retrieval.networks.checkpoint import check_lineage, load_checkpoint, model_version, shipped_weights, version_hash
from s2m_retrieval.data.sketch import is_blank_sketch
from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.networks.encoders import Encoder
from s2m_retrieval.networks.projector import LatentProjector
from s2m_retrieval.networks.refiner import Refiner, refine
from s2m_retrieval.networks.stylegan2 import Generator, load_generator
from s2m_retrieval.model.perceptual import DEFAULT_BACKEND, PerceptualDistance, load_perceptual

SHIPPED = "shipped"          # from_checkpoints' marker for the package's own weights
DEFAULT_REFINE_STEPS = 3     # the T H was trained with


def _resize(x: torch.Tensor, res: int) -> torch.Tensor:
    if x.shape[-2:] == (res, res):
        return x
    return F.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False)


def sketch_batch(sketch, res: int) -> torch.Tensor:
    """uint8 sketch(es) [H, W], [H, W, 3|4], [B, H, W] or a list of pages of any sizes (dark strokes on white) ->
    canonical sketches [B, 1, res, res] in [-1, 1] (`data.canonical`: the form every network that reads sketches is
    trained on; each page is canonicalised alone, so a page gives the same tensor in any batch)."""
    from s2m_retrieval.data.canonical import as_grey_sketch, canonical_sketch

    if isinstance(sketch, (list, tuple)):
        pages = list(sketch)  # as_grey_sketch checks each page's type and shape
        if not pages:
            raise BadInputError("no sketch given: the list of sketches is empty")
    else:
        array = np.asarray(sketch)
        if array.dtype != np.uint8:
            raise BadInputError(f"a sketch must be a uint8 image, got {array.dtype}")
        pages = [array] if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)) else list(array)
        if array.ndim not in (2, 3) or min(array.shape) == 0:
            raise BadInputError(f"a sketch must be [H, W], [H, W, 3|4] or [B, H, W], got shape {array.shape}")
    out = []
    for i, page in enumerate(pages):
        grey = as_grey_sketch(page)
        if is_blank_sketch(grey):
            raise BadInputError(f"sketch {i} is blank: draw the outlines to search for (dark strokes on white)")
        out.append(canonical_sketch(grey, res))
    return torch.from_numpy(np.stack(out).astype(np.float32) / 127.5 - 1.0)[:, None]


def image_batch(images, res: int) -> torch.Tensor:
    """uint8 RGB images [B, H, W, 3] (or one [H, W, 3]) -> [B, 3, res, res] in [-1, 1]."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise BadInputError(f"images must be uint8 RGB [B, H, W, 3], got {array.dtype} {array.shape}")
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return _resize(x, res).clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    pix = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pix.permute(0, 2, 3, 1).numpy()


class Sketch2MedI:
    """Frozen G + E (+ H, + inverter, + projector, + perceptual metric); `version` stamps everything built with it."""

    def __init__(self, G: Generator, encoder: Encoder, refiner: Refiner | None = None,
                 inverter: Encoder | None = None, perceptual: PerceptualDistance | None = None,
                 versions: dict[str, str] | None = None, device: str | torch.device = "cpu",
                 projector: LatentProjector | None = None) -> None:
        self.device = torch.device(device)
        # channels_last: G's small single-query forwards (x_hat, H's steps) are ~15% faster on CPU, same numbers
        # to float rounding; the version stamps hash the weights in logical order, so they do not change.
        self.G = G.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.encoder = encoder.to(self.device).eval().requires_grad_(False)
        self.refiner = None if refiner is None else refiner.to(self.device).eval().requires_grad_(False)
        self.inverter = None if inverter is None else inverter.to(self.device).eval().requires_grad_(False)
        self.projector = None if projector is None else projector.to(self.device).eval().requires_grad_(False)
        self.perceptual = perceptual
        self.resolution = G.config.img_resolution
        for name, module in (("encoder", self.encoder), ("inverter", self.inverter)):
            if module is not None and (module.config.num_ws, module.config.w_dim, module.config.img_resolution) != \
                    (G.num_ws, G.config.w_dim, self.resolution):
                raise CheckpointError(f"the {name} does not fit the generator's W+ "
                                      f"({G.num_ws} x {G.config.w_dim} at {self.resolution} px)")
        parts = {"generator": self.G, "encoder": self.encoder, "refiner": self.refiner, "inverter": self.inverter}
        if self.projector is not None:  # listed only when loaded: pipelines without one keep their version
            parts["projector"] = self.projector
        given = versions or {}
        self.versions = {k: (given.get(k) or model_version(m)) if m is not None else None for k, m in parts.items()}

    @property
    def version(self) -> str:
        """Model version: a hash over the versions of every component (absent ones count as absent)."""
        text = ";".join(f"{k}={v or '-'}" for k, v in sorted(self.versions.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_checkpoints(cls, generator: str | os.PathLike = SHIPPED, encoder: str | os.PathLike = SHIPPED,
                         refiner: str | os.PathLike | None = SHIPPED, inverter: str | os.PathLike | None = SHIPPED,
                         perceptual: str | None = DEFAULT_BACKEND, device: str | torch.device = "cpu",
                         strict: bool = True, projector: str | os.PathLike | None = None) -> "Sketch2MedI":
        """Load the components (SHIPPED: package weights; None: leave out); strict checks what each was trained on
        (the projector also against the inverter whose codes it read)."""
        from s2m_retrieval.networks.projector import load_projector
        from s2m_retrieval.networks.encoders import load_encoder, load_inverter
        from s2m_retrieval.networks.refiner import load_refiner

        def payload(value, name):
            if value is None:
                return None
            return load_checkpoint(shipped_weights(name) if value == SHIPPED else value, kind=name)

        g_payload = payload(generator, "generator")
        if g_payload is None or encoder is None:
            raise BadInputError("a Sketch2MedI pipeline needs a generator and a sketch encoder")
        payloads = {"generator": g_payload, "encoder": payload(encoder, "encoder"),
                    "refiner": payload(refiner, "refiner"), "inverter": payload(inverter, "inverter"),
                    "projector": payload(projector, "projector")}
        versions = {k: version_hash(p) if p is not None else None for k, p in payloads.items()}
        if strict:  # E's meta names the inverter of its code bank, not one it needs beside it: not checked
            check_lineage(payloads, versions, {name: ("generator", "encoder") + (("inverter",) if name == "projector"
                                                                               else ()) for name in payloads})
        return cls(load_generator(g_payload, device), load_encoder(payloads["encoder"], device),
                   None if payloads["refiner"] is None else load_refiner(payloads["refiner"], device),
                   None if payloads["inverter"] is None else load_inverter(payloads["inverter"], device),
                   None if perceptual is None else load_perceptual(perceptual, device), versions, device,
                   None if payloads["projector"] is None else load_projector(payloads["projector"], device))

    @torch.no_grad()
    def sketch_to_latent(self, sketch) -> torch.Tensor:
        """uint8 sketch(es) (see `sketch_batch`) -> W+ [B, num_ws, w_dim]."""
        return self.encoder(sketch_batch(sketch, self.resolution).to(self.device))

    @torch.no_grad()
    def generate(self, sketch, steps: int = DEFAULT_REFINE_STEPS):
        """Sketch -> (w_plus [B, num_ws, w_dim], accumulated offsets {layer: [B, out, in, 1, 1]} or None, x_hat)."""
        if steps > 0 and self.refiner is None:
            raise BadInputError("refinement steps need a refiner: load one or generate with steps=0")
        x = sketch_batch(sketch, self.resolution).to(self.device)
        w_plus = self.encoder(x)
        deltas, images = refine(self.refiner, self.G, w_plus, x, steps)
        return w_plus, deltas, images[-1]

    @torch.no_grad()
    def invert(self, images, iterations: int | None = None, optimise_steps: int = 0) -> torch.Tensor:
        """uint8 RGB images [B, H, W, 3] -> W+ [B, num_ws, w_dim] with the archive inverter."""
        from s2m_retrieval.model.inversion import invert

        if self.inverter is None:
            raise BadInputError("no archive inverter loaded: load one to invert images")
        x = image_batch(images, self.resolution).to(self.device)
        return invert(self.inverter, self.G, x, iterations, optimise_steps, self.perceptual)
