"""Literal secrets encrypted at rest in the catalog, with cryptography's Fernet (AES-128-CBC + HMAC-SHA256).

The keys come from ``EXPORT_CATALOG_ENCRYPTION_KEYS`` (comma-separated Fernet keys, e.g. from a
Kubernetes Secret): the first encrypts, every one decrypts (``MultiFernet``), so a new key is put first
and the old ones kept until ``exportctl secrets rotate`` has re-encrypted every stored secret with it.
No message ever holds a key or a secret.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from shared.errors import PermanentError

KEYS_VARIABLE = "EXPORT_CATALOG_ENCRYPTION_KEYS"


class SecretsUnreadable(PermanentError):
    """An encrypted secret that cannot be decrypted: no key is configured, or none of the keys fits."""


class SecretCipher:
    """Encrypts with the first key, decrypts with any of them."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError(f"{KEYS_VARIABLE} holds no key")
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key))
            except ValueError:  # never the key in the message
                raise ValueError(
                    f"key {position} of {KEYS_VARIABLE} is not a Fernet key (32 url-safe base64-encoded bytes: "
                    "make one with `exportctl secrets generate-key`)"
                ) from None
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)

    @classmethod
    def from_setting(cls, keys: SecretStr | str) -> SecretCipher | None:
        """The cipher of the comma-separated keys, or None when there is none (secrets then stay in plain text)."""
        raw = keys.get_secret_value() if isinstance(keys, SecretStr) else keys
        listed = [key.strip() for key in raw.split(",") if key.strip()]
        return cls(listed) if listed else None

    @staticmethod
    def generate_key() -> str:
        """A new random Fernet key."""
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: str) -> str:
        """``plaintext`` encrypted with the current (first) key."""
        return self._all.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """The plaintext of ``token``; :class:`SecretsUnreadable` when none of the keys decrypts it."""
        try:
            return self._all.decrypt(token.encode()).decode()
        except (InvalidToken, UnicodeError):
            raise SecretsUnreadable(
                f"a secret cannot be decrypted with any key of {KEYS_VARIABLE} (was it encrypted with a key "
                "that has been removed since?)"
            ) from None

    def is_current(self, token: str) -> bool:
        """Whether ``token`` was encrypted with the current key (rotation done for it)."""
        try:
            self._primary.decrypt(token.encode())
        except InvalidToken:
            return False
        return True


def no_key(token: str) -> str:
    """What reading an encrypted secret does without :data:`KEYS_VARIABLE`: refuse, saying so."""
    raise SecretsUnreadable(f"a secret is stored encrypted and {KEYS_VARIABLE} is not set")
