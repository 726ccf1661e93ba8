"""Initial schema: images, model_versions, index_builds, vectors.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the four tables."""
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("stem", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("labels", JSONType, nullable=False),
        sa.Column("added_at", Stamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
        sa.UniqueConstraint("path", name="uq_images_path"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_images_stem", "images", ["stem"])
    op.create_index("ix_images_sha256", "images", ["sha256"])

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("config", JSONType, nullable=False),
        sa.Column("metric", sa.String(128), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("version", name="uq_model_versions_version"),
    )

    op.create_table(
        "index_builds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("index_name", sa.String(128), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("factory", sa.String(256), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("started_at", Stamp, nullable=False),
        sa.Column("finished_at", Stamp, nullable=True),
        sa.Column("n_added", sa.Integer(), nullable=False),
        sa.Column("n_skipped", sa.Integer(), nullable=False),
        sa.Column("n_replaced", sa.Integer(), nullable=False),
        sa.Column("n_removed", sa.Integer(), nullable=False),
        sa.Column("n_bad", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"],
                                name="fk_index_builds_model_version_id_model_versions"),
        sa.PrimaryKeyConstraint("id", name="pk_index_builds"),
    )
    op.create_index("ix_index_builds_index_name", "index_builds", ["index_name"])

    op.create_table(
        "vectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("index_name", sa.String(128), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("shard", sa.String(64), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("added_at", Stamp, nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_vectors_image_id_images", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"],
                                name="fk_vectors_model_version_id_model_versions"),
        sa.PrimaryKeyConstraint("id", name="pk_vectors"),
        sa.UniqueConstraint("image_id", "index_name", name="uq_vectors_image_id_index_name"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_vectors_index_name_shard", "vectors", ["index_name", "shard"])


def downgrade() -> None:
    """Drop the four tables."""
    op.drop_index("ix_vectors_index_name_shard", table_name="vectors")
    op.drop_table("vectors")
    op.drop_index("ix_index_builds_index_name", table_name="index_builds")
    op.drop_table("index_builds")
    op.drop_table("model_versions")
    op.drop_index("ix_images_sha256", table_name="images")
    op.drop_index("ix_images_stem", table_name="images")
    op.drop_table("images")
