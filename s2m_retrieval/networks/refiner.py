"""Refiner H: a HyperStyle-style hypernetwork predicting per-channel multiplicative offsets to G's conv weights."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.checkpoint import load_network
from s2m_retrieval.networks.encoders import DownBlock

DEFAULT_MIN_RESOLUTION = 16  # medium and fine layers; coarse ones carry the layout E already decided


def _layer_resolution(name: str) -> int:
    return int(name.split(".")[0][1:])  # "b16.conv0" -> 16


@dataclass(frozen=True)
class RefinerConfig:
    """Shape of H; `layers` are G conv names (conv_layer_names order), `layer_shapes` their (out_ch, in_ch)."""

    img_resolution: int = 64
    img_channels: int = 3
    sketch_channels: int = 1
    layers: tuple[str, ...] = ()
    layer_shapes: tuple[tuple[int, int], ...] = ()
    widths: tuple[int, ...] = (32, 64, 128)  # backbone stages at res/2, res/4, res/8
    head_width: int = 64
    rank: int = 8                    # rank of each layer's [out, in] offset matrix

    def __post_init__(self) -> None:
        # Checkpoints store nested tuples as lists; a frozen config must hold tuples to stay hashable.
        object.__setattr__(self, "layer_shapes", tuple(tuple(int(c) for c in s) for s in self.layer_shapes))
        res = self.img_resolution
        if res < 8 or res & (res - 1):
            raise BadInputError(f"refiner img_resolution must be a power of two >= 8, got {res}")
        if not self.layers or len(self.layers) != len(self.layer_shapes):
            raise BadInputError("a RefinerConfig needs one (out_ch, in_ch) shape per refined layer; "
                                "build it with refiner_config_for(G)")
        if any(len(s) != 2 or min(s) < 1 for s in self.layer_shapes):
            raise BadInputError(f"layer_shapes must be (out_ch, in_ch) pairs, got {self.layer_shapes}")
        if not self.widths or min(self.widths) < 1 or res // 2 ** len(self.widths) < 1:
            raise BadInputError(f"refiner widths need 1..log2({res}) positive stages, got {self.widths}")
        if min(self.img_channels, self.sketch_channels, self.head_width, self.rank) < 1:
            raise BadInputError("img_channels, sketch_channels, head_width and rank must be >= 1")

    @property
    def feature_resolution(self) -> int:
        return self.img_resolution // 2 ** len(self.widths)


def refiner_config_for(G, min_resolution: int = DEFAULT_MIN_RESOLUTION, layers: tuple[str, ...] | None = None,
                       **overrides) -> RefinerConfig:
    """A RefinerConfig for generator G: by default every non-ToRGB conv at >= min_resolution px."""
    shapes = G.conv_weight_shapes()
    if layers is None:
        layers = tuple(name for name in G.conv_layer_names() if _layer_resolution(name) >= min_resolution)
    unknown = [name for name in layers if name not in shapes]
    if unknown or not layers:
        raise BadInputError(f"refined layers must be a non-empty subset of {list(shapes)}, got {list(layers)}")
    return RefinerConfig(img_resolution=G.config.img_resolution, img_channels=G.config.img_channels,
                         layers=tuple(layers), layer_shapes=tuple(shapes[n][:2] for n in layers), **overrides)


class DeltaHead(nn.Module):
    """Features [N, C, r, r] -> offsets [N, out, in, 1, 1] as a rank-`rank` product A @ B."""

    # Low rank, like HyperStyle's shared refinement blocks: a full out x in linear costs ~1 M parameters a layer.

    def __init__(self, width: int, feature_resolution: int, out_ch: int, in_ch: int, rank: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(max(0, int(math.log2(feature_resolution)) - 1)):  # stop at 2x2, then average
            layers += [nn.Conv2d(width, width, 3, 2, 1), nn.LeakyReLU(0.2)]
        self.convs = nn.Sequential(*layers)
        self.out_ch, self.in_ch, self.rank = out_ch, in_ch, rank
        self.to_a = nn.Linear(width, out_ch * rank)
        self.to_b = nn.Linear(width, rank * in_ch)
        # A starts at zero so H starts as the identity on G; B stays random so A's gradient is not zero.
        nn.init.zeros_(self.to_a.weight)
        nn.init.zeros_(self.to_a.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        v = self.convs(feat).mean(dim=(2, 3))                            # [N, width]
        a = self.to_a(v).view(-1, self.out_ch, self.rank)                # [N, out, rank]
        b = self.to_b(v).view(-1, self.rank, self.in_ch)                 # [N, rank, in]
        return (a @ b / self.rank)[..., None, None]                      # [N, out, in, 1, 1]


class Refiner(nn.Module):
    """H: (sketch [N, 1, R, R], current image [N, 3, R, R]) -> {layer: offset [N, out, in, 1, 1]} for G."""

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Sequential(nn.Conv2d(config.sketch_channels + config.img_channels, w[0], 3, 1, 1),
                                  nn.LeakyReLU(0.2))
        self.stages = nn.Sequential(*[DownBlock(a, b) for a, b in zip((w[0],) + w[:-1], w)])
        self.neck = nn.Conv2d(w[-1], config.head_width, 1)
        # ModuleDict keys cannot contain dots: "b16.conv0" is stored as "b16_conv0".
        self.heads = nn.ModuleDict({name.replace(".", "_"): DeltaHead(config.head_width, config.feature_resolution,
                                                                     out_ch, in_ch, config.rank)
                                    for name, (out_ch, in_ch) in zip(config.layers, config.layer_shapes)})

    def forward(self, sketch: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        res = cfg.img_resolution
        n = sketch.shape[0]
        if tuple(sketch.shape[1:]) != (cfg.sketch_channels, res, res) or \
                tuple(image.shape) != (n, cfg.img_channels, res, res):
            raise ValueError(f"refiner expects sketch [N, {cfg.sketch_channels}, {res}, {res}] and image "
                             f"[N, {cfg.img_channels}, {res}, {res}], got {list(sketch.shape)}, {list(image.shape)}")
        feat = self.neck(self.stages(self.stem(torch.cat([sketch, image], dim=1))))  # [N, head_width, r, r]
        return {name: self.heads[name.replace(".", "_")](feat) for name in cfg.layers}


def add_deltas(total: dict[str, torch.Tensor] | None, step: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accumulate one refinement step's offsets into the running total (HyperStyle's update rule)."""
    return dict(step) if total is None else {name: total[name] + delta for name, delta in step.items()}


