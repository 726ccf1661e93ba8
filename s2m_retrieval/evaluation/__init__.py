"""Batch evaluation of retrieval: query manifests, methods (Sketch2MedI and baselines), metrics, reports.

Receives an opened query engine; baselines load their networks from `networks`. May import: `errors`, `data`,
`networks`, `model`, `query`, `storage` (never `training`).
"""

