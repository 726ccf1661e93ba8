"""Benchmark: sketch -> x_hat latency for T refinement steps (batch 1), inverter throughput, train-step times."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from s2m_retrieval.networks.checkpoint import save_checkpoint
from s2m_retrieval.networks.encoders import Encoder, LatentDiscriminator, LatentDiscriminatorConfig, encoder_config_for
from s2m_retrieval.networks.refiner import Refiner, refine, refiner_config_for
from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig
from s2m_retrieval.model.perceptual import load_perceptual
from s2m_retrieval.training.encoder import encode_iterations
from timing import median_ms


def n_params(module: torch.nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n:,} ({n / 1e6:.2f} M)"


def build(cfg: GeneratorConfig):
    torch.manual_seed(0)
    G = Generator(cfg).eval().requires_grad_(False)
    E = Encoder(encoder_config_for(cfg)).eval()
    inverter = Encoder(encoder_config_for(cfg, in_channels=3, extra_channels=3)).eval()
    H = Refiner(refiner_config_for(G)).eval()
    with torch.no_grad():  # non-zero heads so every step really runs G with per-sample weights
        for module in (E, inverter, H):
            for name, p in module.named_parameters():
                if "linear" in name or "to_a" in name:
                    p.normal_(0, 0.02)
    return G, E, inverter, H


def bench_latency(G, E, H, runs: int, max_steps: int) -> None:
    res = G.config.img_resolution
    sketch = torch.ones(1, 1, res, res)
    sketch[..., res // 4:3 * res // 4, res // 2] = -1.0                 # one stroke: content does not change speed
    with torch.no_grad():
        e_ms = median_ms(lambda: E(sketch), runs)
        g_ms = median_ms(lambda: G(E(sketch)), runs)
        print(f"E alone: {e_ms:.2f} ms; G alone: {g_ms - e_ms:.2f} ms (batch 1)")
        base = None
        for steps in range(max_steps + 1):
            ms = median_ms(lambda: refine(H, G, E(sketch), sketch, steps), runs)
            base = base or ms
            print(f"sketch -> x_hat, T={steps}: {ms:8.2f} ms  ({ms / base:.2f}x of T=0, encoder only)")


def bench_inverter(G, inverter, runs: int, batch: int) -> None:
    res = G.config.img_resolution
    images = torch.rand(batch, 3, res, res) * 2 - 1
    for iterations in (1, 3):
        ms = median_ms(lambda: encode_iterations(inverter, G, images, iterations), max(2, runs // 5), warmup=1)
        print(f"inverter, {iterations} ReStyle iteration(s), batch {batch}: {batch / ms * 1e3:7.1f} images/s "
              f"({ms:.1f} ms per batch)")


def bench_train_steps(cfg: GeneratorConfig, steps: int, batch_e: int, batch_h: int) -> None:
    from s2m_retrieval.training.encoder import EncoderTrainConfig, train_encoder
    from s2m_retrieval.training.inverter import train_inverter
    from s2m_retrieval.training.pairs import phantom_pairs
    from s2m_retrieval.training.refiner import RefinerTrainConfig, train_refiner

    G, E, _, _ = build(cfg)
    pairs = phantom_pairs(16, cfg.img_resolution, variants=1)
    with tempfile.TemporaryDirectory() as tmp:
        # The default "seg" metric with a random segmenter: same cost as the shipped one.
        seg = save_checkpoint(Path(tmp) / "seg.pt", kind="segmenter", config=SegmenterConfig(),
                              state_dict=Segmenter(SegmenterConfig()).state_dict())
        metric = load_perceptual("seg", checkpoint=seg)
        quiet = dict(sample_every=10 ** 6, snapshot_every=10 ** 6)
        runs = {
            f"E + D_latent, batch {batch_e}": lambda out, report: train_encoder(
                pairs, G, out, train_config=EncoderTrainConfig(steps=steps, batch=batch_e, **quiet),
                perceptual=metric, progress=report),
            f"H, T=3, batch {batch_h}": lambda out, report: train_refiner(
                pairs, G, E, out, train_config=RefinerTrainConfig(steps=steps, batch=batch_h, **quiet),
                perceptual=metric, progress=report),
            f"inverter, 3 iterations, batch {batch_e}": lambda out, report: train_inverter(
                pairs.images, G, out, train_config=EncoderTrainConfig(steps=steps, batch=batch_e, iterations=3,
                                                                      **quiet),
                perceptual=metric, progress=report),
        }
        for i, (label, run) in enumerate(runs.items()):
            times = []
            run(Path(tmp) / str(i), lambda p: times.append(p.sec_per_step))
            print(f"train step {label}: {statistics.median(times[1:] or times):.3f} s (median of {len(times)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="inverter throughput batch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=0, help="also time N training steps of E, H, inverter")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = GeneratorConfig()
    G, E, inverter, H = build(cfg)
    print(f"generator: {cfg.img_resolution} px, num_ws {cfg.num_ws}, w_dim {cfg.w_dim}; "
          f"torch threads: {torch.get_num_threads()}")
    print("weights are random: they do not change the speed of any of these networks")
    print(f"params: G {n_params(G)} | E {n_params(E)} | inverter {n_params(inverter)} | H {n_params(H)} "
          f"({len(H.config.layers)} layers: {', '.join(H.config.layers)}) | "
          f"D_latent {n_params(LatentDiscriminator(LatentDiscriminatorConfig(w_dim=cfg.w_dim)))}")
    bench_latency(G, E, H, args.runs, args.max_steps)
    bench_inverter(G, inverter, args.runs, args.batch)
    if args.train_steps:
        bench_train_steps(cfg, args.train_steps, 16, 8)


if __name__ == "__main__":
    main()
