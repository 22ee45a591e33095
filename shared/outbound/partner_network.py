"""A connection profile's network settings (TLS, proxy), resolved and turned into an SSL context.

:class:`PartnerNetwork` is what a request needs to know of its profile to be sent: its ``tls`` and its
``proxy`` as the catalog holds them (references unresolved; hashable, so it keys the session cache of
:mod:`shared.outbound.session_pool`). :func:`resolve` reads the references (``env:``/``file:``, the same
allow-lists as every secret) into :class:`ResolvedNetwork`, and :func:`ssl_context_of` builds the SSL
context. Every error names the profile field, never a value (a client key, a proxy password).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from dataclasses import dataclass, field

from pydantic import SecretStr

from shared.domain.catalog_objects import ConnectionProfile, ProxySettings, TlsSettings
from shared.domain.secret_references import SecretReferencePolicy, resolve_secret
from shared.errors import PermanentError

_VERSIONS = {"TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}


class NetworkSettingsError(PermanentError):
    """A profile's TLS or proxy settings cannot be used (a bad certificate, a key that does not match)."""


@dataclass(frozen=True)
class PartnerNetwork:
    """A profile's ``tls`` and ``proxy``, as written: the key of the session (and SSL context) they get."""

    tls: TlsSettings | None = None
    proxy: ProxySettings | None = None

    @classmethod
    def of(cls, profile: ConnectionProfile) -> PartnerNetwork | None:
        """The profile's network settings; None for a profile with neither (the shared default session)."""
        if profile.tls is None and profile.proxy is None:
            return None
        return cls(profile.tls, profile.proxy)


@dataclass(frozen=True)
class ResolvedNetwork:
    """:class:`PartnerNetwork` with its references read: PEM text and credentials (never printed)."""

    ca_bundle: str | None = None
    client_certificate: str | None = None
    client_key: str | None = field(default=None, repr=False)
    min_version: str = "TLS1.2"
    proxy_url: str | None = None
    proxy_username: str | None = None
    proxy_password: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """A digest of everything here: a rotated certificate or password (same references) changes it."""
        parts = [
            self.ca_bundle,
            self.client_certificate,
            self.client_key,
            self.min_version,
            self.proxy_url,
            self.proxy_username,
            self.proxy_password,
        ]
        digest = hashlib.sha256()
        for part in parts:
            digest.update(b"\x00" if part is None else b"\x01" + part.encode() + b"\x00")
        return digest.hexdigest()


def _read(value: str | SecretStr | None, what: str, policy: SecretReferencePolicy | None) -> str | None:
    if value is None:
        return None
    secret = value if isinstance(value, SecretStr) else SecretStr(value)
    try:
        return resolve_secret(secret, policy)
    except PermanentError as exc:  # the message names the reference, never a value
        raise NetworkSettingsError(f"connection profile {what}: {exc}") from None


def resolve(network: PartnerNetwork, policy: SecretReferencePolicy | None = None) -> ResolvedNetwork:
    """Read the references of ``network`` (with ``policy``, else the process's settings)."""
    tls, proxy = network.tls, network.proxy
    return ResolvedNetwork(
        ca_bundle=_read(tls.ca_bundle if tls else None, "tls.ca_bundle", policy),
        client_certificate=_read(tls.client_certificate if tls else None, "tls.client_certificate", policy),
        client_key=_read(tls.client_key if tls else None, "tls.client_key", policy),
        min_version=tls.min_version if tls else "TLS1.2",
        proxy_url=proxy.url if proxy else None,
        proxy_username=proxy.username if proxy else None,
        proxy_password=_read(proxy.password if proxy else None, "proxy.password", policy),
    )


def ssl_context_of(resolved: ResolvedNetwork) -> ssl.SSLContext:
    """The SSL context: the custom CA (else the system's), the client certificate, the minimum version."""
    context = ssl.create_default_context()
    if resolved.ca_bundle is not None:
        context = ssl.create_default_context(cadata=_certificates(resolved.ca_bundle, "tls.ca_bundle"))
    context.minimum_version = _VERSIONS[resolved.min_version]
    if resolved.client_certificate is not None and resolved.client_key is not None:
        _load_client_certificate(context, resolved.client_certificate, resolved.client_key)
    return context


def _certificates(pem: str, what: str) -> str:
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise NetworkSettingsError(f"connection profile {what}: not PEM certificates that can be read") from None
    return pem


def _load_client_certificate(context: ssl.SSLContext, certificate: str, key: str) -> None:
    """Load the certificate and key: ``ssl`` reads only files, so they are written to a private temporary
    directory (mode 0700, files 0600) and removed at once."""
    with tempfile.TemporaryDirectory(prefix="partner-tls-") as directory:
        certificate_path = os.path.join(directory, "certificate.pem")
        key_path = os.path.join(directory, "key.pem")
        for path, content in ((certificate_path, certificate), (key_path, key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(content)
        try:
            # No password callback: an encrypted key fails here instead of prompting on the terminal.
            context.load_cert_chain(certificate_path, key_path, password=lambda: b"")
        except (ssl.SSLError, ValueError):
            raise NetworkSettingsError(
                "connection profile tls.client_certificate/tls.client_key: cannot be loaded (not PEM, an "
                "encrypted key, or a key that does not match the certificate)"
            ) from None
