"""Alembic migration scripts for Sealmem (run with ``sealmem migrate``)."""
