"""Whether PEM text given in a profile holds certificates that can be read. Pure (parsing, no I/O)."""

from __future__ import annotations

import ssl


def certificates_problem(pem: str) -> str | None:
    """Why ``pem`` is not one or more readable PEM certificates, or None (the text is never quoted)."""
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        return "not PEM certificate(s) that can be read"
    return None
