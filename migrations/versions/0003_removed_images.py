"""Table `removed_images`: paths the user removed from an index, which later builds and rebuilds leave out.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create `removed_images` (one row per index and path)."""
    op.create_table(
        "removed_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("index_name", sa.String(128), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_removed_images"),
        sa.UniqueConstraint("index_name", "path", name="uq_removed_images_index_name_path"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    """Drop `removed_images` (builds then index removed files again)."""
    op.drop_table("removed_images")
