"""The U-GAT-IT baseline (Kim et al. 2020): ResNet generators and discriminators with CAM attention (an auxiliary
source/target classifier on globally average- and max-pooled features, whose weights re-weight the channels),
and AdaLIN (learned mix of instance and layer norm, scale and shift from the attended features) in the decoder."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.networks.checkpoint import load_network
from s2m_retrieval.networks.cyclegan import ResnetBlock, check_input, check_translator, conv_in_relu, grey_rgb, rgb_head

EPS = 1e-5


@dataclass(frozen=True)
class UGATITConfig:
    """Shape of both generators: 7x7 stem, `n_down` downs, `n_res` encoder blocks, CAM, `n_res` AdaLIN decoder blocks,
    nearest-up + conv + LIN ups. `light`: gamma/beta from pooled features (the authors' light model), else from
    the whole flattened map (a (R/2^n_down)^2 * C-wide layer)."""

    img_resolution: int = 64
    sketch_channels: int = 1
    image_channels: int = 3
    base_channels: int = 32
    n_down: int = 2
    n_res: int = 4
    light: bool = True

    def __post_init__(self) -> None:
        check_translator(self.img_resolution, self.n_down,
                         (self.sketch_channels, self.image_channels, self.base_channels, self.n_res), "U-GAT-IT")


def _moments(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(dim=dims, keepdim=True, unbiased=False) + EPS)


class AdaLIN(nn.Module):
    """rho * IN(x) + (1 - rho) * LN(x), then * gamma + beta given per image ([N, C] each); rho is learned per channel
    and kept in [0, 1] by the trainer."""

    def __init__(self, channels: int, rho: float = 0.9) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.full((1, channels, 1, 1), rho))   # 0.9: room on both sides of the clip

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return self.rho * _moments(x, (2, 3)) + (1 - self.rho) * _moments(x, (1, 2, 3))

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return self.mix(x) * gamma[:, :, None, None] + beta[:, :, None, None]


class LIN(AdaLIN):
    """AdaLIN with its own learned gamma and beta (the up-sampling blocks); rho starts at 0, layer norm."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, rho=0.0)
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.mix(x) * self.gamma + self.beta


class AdaLINBlock(nn.Module):
    """x + (conv3 AdaLIN ReLU conv3 AdaLIN)(x), both norms sharing the image's gamma and beta."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False))
        self.conv2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False))
        self.norm1, self.norm2 = AdaLIN(channels), AdaLIN(channels)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x), gamma, beta))
        return x + self.norm2(self.conv2(h), gamma, beta)


class CAM(nn.Module):
    """Class activation map attention on features [N, C, h, w]: logits of a source-vs-target classifier on the
    average- and max-pooled features [N, 2], the features re-weighted by each classifier's weights, fused back to C
    channels by a 1x1 conv, and the heatmap [N, 1, h, w] (their channel sum)."""

    def __init__(self, channels: int, sn: bool = False, slope: float = 0.0) -> None:
        super().__init__()
        wrap = spectral_norm if sn else (lambda m: m)
        self.gap_fc = wrap(nn.Linear(channels, 1, bias=False))
        self.gmp_fc = wrap(nn.Linear(channels, 1, bias=False))
        self.fuse = nn.Conv2d(2 * channels, channels, 1)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gap_logit = self.gap_fc(x.mean(dim=(2, 3)))
        gmp_logit = self.gmp_fc(x.amax(dim=(2, 3)))
        weighted = torch.cat([x * self.gap_fc.weight[0][None, :, None, None],
                              x * self.gmp_fc.weight[0][None, :, None, None]], dim=1)   # [N, 2C, h, w]
        x = F.leaky_relu(self.fuse(weighted), self.slope)
        return x, torch.cat([gap_logit, gmp_logit], dim=1), x.sum(dim=1, keepdim=True)


class UGATITGenerator(nn.Module):
    """[N, in, R, R] -> (image [N, out, R, R] in [-1, 1], CAM logits [N, 2], heatmap [N, 1, R/2^n_down, ...])."""

    def __init__(self, config: UGATITConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        widths = [config.base_channels * 2 ** i for i in range(config.n_down + 1)]
        width = widths[-1]
        layers = conv_in_relu(in_channels, widths[0], 7)
        for i in range(config.n_down):
            layers += conv_in_relu(widths[i], widths[i + 1], 3, stride=2)
        self.encoder = nn.Sequential(*layers, *(ResnetBlock(width) for _ in range(config.n_res)))
        self.cam = CAM(width)
        side = config.img_resolution // 2 ** config.n_down
        self.light = config.light
        self.mlp = nn.Sequential(nn.Linear(width if config.light else width * side * side, width, bias=False),
                                 nn.ReLU(), nn.Linear(width, width, bias=False), nn.ReLU())
        self.gamma = nn.Linear(width, width, bias=False)
        self.beta = nn.Linear(width, width, bias=False)
        self.blocks = nn.ModuleList(AdaLINBlock(width) for _ in range(config.n_res))
        ups: list[nn.Module] = []
        for i in reversed(range(config.n_down)):
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                    nn.Conv2d(widths[i + 1], widths[i], 3, bias=False), LIN(widths[i]), nn.ReLU()]
        self.decoder = nn.Sequential(*ups, *rgb_head(widths[0], out_channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, cam_logit, heatmap = self.cam(self.encoder(x))                 # [N, C, R/2^n_down, ...]
        h = self.mlp(x.mean(dim=(2, 3)) if self.light else x.flatten(1))
        gamma, beta = self.gamma(h), self.beta(h)                         # [N, C] each
        for block in self.blocks:
            x = block(x, gamma, beta)
        return self.decoder(x), cam_logit, heatmap


class UGATIT(nn.Module):
    """The generator pair, read like CycleGAN's (sketches enter as grey RGB); forward(sketch [N, 1, R, R]) is the
    baseline's image [N, 3, R, R]."""

    def __init__(self, config: UGATITConfig) -> None:
        super().__init__()
        self.config = config
        self.to_image = UGATITGenerator(config, config.image_channels, config.image_channels)
        self.to_sketch = UGATITGenerator(config, config.image_channels, config.sketch_channels)

    def image_of(self, sketch: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        check_input(sketch, cfg.sketch_channels, cfg.img_resolution, "U-GAT-IT")
        return self.to_image(grey_rgb(sketch, cfg.image_channels))[0]

    def sketch_of(self, image: torch.Tensor) -> torch.Tensor:
        check_input(image, self.config.image_channels, self.config.img_resolution, "U-GAT-IT")
        return self.to_sketch(image)[0]

    def forward(self, sketch: torch.Tensor) -> torch.Tensor:
        return self.image_of(sketch)


@dataclass(frozen=True)
class UGATITDiscriminatorConfig:
    """A domain's two critics: global (`global_downs` stride-2 convs, most of the image per logit) and local (fewer
    downs, smaller patches), widths base * 2^i capped at max_channels, spectral norm throughout."""

    img_resolution: int = 64
    in_channels: int = 3
    base_channels: int = 64
    max_channels: int = 512
    global_downs: int = 3
    local_downs: int = 2

    def __post_init__(self) -> None:
        res = self.img_resolution
        if res < 16 or res & (res - 1):
            raise BadInputError(f"U-GAT-IT discriminator img_resolution must be a power of two >= 16, got {res}")
        if not 1 <= self.local_downs <= self.global_downs or res // 2 ** self.global_downs < 4:
            raise BadInputError(f"U-GAT-IT discriminator needs 1 <= local_downs <= global_downs <= log2({res})-2, "
                                f"got {self.local_downs} and {self.global_downs}")
        if min(self.in_channels, self.base_channels, self.max_channels) < 1:
            raise BadInputError("U-GAT-IT discriminator channel counts must be >= 1")


def _sn_conv(in_ch: int, out_ch: int, stride: int, bias: bool = True) -> list[nn.Module]:
    return [nn.ReflectionPad2d(1), spectral_norm(nn.Conv2d(in_ch, out_ch, 4, stride, bias=bias))]


class CAMDiscriminator(nn.Module):
    """Images [N, C, R, R] -> (patch logits [N, 1, r, r], CAM logits [N, 2], heatmap); r = R / 2^downs - 2."""

    def __init__(self, config: UGATITDiscriminatorConfig, downs: int) -> None:
        super().__init__()
        width = [min(config.base_channels * 2 ** i, config.max_channels) for i in range(downs + 1)]
        layers = _sn_conv(config.in_channels, width[0], 2) + [nn.LeakyReLU(0.2)]
        for i in range(1, downs):
            layers += _sn_conv(width[i - 1], width[i], 2) + [nn.LeakyReLU(0.2)]
        layers += _sn_conv(width[downs - 1], width[downs], 1) + [nn.LeakyReLU(0.2)]   # widens, keeps ~the side
        self.features = nn.Sequential(*layers)
        self.cam = CAM(width[downs], sn=True, slope=0.2)
        self.out = nn.Sequential(*_sn_conv(width[downs], 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, cam_logit, heatmap = self.cam(self.features(x))
        return self.out(x), cam_logit, heatmap


class UGATITDiscriminator(nn.Module):
    """A domain's global and local CAM critics: images -> [(logits, CAM logits) global, (logits, CAM logits) local]."""

    def __init__(self, config: UGATITDiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.global_d = CAMDiscriminator(config, config.global_downs)
        self.local_d = CAMDiscriminator(config, config.local_downs)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        check_input(x, self.config.in_channels, self.config.img_resolution, "U-GAT-IT discriminator")
        return [d(x)[:2] for d in (self.global_d, self.local_d)]


def clip_rho(module: nn.Module) -> None:
    """Keep every AdaLIN / LIN mix weight in [0, 1] (after each optimizer step)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, AdaLIN):
                m.rho.clamp_(0.0, 1.0)


def load_ugatit(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> UGATIT:
    """The U-GAT-IT generator pair (eval mode, frozen) from a kind="ugatit" checkpoint."""
    return load_network(path_or_payload, "ugatit", UGATITConfig, UGATIT, device)
