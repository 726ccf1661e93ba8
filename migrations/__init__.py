"""Alembic environment and versions for the s2m-retrieval SQL schema."""
