"""Secret values in connection profiles: a literal, or a reference resolved only at dispatch time."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from shared.errors import PermanentError


class UnresolvableSecret(PermanentError):
    """A secret reference names an environment variable or file that is not there."""


def resolve_secret(value: SecretStr) -> str:
    """Resolve ``env:NAME`` and ``file:PATH`` references; any other value is the secret itself.

    The error names the reference, never a secret value.
    """
    raw = value.get_secret_value()
    if raw.startswith("env:"):
        name = raw[4:]
        if name not in os.environ:
            raise UnresolvableSecret(f"secret reference env:{name} names an unset environment variable")
        return os.environ[name]
    if raw.startswith("file:"):
        path = Path(raw[5:])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise UnresolvableSecret(f"secret reference file:{path} cannot be read ({exc.strerror})") from None
    return raw
