"""Training loops and losses of every network (G, E, H, inverter, P, segmenter, pix2pix, embedding) and
`s2m train all`; resumable runs, curves, sample grids.

May import everything below it (`errors`, `data`, `networks`, `model`, `generation`); nothing outside
`training/` and `cli/` imports it.
"""
