"""Helpers for tests and benchmarks: a deterministic fake archive encoder and random-but-valid checkpoints.

May import: `errors`, `networks`, `model`. Nothing of the product imports it, except `model.archive_encoder`'s
registry for the `fake` encoder.
"""
