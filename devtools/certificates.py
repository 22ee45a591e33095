"""Certificates made on the spot for a TLS broker and its clients (trustme): a CA, a server, a client.

Files are written as PEM, which both sides read directly: the broker with ``ssl.keystore.type=PEM`` and
``ssl.truststore.type=PEM`` (its private key must be PKCS#8, hence the conversion below), the Python
clients with ``EXPORT_KAFKA_SSL_CA_FILE``, ``EXPORT_KAFKA_SSL_CERT_FILE`` and ``EXPORT_KAFKA_SSL_KEY_FILE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

#: The names the local broker is reached by: its certificate carries both.
BROKER_IDENTITIES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class KeyPair:
    """A certificate (with its chain) and its private key, as PEM files."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class TlsMaterial:
    """A CA, the broker's certificate it signed, and a client certificate it signed (for mutual TLS)."""

    ca: Path
    server: KeyPair
    client: KeyPair


def _pkcs8(key_pem: bytes, password: bytes | None = None) -> bytes:
    """``key_pem`` (trustme writes the traditional OpenSSL format) as PKCS#8, encrypted with ``password``."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _write(directory: Path, name: str, leaf: trustme.LeafCert, key_password: bytes | None) -> KeyPair:
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.certificate.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    pair.key.write_bytes(_pkcs8(leaf.private_key_pem.bytes(), key_password))
    pair.key.chmod(0o600)
    return pair


def make_tls_material(directory: Path, *, client_key_password: str | None = None) -> TlsMaterial:
    """Write a fresh CA, a broker certificate for 127.0.0.1/localhost and a client certificate into
    ``directory``; the client's key is encrypted with ``client_key_password`` when one is given."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA(organization_name="member-export test CA")
    ca = directory / "ca.crt"
    authority.cert_pem.write_to_path(str(ca))
    server = _write(directory, "broker", authority.issue_cert(*BROKER_IDENTITIES), None)
    client = _write(
        directory,
        "client",
        authority.issue_cert("exporter", common_name="exporter"),
        client_key_password.encode() if client_key_password else None,
    )
    return TlsMaterial(ca=ca, server=server, client=client)


def make_untrusted_ca(directory: Path) -> Path:
    """A CA file that signed nothing the broker holds: a client trusting only it must refuse the broker."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "other-ca.crt"
    trustme.CA(organization_name="some other CA").cert_pem.write_to_path(str(path))
    return path
