"""A partner speaking HTTPS and asking for a client certificate, with certificates made on the spot."""

from __future__ import annotations

import ssl
from pathlib import Path

from devtools.certificates import TlsMaterial, make_tls_material, make_untrusted_ca

__all__ = [
    "TlsMaterial",
    "client_common_name",
    "make_untrusted_ca",
    "mutual_tls_server_context",
    "partner_tls_material",
]


def partner_tls_material(directory: Path) -> TlsMaterial:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (CN ``exporter``) it signed."""
    return make_tls_material(directory)


def mutual_tls_server_context(
    material: TlsMaterial, maximum_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
) -> ssl.SSLContext:
    """The partner's side: its certificate, and a client certificate signed by the CA required.

    Up to TLS 1.2 (``maximum_version``), a missing client certificate fails the handshake itself; with TLS 1.3
    the client hears of it only when it reads (the server's alert, or a reset when it writes first).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(material.ca))
    context.maximum_version = maximum_version
    context.load_cert_chain(str(material.server.certificate), str(material.server.key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_common_name(certificate: dict[str, object] | None) -> str | None:
    """The common name of a peer certificate as ``ssl`` describes it (None without one)."""
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
