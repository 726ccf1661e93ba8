"""The frozen Sketch2MedI model: sketch -> W+ -> x̂ (pipeline), image -> W+ -> stored vector (archive encoders),
the latent-space weighting, perceptual distances, segmentation label maps, model bundles and their compaction.

May import: `errors`, `data`, `networks`, the `index` package's atomic writes and `storage` for bundle records.
"""
