"""Generation quality: domain Fréchet distance, sketch -> x̂ quality, end-of-training bundle metrics, DICE.

Receives networks as objects or loads them from `networks`; never imports `training`.
May import: `errors`, `data`, `networks`, `model`, `viz`.
"""