def refine(H: Refiner, G: nn.Module, w_plus: torch.Tensor, sketch: torch.Tensor, steps: int,
           noise_mode: str = "const") -> tuple[dict[str, torch.Tensor] | None, list[torch.Tensor]]:
    """H for `steps` steps from G(w_plus) -> (summed offsets or None, images [x_0 = G(w_plus), ..., x_steps])."""
    # Offsets accumulate (x_{t+1} = G(w_plus, sum of offsets so far)) rather than being re-predicted whole:
    # each step is then a small correction of what the current image still gets wrong, as in HyperStyle.
    if steps < 0:
        raise ValueError(f"refinement steps must be >= 0, got {steps}")
    # The blocks coarser than H's first layer are the same in every step: run them once (with fixed noise).
    # (One forward graph below them serves all steps: backpropagate once, through the last image, as training does.)
    start = None
    if steps and noise_mode != "random":  # (steps 0 needs no H: it may be None then)
        refined = {name.split(".")[0] for name in H.config.layers}
        first = next((block for block in G.blocks if block in refined), None)  # None: H is not for this G
        start = None if first is None else G.prefix(w_plus, first, noise_mode)
    images = [G(w_plus, noise_mode=noise_mode, start=start)]
    deltas = None
    for _ in range(steps):
        deltas = add_deltas(deltas, H(sketch, images[-1]))
        images.append(G(w_plus, weight_deltas=deltas, noise_mode=noise_mode, start=start))
    return deltas, images


def load_refiner(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> Refiner:
    """The refiner H (eval mode, frozen) from a kind="refiner" checkpoint."""
    return load_network(path_or_payload, "refiner", RefinerConfig, Refiner, device)
