"""Persistence of models, variants, runs, metrics and raw samples (SQLAlchemy + Alembic)."""
