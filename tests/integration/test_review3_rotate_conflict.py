"""Review of s32-cas: ``exportctl secrets rotate`` whose every try loses the race to profiles edited meanwhile
(SQLite locks no row, so the rotation's write is conditional on the version it read) is refused like every other
edit conflict (exit 4, a one-line reason that says to try again), not a traceback."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from shared.catalog import CatalogStores
from shared.catalog.definitions_store import WRITE_ATTEMPTS, SqlDefinitionsStore
from shared.cli import secret_commands
from shared.cli.exits import REFUSED
from shared.domain.catalog_objects import ConnectionProfile
from shared.secrets_at_rest import SecretCipher
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration


def test_a_rotation_that_loses_every_try_to_an_edit_exits_4_saying_to_try_again(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    old_key, new_key = SecretCipher.generate_key(), SecretCipher.generate_key()
    before = CatalogStores.from_url(url, migrate=True, cipher=SecretCipher([old_key]))
    before.definitions.apply(
        ConnectionProfile(name="p", base_url="https://a.example", auth={"type": "bearer", "token": "first-token"})
    )
    before.close()
    other_writer = sa.create_engine(url)
    real_stored = SqlDefinitionsStore._stored
    tries: list[str] = []

    def stored(self: SqlDefinitionsStore, obj: Any) -> Any:
        tries.append(obj.name)  # the rotation has read the profile: another writer stores a new version of it
        with other_writer.begin() as connection:
            connection.execute(sa.text("UPDATE catalog_objects SET version = version + 1 WHERE name = 'p'"))
        return real_stored(self, obj)

    monkeypatch.setattr(SqlDefinitionsStore, "_stored", stored)
    parser = argparse.ArgumentParser()
    secret_commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["secrets", "rotate"])
    try:
        code = args.func(
            CommonSettings(catalog_url=url, catalog_encryption_keys=SecretStr(f"{new_key},{old_key}")), args
        )
    finally:
        other_writer.dispose()
    out, err = capsys.readouterr()

    assert len(tries) == WRITE_ATTEMPTS
    assert code == REFUSED
    assert err.startswith("exportctl: ")
    assert "try again" in err
    assert "first-token" not in err + out
    assert "Traceback" not in err
