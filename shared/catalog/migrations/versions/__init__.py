"""The catalog's revisions, ``0001`` (baseline) onwards; Alembic loads them by path, not by import."""
