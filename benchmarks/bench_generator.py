"""Benchmark: G forward latency (batch 1, 32) against a plain conv stack of equal widths; optional train-step time."""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig
from timing import median_ms


class PlainConvStack(nn.Module):
    """Baseline: G's synthesis shape (const, upsample, two 3x3 convs, 1x1 RGB skips) without styles or noise."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        resolutions = [2 ** i for i in range(2, int(math.log2(cfg.img_resolution)) + 1)]
        self.const = nn.Parameter(torch.randn(1, cfg.channels(4), 4, 4))
        self.convs = nn.ModuleList()
        self.torgbs = nn.ModuleList()
        in_ch = cfg.channels(4)
        for res in resolutions:
            out_ch = cfg.channels(res)
            first = [] if res == 4 else [nn.Conv2d(in_ch, out_ch, 3, padding=1)]
            self.convs.append(nn.ModuleList(first + [nn.Conv2d(out_ch, out_ch, 3, padding=1)]))
            self.torgbs.append(nn.Conv2d(out_ch, cfg.img_channels, 1))
            in_ch = out_ch

    def forward(self, n: int) -> torch.Tensor:
        x, img = self.const.expand(n, -1, -1, -1), None
        for i, (convs, torgb) in enumerate(zip(self.convs, self.torgbs)):
            if i > 0:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            for conv in convs:
                x = F.leaky_relu(conv(x), 0.2)
            rgb = torgb(x)
            img = rgb if img is None else F.interpolate(img, scale_factor=2, mode="bilinear",
                                                        align_corners=False) + rgb
        return img


def bench_forward(cfg: GeneratorConfig, runs: int) -> None:
    G = Generator(cfg).eval()
    base = PlainConvStack(cfg).eval()
    n_params = sum(p.numel() for p in G.parameters())
    print(f"config: {cfg}")
    print(f"G parameters: {n_params:,} ({n_params / 1e6:.2f} M); torch threads: {torch.get_num_threads()}")
    shapes = G.conv_weight_shapes()
    with torch.no_grad():
        for n in (1, 32):
            w = G.sample_w_plus(n, seed=0)
            deltas = {k: 0.01 * torch.randn(n, s[0], s[1], 1, 1) for k, s in shapes.items()}
            r = runs if n == 1 else max(3, runs // 4)
            g_ms = median_ms(lambda: G(w), r)
            d_ms = median_ms(lambda: G(w, deltas), r)
            b_ms = median_ms(lambda: base(n), r)
            print(f"batch {n:2d}: G forward {g_ms:8.2f} ms | G with weight deltas on all convs {d_ms:8.2f} ms | "
                  f"plain conv stack {b_ms:8.2f} ms | G / plain conv stack = {g_ms / b_ms:.2f}x")


def bench_train_step(cfg: GeneratorConfig, steps: int, batch: int) -> None:
    from s2m_retrieval.training.gan import GanTrainConfig, train_generator

    images = torch.randint(0, 256, (256, cfg.img_channels, cfg.img_resolution, cfg.img_resolution),
                           dtype=torch.uint8)
    tc = GanTrainConfig(batch=batch, total_kimg=steps * batch / 1000, snapshot_every=10 ** 9, sample_every=10 ** 9)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        train_generator(images, out, cfg, train_config=tc, resume=False,
                        progress=lambda p: times.append(p.sec_per_step))
    # Skip the first two steps (allocator warm-up); R1 runs every r1_interval steps and is included in the mean.
    steady = times[2:] or times
    mean = statistics.mean(steady)
    print(f"training step (G + D, batch {batch}, lazy R1 every {tc.r1_interval}): "
          f"median {statistics.median(steady):.3f} s, mean {mean:.3f} s over {len(steady)} steps "
          f"= {batch * 3600 / mean / 1000:.0f} kimg/hour")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--channel-base", type=int, default=GeneratorConfig.channel_base)
    parser.add_argument("--channel-max", type=int, default=GeneratorConfig.channel_max)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=0, help="also time this many training steps")
    parser.add_argument("--batch", type=int, default=32, help="training batch for --train-steps")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = GeneratorConfig(img_resolution=args.res, channel_base=args.channel_base, channel_max=args.channel_max)
    bench_forward(cfg, args.runs)
    if args.train_steps:
        bench_train_step(cfg, args.train_steps, args.batch)


if __name__ == "__main__":
    main()
