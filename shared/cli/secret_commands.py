"""``exportctl secrets rotate`` and ``secrets generate-key``: the keys of secrets encrypted at rest.

Literal secrets of connection profiles are stored encrypted with the first key of
``EXPORT_CATALOG_ENCRYPTION_KEYS`` and read with any of them. To rotate: put a new key first (keeping
the old ones after it), roll the services out, run ``exportctl secrets rotate`` (every stored secret is
encrypted again with the new key), then remove the old keys. Works on the catalog directly.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Protocol

from shared.cli.exits import REFUSED
from shared.cli.exits import fail as _fail

if TYPE_CHECKING:
    from pydantic import SecretStr

#: The setting holding the keys (named here so the parser does not load the cipher: exportctl's start-up).
KEYS_VARIABLE = "EXPORT_CATALOG_ENCRYPTION_KEYS"


class SecretSettings(Protocol):
    """What these commands need of the settings: the catalog and its encryption keys."""

    @property
    def catalog_url(self) -> str: ...

    @property
    def catalog_encryption_keys(self) -> SecretStr: ...


def cmd_rotate(settings: SecretSettings, args: argparse.Namespace) -> int:
    """Encrypt every literal secret in the catalog again with the first key; exit 2 if it cannot be done, 4 if
    profiles kept changing under it (a conflict: nothing was changed)."""
    from shared.catalog import CatalogStores, make_engine
    from shared.catalog.schema import SchemaOutdated, require_current
    from shared.errors import EditConflict
    from shared.secrets_at_rest import SecretCipher, SecretsUnreadable

    try:
        cipher = SecretCipher.from_setting(settings.catalog_encryption_keys)
    except ValueError as exc:
        return _fail(str(exc))
    if cipher is None:
        return _fail(f"{KEYS_VARIABLE} is not set: give the new key first, then the old ones (comma-separated)")
    engine = make_engine(settings.catalog_url)
    try:
        require_current(engine)
    except SchemaOutdated as exc:
        return _fail(str(exc))
    finally:
        engine.dispose()
    stores = CatalogStores.from_url(settings.catalog_url, cipher=cipher)
    try:
        profiles, secrets = stores.definitions.reencrypt_secrets()
    except SecretsUnreadable as exc:
        return _fail(f"{exc}; nothing was changed")
    except EditConflict:  # SQLite locks no row: profiles edited meanwhile at every try (as any edit conflict)
        return _fail(
            "connection profiles were changed by others at each try to rotate them: nothing was changed, try again",
            REFUSED,
        )
    finally:
        stores.close()
    print(
        f"{secrets} secret(s) of {profiles} connection profile(s) encrypted with the first key of {KEYS_VARIABLE}; "
        "the other keys may now be removed"
    )
    return 0


def cmd_generate_key(settings: SecretSettings, args: argparse.Namespace) -> int:
    """Print a new random key for ``EXPORT_CATALOG_ENCRYPTION_KEYS``."""
    from shared.secrets_at_rest import SecretCipher

    print(SecretCipher.generate_key())
    return 0


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser] | None = None
) -> None:
    """Register ``secrets rotate`` and ``secrets generate-key``."""
    parser = commands.add_parser(
        "secrets", help="(catalog) the keys of the secrets encrypted in the catalog", parents=parents or []
    )
    parser.set_defaults(api=None, catalog="needs", local=None)
    sub = parser.add_subparsers(dest="secrets_command", required=True, metavar="SUBCOMMAND")
    rotate = sub.add_parser(
        "rotate", help=f"encrypt every stored secret again with the first key of {KEYS_VARIABLE} (after a new key)"
    )
    rotate.set_defaults(func=cmd_rotate)
    generate = sub.add_parser("generate-key", help=f"print a new key for {KEYS_VARIABLE}")
    generate.set_defaults(func=cmd_generate_key, catalog="none")
