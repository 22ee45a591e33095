"""Session-wide real infrastructure: one Kafka broker and one PostgreSQL server per test session.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` when set (use that cluster); else testcontainers' Kafka in KRaft mode
when a Docker engine answers; else a local broker from the Maven Central jars. PostgreSQL likewise:
``EXPORT_TEST_POSTGRES_URL``, else testcontainers, else a throwaway cluster from Debian's binaries.
Tests isolate themselves with a topic prefix and a database of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import sqlalchemy as sa

from shared.catalog import CatalogStores
from shared.kafka.socket_leaks import close_leaked_sockets
from shared.settings import CommonSettings
from shared.stack_dumps import STACK_DUMP_SIGNAL

# Hypothesis fails a test whose example took over 200 ms once and less when run again ("Unreliable test timings"):
# a guard against slow tests, not a behaviour of ours, and one the load of the machine trips. On two cores with the
# suite's other worker beside it (``make test`` runs two), test_extraction_pieces.py's encoding property took 292 ms
# once (0.5 ms again) and failed the run. The suite's properties run with no deadline, as its fuzz ones already did.
hypothesis.settings.register_profile("member-export", deadline=None)
hypothesis.settings.load_profile("member-export")

# The tests' own kafka-python clients too (some are built without shared.kafka): no socket of theirs may be left
# to be finalized, with a ResourceWarning, in whichever later test the collector runs.
close_leaked_sockets()


def _docker_answers() -> bool:
    """True when a Docker engine accepts connections (DOCKER_HOST, or the default Unix socket)."""
    if os.environ.get("DOCKER_HOST"):
        return True
    sock_path = "/var/run/docker.sock"
    if not os.path.exists(sock_path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex(sock_path) == 0


#: The session's own servers and their ports, printed at the end of the run: an unclosed socket reported by the
#: suite (``raddr=('127.0.0.1', <port>)``) is matched to the server it was connected to.
SESSION_SERVERS: dict[str, str] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """No test module imports a service's entry module (``services.<name>.__main__``): it reserves the stack-dump
    signal as it is imported, blocked in pytest then, and in every process the tests start (inherited), so a test
    of the signal in a process of its own would not see what a service's process sees."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    if STACK_DUMP_SIGNAL in blocked:
        raise pytest.UsageError(
            "a test module imported a service's entry module (services.<name>.__main__) while being collected: "
            "import it where it runs (see tests/e2e/scheduler_ahead.py)"
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A pytest-xdist worker hands its servers to the controller, which prints them (``pytest_testnodedown``)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["session_servers"] = dict(SESSION_SERVERS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller of a parallel run (pytest-xdist) collects each worker's servers, named by the worker."""
    servers = getattr(node, "workeroutput", {}).get("session_servers", {})
    for name, where in servers.items():
        SESSION_SERVERS[f"{node.gateway.id} {name}"] = where


def _distribution_scope(nodeid: str) -> str:
    """The unit of work a parallel run gives one worker for ``nodeid``: its test file (its module-scoped fixtures,
    e2e pipelines among them, started once; its tests in their order), except the browser tests, all on one
    worker: they share one console stack and one Chromium (package-scoped, ``tests/browser/conftest.py``), which a
    second worker would start again, beside it, on the same two cores."""
    path = nodeid.split("::", 1)[0]
    return "tests/browser" if path.startswith("tests/browser/") else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` (``make test``): pytest-xdist's by-file scheduling, with :func:`_distribution_scope`'s
    one exception. Any other ``--dist`` is pytest-xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _distribution_scope(nodeid)

    return FileScheduling(config, log)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SESSION_SERVERS:
        servers = ", ".join(f"{name} {where}" for name, where in sorted(SESSION_SERVERS.items()))
        terminalreporter.write_line(f"session servers: {servers}")


@pytest.fixture(autouse=True)
def _no_exportctl_contexts(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """exportctl run in-process (or by a test's subprocess) never reads the developer's own contexts."""
    monkeypatch.setenv("EXPORTCTL_CONFIG", str(tmp_path_factory.getbasetemp() / "no-exportctl-config.yaml"))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """host:port of a real Kafka broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
    else:
        from devtools.kafka_broker import LocalKafka

        with LocalKafka() as broker:
            SESSION_SERVERS["kafka"] = f"{broker.bootstrap_servers} (controller {broker.listeners.controller})"
            yield broker.bootstrap_servers
            # Its data is thrown away: a SIGKILL, not a controlled shutdown that closes every partition the
            # session's tests created (seconds at the end of a CI run, after its last test).
            broker.kill()


def _database_creator(server_url: str) -> Callable[[], str]:
    """A function that creates a new database on the server at ``server_url`` and returns its URL."""
    base_url = sa.make_url(server_url)

    def create() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return base_url.set(database=name).render_as_string(hide_password=False)

    return create


@pytest.fixture(scope="session")
def postgres_database_factory() -> Iterator[Callable[[], str]]:
    """Creates a fresh PostgreSQL database per call and returns its SQLAlchemy URL."""
    if os.environ.get("EXPORT_TEST_POSTGRES_URL"):
        yield _database_creator(os.environ["EXPORT_TEST_POSTGRES_URL"])
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="psycopg") as container:
            yield _database_creator(container.get_connection_url())
    else:
        from devtools.postgres import LocalPostgres

        with LocalPostgres() as server:
            SESSION_SERVERS["postgresql"] = f"127.0.0.1:{server.port}"
            yield lambda: server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path, postgres_database_factory) -> str:
    """A fresh, empty database: once on SQLite, once on real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return postgres_database_factory()


class _CatalogTemplates:
    """One migrated catalog per dialect for the whole session, each test's catalog a copy of it.

    Migrating a fresh catalog costs 0.15-0.27 s on PostgreSQL and 0.08-0.13 s on SQLite, against ~0.01 s for a
    copy; ~400 tests take a catalog. A dialect's template is migrated when a test first asks for it (a run of
    SQLite tests only migrates no PostgreSQL one). Tests of the migrations themselves take ``database_url`` (empty),
    not ``catalog``: they still migrate from scratch."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, postgres_database_factory: Callable[[], str]):
        self._tmp_path_factory = tmp_path_factory
        self._postgres_database_factory = postgres_database_factory
        self._sqlite_template: Path | None = None
        self._postgres_template: str | None = None  # the template database's name
        self._postgres_server: sa.Engine | None = None  # on the server's maintenance database, never the template

    @staticmethod
    def _migrate(url: str) -> None:
        """Migrate the catalog at ``url`` and close every connection to it (a template is copied only unused)."""
        CatalogStores.from_url(url, migrate=True).close()

    def fill_sqlite(self, url: sa.URL) -> None:
        """Put a copy of the migrated template at ``url``'s file, which no one has opened yet."""
        if self._sqlite_template is None:
            template = self._tmp_path_factory.mktemp("catalog-template") / "catalog.sqlite"
            self._migrate(f"sqlite:///{template}")
            # The last connection's close checkpoints the write-ahead log into the file and removes it: the file
            # alone is the whole catalog. Were the log left, a copy of the file without it would lack the schema.
            if template.with_name(template.name + "-wal").exists():
                raise RuntimeError(f"the template catalog {template} kept its write-ahead log after its close")
            self._sqlite_template = template
        assert url.database
        target = Path(url.database)
        if target.exists():
            raise RuntimeError(f"{target} exists: a catalog is copied only to a database no one opened")
        shutil.copyfile(self._sqlite_template, target)

    def fill_postgres(self, url: sa.URL) -> None:
        """Replace ``url``'s database (fresh and empty, no one connected) by a copy of the migrated template."""
        if self._postgres_template is None:
            template_url = sa.make_url(self._postgres_database_factory())
            self._migrate(template_url.render_as_string(hide_password=False))
            self._postgres_server = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
            self._postgres_template = template_url.database
        assert self._postgres_server is not None
        with self._postgres_server.connect() as connection:
            # Same name, so the test's database_url (which it may also use) is its catalog's. Names are ours
            # (t_<hex>, tests/conftest.py), hence quoted, not bound: DDL takes no parameters.
            connection.execute(sa.text(f'DROP DATABASE "{url.database}"'))
            connection.execute(sa.text(f'CREATE DATABASE "{url.database}" TEMPLATE "{self._postgres_template}"'))

    def open(self, url: str) -> CatalogStores:
        """The stores of the empty database at ``url`` (a SQLite file no one opened, or a fresh PostgreSQL
        database no one is connected to), filled with a copy of the dialect's migrated template first."""
        parsed = sa.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            self.fill_sqlite(parsed)
        else:
            self.fill_postgres(parsed)
        return CatalogStores.from_url(url)

    def close(self) -> None:
        if self._postgres_server is not None:
            self._postgres_server.dispose()


@pytest.fixture(scope="session")
def _catalog_templates(
    tmp_path_factory: pytest.TempPathFactory, postgres_database_factory: Callable[[], str]
) -> Iterator[_CatalogTemplates]:
    templates = _CatalogTemplates(tmp_path_factory, postgres_database_factory)
    yield templates
    templates.close()


@pytest.fixture(scope="session")
def migrated_catalog(_catalog_templates: _CatalogTemplates) -> Callable[[str], CatalogStores]:
    """``migrated_catalog(url)``: the stores (the caller closes them) of the empty database at ``url``, a SQLite
    file not yet made or a fresh PostgreSQL database (``postgres_database_factory()``), fully migrated: a copy of
    the session's migrated template for the dialect. For a catalog ``catalog`` does not give (one dialect only, a
    path a process is also told, a module's own); tests of the migrations still migrate from scratch."""
    return _catalog_templates.open


@pytest.fixture
def catalog(database_url: str, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    """The stores of ``database_url``'s database, fully migrated and empty: a copy of the session's migrated
    template for the dialect (the same schema revision and rows as a migration of it would give)."""
    catalog = migrated_catalog(database_url)
    yield catalog
    catalog.close()


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path) -> CommonSettings:
    """Settings for one test: the session broker, topics of the test's own, a SQLite catalog."""
    return CommonSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        topic_partitions=3,
        catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}",
        metrics_port=0,
    )
