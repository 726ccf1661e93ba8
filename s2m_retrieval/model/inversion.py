"""Images and sketches into W+ at inference: ReStyle iterations of an encoder against G, and `invert` (those
iterations, optionally followed by a few optimisation steps on W+)."""

from __future__ import annotations

import torch

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.model.perceptual import PerceptualDistance
from s2m_retrieval.networks.encoders import Encoder
from s2m_retrieval.networks.stylegan2 import Generator

OPTIMISE_LR = 0.01


def average_image(G: Generator, w_avg: torch.Tensor) -> torch.Tensor:
    """G(w_avg) [1, C, R, R]: ReStyle's starting reconstruction."""
    with torch.no_grad():
        return G(w_avg.view(1, 1, -1).expand(1, G.num_ws, -1), noise_mode="const")


def encode_iterations(E: Encoder, G: Generator, x: torch.Tensor, iterations: int, active: int | None = None,
                      final_image: bool = True) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """ReStyle loop without gradients: [(w_plus, G(w_plus))] per iteration, starting from w_avg and G(w_avg);
    without `final_image` the last G(w_plus) (a third of an archive inversion's time) is None, not computed."""
    if iterations > 1 and not E.config.extra_channels:
        raise BadInputError("more than one encoder iteration needs an encoder with extra_channels (ReStyle input)")
    out = []
    with torch.no_grad():
        w, recon = None, None
        if E.config.extra_channels:
            recon = average_image(G, E.w_avg).expand(x.shape[0], -1, -1, -1)
        for i in range(iterations):
            w = E(x, recon, w_start=w, active_deltas=active)
            x_hat = G(w, noise_mode="const") if final_image or i < iterations - 1 else None
            out.append((w, x_hat))
            recon = x_hat if E.config.extra_channels else None
    return out


def invert(inverter: Encoder, G: Generator, images: torch.Tensor, iterations: int | None = None,
           optimise_steps: int = 0, perceptual: PerceptualDistance | None = None,
           perceptual_weight: float = 0.8, lr: float = OPTIMISE_LR) -> torch.Tensor:
    """W+ [N, num_ws, w_dim] of images [N, 3, R, R] in [-1, 1]: ReStyle iterations (default 3, or 1), then
    `optimise_steps` Adam steps on W+ against L2 + perceptual_weight * perceptual (when given)."""
    res = G.config.img_resolution
    if images.ndim != 4 or tuple(images.shape[1:]) != (G.config.img_channels, res, res):
        raise BadInputError(f"invert expects images [N, {G.config.img_channels}, {res}, {res}] in [-1, 1], "
                            f"got {list(images.shape)}")
    if iterations is None:
        iterations = 3 if inverter.config.extra_channels else 1
    w_plus = encode_iterations(inverter, G, images, iterations, final_image=False)[-1][0]
    if optimise_steps <= 0:
        return w_plus
    w = w_plus.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    with torch.enable_grad():
        for _ in range(optimise_steps):
            x_hat = G(w, noise_mode="const")
            # A sum over images keeps each image's gradient independent of the batch size.
            loss = (x_hat - images).square().mean(dim=(1, 2, 3)).sum()
            if perceptual is not None and perceptual_weight > 0:
                loss = loss + perceptual_weight * perceptual.distance(x_hat, images).sum()
            # autograd.grad on w alone: G's own parameters must not collect gradients here.
            (w.grad,) = torch.autograd.grad(loss, [w])
            opt.step()
    return w.detach()
