"""Encoders into G's W+: the pSp-style pyramid encoder (sketch E, archive inverter) and e4e's latent discriminator."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.checkpoint import load_network

LEVELS = ("coarse", "medium", "fine")
STYLE_MODES = ("e4e", "psp")


def entry_resolution(index: int, num_ws: int) -> int:
    """The synthesis resolution a W+ entry mostly drives: entry 0 the 4 px conv, 1-2 the 8 px block, ..., the last
    one only the final ToRGB."""
    return min(2 ** (2 + (index + 1) // 2), 2 ** ((num_ws + 2) // 2))


def style_levels(num_ws: int) -> tuple[str, ...]:
    """Pyramid level of each W+ entry, as in pSp: coarse <= 8 px layers, medium 16-32 px, fine >= 64 px."""
    def level(res: int) -> str:
        return "coarse" if res <= 8 else "medium" if res <= 32 else "fine"
    return tuple(level(entry_resolution(i, num_ws)) for i in range(num_ws))


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of a W+ encoder: sketch E (in_channels=1) or archive inverter (3, plus 3 extra for ReStyle input)."""

    in_channels: int = 1
    extra_channels: int = 0          # channels of the current reconstruction concatenated to the input (ReStyle)
    img_resolution: int = 64
    num_ws: int = 10
    w_dim: int = 256
    widths: tuple[int, ...] = (32, 64, 128, 128)  # stage widths at res/2, res/4, ...; last three = fine, medium, coarse
    head_width: int = 64             # width of the pyramid maps and map2style heads
    style_mode: str = "e4e"          # "e4e": entry 0 is a base w and the rest deltas from it; "psp": independent

    def __post_init__(self) -> None:
        res = self.img_resolution
        if res < 8 or res & (res - 1):
            raise BadInputError(f"encoder img_resolution must be a power of two >= 8, got {res}")
        if len(self.widths) < 3 or min(self.widths) < 1 or res // 2 ** len(self.widths) < 1:
            raise BadInputError(f"encoder widths need >= 3 positive stages and at most log2({res}) of them, "
                                f"got {self.widths}")
        if min(self.in_channels, self.num_ws, self.w_dim, self.head_width) < 1 or self.extra_channels < 0:
            raise BadInputError("in_channels, num_ws, w_dim and head_width must be >= 1, extra_channels >= 0")
        if self.style_mode not in STYLE_MODES:
            raise BadInputError(f"style_mode must be one of {STYLE_MODES}, got {self.style_mode!r}")

    def level_resolution(self, level: str) -> int:
        """Side of the pyramid map a level's heads read: coarse the last stage, medium the one before, ..."""
        stage = len(self.widths) - 1 - LEVELS.index(level)
        return self.img_resolution // 2 ** (stage + 1)


def encoder_config_for(g_config, in_channels: int = 1, extra_channels: int = 0, **overrides) -> EncoderConfig:
    """An EncoderConfig matching a GeneratorConfig's resolution, num_ws and w_dim."""
    return EncoderConfig(in_channels=in_channels, extra_channels=extra_channels,
                         img_resolution=g_config.img_resolution, num_ws=g_config.num_ws, w_dim=g_config.w_dim,
                         **overrides)


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm: training batches are small and a batch-1 query must see the same statistics as training.
    return nn.GroupNorm(max(1, channels // 8), channels)


class DownBlock(nn.Module):
    """Strided 3x3 conv to `out_ch`, then a residual pair of 3x3 convs (halves H and W)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False), _norm(out_ch), nn.LeakyReLU(0.2))
        self.body = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), _norm(out_ch), nn.LeakyReLU(0.2),
                                  nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), _norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return F.leaky_relu(x + self.body(x), 0.2)


class Map2Style(nn.Module):
    """pSp's map2style: strided convs from a pyramid map down to 1x1, then a linear layer to one w offset."""

    def __init__(self, width: int, w_dim: int, map_resolution: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(map_resolution))):
            layers += [nn.Conv2d(width, width, 3, 2, 1), nn.LeakyReLU(0.2)]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(width, w_dim)
        # Zero output at init: a fresh encoder predicts exactly w_avg (or its w_start), G's mean image.
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))                     # [N, w_dim]


