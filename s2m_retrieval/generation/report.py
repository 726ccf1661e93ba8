"""Measure a generator against real phantoms: domain Fréchet distance with its floor and a trivial baseline."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from s2m_retrieval.generation.quality import anatomy_found, domain_features, frechet_distance


def blurred(images: np.ndarray, radius: float) -> np.ndarray:
    """The trivial baseline: real images under a Gaussian blur."""
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in images])


@torch.no_grad()
def generate_images(generator, n: int, seed: int, batch: int = 64, truncation_psi: float = 1.0) -> np.ndarray:
    """`n` samples of G as uint8 `[N, H, W, 3]`, reproducible from `seed`."""
    out = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, n, batch):
        w = generator.sample_w_plus(min(batch, n - i), gen, truncation_psi)
        x = generator(w, noise_mode="const")
        out.append(((x.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def generation_report(generator, real_a: np.ndarray, real_b: np.ndarray, segmenter, seed: int = 0,
                      blur_radius: float = 1.5) -> dict:
    """FD(generated, real_a) next to FD(real_b, real_a) (floor) and FD(blur(real_b), real_a) (baseline)."""
    from s2m_retrieval.networks.segmenter import segment

    n = len(real_a)
    fake = generate_images(generator, n, seed)
    feats = {name: domain_features(x, segmenter) for name, x in
             (("real_a", real_a), ("real_b", real_b), ("generated", fake), ("blurred", blurred(real_b, blur_radius)))}
    return {
        "n": n,
        "fd_generated": frechet_distance(feats["generated"], feats["real_a"]),
        "fd_floor_real_vs_real": frechet_distance(feats["real_b"], feats["real_a"]),
        "fd_baseline_blurred_real": frechet_distance(feats["blurred"], feats["real_a"]),
        "blur_radius": blur_radius,
        "anatomy_generated": anatomy_found(segment(segmenter, fake)),
        "anatomy_real": anatomy_found(segment(segmenter, real_b)),
        "samples": fake,
    }
