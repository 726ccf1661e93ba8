"""What every evaluated method searches: the images of one index (ids, stored thumbs, labels), read once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ArchiveView:
    """The indexed images in SQL id order: archive id (file stem), SQL id, thumbnail uint8 [R, R, 3], labels."""

    archive_ids: list[str]
    image_ids: np.ndarray
    thumbs: np.ndarray
    labels: list[dict]

    def __len__(self) -> int:
        return len(self.archive_ids)

    @property
    def resolution(self) -> int:
        """Side of the stored thumbs (the generator's resolution)."""
        return int(self.thumbs.shape[1])

    def stems_of(self, image_ids) -> list[str]:
        """Archive ids of SQL image ids."""
        where = {int(i): k for k, i in enumerate(self.image_ids)}
        return [self.archive_ids[where[int(i)]] for i in image_ids]

    def count_matching(self, labels: dict, columns: tuple[str, ...]) -> int:
        """How many indexed images share `labels`' values of every column (the relevant set of a query)."""
        return sum(all(row.get(c) == labels.get(c) for c in columns) for row in self.labels)


def read_archive_view(engine) -> ArchiveView:
    """Every image of the engine's index with its stored thumb (never the archive files)."""
    from s2m_retrieval.storage.catalog import index_entries

    with engine.reader.db.session() as s:
        rows = index_entries(s, engine.reader.stamp.name)
    thumbs = engine.rows.rows("thumbs", [(shard, row) for _, _, _, shard, row in rows])
    return ArchiveView(archive_ids=[Path(path).stem for _, path, _, _, _ in rows],
                       image_ids=np.array([i for i, *_ in rows], dtype=np.int64), thumbs=thumbs,
                       labels=[labels for _, _, labels, _, _ in rows])
