"""The one translation of the ``EXPORT_KAFKA_*`` connection settings into kafka-python's configuration.

Every producer, consumer and admin client the services, exportctl and the admin API build starts from
:func:`kafka_client_config`, so TLS and SASL apply to all of them alike.
"""

from __future__ import annotations

from typing import Any

from shared.kafka_settings import KafkaConnectionSettings


def bootstrap_servers(settings: KafkaConnectionSettings) -> list[str]:
    """``EXPORT_KAFKA_BOOTSTRAP_SERVERS`` as a list, blanks around the commas ignored."""
    return [server.strip() for server in settings.kafka_bootstrap_servers.split(",") if server.strip()]


#: The longest wait between a client's attempts at reaching a broker, and between its metadata requests while none
#: answers (doubling from 50 ms, jittered). kafka-python 3.0 defaults to 30 s: a consumer whose broker was back after
#: a 10 s restart reached it again about 10 s later and had its metadata 17 s after that (measured by a script, not
#: pinned by a test: where the jittered backoff falls decides it). Java's client: 1 s.
RECONNECT_BACKOFF_MAX_MS = 1_000


def kafka_client_config(settings: KafkaConnectionSettings) -> dict[str, Any]:
    """Bootstrap servers, security protocol, TLS files, SASL credentials and the reconnect backoff as kafka-python's
    keyword arguments (valid for ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``).

    The result holds the SASL password: pass it to a client, never log it.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": settings.kafka_security_protocol,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    if settings.kafka_uses_tls:
        config["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        if settings.kafka_ssl_ca_file is not None:
            config["ssl_cafile"] = str(settings.kafka_ssl_ca_file)
        if settings.kafka_ssl_cert_file is not None:
            config["ssl_certfile"] = str(settings.kafka_ssl_cert_file)
            # Without a key file, the certificate file holds the key too (load_cert_chain's convention).
            if settings.kafka_ssl_key_file is not None:
                config["ssl_keyfile"] = str(settings.kafka_ssl_key_file)
            if settings.kafka_ssl_key_password is not None:
                config["ssl_password"] = settings.kafka_ssl_key_password.get_secret_value()
    if settings.kafka_uses_sasl:
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = settings.kafka_sasl_password_value()
    return config
