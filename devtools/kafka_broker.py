"""A real single-node Apache Kafka broker (KRaft mode) from the jars on Maven Central.

No Docker engine and no Apache download site are needed: ``mvn dependency:copy-dependencies`` fetches
``org.apache.kafka:kafka_2.13`` and a log4j2 binding once into a cache directory, then the broker runs
as a plain ``java`` process bound to 127.0.0.1.

Besides its PLAINTEXT listener (what the demo and most tests use), a broker may be given secured ones:
an SSL listener that requires a client certificate (mutual TLS), and SASL_SSL and SASL_PLAINTEXT
listeners whose users (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN) are created when it is formatted. The
controller and inter-broker traffic stay on PLAINTEXT, 127.0.0.1 only.

Command line (used by ``deploy/local/kafka.sh``)::

    python -m devtools.kafka_broker start --port 9092 --dir .local/kafka
    python -m devtools.kafka_broker stop --dir .local/kafka
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devtools.prerequisites import require_java_and_maven
from devtools.processes import Managed, free_port, port_open, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
POM_DIR = REPO_ROOT / "deploy" / "local" / "kafka"
CACHE_DIR = Path(os.environ.get("MEMBER_EXPORT_CACHE", Path.home() / ".cache" / "member-export"))
READY_LINE = "Kafka Server started"
#: A broker restarted after a SIGKILL waits, before it serves, until the controller (restarted with it) lets the
#: registration of its killed incarnation expire: ``broker.session.timeout.ms``, 9 s by default. A broker a test
#: kills and restarts on purpose is given 2 s (its heartbeats every 0.5 s).
QUICK_RESTART = {"broker.session.timeout.ms": "2000", "broker.heartbeat.interval.ms": "500"}


def random_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` prints it (Kafka's ``Uuid``: 16 random bytes in URL-safe
    base64 without padding, never starting with ``-``), without starting a JVM for it (0.6 s a broker)."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def fetch_kafka_jars() -> Path:
    """Return the directory of broker jars, fetching them from Maven Central the first time.

    Processes that start brokers at once (the workers of a parallel test run) fetch one at a time: the first
    fetches, the others wait for it and find the jars complete. Unlocked, one removed or rewrote the jars another
    was fetching, or a broker started on a half-written directory."""
    _, mvn = require_java_and_maven()
    libs = CACHE_DIR / "kafka-libs"
    marker = libs / ".complete"
    pom = POM_DIR / "pom.xml"

    def complete() -> bool:
        # The marker carries the pom's contents so that a version change in the pom refetches.
        return marker.exists() and marker.read_text() == pom.read_text()

    if complete():
        return libs
    libs.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "kafka-libs.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if complete():  # fetched by another process while this one waited
            return libs
        marker.unlink(missing_ok=True)
        for old in libs.glob("*.jar"):
            old.unlink()
        subprocess.run(
            [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={libs}"],
            check=True,
        )
        marker.write_text(pom.read_text())
    return libs


#: The SASL mechanisms the secured listeners offer; every user gets credentials for each.
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_MECHANISMS = (*SCRAM_MECHANISMS, "PLAIN")


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS identity (PEM files) and the CA that signs the client certificates it accepts."""

    certificate_chain: Path
    key: Path  #: PKCS#8, unencrypted
    client_ca: Path
    #: Whether the SSL listener demands a client certificate (``ssl.client.auth``); SASL_SSL never does.
    client_auth: Literal["required", "requested", "none"] = "required"


@dataclass(frozen=True)
class SaslUser:
    """A user the SASL listeners accept, with one password for every mechanism."""

    name: str
    password: str

    def __post_init__(self) -> None:
        # Written into the storage tool's --add-scram argument and a JAAS line, both without an escape.
        if any(c in self.name + self.password for c in '"\\[],= \n'):
            raise ValueError("SASL test users' names and passwords may not hold quotes, brackets, commas or spaces")


@dataclass(frozen=True)
class Listeners:
    """The ports of the broker's listeners; a secured one is None when the broker does not have it."""

    plaintext: int
    controller: int
    ssl: int | None = None
    sasl_ssl: int | None = None
    sasl_plaintext: int | None = None

    def secured(self) -> dict[str, int]:
        """The secured listeners by name (the name is also their security protocol)."""
        ports = {"SSL": self.ssl, "SASL_SSL": self.sasl_ssl, "SASL_PLAINTEXT": self.sasl_plaintext}
        return {name: port for name, port in ports.items() if port is not None}


