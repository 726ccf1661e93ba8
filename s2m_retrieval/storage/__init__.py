"""SQL metadata storage: typed models, engines and sessions, Alembic migrations."""
