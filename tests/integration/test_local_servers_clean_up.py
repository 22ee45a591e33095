"""The local servers the tests start remove the directory they made for themselves when they are left: a test
session's PostgreSQL once left 2.5-3 GB behind, and a machine running the suite again and again filled up."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from devtools.postgres import LocalPostgres

pytestmark = pytest.mark.integration


def test_a_local_postgresql_left_removes_the_directory_it_made_and_keeps_one_it_was_given():
    with LocalPostgres() as made:
        made.create_database("scratch")
        own = made.work_dir
        assert (own / "data" / "PG_VERSION").exists()
    assert not own.exists()
    given = Path(tempfile.mkdtemp(prefix="pg-given-"))  # where the postgres user may write, as the server's own
    try:
        with LocalPostgres(given) as server:
            server.create_database("scratch")
        assert (given / "data" / "PG_VERSION").exists()
    finally:
        shutil.rmtree(given, ignore_errors=True)
