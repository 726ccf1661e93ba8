"""Queries (`s2m retrieve`, `/v1/retrieve`): opening an engine over an index, the retrieval engine, metadata
filters, the re-rank, how results are shown, and the Python API (`api`, which also builds indexes).

May import: `errors`, `data`, `networks`, `model`, `storage`, the `index` package, and `ingest` (the API, and
`ingest.sync.check_owner`: an index read against another database is refused).
"""
