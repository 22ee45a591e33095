"""Bearer tokens: each configured token names an actor (role and business-unit scope; see
:mod:`shared.application.actors`). Pure apart from reading the tokens file.

Operators configure tokens in a YAML file (a mounted Kubernetes Secret) holding only each token's
SHA-256: tokens are long random strings, so a fast hash is safe, and the file never holds a usable
credential.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from shared.application.actors import Actor, Role


class TokenEntry(BaseModel):
    """One configured token: who it is, its SHA-256 (hex), its role and optional business units."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Role
    business_units: list[str] = Field(default_factory=list)


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

    def authenticate(self, token: str) -> Actor | None:
        """The principal of ``token``, or None. Compared in constant time."""
        digest = token_hash(token)
        for known, entry in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return Actor(name=entry.name, role=entry.role, business_units=frozenset(entry.business_units))
        return None
