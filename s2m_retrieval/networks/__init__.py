"""The network definitions (G, E, inverter, H, P, segmenter, pix2pix, embedding, and the unpaired baselines
CycleGAN, UNIT, U-GAT-IT) and the one checkpoint format.

Each network file ends with its own `load_*()`, which rebuilds the module from the checkpoint's config alone.
May import: `errors`, `data`.
"""
