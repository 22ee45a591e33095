"""Whether PEM text given in a profile holds certificates that can be read. Pure (parsing, no I/O)."""

from __future__ import annotations

import re
import ssl

#: Any PEM private key block (PKCS#8, encrypted PKCS#8, RSA, EC, DSA, OpenSSH...).
_PRIVATE_KEY_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")

#: Why certificate text holding a private key is refused (it never quotes the text).
PRIVATE_KEY_MISPLACED = "holds a private key: a private key belongs in tls.client_key, not here"


def holds_private_key(text: str) -> bool:
    """Whether ``text`` holds a PEM private key block (as a pasted ``client.pem``, certificate and key, does)."""
    return _PRIVATE_KEY_BLOCK.search(text) is not None


def certificates_problem(pem: str) -> str | None:
    """Why ``pem`` is not one or more readable PEM certificates, or None (the text is never quoted).

    A private key among the certificates is refused: Python's ssl would skip it, and the text, stored and
    answered as a public certificate, would give the key away.
    """
    if holds_private_key(pem):
        return PRIVATE_KEY_MISPLACED
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        return "not PEM certificate(s) that can be read"
    return None
