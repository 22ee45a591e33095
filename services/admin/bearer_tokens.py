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
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.application.actors import Actor, Role
from shared.yaml_text import NestedTooDeeply, load, yaml_problem


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


class TokensFileError(ValueError):
    """The tokens file cannot be used: the message names the file (``EXPORT_ADMIN_TOKENS_FILE``) and why, by place
    (line, entry and field), never quoting what it holds: a token pasted where its hash belongs stays unprinted."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"EXPORT_ADMIN_TOKENS_FILE {path}: {reason}")


def _entry_problems(index: int, exc: ValidationError) -> list[str]:
    """Where and why entry ``index`` is refused: its fields named (an unknown key only as such: a key is text from
    the file), pydantic's reasons, never its input."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        field = error["loc"][0] if error["loc"] else None
        if error["type"] == "extra_forbidden" or (field is not None and field not in TokenEntry.model_fields):
            where = "an unknown key (an entry holds name, sha256, role and business_units)"
        else:
            where = ".".join(str(part) for part in error["loc"]) or "the entry"
        problems.append(f"tokens[{index}]: {where}: {error['msg']}")
    return problems


def _listed_twice(first: tuple[int, TokenEntry], second: tuple[int, TokenEntry]) -> str:
    """Why two entries with one SHA-256 are refused: one token would have two roles, the last entry's replacing the
    first's silently. Each is named by its place and its ``name`` (who it is, not a secret)."""
    return (
        f"tokens[{first[0]}] {first[1].name!r} and tokens[{second[0]}] {second[1].name!r} have the same sha256 "
        "(one token, two entries: keep one)"
    )


def _read_entries(path: str) -> list[TokenEntry]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TokensFileError(path, "not UTF-8 text") from None
    except OSError as exc:
        raise TokensFileError(path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    try:
        document: Any = load(text)
    except yaml.YAMLError as exc:
        raise TokensFileError(path, f"not valid YAML: {yaml_problem(exc)}") from None
    except NestedTooDeeply as exc:
        raise TokensFileError(path, str(exc)) from None
    document = {} if document is None else document
    if not isinstance(document, dict):
        raise TokensFileError(path, "expected a mapping holding 'tokens', a list of entries")
    listed = document.get("tokens") or []
    if not isinstance(listed, list):
        raise TokensFileError(path, "'tokens' should be a list of entries (name, sha256, role, business_units)")
    entries: list[TokenEntry] = []
    problems: list[str] = []
    first: dict[str, tuple[int, TokenEntry]] = {}  # each SHA-256's first entry, and where it is
    for index, entry in enumerate(listed):
        try:
            checked = TokenEntry.model_validate(entry)
        except ValidationError as exc:
            problems.extend(_entry_problems(index, exc))
        except RecursionError:  # an entry nested too deeply for pydantic's checks
            problems.append(f"tokens[{index}]: nested too deeply to check")
        else:
            entries.append(checked)
            earlier = first.setdefault(checked.sha256, (index, checked))
            if earlier[0] != index:
                problems.append(_listed_twice(earlier, (index, checked)))
    if problems:
        raise TokensFileError(path, "; ".join(problems))
    return entries


class TokenStore:
    """The configured tokens, looked up by hash."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._by_hash = {entry.sha256: entry for entry in entries}

    @classmethod
    def from_file(cls, path: str) -> TokenStore:
        """The tokens of the YAML file at ``path`` (none when ``path`` is empty); :class:`TokensFileError` naming the
        file and why when it cannot be read, an entry is refused or two entries hold the same SHA-256."""
        return cls(_read_entries(path) if path else [])

    def authenticate(self, token: str) -> Actor | None:
        """The principal of ``token``, or None. Compared in constant time."""
        digest = token_hash(token)
        for known, entry in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return Actor(name=entry.name, role=entry.role, business_units=frozenset(entry.business_units))
        return None
