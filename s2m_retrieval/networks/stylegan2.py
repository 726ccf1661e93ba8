"""StyleGAN2 generator G (mapping, modulated convs, noise, skip ToRGB) and its residual discriminator, pure PyTorch."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from s2m_retrieval.errors import BadInputError

NOISE_MODES = ("random", "const", "none")
_LRELU_GAIN = math.sqrt(2.0)


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a generator; the shipped default is the 64 px CPU-trainable one (1.13 M params)."""

    z_dim: int = 256
    w_dim: int = 256
    mapping_layers: int = 4
    img_resolution: int = 64
    img_channels: int = 3
    channel_base: int = 1024
    channel_max: int = 128
    mapping_lr_mul: float = 0.01
    w_avg_beta: float = 0.995

    def __post_init__(self) -> None:
        _check_shape_fields(self.img_resolution, self.img_channels, self.channel_base, self.channel_max)
        if min(self.z_dim, self.w_dim, self.mapping_layers) < 1:
            raise BadInputError("z_dim, w_dim and mapping_layers must be >= 1")

    @property
    def num_ws(self) -> int:
        """Number of W+ entries: two per resolution (a conv0 shares the w of the ToRGB before it)."""
        return 2 * int(math.log2(self.img_resolution)) - 2

    def channels(self, res: int) -> int:
        """Feature channels at resolution res: channel_base // res, capped by channel_max."""
        return max(1, min(self.channel_base // res, self.channel_max))


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Shape of the residual discriminator; channels follow the same base/max rule as G."""

    img_resolution: int = 64
    img_channels: int = 3
    channel_base: int = 1024
    channel_max: int = 128
    mbstd_group_size: int = 4
    mbstd_channels: int = 1

    def __post_init__(self) -> None:
        _check_shape_fields(self.img_resolution, self.img_channels, self.channel_base, self.channel_max)
        if self.mbstd_group_size < 1 or self.mbstd_channels < 1 or self.channels(4) % self.mbstd_channels:
            raise BadInputError("mbstd_group_size >= 1 and mbstd_channels >= 1 dividing the 4x4 channel count")

    @property
    def num_blocks(self) -> int:
        """Residual blocks from img_resolution down to 4 px."""
        return int(math.log2(self.img_resolution)) - 2

    def channels(self, res: int) -> int:
        """Feature channels at resolution res: channel_base // res, capped by channel_max."""
        return max(1, min(self.channel_base // res, self.channel_max))


def _check_shape_fields(res: int, img_channels: int, channel_base: int, channel_max: int) -> None:
    if res < 4 or res & (res - 1):
        raise BadInputError(f"image resolution must be a power of two >= 4 (32, 64, 128, 256), got {res}")
    if min(img_channels, channel_base, channel_max) < 1:
        raise BadInputError("img_channels, channel_base and channel_max must be >= 1")


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    # The sqrt(2) gain keeps activations at unit variance, which equalized lr relies on.
    return F.leaky_relu(x, 0.2) * _LRELU_GAIN


def _upsample2x(x: torch.Tensor) -> torch.Tensor:
    # Bilinear x2 (align_corners=False) is the [1,3,3,1] FIR upsampler of StyleGAN2 with clamped borders.
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate (weights scaled at run time)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return _lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Plain conv with equalized learning rate, used by the discriminator."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, bias: bool = True, activation: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        return _lrelu(x) if self.activation else x


class MappingNetwork(nn.Module):
    """z [N, z_dim] -> w [N, w_dim] through an MLP on the normalized latent."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=cfg.mapping_lr_mul, activation=True)
                                      for a, b in zip(dims[:-1], dims[1:])])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.layers(z)


class ModulatedConv(nn.Module):
    """Style-modulated (and demodulated) conv; weight deltas, when given, may differ per sample."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, w_dim: int, resolution: int,
                 demodulate: bool = True, upsample: bool = False, noise_seed: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight_gain = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.demodulate = demodulate
        self.upsample = upsample
        self.use_noise = noise_seed is not None
        if self.use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
            # A fixed generator makes the 'const' noise identical for every model built from the same config.
            gen = torch.Generator().manual_seed(noise_seed)
            self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution, generator=gen))

    def forward(self, x: torch.Tensor, w: torch.Tensor, delta: torch.Tensor | None = None,
                noise_mode: str = "const") -> torch.Tensor:
        n, in_ch = x.shape[:2]
        out_ch, _, k, _ = self.weight.shape
        styles = self.affine(w)                                          # [N, in]
        weight = self.weight * self.weight_gain                          # [out, in, k, k]
        if delta is None:
            # Shared weights: scaling activations is the same math and 2-5x faster than a grouped conv on CPU.
            x = F.conv2d(self._up(x * styles[:, :, None, None]), weight, padding=k // 2)
            if self.demodulate:
                demod = torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8)  # [N, out]
                x = x * demod[:, :, None, None]
        else:
            # Per-sample weights: one grouped conv with the batch folded into the channel axis.
            weight = weight.unsqueeze(0) * (1.0 + delta)                 # [N|1, out, in, k, k]
            weight = weight * styles[:, None, :, None, None]             # [N, out, in, k, k]
            if self.demodulate:
                weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
            x = self._up(x)
            h, wd = x.shape[-2:]
            x = F.conv2d(x.reshape(1, n * in_ch, h, wd), weight.reshape(n * out_ch, in_ch, k, k),
                         padding=k // 2, groups=n).reshape(n, out_ch, h, wd)
        h, wd = x.shape[-2:]
        if self.use_noise and noise_mode != "none":
            noise = self.noise_const if noise_mode == "const" else torch.randn(n, 1, h, wd, device=x.device,
                                                                               dtype=x.dtype)
            x = x + noise * self.noise_strength
        x = x + self.bias.view(1, -1, 1, 1)
        return _lrelu(x) if self.demodulate else x

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample2x(x) if self.upsample else x


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis net: (upsampling conv0), conv1, ToRGB added to the upsampled skip image."""

    def __init__(self, cfg: GeneratorConfig, res: int, in_ch: int, index: int) -> None:
        super().__init__()
        out_ch = cfg.channels(res)
        self.conv0 = None if res == 4 else ModulatedConv(in_ch, out_ch, 3, cfg.w_dim, res, upsample=True,
                                                          noise_seed=2 * index)
        self.conv1 = ModulatedConv(out_ch if res > 4 else in_ch, out_ch, 3, cfg.w_dim, res, noise_seed=2 * index + 1)
        self.torgb = ModulatedConv(out_ch, cfg.img_channels, 1, cfg.w_dim, res, demodulate=False)
        self.num_ws = 2 if res == 4 else 3  # the ToRGB w is shared with the next block's conv0

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, ws: torch.Tensor,
                deltas: Mapping[str, torch.Tensor], noise_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        i = 0
        if self.conv0 is not None:
            x = self.conv0(x, ws[:, 0], deltas.get("conv0"), noise_mode)
            i = 1
        x = self.conv1(x, ws[:, i], deltas.get("conv1"), noise_mode)
        rgb = self.torgb(x, ws[:, i + 1])
        img = rgb if img is None else _upsample2x(img) + rgb
        return x, img


@dataclass(frozen=True)
class SynthesisState:
    """Where a synthesis stands after its first blocks: features x, skip image img, W+ entries used, blocks run."""

    x: torch.Tensor
    img: torch.Tensor | None
    ws_used: int
    done: tuple[str, ...]


class Generator(nn.Module):
    """StyleGAN2 G: mapping(z) -> W+ [N, num_ws, w_dim]; forward(w_plus) -> images [N, C, H, W] in about [-1, 1]."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.num_ws = config.num_ws
        self.mapping_network = MappingNetwork(config)
        self.register_buffer("w_avg", torch.zeros(config.w_dim))
        self.const = nn.Parameter(torch.randn(config.channels(4), 4, 4))
        self.blocks = nn.ModuleDict()
        in_ch = config.channels(4)
        for index, log_res in enumerate(range(2, int(math.log2(config.img_resolution)) + 1)):
            res = 2 ** log_res
            self.blocks[f"b{res}"] = SynthesisBlock(config, res, in_ch, index)
            in_ch = config.channels(res)

    def conv_layer_names(self) -> list[str]:
        """Names of the modulated 3x3 convs that accept weight deltas, coarse to fine ("b8.conv0", ...)."""
        return [f"{b}.{c}" for b, block in self.blocks.items() for c in ("conv0", "conv1")
                if getattr(block, c) is not None]

    def conv_weight_shapes(self) -> dict[str, tuple[int, int, int, int]]:
        """Weight shape [out_ch, in_ch, k, k] of each delta-capable conv, to size H's heads."""
        return {name: tuple(self.conv_layer(name).weight.shape) for name in self.conv_layer_names()}

    def conv_layer(self, name: str) -> ModulatedConv:
        """The modulated conv module called `name` (one of conv_layer_names())."""
        block, conv = name.split(".")
        return getattr(self.blocks[block], conv)

    def mapping(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim] -> W+ [N, num_ws, w_dim], truncated towards w_avg; training passes update_w_avg=True."""
        if z.ndim != 2 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"z must be [N, {self.config.z_dim}], got {list(z.shape)}")
        w = self.mapping_network(z)
        if update_w_avg:
            self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, self.config.w_avg_beta))
        if truncation_psi != 1.0:
            w = self.w_avg.lerp(w, truncation_psi)
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)

    def _resolve_deltas(self, weight_deltas, n: int) -> dict[str, dict[str, torch.Tensor]]:
        names = self.conv_layer_names()
        if weight_deltas is None:
            return {}
        if not isinstance(weight_deltas, Mapping):
            if len(weight_deltas) != len(names):
                raise ValueError(f"weight_deltas list needs {len(names)} entries (conv_layer_names order), "
                                 f"got {len(weight_deltas)}")
            weight_deltas = dict(zip(names, weight_deltas))
        unknown = set(weight_deltas) - set(names)
        if unknown:
            raise ValueError(f"weight_deltas has unknown layers {sorted(unknown)}; known: {names}")
        per_block: dict[str, dict[str, torch.Tensor]] = {}
        for name, delta in weight_deltas.items():
            if delta is None:
                continue
            out_ch, in_ch = self.conv_layer(name).weight.shape[:2]
            # Per (out, in) pair, as in HyperStyle: a per-output-channel scale alone would be undone by demodulation.
            if delta.ndim != 5 or delta.shape[0] not in (1, n) or tuple(delta.shape[1:]) != (out_ch, in_ch, 1, 1):
                raise ValueError(f"delta for {name} must be [N|1, {out_ch}, {in_ch}, 1, 1], got {list(delta.shape)}")
            block, conv = name.split(".")
            per_block.setdefault(block, {})[conv] = delta
        return per_block

    def forward(self, w_plus: torch.Tensor, weight_deltas: Mapping[str, torch.Tensor] | Sequence | None = None,
                noise_mode: str = "const", start: SynthesisState | None = None) -> torch.Tensor:
        """W+ [N, num_ws, w_dim] -> images [N, C, H, W]; deltas [N|1, out, in, 1, 1] act as weight * (1 + delta).
        `start`: this W+'s state after the blocks no delta touches (`prefix`), which are then not run again."""
        self._check_call(w_plus, noise_mode)
        deltas = self._resolve_deltas(weight_deltas, w_plus.shape[0])
        if start is not None and start.x.shape[0] != w_plus.shape[0]:
            raise ValueError(f"`start` is the prefix of {start.x.shape[0]} codes, w_plus has {w_plus.shape[0]}")
        if start is not None and any(name in deltas for name in start.done):
            raise ValueError(f"weight deltas for {sorted(set(deltas) & set(start.done))}, which `start` has run")
        state = start if start is not None else self._first_state(w_plus)
        return self._synthesize(state, w_plus, deltas, noise_mode).img   # [N, img_channels, res, res]

    def prefix(self, w_plus: torch.Tensor, first_changed: str, noise_mode: str = "const") -> SynthesisState:
        """Run the blocks before block `first_changed` ("b16"): what every forward of this W+ whose deltas start
        there shares. Only with fixed noise ("const" or "none"): random noise would be drawn once instead of per
        forward."""
        self._check_call(w_plus, noise_mode)
        if noise_mode == "random":
            raise ValueError("a synthesis prefix is shared between forwards: it needs noise_mode 'const' or 'none'")
        if first_changed not in self.blocks:
            raise ValueError(f"unknown block {first_changed!r}; blocks: {list(self.blocks)}")
        return self._synthesize(self._first_state(w_plus), w_plus, {}, noise_mode, until=first_changed)

    def _first_state(self, w_plus: torch.Tensor) -> SynthesisState:
        return SynthesisState(self.const.unsqueeze(0).expand(w_plus.shape[0], -1, -1, -1), None, 0, ())  # [N, C4, 4, 4]

    def _synthesize(self, state: SynthesisState, w_plus: torch.Tensor, deltas: Mapping[str, dict], noise_mode: str,
                    until: str | None = None) -> SynthesisState:
        """Run the blocks `state` has not run, in order, up to (not including) block `until`."""
        x, img, i, done = state.x, state.img, state.ws_used, list(state.done)
        for name, block in self.blocks.items():
            if name == until:
                break
            if name in state.done:
                continue
            x, img = block(x, img, w_plus[:, i:i + block.num_ws], deltas.get(name, {}), noise_mode)
            i += block.num_ws - 1
            done.append(name)
        return SynthesisState(x, img, i, tuple(done))

    def _check_call(self, w_plus: torch.Tensor, noise_mode: str) -> None:
        if w_plus.ndim != 3 or w_plus.shape[1:] != (self.num_ws, self.config.w_dim):
            raise ValueError(f"w_plus must be [N, {self.num_ws}, {self.config.w_dim}], got {list(w_plus.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")

    def sample_w_plus(self, n: int, seed: int | torch.Generator = 0, truncation_psi: float = 1.0) -> torch.Tensor:
        """W+ of n random latents drawn on the CPU from `seed`, so results match across devices."""
        gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, self.config.z_dim, generator=gen).to(self.w_avg.device)
        return self.mapping(z, truncation_psi)

    @torch.no_grad()
    def sample(self, n: int, seed: int | torch.Generator = 0, truncation_psi: float = 1.0,
               noise_mode: str = "const") -> torch.Tensor:
        """n images [n, C, H, W] from seeded random latents."""
        return self(self.sample_w_plus(n, seed, truncation_psi), noise_mode=noise_mode)


class DiscriminatorBlock(nn.Module):
    """Residual block: conv, downsample, conv, plus a 1x1 downsampled skip, scaled to keep variance."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Downsampling before conv1 runs that conv at a quarter of the cost; avg-pool is a cheap box filter.
        y = self.skip(F.avg_pool2d(x, 2))
        x = self.conv1(F.avg_pool2d(self.conv0(x), 2))
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """Residual D: images [N, C, H, W] in [-1, 1] -> logits [N, 1]."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        res = config.img_resolution
        self.fromrgb = EqualConv2d(config.img_channels, config.channels(res), 1)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(config.channels(r), config.channels(r // 2))
                                      for r in (res // 2 ** i for i in range(config.num_blocks))])
        c4 = config.channels(4)
        self.conv = EqualConv2d(c4 + config.mbstd_channels, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, 1)

    def _minibatch_stddev(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # Largest group size <= the configured one that divides the batch, so any batch size works.
        g = max(d for d in range(1, min(self.config.mbstd_group_size, n) + 1) if n % d == 0)
        f = self.config.mbstd_channels
        y = x.reshape(g, -1, f, c // f, h, w)                           # [G, N/G, F, C/F, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()
        y = y.mean(dim=(2, 3, 4)).reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if img.ndim != 4 or img.shape[1:] != (cfg.img_channels, cfg.img_resolution, cfg.img_resolution):
            raise ValueError(f"D expects [N, {cfg.img_channels}, {cfg.img_resolution}, {cfg.img_resolution}], "
                             f"got {list(img.shape)}")
        x = self.blocks(self.fromrgb(img))                               # [N, C4, 4, 4]
        x = self.conv(self._minibatch_stddev(x))
        return self.out(self.fc(x.flatten(1)))


def load_generator(path_or_payload: str | os.PathLike | dict, device: str | torch.device = "cpu") -> Generator:
    """Rebuild a Generator (eval mode) from an s2m generator checkpoint file or its loaded payload."""
    from s2m_retrieval.networks.checkpoint import read_payload, rebuild_module

    payload = read_payload(path_or_payload, "generator")
    G = rebuild_module(payload, GeneratorConfig, Generator)
    if payload.get("w_avg") is not None:
        G.w_avg.copy_(payload["w_avg"])
    return G.to(device).eval()
