"""A timeout an operator set on the catalog's PostgreSQL database (``lock_timeout``, ``statement_timeout``) ending a
write that waits behind another, or a read (of objects, the audit log, runs) waiting behind another's lock, is a 503
saying the catalog timed out, nothing written (before: a 500 "unexpected error"), through the real admin app over
HTTP, logged once at warning; a 503 page in the console; exit 5 in exportctl."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from sqlalchemy import Engine, create_engine, text

from tests.admin_app import in_process_api, seed
from tests.integration.test_if_match import QUERY

if TYPE_CHECKING:
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration


@pytest.fixture(params=["lock_timeout", "statement_timeout"])
def timing_out(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database_factory: Callable[[], str]
) -> Iterator[tuple[Engine, TestClient]]:
    """The admin API (an admin's client) over a seeded PostgreSQL catalog whose database has a 300 ms
    ``lock_timeout`` or ``statement_timeout``, and another client's engine (no timeout) to hold locks with."""
    url = postgres_database_factory()
    with (
        _catalog_with_timeout(url, request.param) as other,
        in_process_api(tmp_path, catalog_url=url) as api,
        api.client() as client,
    ):
        seed(client)
        yield other, client


def test_a_write_waiting_past_the_catalogs_timeout_is_a_503_naming_the_timeout_and_writes_nothing(
    timing_out: tuple[Engine, TestClient],
):
    other, client = timing_out
    body = client.get(QUERY).json()
    with other.connect() as holder:  # another writer's open transaction holds the row
        holder.execute(text("SET lock_timeout = 0; SET statement_timeout = 0"))
        holder.execute(text("SELECT id FROM catalog_objects WHERE kind = 'SavedQuery' AND name = 'gold' FOR UPDATE"))
        answer = client.put(QUERY, json=body | {"label": "waits"})
        holder.rollback()
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"].endswith("/catalog-timed-out")
    assert "SavedQuery 'gold': the catalog database timed out" in answer.json()["detail"]
    assert client.get(QUERY).json().get("label") != "waits"


def test_exportctl_on_the_catalog_directly_exits_5_with_the_reason_when_the_catalog_timed_out(tmp_path: Path):
    from shared.catalog import CatalogStores
    from shared.cli.common import CliSettings
    from shared.cli.direct import Direct, on_catalog
    from shared.cli.exits import UNREACHABLE, CliError
    from shared.errors import CatalogTimedOut

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    CatalogStores.from_url(url, migrate=True).close()

    def timed_out(_: Direct) -> int:
        raise CatalogTimedOut("SavedQuery", "gold", "55P03")

    with pytest.raises(CliError) as refused:
        on_catalog(CliSettings(catalog_url=url), timed_out)
    assert refused.value.code == UNREACHABLE
    assert "SavedQuery 'gold': the catalog database timed out (SQLSTATE 55P03" in str(refused.value)


@contextmanager
def _catalog_with_timeout(url: str, setting: str) -> Iterator[Engine]:
    """The catalog's database with ``setting`` (``lock_timeout``, ``statement_timeout``) at 300 ms for every new
    session, as an operator sets it; an engine of another client, which sets none."""
    other = create_engine(url)
    with other.connect() as connection:
        database = connection.execute(text("SELECT current_database()")).scalar_one()
        connection.execute(text(f"ALTER DATABASE \"{database}\" SET {setting} = '300ms'"))
        connection.commit()
    try:
        yield other
    finally:
        other.dispose()


@contextmanager
def _locked(other: Engine, table: str) -> Iterator[None]:
    """``table`` held ACCESS EXCLUSIVE by another client's open transaction (a migration, a ``VACUUM FULL``): a
    read of it waits until the lock is released, or until the reader's timeout ends it. Taken before this yields
    (``LOCK TABLE`` returns once held): nothing to wait for."""
    with other.connect() as holder:
        holder.execute(text("SET lock_timeout = 0; SET statement_timeout = 0"))
        holder.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            holder.rollback()


#: Reads (and a run's start, which writes the run) of the admin API, the table another client locks meanwhile, and
#: what the 503's detail and the log line name.
READS = [
    ("GET", "/api/v1/saved-queries/gold", "catalog_objects", "SavedQuery 'gold'", "/api/v1/saved-queries/{name}"),
    ("GET", "/api/v1/saved-queries", "catalog_objects", "SavedQuery", "/api/v1/saved-queries"),
    ("GET", "/api/v1/audit", "audit_log", "AuditEntry", "/api/v1/audit"),
    ("GET", "/api/v1/runs", "runs", "Run", "/api/v1/runs"),
    ("POST", "/api/v1/export-definitions/nightly/runs", "runs", "Run", "/api/v1/export-definitions/{name}/runs"),
]


def test_a_read_waiting_past_the_catalogs_timeout_is_a_503_naming_what_was_read_and_logged_once(
    timing_out: tuple[Engine, TestClient],
):
    other, client = timing_out
    for method, path, table, subject, route in READS:
        with _locked(other, table), structlog.testing.capture_logs() as logs:
            answer = client.request(method, path)
        assert answer.status_code == 503, (path, answer.text)
        problem = answer.json()
        assert problem["type"].endswith("/catalog-timed-out")
        assert problem["detail"].startswith(f"{subject}: the catalog database timed out (SQLSTATE ")
        assert "SELECT" not in answer.text  # no statement
        assert "relation" not in answer.text  # nor the driver's words
        told = [entry for entry in logs if entry["event"] == "catalog-timed-out"]
        assert len(told) == 1, logs
        assert told[0]["log_level"] == "warning"
        assert told[0]["operation"] == f"{method} {route}"
        assert told[0]["kind"] == subject.split(" ")[0]
        assert told[0]["sqlstate"] in {"55P03", "57014"}
        assert "SELECT" not in str(told[0])
    assert client.get("/api/v1/saved-queries/gold").status_code == 200  # released: read as ever


def test_a_console_page_whose_read_times_out_is_a_503_page_saying_so(
    tmp_path: Path, postgres_database_factory: Callable[[], str], monkeypatch: pytest.MonkeyPatch
):
    from tests.integration.test_console_fields import signed_in

    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the test client
    url = postgres_database_factory()
    with _catalog_with_timeout(url, "lock_timeout") as other, in_process_api(tmp_path, catalog_url=url) as api:
        with api.client() as client:
            seed(client)
        with signed_in(api, "admin") as console:
            with _locked(other, "catalog_objects"), structlog.testing.capture_logs() as logs:
                answer = console.client.get("/console/queries/gold")
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"].startswith("text/html")
            page = unescape(answer.text)
            assert "Error 503" in page
            assert "SavedQuery 'gold': the catalog database timed out (SQLSTATE 55P03" in page
            assert "SELECT" not in page
            told = [entry for entry in logs if entry["event"] == "catalog-timed-out"]
            assert [(entry["operation"], entry["kind"]) for entry in told] == [
                ("GET /console/{collection}/{name}", "SavedQuery")
            ]


def test_exportctl_on_the_catalog_directly_exits_5_saying_the_catalog_timed_out_when_a_read_does(
    tmp_path: Path,
    postgres_database_factory: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    from shared.cli.__main__ import main as exportctl

    url = postgres_database_factory()
    with _catalog_with_timeout(url, "lock_timeout") as other:
        with in_process_api(tmp_path, catalog_url=url) as api, api.client() as client:
            seed(client)
        for name in ("EXPORT_API_URL", "EXPORT_API_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("EXPORT_CATALOG_URL", url)
        capsys.readouterr()
        with _locked(other, "catalog_objects"):
            code = exportctl(["get", "SavedQuery", "gold"])
        _, err = capsys.readouterr()
    assert code == 5, err
    assert "SavedQuery 'gold': the catalog database timed out (SQLSTATE 55P03" in err
    assert "SELECT" not in err


def test_the_openapi_document_declares_the_503_of_every_operation_that_reads_the_catalog(tmp_path: Path):
    with in_process_api(tmp_path) as api, api.client() as client:
        document = client.get("/openapi.json").json()
    for path, method in [
        ("/api/v1/saved-queries/{name}", "get"),
        ("/api/v1/saved-queries", "get"),
        ("/api/v1/audit", "get"),
        ("/api/v1/runs", "get"),
        ("/api/v1/export-definitions/{name}/runs", "post"),
        ("/api/v1/saved-queries/{name}", "put"),
    ]:
        declared = document["paths"][path][method]["responses"]["503"]
        assert "`catalog-timed-out`" in declared["description"], (path, method)
        assert declared["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert "503" not in document["paths"]["/livez"]["get"]["responses"]  # asks no dependency


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout"])
def test_a_scheduler_tick_whose_schedules_read_times_out_raises_catalog_timed_out_quoting_no_statement(
    postgres_database_factory: Callable[[], str], setting: str
):
    """The scheduler's tick reads the due schedules on a Core connection: its timeout is told as the catalog's,
    and what the scheduler logs (``scheduler tick failed`` with the traceback) quotes no SQL (before: the
    driver's error quoting the statement, ``LINE 2: FROM catalog_objects JOIN schedules ...``)."""
    import datetime as dt

    from services.scheduler.clock import ManualClock
    from services.scheduler.scheduling import Scheduler
    from shared.catalog import CatalogStores
    from shared.errors import CatalogTimedOut
    from shared.kafka.loop import is_interruption
    from shared.topics import Topics
    from tests.integration.test_scheduler import T0, definition

    url = postgres_database_factory()
    CatalogStores.from_url(url, migrate=True).close()
    with _catalog_with_timeout(url, setting) as other:
        catalog = CatalogStores.from_url(url)
        catalog.definitions.apply(definition("nightly", cron="0 2 * * *"))
        scheduler = Scheduler(
            scheduling=catalog.scheduling,
            definitions=catalog.definitions,
            runs=catalog.runs,
            clock=ManualClock(T0),
            topics=Topics("x."),
            publish=lambda _: None,
        )
        scheduler.tick()  # the schedules synced: the next tick reads the due ones only
        assert isinstance(scheduler.clock, ManualClock)
        scheduler.clock.advance(dt.timedelta(minutes=1))
        with _locked(other, "schedules"), pytest.raises(CatalogTimedOut) as ended:
            scheduler.tick()
        catalog.close()
    assert str(ended.value).startswith("Schedule: the catalog database timed out")
    logged = "".join(traceback.format_exception(ended.value))  # what log.exception writes (format_exc_info)
    assert "SELECT" not in logged
    assert "LINE 1" not in logged
    assert not is_interruption(ended.value)  # logged as a failed tick, as before; the next tick tries again


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout"])
def test_an_extractor_checkpoint_that_times_out_is_catalog_timed_out_and_its_dead_letter_quotes_no_statement(
    postgres_database_factory: Callable[[], str], setting: str
):
    """The extractor saves its checkpoint a page with one UPDATE on a Core connection: a timeout (the row held by
    another transaction) is told as the catalog's, nothing written, and the reason the consumer loop dead-letters
    the run request with names neither the statement nor the member key it saved (before: ``OperationalError:
    ... LINE 1: UPDATE extraction_checkpoints SET ...``)."""
    import uuid
    from dataclasses import replace

    from shared.catalog import CatalogStores
    from shared.errors import CatalogTimedOut
    from shared.events import bounded_reason
    from shared.exception_reasons import exception_reason

    url = postgres_database_factory()
    CatalogStores.from_url(url, migrate=True).close()
    run_id, key = uuid.uuid4(), "member-42@example.com"  # a member's key: never in a dead letter
    with _catalog_with_timeout(url, setting) as other:
        catalog = CatalogStores.from_url(url)
        checkpoint = catalog.extraction.claim_extraction(run_id, "nightly")
        with other.connect() as holder:  # another extractor's open transaction holds the run's row
            holder.execute(text("SET lock_timeout = 0; SET statement_timeout = 0"))
            holder.execute(text(f"SELECT run_id FROM extraction_checkpoints WHERE run_id = '{run_id}' FOR UPDATE"))
            with pytest.raises(CatalogTimedOut) as ended:
                catalog.extraction.save_checkpoint(replace(checkpoint, members=5, last_key=key))
            holder.rollback()
        after = catalog.extraction.claim_extraction(run_id, "nightly")
        catalog.close()
    reason = bounded_reason(exception_reason(ended.value))  # the dead letter's reason (ConsumerLoop._failure)
    assert reason.startswith(f"CatalogTimedOut: ExtractionCheckpoint '{run_id}': the catalog database timed out")
    logged = reason + "".join(traceback.format_exception(ended.value))
    assert "UPDATE" not in logged
    assert key not in logged
    assert (after.members, after.last_key) == (checkpoint.members, checkpoint.last_key)  # nothing written


def test_a_notifier_poll_whose_fold_times_out_is_not_folded_again_event_by_event(
    postgres_database_factory: Callable[[], str],
):
    """With the runs held past the catalog's timeout, the notifier folds a poll once: every event gets the timeout
    (dead-lettered with it, as each would be alone), instead of each waiting the timeout again on its own (before:
    21 folds for 20 events, 6.6 s at 300 ms; 500 events at 5 s would outlast the group's max poll interval)."""
    import uuid

    from services.notifier.mailer import SmtpMailer
    from shared.catalog import CatalogStores
    from shared.errors import CatalogTimedOut
    from shared.events import AnyRunEvent, RunStarted, Trigger
    from tests.integration.test_notifier import DEFINITION, notifier_on

    url = postgres_database_factory()
    CatalogStores.from_url(url, migrate=True).close()
    with _catalog_with_timeout(url, "lock_timeout") as other:
        catalog = CatalogStores.from_url(url)
        catalog.definitions.apply(DEFINITION)
        folds: list[int] = []
        fold_one, fold_all = catalog.runs.fold_run_event, catalog.runs.fold_run_events

        def folding_one(event: Any, starts: Any = None) -> Any:
            folds.append(1)
            return fold_one(event, starts)

        def folding_all(events: Any, starts: Any = None) -> Any:
            folds.append(len(events))
            return fold_all(events, starts)

        catalog.runs.fold_run_event = folding_one  # type: ignore[method-assign]
        catalog.runs.fold_run_events = folding_all  # type: ignore[method-assign]
        notifier = notifier_on(catalog, SmtpMailer("127.0.0.1", 1, max_attempts=1, max_wait=0.1))
        poll: list[AnyRunEvent] = [
            RunStarted(run_id=uuid.uuid4(), definition="nightly", trigger=Trigger.SCHEDULE) for _ in range(20)
        ]
        with _locked(other, "runs"):
            results = notifier.handle_all(poll)
        catalog.close()
    assert folds == [20]  # the poll's one fold, none event by event
    assert len(results) == 20
    assert all(isinstance(result, CatalogTimedOut) for result in results)
    assert str(results[0]).startswith("Run: the catalog database timed out")
