"""Bearer tokens, roles and business-unit scopes. Pure apart from reading the tokens file.

Operators configure tokens in a YAML file (a mounted Kubernetes Secret) holding only each token's
SHA-256: tokens are long random strings, so a fast hash is safe, and the file never holds a usable
credential. Roles grant permissions:

=========  ==========================================================================
viewer     read everything (secrets masked)
editor     read; create, change, copy and delete templates, queries and definitions; dry runs
operator   read; run, cancel and dry-run exports
admin      everything, including connection profiles (they hold credentials)
=========  ==========================================================================

A token with ``business_units`` sees and touches only the definitions (and their runs) of those units.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Role(StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"
    WRITE = "write"
    WRITE_PROFILES = "write_profiles"
    RUN = "run"
    DRY_RUN = "dry_run"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.EDITOR: frozenset({Permission.READ, Permission.WRITE, Permission.DRY_RUN}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.RUN, Permission.DRY_RUN}),
    Role.ADMIN: frozenset(Permission),
}


class TokenEntry(BaseModel):
    """One configured token: who it is, its SHA-256 (hex), its role and optional business units."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Role
    business_units: list[str] = Field(default_factory=list)


class Principal(BaseModel):
    """The caller a valid token names."""

    model_config = ConfigDict(frozen=True)
    name: str
    role: Role
    business_units: frozenset[str] = frozenset()

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]

    def sees(self, business_unit: str | None) -> bool:
        """Whether a definition of ``business_unit`` is in this caller's scope."""
        return not self.business_units or business_unit in self.business_units


def token_hash(token: str) -> str:
    """The SHA-256 (hex) the tokens file stores for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The configured tokens, looked up by hash."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._by_hash = {entry.sha256: entry for entry in entries}

    @classmethod
    def from_file(cls, path: str) -> TokenStore:
        if not path:
            return cls([])
        document = yaml.safe_load(Path(path).read_text()) or {}
        return cls([TokenEntry.model_validate(entry) for entry in document.get("tokens", [])])

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or None. Compared in constant time."""
        digest = token_hash(token)
        for known, entry in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return Principal(name=entry.name, role=entry.role, business_units=frozenset(entry.business_units))
        return None
