"""Index builds (`s2m index build|add|remove|info|verify`): reader (hash, diff, decode) -> mapper (an archive
encoder of `model`) -> writer (shards, SQL, FAISS), the runner that ties them, the Ray engine, sync and repair.

May import: `errors`, `data`, `networks`, `model`, `storage`, the `index` package.
"""
