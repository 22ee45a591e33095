"""The catalog's Alembic script directory: ``env.py``, the revision template and ``versions/``.

It ships inside the package (see ``[tool.setuptools.package-data]``); :mod:`shared.catalog.schema`
points Alembic at it without an ``alembic.ini``. A new revision, from the repository root, against a
catalog at head (``EXPORT_CATALOG_URL``)::

    alembic revision --autogenerate --rev-id 0003 -m "what it changes"

then read and fix what autogenerate wrote (it cannot know about backfills or renames).
"""