def _security_properties(tls: BrokerTls | None, users: Sequence[SaslUser], keystore: Path) -> list[str]:
    """The properties of the secured listeners: the PEM key and trust stores, client auth, SASL's JAAS lines."""
    lines = []
    if tls is not None:
        lines += [
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={tls.client_ca}",
            f"listener.name.ssl.ssl.client.auth={tls.client_auth}",
            "listener.name.sasl_ssl.ssl.client.auth=none",
        ]
    if users:
        lines.append(f"sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}")
        plain_users = " ".join(f'user_{u.name}="{u.password}"' for u in users)
        for listener in ("sasl_ssl", "sasl_plaintext"):
            for mechanism in SCRAM_MECHANISMS:
                lines.append(
                    f"listener.name.{listener}.{mechanism.lower()}.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
            lines.append(
                f"listener.name.{listener}.plain.sasl.jaas.config="
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            )
    return lines


def server_properties(
    *,
    port: int,
    controller_port: int,
    log_dir: Path,
    advertised_port: int | None = None,
    listeners: Listeners | None = None,
    tls: BrokerTls | None = None,
    sasl_users: Sequence[SaslUser] = (),
    keystore: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The broker configuration of a single-node combined broker+controller on 127.0.0.1; clients are told to
    connect to ``advertised_port`` (a proxy in front of it, in the chaos suite) when given. ``listeners``
    adds the secured listeners it has ports for, configured by ``tls`` (its PEM ``keystore``) and
    ``sasl_users``; ``extra`` adds (or overrides) properties."""
    listeners = listeners or Listeners(plaintext=port, controller=controller_port)
    secured = listeners.secured()
    bound = [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{controller_port}"]
    advertised = [f"PLAINTEXT://127.0.0.1:{advertised_port or port}"]
    protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
    for name, secured_port in secured.items():
        bound.append(f"{name}://127.0.0.1:{secured_port}")
        advertised.append(f"{name}://127.0.0.1:{secured_port}")
        protocols.append(f"{name}:{name}")
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
            f"listeners={','.join(bound)}",
            f"advertised.listeners={','.join(advertised)}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listener.security.protocol.map={','.join(protocols)}",
            *(_security_properties(tls, sasl_users, keystore or log_dir / "keystore.pem") if secured else []),
            f"log.dirs={log_dir}",
            "num.partitions=6",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=6",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            *(f"{name}={value}" for name, value in (extra or {}).items()),
            "",
        ]
    )


class LocalKafka(Managed):
    """A broker process owned by this object: ``start()`` returns once it accepts clients.

    ``tls`` adds an SSL listener (client certificates as ``tls.client_auth`` says); ``sasl_users`` adds a
    SASL_PLAINTEXT listener, and with ``tls`` a SASL_SSL one too, that accept these users. ``properties`` adds
    broker properties (:data:`QUICK_RESTART`: a restart after :meth:`kill` ready in seconds).
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        port: int | None = None,
        advertised_port: int | None = None,
        *,
        tls: BrokerTls | None = None,
        sasl_users: Sequence[SaslUser] = (),
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="kafka-"))
        self.temporary_dir = None if work_dir else self.work_dir
        self.port = port or free_port()
        self.controller_port = free_port()
        #: Where clients are told to connect (a proxy in front of the broker), if not to the broker's own port.
        self.advertised_port = advertised_port
        self.tls = tls
        self.sasl_users = tuple(sasl_users)
        self.properties = dict(properties or {})
        self.listeners = Listeners(
            plaintext=self.port,
            controller=self.controller_port,
            ssl=free_port() if tls else None,
            sasl_ssl=free_port() if tls and sasl_users else None,
            sasl_plaintext=free_port() if sasl_users else None,
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port or self.port}"

    def bootstrap_servers_for(self, protocol: str) -> str:
        """The bootstrap address of the listener of ``protocol`` (PLAINTEXT, SSL, SASL_SSL, SASL_PLAINTEXT)."""
        if protocol == "PLAINTEXT":
            return self.bootstrap_servers
        port = self.listeners.secured().get(protocol)
        if port is None:
            raise ValueError(f"this broker has no {protocol} listener")
        return f"127.0.0.1:{port}"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "broker.log"

    def start(self, timeout: float = 120.0, *, keep_data: bool = False) -> LocalKafka:
        """Start the broker and return once it accepts clients. ``keep_data``: start again on the data this
        object's broker left (a restart after :meth:`kill`, same ports); otherwise on a fresh data directory."""
        java, _ = require_java_and_maven()
        libs = fetch_kafka_jars()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        base = [
            java,
            "-Xms256m",
            "-Xmx768m",
            f"-Dlog4j2.configurationFile={POM_DIR / 'log4j2.yaml'}",
            "-cp",
            f"{libs}/*",
        ]
        if not (keep_data and (self.work_dir / "data" / "meta.properties").exists()):
            self._format(base)
        self._launch(base, timeout)
        return self

    def _format(self, base: list[str]) -> None:
        # A fresh broker: a data directory formatted by an earlier one (another cluster id and controller
        # port) would make the format below fail.
        shutil.rmtree(self.work_dir / "data", ignore_errors=True)
        keystore = self.work_dir / "keystore.pem"
        if self.tls is not None:
            # A PEM key store is one file holding the private key and the certificate chain.
            keystore.write_bytes(self.tls.key.read_bytes() + self.tls.certificate_chain.read_bytes())
            keystore.chmod(0o600)
        props = self.work_dir / "server.properties"
        props.write_text(
            server_properties(
                port=self.port,
                controller_port=self.controller_port,
                log_dir=self.work_dir / "data",
                advertised_port=self.advertised_port,
                listeners=self.listeners,
                tls=self.tls,
                sasl_users=self.sasl_users,
                keystore=keystore,
                extra=self.properties,
            )
        )
        cluster_id = random_cluster_id()
        # SCRAM credentials live in the cluster metadata: the storage tool writes them at format time.
        scram = [
            arg
            for user in self.sasl_users
            for mechanism in SCRAM_MECHANISMS
            for arg in ("--add-scram", f"{mechanism}=[name={user.name},password={user.password}]")
        ]
        command = [
            *base,
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            cluster_id,
            "-c",
            str(props),
            *scram,
        ]
        # The storage tool failed once in a fresh-clone CI (session 48, exit 1, its output not kept): tried 3 times,
        # a partly formatted directory removed between, and its output said if it still fails.
        for _attempt in range(3):
            formatted = subprocess.run(command, capture_output=True, check=False)
            if formatted.returncode == 0:
                return
            shutil.rmtree(self.work_dir / "data", ignore_errors=True)
        output = (formatted.stdout + formatted.stderr).decode(errors="replace")[-2000:]
        raise RuntimeError(f"kafka-storage format exited {formatted.returncode} three times: {output}")

    def _launch(self, base: list[str], timeout: float) -> None:
        props = self.work_dir / "server.properties"
        started_at = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [*base, "kafka.Kafka", str(props)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        (self.work_dir / "broker.pid").write_text(str(self.process.pid))

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Kafka broker exited early; see {self.log_file}")
            with self.log_file.open("rb") as log:
                log.seek(started_at)  # this start's lines only (a restart appends to the same log)
                started = READY_LINE.encode() in log.read()
            return started and port_open(self.port)

        wait_until(ready, timeout=timeout, interval=0.25, what=f"Kafka on {self.bootstrap_servers}")

    def kill(self) -> None:
        """SIGKILL the broker, as a crash or an evicted pod would end it (its data stays for a restart)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP the broker: it holds its connections but answers nothing (a long GC pause, a frozen VM)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused broker."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused broker would not see the SIGTERM
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _stop_pid_file(work_dir: Path, timeout: float = 30.0) -> None:
    pid_file = work_dir / "broker.pid"
    if not pid_file.exists():
        print("no broker running from", work_dir)
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    print("Kafka stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["fetch", "start", "stop"])
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".local" / "kafka")
    args = parser.parse_args(argv)
    if args.action == "fetch":
        print(fetch_kafka_jars())
    elif args.action == "start":
        broker = LocalKafka(args.dir, args.port).start()
        print(f"Kafka ready on {broker.bootstrap_servers} (log: {broker.log_file})")
    else:
        _stop_pid_file(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
