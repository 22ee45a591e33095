"""Literal secrets are encrypted at rest in the catalog (issue 12, finding 9): unreadable in the raw row,
read back decrypted, re-encrypted by ``exportctl secrets rotate`` with a new key, and a wrong or missing
key is a clear error that shows no secret. Real SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr, ValidationError

from shared.catalog import CatalogStores
from shared.cli import secret_commands
from shared.domain.catalog_objects import CatalogObject, ConnectionProfile
from shared.secrets_at_rest import SecretCipher, SecretsUnreadable
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration

OLD_KEY, NEW_KEY, OTHER_KEY = (SecretCipher.generate_key() for _ in range(3))
TOKEN = "bearer-literal-5512"
CLIENT_SECRET = "client-secret-8841"
SIGNING = "whsec_c2lnbmluZy1zZWNyZXQtb2YtdGhlLXBhcnRuZXI="
PASSWORD = "basic-password-3309"
PLAINTEXTS = (TOKEN, CLIENT_SECRET, SIGNING, PASSWORD)


def _profiles() -> list[CatalogObject]:
    return [
        ConnectionProfile(
            name="bearer",
            base_url="https://a.example",
            auth={"type": "bearer", "token": TOKEN},
            signing_secret=SIGNING,
        ),
        ConnectionProfile(
            name="oauth",
            base_url="https://b.example",
            auth={
                "type": "oauth2_client_credentials",
                "token_url": "https://b.example/token",
                "client_id": "c",
                "client_secret": CLIENT_SECRET,
            },
        ),
        ConnectionProfile(
            name="basic", base_url="https://c.example", auth={"type": "basic", "username": "u", "password": PASSWORD}
        ),
        ConnectionProfile(
            name="reference", base_url="https://d.example", auth={"type": "bearer", "token": "env:PARTNER_T"}
        ),
    ]


def _stores(url: str, *keys: str) -> CatalogStores:
    return CatalogStores.from_url(url, cipher=SecretCipher(keys) if keys else None)


def _raw_rows(url: str) -> dict[str, dict[str, Any]]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT name, spec FROM catalog_objects WHERE kind = 'ConnectionProfile'"))
        found = {name: spec if isinstance(spec, dict) else json.loads(spec) for name, spec in rows}
    engine.dispose()
    return found


def _tokens(spec: Any) -> list[str]:
    """The ciphertexts in a raw spec."""
    if isinstance(spec, dict):
        if set(spec) == {"encrypted"}:
            return [spec["encrypted"]]
        return [token for value in spec.values() for token in _tokens(value)]
    return []


def _secrets(profile: ConnectionProfile) -> list[str]:
    values = [getattr(profile.auth, f, None) for f in ("token", "client_secret", "password")] + [profile.signing_secret]
    return [v.get_secret_value() for v in values if isinstance(v, SecretStr)]


def _rotate(url: str, keys: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    secret_commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["secrets", "rotate"])
    code = args.func(CommonSettings(catalog_url=url, catalog_encryption_keys=SecretStr(keys)), args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def url(database_url: str) -> str:
    CatalogStores.from_url(database_url, migrate=True).close()
    return database_url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    CatalogStores.from_url(url, migrate=True).close()
    return url


def test_a_literal_secret_is_not_in_the_raw_row_and_reads_back_decrypted(url):
    stores = _stores(url, OLD_KEY)
    assert stores.definitions.apply_all(_profiles()) == ["created"] * 4
    raw = _raw_rows(url)
    assert not any(secret in json.dumps(raw) for secret in PLAINTEXTS)
    assert raw["bearer"]["auth"]["token"].keys() == {"encrypted"}
    assert raw["reference"]["auth"]["token"] == "env:PARTNER_T"  # a reference is a name, not a secret
    assert {p.name: _secrets(p) for p in stores.definitions.list_objects(ConnectionProfile)} == {
        "basic": [PASSWORD],
        "bearer": [TOKEN, SIGNING],
        "oauth": [CLIENT_SECRET],
        "reference": ["env:PARTNER_T"],
    }
    # Each encryption differs, yet the same object applied again is unchanged; another secret is a change.
    assert stores.definitions.apply_all(_profiles()) == ["unchanged"] * 4
    changed = _profiles()[0].model_copy(update={"signing_secret": SecretStr("whsec_b3RoZXI=")})
    assert stores.definitions.apply(changed) == "updated"
    stores.close()


def test_rotation_keeps_every_secret_readable_and_leaves_no_old_key_ciphertext(sqlite_url, capsys):
    before = _stores(sqlite_url, OLD_KEY)
    before.definitions.apply_all(_profiles())
    before.close()
    code, out, _ = _rotate(sqlite_url, f"{NEW_KEY},{OLD_KEY}", capsys)
    assert code == 0
    assert "4 secret(s) of 3 connection profile(s) encrypted with the first key" in out
    tokens = [token for spec in _raw_rows(sqlite_url).values() for token in _tokens(spec)]
    assert len(tokens) == 4
    new_only, old_only = SecretCipher([NEW_KEY]), SecretCipher([OLD_KEY])
    assert all(new_only.is_current(token) for token in tokens)
    for token in tokens:
        with pytest.raises(SecretsUnreadable):
            old_only.decrypt(token)
    after = _stores(sqlite_url, NEW_KEY)  # the old key removed
    assert sorted(s for p in after.definitions.list_objects(ConnectionProfile) for s in _secrets(p)) == sorted(
        [*PLAINTEXTS, "env:PARTNER_T"]
    )
    after.close()


def test_secrets_stored_before_there_was_a_key_are_encrypted_by_rotation(sqlite_url, capsys):
    plain = _stores(sqlite_url)
    plain.definitions.apply_all(_profiles())
    plain.close()
    assert TOKEN in json.dumps(_raw_rows(sqlite_url))  # without a key: plain text (and a warning)
    assert _rotate(sqlite_url, NEW_KEY, capsys)[0] == 0
    assert not any(secret in json.dumps(_raw_rows(sqlite_url)) for secret in PLAINTEXTS)
    keyed = _stores(sqlite_url, NEW_KEY)
    assert _secrets(keyed.definitions.get(ConnectionProfile, "bearer")) == [TOKEN, SIGNING]
    keyed.close()


@pytest.mark.parametrize(
    ("keys", "reason"), [((OTHER_KEY,), "cannot be decrypted with any key of"), ((), "is not set")]
)
def test_a_wrong_or_missing_key_is_a_clear_error_without_the_secret(sqlite_url, keys, reason):
    writer = _stores(sqlite_url, OLD_KEY)
    writer.definitions.apply_all(_profiles())
    writer.close()
    reader = _stores(sqlite_url, *keys)
    with pytest.raises(SecretsUnreadable) as refused:
        reader.definitions.get(ConnectionProfile, "bearer")
    message = str(refused.value)
    assert message.startswith("ConnectionProfile 'bearer': ")
    assert reason in message
    assert "EXPORT_CATALOG_ENCRYPTION_KEYS" in message
    assert not any(secret in message for secret in (*PLAINTEXTS, OLD_KEY, OTHER_KEY))
    # A profile without literal secrets still reads, and a fresh apply replaces what cannot be read.
    assert reader.definitions.get(ConnectionProfile, "reference").name == "reference"
    assert reader.definitions.apply(_profiles()[0]) == "updated"
    reader.close()


def test_rotation_without_a_key_or_with_a_malformed_one_changes_nothing(sqlite_url, capsys):
    code, _, err = _rotate(sqlite_url, "", capsys)
    assert (code, err.strip()) == (
        2,
        "exportctl: EXPORT_CATALOG_ENCRYPTION_KEYS is not set: give the new key first, then the old ones "
        "(comma-separated)",
    )
    code, _, err = _rotate(sqlite_url, f"{NEW_KEY},not-a-key-123", capsys)
    assert code == 2
    assert "key 2 of EXPORT_CATALOG_ENCRYPTION_KEYS is not a Fernet key" in err
    assert "not-a-key-123" not in err
    assert NEW_KEY not in err


def test_rotation_with_a_key_that_opens_nothing_changes_nothing(sqlite_url, capsys):
    writer = _stores(sqlite_url, OLD_KEY)
    writer.definitions.apply_all(_profiles())
    writer.close()
    raw = _raw_rows(sqlite_url)
    code, _, err = _rotate(sqlite_url, NEW_KEY, capsys)  # the old key forgotten too early
    assert code == 2
    assert "cannot be decrypted with any key of EXPORT_CATALOG_ENCRYPTION_KEYS" in err
    assert "nothing was changed" in err
    assert _raw_rows(sqlite_url) == raw


def test_an_encrypted_value_from_outside_the_catalog_is_not_a_secret():
    token = SecretCipher([OLD_KEY]).encrypt(TOKEN)
    with pytest.raises(ValidationError, match=r"auth\.bearer\.token"):
        ConnectionProfile.model_validate(
            {"name": "p", "base_url": "https://a.example", "auth": {"type": "bearer", "token": {"encrypted": token}}}
        )