class Encoder(nn.Module):
    """Pyramid encoder: x [N, in (+extra), R, R] in [-1, 1] -> W+ [N, num_ws, w_dim] = start + predicted offsets."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.register_buffer("w_avg", torch.zeros(config.w_dim))         # set from G by the trainer
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels + config.extra_channels, w[0], 3, 1, 1),
                                  nn.LeakyReLU(0.2))
        self.stages = nn.ModuleList(DownBlock(a, b) for a, b in zip((w[0],) + w[:-1], w))
        hw = config.head_width
        self.levels = style_levels(config.num_ws)
        # Only the levels some W+ entry reads (a 32 px G has no fine entries), always a coarse-first prefix.
        used = [level for level in LEVELS if level in self.levels]
        self.lateral = nn.ModuleDict({level: nn.Conv2d(w[-1 - LEVELS.index(level)], hw, 1) for level in used})
        self.heads = nn.ModuleList(Map2Style(hw, config.w_dim, config.level_resolution(level))
                                   for level in self.levels)

    def pyramid(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Top-down feature pyramid {coarse, medium, fine} (the levels in use) of maps [N, head_width, r, r]."""
        feats = []
        x = self.stem(x)                                                 # [N, w0, R, R]
        for stage in self.stages:
            x = stage(x)                                                 # halves the side per stage
            feats.append(x)
        maps = {"coarse": self.lateral["coarse"](feats[-1])}
        for level, feat in (("medium", feats[-2]), ("fine", feats[-3])):
            if level not in self.lateral:
                break
            above = maps[LEVELS[LEVELS.index(level) - 1]]
            maps[level] = self.lateral[level](feat) + F.interpolate(above, size=feat.shape[-2:], mode="bilinear",
                                                                    align_corners=False)
        return maps

    def offsets(self, x: torch.Tensor, recon: torch.Tensor | None = None) -> torch.Tensor:
        """Raw head outputs [N, num_ws, w_dim] (in e4e mode entry 0 is the base, the rest deltas from it)."""
        cfg = self.config
        res = cfg.img_resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.in_channels, res, res):
            raise ValueError(f"encoder input must be [N, {cfg.in_channels}, {res}, {res}], got {list(x.shape)}")
        if cfg.extra_channels:
            if recon is None or tuple(recon.shape) != (x.shape[0], cfg.extra_channels, res, res):
                raise ValueError(f"this encoder also takes the current reconstruction "
                                 f"[N, {cfg.extra_channels}, {res}, {res}], got "
                                 f"{None if recon is None else list(recon.shape)}")
            x = torch.cat([x, recon], dim=1)
        elif recon is not None:
            raise ValueError("this encoder has extra_channels=0 and takes no reconstruction input")
        maps = self.pyramid(x)
        return torch.stack([head(maps[level]) for head, level in zip(self.heads, self.levels)], dim=1)

    def forward(self, x: torch.Tensor, recon: torch.Tensor | None = None, w_start: torch.Tensor | None = None,
                active_deltas: int | None = None) -> torch.Tensor:
        """W+ [N, num_ws, w_dim]: w_start (default w_avg) plus the offsets; e4e mode uses the first active_deltas."""
        out = self.offsets(x, recon)                                     # [N, num_ws, w_dim]
        if self.config.style_mode == "e4e":
            deltas = out[:, 1:]
            if active_deltas is not None:
                # e4e's progressive training: entries past the active ones copy the base w exactly.
                keep = torch.arange(1, self.config.num_ws, device=out.device) <= active_deltas
                deltas = deltas * keep.view(1, -1, 1).to(out.dtype)
            out = torch.cat([out[:, :1], out[:, :1] + deltas], dim=1)
        if w_start is None:
            return self.w_avg.view(1, 1, -1) + out
        if tuple(w_start.shape) != tuple(out.shape):
            raise ValueError(f"w_start must be [N, {self.config.num_ws}, {self.config.w_dim}], "
                             f"got {list(w_start.shape)}")
        return w_start + out


@dataclass(frozen=True)
class LatentDiscriminatorConfig:
    """Shape of e4e's latent discriminator: an MLP over single w vectors."""

    w_dim: int = 256
    hidden: int = 256
    layers: int = 4

    def __post_init__(self) -> None:
        if min(self.w_dim, self.hidden, self.layers) < 1:
            raise BadInputError("latent discriminator w_dim, hidden and layers must be >= 1")


class LatentDiscriminator(nn.Module):
    """D_latent: w [M, w_dim] -> logit [M, 1]; high for G's mapped w's (real), low for encoder outputs (fake)."""

    def __init__(self, config: LatentDiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        dims = [config.w_dim] + [config.hidden] * (config.layers - 1)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.ndim != 2 or w.shape[1] != self.config.w_dim:
            raise ValueError(f"latent discriminator expects w [M, {self.config.w_dim}], got {list(w.shape)}")
        return self.net(w)


def load_encoder(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> Encoder:
    """The sketch encoder E (eval mode, frozen) from a kind="encoder" checkpoint."""
    return load_network(path_or_payload, "encoder", EncoderConfig, Encoder, device)


def load_inverter(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> Encoder:
    """The archive inverter (an Encoder over images) from a kind="inverter" checkpoint."""
    return load_network(path_or_payload, "inverter", EncoderConfig, Encoder, device)


def load_latent_discriminator(path_or_payload: str | os.PathLike | dict,
                              device: str | torch.device = "cpu") -> LatentDiscriminator:
    """D_latent from a kind="latent_discriminator" checkpoint."""
    return load_network(path_or_payload, "latent_discriminator", LatentDiscriminatorConfig, LatentDiscriminator,
                        device)
