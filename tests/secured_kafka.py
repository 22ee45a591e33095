"""A real broker with secured listeners for the Kafka security tests: SSL (mutual TLS), SASL_SSL and
SASL_PLAINTEXT (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN), certificates made on the spot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devtools.certificates import TlsMaterial, make_tls_material, make_untrusted_ca
from devtools.kafka_broker import BrokerTls, LocalKafka, SaslUser

USER = SaslUser("exporter", "exporter-Pa55word")
#: The client key is encrypted: EXPORT_KAFKA_SSL_KEY_PASSWORD is exercised too.
CLIENT_KEY_PASSWORD = "client-key-pa55"


@dataclass
class SecuredKafka:
    broker: LocalKafka
    tls: TlsMaterial
    untrusted_ca: Path
    work_dir: Path

    def env(self, protocol: str, mechanism: str = "SCRAM-SHA-512", *, password_file: bool = False) -> dict[str, str]:
        """The ``EXPORT_KAFKA_*`` variables of a client of the ``protocol`` listener (mutual TLS on SSL)."""
        env = {"EXPORT_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers_for(protocol)}
        env["EXPORT_KAFKA_SECURITY_PROTOCOL"] = protocol
        if protocol in ("SSL", "SASL_SSL"):
            env["EXPORT_KAFKA_SSL_CA_FILE"] = str(self.tls.ca)
        if protocol == "SSL":
            env["EXPORT_KAFKA_SSL_CERT_FILE"] = str(self.tls.client.certificate)
            env["EXPORT_KAFKA_SSL_KEY_FILE"] = str(self.tls.client.key)
            env["EXPORT_KAFKA_SSL_KEY_PASSWORD"] = CLIENT_KEY_PASSWORD
        if protocol.startswith("SASL_"):
            env["EXPORT_KAFKA_SASL_MECHANISM"] = mechanism
            env["EXPORT_KAFKA_SASL_USERNAME"] = USER.name
            if password_file:
                path = self.work_dir / "sasl-password"
                path.write_text(USER.password + "\n")  # as `echo` writes a Secret: the line break is not part of it
                env["EXPORT_KAFKA_SASL_PASSWORD_FILE"] = str(path)
            else:
                env["EXPORT_KAFKA_SASL_PASSWORD"] = USER.password
        return env


def start_secured_kafka(work_dir: Path) -> SecuredKafka:
    """Make the certificates and start the broker (stop it with ``.broker.stop()``)."""
    tls = make_tls_material(work_dir / "tls", client_key_password=CLIENT_KEY_PASSWORD)
    broker = LocalKafka(
        work_dir / "kafka",
        tls=BrokerTls(certificate_chain=tls.server.certificate, key=tls.server.key, client_ca=tls.ca),
        sasl_users=[USER],
    )
    broker.start()
    return SecuredKafka(broker, tls, make_untrusted_ca(work_dir / "other"), work_dir)
