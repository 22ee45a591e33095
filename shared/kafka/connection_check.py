"""Say at start, in one line naming the setting, why Kafka will not take this service's connections.

kafka-python retries a refused TLS handshake or SASL login for ever (and may report a refused SCRAM login
as a mere disconnection), so a wrong password or an untrusted certificate would leave a service retrying
silently. :func:`check_kafka_connection` instead speaks the first steps of the protocol itself, with a
bounded timeout, on one connection to each bootstrap server until one answers: the TLS handshake (the
same context the clients build), then either the SASL handshake and login (PLAIN or SCRAM, one round
trip each) or an ApiVersions request. What Kafka refuses becomes a :class:`KafkaSetupError` naming the
``EXPORT_KAFKA_*`` setting to fix. A broker that cannot be reached at all is not its business: the
clients wait for it as they always did.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import struct
from dataclasses import dataclass

from kafka.errors import KafkaError
from kafka.net.sasl.scram import ScramClient

from shared.kafka.client_config import bootstrap_servers
from shared.kafka_settings import KafkaConnectionSettings, split_address

#: How long the whole check may take per bootstrap server (connection, TLS, SASL).
CHECK_TIMEOUT_SECONDS = 10.0

_METADATA, _API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 3, 18, 17, 36
#: The Metadata versions whose request is the body below (v4 to v7); a broker offering none is not asked.
_METADATA_VERSIONS = range(4, 8)
_UNSUPPORTED_SASL_MECHANISM, _SASL_AUTHENTICATION_FAILED, _ILLEGAL_SASL_STATE = 33, 58, 34
_CLIENT_ID = b"member-export-check"
_PROTOCOL_HINT = "check EXPORT_KAFKA_SECURITY_PROTOCOL (and EXPORT_KAFKA_BOOTSTRAP_SERVERS: the listener's port)"


class KafkaSetupError(KafkaError):  # type: ignore[misc]  # kafka-python has no type hints
    """Kafka refuses this service's settings (credentials, certificates, topics): fix them, then start again.

    A ``KafkaError``, so the callers that report Kafka's failures already report this one; its message
    names the setting at fault and holds no secret.
    """

    retriable = False

    def __str__(self) -> str:
        # KafkaError prefixes its class name; the message alone is what an operator reads.
        return str(self.args[0]) if self.args else ""


class _Unreachable(Exception):
    """Nothing accepted a connection at that address: not a settings problem this check can name."""


@dataclass
class _Wire:
    """One connection speaking Kafka's framing: size-prefixed requests with a v1 header."""

    sock: socket.socket
    server: str
    correlation: itertools.count[int]

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        correlation_id = next(self.correlation)
        header = struct.pack(">hhih", api_key, version, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
        self.sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        size = struct.unpack(">i", self._read(4))[0]
        response = self._read(size)
        if struct.unpack(">i", response[:4])[0] != correlation_id:
            raise KafkaSetupError(f"{self.server} does not answer as Kafka does: {_PROTOCOL_HINT}")
        return response[4:]

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionResetError("closed by the server")
            data += chunk
        return data


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


def _sasl_authenticate_response(body: bytes) -> tuple[int, str, bytes]:
    """SaslAuthenticate v0's error code, error message and server bytes."""
    error_code, message_length = struct.unpack(">hh", body[:4])
    offset = 4 + max(message_length, 0)
    message = body[4:offset].decode(errors="replace") if message_length > 0 else ""
    (auth_length,) = struct.unpack(">i", body[offset : offset + 4])
    return error_code, message, body[offset + 4 : offset + 4 + max(auth_length, 0)]


def tls_context(settings: KafkaConnectionSettings) -> ssl.SSLContext:
    """The TLS context the clients build from these settings (kafka-python's own recipe); a file that does not
    load becomes a :class:`KafkaSetupError` naming its setting."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.kafka_ssl_check_hostname
    try:
        if settings.kafka_ssl_ca_file is not None:
            context.load_verify_locations(str(settings.kafka_ssl_ca_file))
        else:
            context.load_default_certs()
    except (ssl.SSLError, OSError) as exc:
        raise KafkaSetupError(
            f"EXPORT_KAFKA_SSL_CA_FILE: {settings.kafka_ssl_ca_file} holds no usable PEM CA certificate "
            f"({exc.__class__.__name__})"
        ) from None
    if settings.kafka_ssl_cert_file is not None:
        password = settings.kafka_ssl_key_password
        try:
            context.load_cert_chain(
                str(settings.kafka_ssl_cert_file),
                str(settings.kafka_ssl_key_file) if settings.kafka_ssl_key_file else None,
                password.get_secret_value() if password is not None else None,
            )
        except (ssl.SSLError, OSError) as exc:
            raise KafkaSetupError(
                "the client certificate does not load: EXPORT_KAFKA_SSL_CERT_FILE and EXPORT_KAFKA_SSL_KEY_FILE "
                "must be PEM files of a certificate and its private key, and EXPORT_KAFKA_SSL_KEY_PASSWORD the key's "
                f"password if it is encrypted ({exc.__class__.__name__})"
            ) from None
    return context


def _connect(settings: KafkaConnectionSettings, server: str, timeout: float, context: ssl.SSLContext | None) -> _Wire:
    host, port = split_address(server)  # as the clients read it: a SASL_SSL:// prefix dropped
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError) as exc:
        raise _Unreachable(f"{server}: {getattr(exc, 'strerror', None) or exc}") from None
    if context is None:
        return _Wire(sock, server, itertools.count(1))
    try:
        return _Wire(context.wrap_socket(sock, server_hostname=host), server, itertools.count(1))
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        if exc.verify_code == 62 or "hostname" in str(exc.verify_message).lower():  # X509_V_ERR_HOSTNAME_MISMATCH
            raise KafkaSetupError(
                f"Kafka's certificate at {server} does not name {host} ({exc.verify_message}): connect by a name "
                "the certificate holds (EXPORT_KAFKA_BOOTSTRAP_SERVERS) or set EXPORT_KAFKA_SSL_CHECK_HOSTNAME=false"
            ) from None
        trusted = settings.kafka_ssl_ca_file or "the system's CAs"
        raise KafkaSetupError(
            f"Kafka's certificate at {server} is not trusted ({exc.verify_message}): EXPORT_KAFKA_SSL_CA_FILE "
            f"({trusted}) must hold the CA that signed it"
        ) from None
    except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
        sock.close()
        raise _tls_refusal(server, exc) from None


def _tls_refusal(server: str, exc: BaseException) -> KafkaSetupError:
    """What an SSL error during or right after the handshake says about the settings."""
    reason = str(getattr(exc, "reason", None) or exc)
    if "ALERT" in reason.upper():  # the broker refused this side: mostly its certificate (mutual TLS)
        return KafkaSetupError(
            f"Kafka at {server} refused the TLS connection ({reason}): it wants a client certificate it trusts, "
            "check EXPORT_KAFKA_SSL_CERT_FILE and EXPORT_KAFKA_SSL_KEY_FILE"
        )
    return KafkaSetupError(f"Kafka at {server} does not answer TLS ({reason}): {_PROTOCOL_HINT}")


def _sasl_login(settings: KafkaConnectionSettings, wire: _Wire) -> None:
    mechanism = settings.kafka_sasl_mechanism or ""
    username, password = settings.kafka_sasl_username or "", settings.kafka_sasl_password_value() or ""
    body = wire.request(_SASL_HANDSHAKE, 1, _string(mechanism))
    (error_code,) = struct.unpack(">h", body[:2])
    if error_code == _UNSUPPORTED_SASL_MECHANISM:
        (count,) = struct.unpack(">i", body[2:6])
        offered, offset = [], 6
        for _ in range(max(count, 0)):
            (length,) = struct.unpack(">h", body[offset : offset + 2])
            offered.append(body[offset + 2 : offset + 2 + length].decode())
            offset += 2 + length
        raise KafkaSetupError(
            f"Kafka at {wire.server} does not offer EXPORT_KAFKA_SASL_MECHANISM={mechanism} "
            f"(it offers {', '.join(offered) or 'none'})"
        )
    if error_code == _ILLEGAL_SASL_STATE or error_code != 0:
        raise KafkaSetupError(f"Kafka at {wire.server} does not take SASL on this listener: {_PROTOCOL_HINT}")
    refused = KafkaSetupError(
        f"Kafka at {wire.server} refused the SASL credentials of '{username}' ({mechanism}): check "
        "EXPORT_KAFKA_SASL_USERNAME and EXPORT_KAFKA_SASL_PASSWORD (or EXPORT_KAFKA_SASL_PASSWORD_FILE)"
    )
    if mechanism == "PLAIN":
        error_code, _, _ = _sasl_authenticate_response(
            wire.request(_SASL_AUTHENTICATE, 0, _bytes(b"\0" + username.encode() + b"\0" + password.encode()))
        )
        if error_code:
            raise refused
        return
    scram = ScramClient(username, password, mechanism)
    error_code, _, server_first = _sasl_authenticate_response(
        wire.request(_SASL_AUTHENTICATE, 0, _bytes(scram.first_message()))
    )
    if error_code:
        raise refused
    scram.process_server_first_message(server_first)
    error_code, _, server_final = _sasl_authenticate_response(
        wire.request(_SASL_AUTHENTICATE, 0, _bytes(scram.final_message()))
    )
    if error_code:
        raise refused
    try:
        scram.process_server_final_message(server_final)
    except (ValueError, KeyError):
        raise KafkaSetupError(
            f"Kafka at {wire.server} did not prove it knows this SCRAM user: is it the broker meant?"
        ) from None


def _request_metadata(wire: _Wire) -> None:
    """ApiVersions, then a Metadata request for no topic: a SASL listener answers the first and closes on the
    second, which is how a client without SASL learns that it needs it."""
    body = wire.request(_API_VERSIONS, 0, b"")
    (count,) = struct.unpack(">i", body[2:6])
    for index in range(max(count, 0)):
        api_key, low, high = struct.unpack(">hhh", body[6 + 6 * index : 12 + 6 * index])
        if api_key == _METADATA:
            usable = [v for v in _METADATA_VERSIONS if low <= v <= high]
            if usable:
                wire.request(_METADATA, usable[-1], struct.pack(">i?", 0, False))  # no topics, create none
            return


def _check_server(
    settings: KafkaConnectionSettings, server: str, timeout: float, context: ssl.SSLContext | None
) -> None:
    wire = _connect(settings, server, timeout, context)
    try:
        if settings.kafka_uses_sasl:
            _sasl_login(settings, wire)
        else:
            _request_metadata(wire)
    except ssl.SSLError as exc:  # TLS 1.3: a refused client certificate is said after the handshake
        raise _tls_refusal(server, exc) from None
    except (ConnectionError, TimeoutError, struct.error) as exc:
        # A TLS listener spoken to in clear text (or a SASL one without SASL) closes the connection.
        raise KafkaSetupError(
            f"Kafka at {server} closed the connection before answering ({exc.__class__.__name__}): {_PROTOCOL_HINT}"
        ) from None
    finally:
        wire.sock.close()


def check_kafka_connection(settings: KafkaConnectionSettings, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
    """Return once a bootstrap server accepted a connection made with these settings (TLS, SASL login), or
    when none can be reached at all (the clients then wait for Kafka as usual); raise
    :class:`KafkaSetupError` naming the setting when Kafka refuses them."""
    context = tls_context(settings) if settings.kafka_uses_tls else None
    for server in bootstrap_servers(settings):
        try:
            _check_server(settings, server, timeout, context)
            return
        except _Unreachable:
            continue
