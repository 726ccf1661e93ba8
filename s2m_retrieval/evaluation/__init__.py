"""Batch evaluation of retrieval: query manifests, methods (Sketch2MedI and baselines), metrics, reports."""
