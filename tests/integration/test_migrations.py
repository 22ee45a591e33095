"""Catalog schema migrations on SQLite and real PostgreSQL: a catalog of the last release upgrades with
its rows intact, services refuse an outdated catalog, and `exportctl db` says where a catalog stands."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
import structlog.testing
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from shared.catalog.engine import make_engine
from shared.catalog.schema import (
    BASELINE,
    HEAD,
    SchemaOutdated,
    SchemaState,
    alembic_config,
    check_catalog_schema,
    current_revision,
    downgrade,
    drift,
    require_current,
    upgrade,
)
from shared.catalog.tables import Base
from shared.cli.common import CliSettings
from shared.cli.database_commands import add_commands
from shared.cli.direct_commands import cmd_demo_data

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 5, 1, 8, 30, tzinfo=UTC)
NEW_RUN_COLUMNS = {
    "definition_id",
    "business_unit",
    "requested_at",
    "added",
    "changed",
    "unchanged",
    "removed",
    "retried",
    "mass_removal_allowed",
    "finish_handled_at",
    "finish_claimed_at",
    "finish_claimed_by",
    "replay_plan",
    "replay_acknowledged",
    "replay_claimed_at",
    "replay_claimed_by",
}
#: Columns later revisions add to baseline tables (0002: the runs' scope; 0004: split runs' range count;
#: 0006: when a run was requested; 0008: change-mode counts and retried members; 0009: a run's fixed sync;
#: 0013: a mass removal allowed by the run's request; 0014: when the notifier handled a run's finish; 0015: who
#: claimed it, when; 0016: who paused a definition's schedule; 0017: a replay run's publication; 0020: which
#: notifier replica holds a notification's claim, until when, since when; 0021: the schedule's unconfirmed
#: publication and why its fire times could not be computed; 0022: the recipients an email's server refused; 0023:
#: a digest of the schedule last computed; 0026: the run that held a withheld run off; 0027: the page a run is sending
#: beyond its checkpoint).
LATER_COLUMNS = {
    "schedules": {"firing_for", "not_computable", "schedule_digest"},
    "catalog_objects": {"schedule_paused_by"},
    "runs": NEW_RUN_COLUMNS,
    "extraction_checkpoints": {"ranges", "sync", "withheld_for", "sending"},
    "notifications": {
        "attempts",
        "next_attempt_at",
        "gave_up_at",
        "claimed_by",
        "claimed_until",
        "claimed_at",
        "refused_recipients",
    },
}

PROFILE_ID, QUERY_ID, TEMPLATE_ID = (str(uuid.uuid4()) for _ in range(3))
NIGHTLY_ID, WEEKLY_ID = str(uuid.uuid4()), str(uuid.uuid4())
RUN_NIGHTLY, RUN_REPLAY, RUN_WEEKLY, RUN_OF_DELETED = (str(uuid.uuid4()) for _ in range(4))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _catalog_object(id_: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": id_,
        "kind": kind,
        "name": name,
        "spec": spec,
        "version": 3,
        "created_at": T0,
        "updated_at": T0 + timedelta(days=2),
    }


def _run(run_id: str, definition: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": run_id,
        "definition": definition,
        "status": "succeeded",
        "trigger": "schedule",
        "requested_by": None,
        "scheduled_for": T0,
        "replay_of": None,
        "started_at": T0 + timedelta(seconds=1),
        "extraction_complete": True,
        "extracted": 1000,
        "batches_expected": 2,
        "batches_done": 2,
        "delivered": 1000,
        "failed": 0,
        "failure_reason": None,
        "terminal_status": "succeeded",
        "error_samples": [],
        "last_event_at": T0 + timedelta(seconds=9),
        "finished_at": T0 + timedelta(seconds=9),
    }
    return row | fields


#: One or more real rows in every table of the baseline schema (written as the last release wrote them).
BASELINE_ROWS: dict[str, list[dict[str, Any]]] = {
    "catalog_objects": [
        _catalog_object(
            PROFILE_ID,
            "ConnectionProfile",
            "partner-api",
            {"base_url": "https://partner.example.com", "auth": {"type": "bearer", "token": "env:PARTNER_TOKEN"}},
        ),
        _catalog_object(
            QUERY_ID,
            "SavedQuery",
            "members-of-tier",
            {
                "sql": "SELECT id, email, tier FROM members WHERE tier = :tier",
                "key_column": "id",
                "parameters": {"tier": {"type": "string", "required": True}},
                "columns": ["id", "email", "tier"],
            },
        ),
        _catalog_object(
            TEMPLATE_ID,
            "HttpTemplate",
            "partner-bulk-upsert",
            {
                "query": "members-of-tier",
                "profile": "partner-api",
                "method": "POST",
                "path": "/v1/members/bulk",
                "body": '{"members": [{% for m in members %}{{ m.id }}{% endfor %}]}',
                "batch_size": 500,
            },
        ),
        _catalog_object(
            NIGHTLY_ID,
            "ExportDefinition",
            "nightly-gold",
            {
                "business_unit": "france",
                "priority": "high",
                "query": "members-of-tier",
                "template": "partner-bulk-upsert",
                "parameters": {"tier": "gold"},
                "schedule": {"enabled": True, "cron": "0 2 * * *", "timezone": "Europe/Paris"},
            },
        ),
        _catalog_object(
            WEEKLY_ID,
            "ExportDefinition",
            "weekly-all",
            {"business_unit": None, "query": "members-of-tier", "template": "partner-bulk-upsert"},
        ),
    ],
    "runs": [
        _run(RUN_NIGHTLY, "nightly-gold", failed=3, delivered=997, error_samples=["HTTP 422: member 17 refused"]),
        _run(
            RUN_REPLAY,
            "nightly-gold",
            trigger="replay",
            requested_by="alice",
            scheduled_for=None,
            replay_of=RUN_NIGHTLY,
            extracted=3,
            batches_expected=1,
            batches_done=1,
            delivered=3,
        ),
        _run(RUN_WEEKLY, "weekly-all", status="running", terminal_status=None, finished_at=None, batches_expected=None),
        _run(RUN_OF_DELETED, "since-deleted", status="failed", failure_reason="template missing"),
    ],
    "batch_outcomes": [
        {"run_id": RUN_NIGHTLY, "batch_index": 0, "delivered": 500, "failed": 0, "status_code": 200},
        {"run_id": RUN_NIGHTLY, "batch_index": 1, "delivered": 497, "failed": 3, "status_code": 422},
    ],
    "extraction_checkpoints": [
        {
            "run_id": RUN_WEEKLY,
            "definition": "weekly-all",
            "last_key": 4242,
            "next_batch_index": 9,
            "members": 4500,
            "completed": False,
            "watermark_since": "2025-04-24T00:00:00+00:00",
            "watermark_until": "2025-05-01T00:00:00+00:00",
            "updated_at": T0 + timedelta(minutes=5),
        }
    ],
    "watermarks": [
        {"definition": "nightly-gold", "value": "2025-04-30T02:00:00+00:00", "run_id": RUN_NIGHTLY, "updated_at": T0}
    ],
    "notifications": [
        {"run_id": RUN_NIGHTLY, "kind": "error", "recipients": ["ops@example.com"], "sent_at": T0, "last_error": None},
        {
            "run_id": RUN_OF_DELETED,
            "kind": "error",
            "recipients": ["ops@example.com", "fr@example.com"],
            "sent_at": None,
            "last_error": "SMTP 451 try again later",
        },
    ],
    "schedules": [
        {
            "definition_id": NIGHTLY_ID,
            "definition_version": 3,
            "handled_until": T0,
            "next_due_at": T0 + timedelta(days=1),
        }
    ],
    "leases": [{"name": "scheduler", "holder": "scheduler-7d9f-abcde", "expires_at": T0 + timedelta(seconds=30)}],
    "idempotency_keys": [{"scope": "a" * 64, "run_id": RUN_REPLAY, "created_at": T0}],
}


def _tables(engine: Engine) -> sa.MetaData:
    """The database's own tables, as they are (not the models)."""
    metadata = sa.MetaData()
    metadata.reflect(engine)
    return metadata


def fill_baseline(engine: Engine) -> None:
    tables = _tables(engine).tables
    assert set(BASELINE_ROWS) <= set(tables)
    with engine.begin() as connection:
        for name, rows in BASELINE_ROWS.items():
            connection.execute(sa.insert(tables[name]), rows)


def name_baseline_objects(engine: Engine) -> None:
    """The baseline's catalog objects as this release writes them (their name in their spec), for its stores to
    read them."""
    with engine.begin() as connection:
        for row in BASELINE_ROWS["catalog_objects"]:
            connection.execute(
                sa.text("UPDATE catalog_objects SET spec = :spec WHERE id = :id").bindparams(
                    sa.bindparam("spec", type_=sa.JSON())
                ),
                {"spec": row["spec"] | {"name": row["name"]}, "id": row["id"]},
            )


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every baseline table, in primary-key order, without the columns later revisions add."""
    tables = _tables(engine).tables
    result = {}
    with engine.connect() as connection:
        for name in BASELINE_ROWS:
            table = tables[name]
            rows = connection.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings()
            result[name] = [
                {key: value for key, value in row.items() if key not in LATER_COLUMNS.get(name, set())} for row in rows
            ]
    return result


def run_scopes(engine: Engine) -> dict[str, tuple[str | None, str | None]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT run_id, definition_id, business_unit FROM runs")).all()
    return {run_id: (definition_id, business_unit) for run_id, definition_id, business_unit in rows}


EXPECTED_SCOPES = {
    RUN_NIGHTLY: (NIGHTLY_ID, "france"),
    RUN_REPLAY: (NIGHTLY_ID, "france"),
    RUN_WEEKLY: (WEEKLY_ID, None),
    RUN_OF_DELETED: (None, None),
}


def test_a_baseline_catalog_upgrades_with_every_row_intact_and_runs_scoped(engine: Engine) -> None:
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    before = snapshot(engine)
    assert all(before[name] for name in BASELINE_ROWS)  # every table has rows to lose

    upgrade(engine)

    assert current_revision(engine) == HEAD
    assert snapshot(engine) == before
    assert run_scopes(engine) == EXPECTED_SCOPES


def test_a_catalog_from_before_migrations_is_taken_as_the_baseline_and_upgraded(engine: Engine) -> None:
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE alembic_version"))
    before = snapshot(engine)
    assert current_revision(engine) is None
    with pytest.raises(SchemaOutdated, match=r"predates migrations.*exportctl db upgrade"):
        require_current(engine)

    upgrade(engine)

    assert current_revision(engine) == HEAD
    assert snapshot(engine) == before
    assert run_scopes(engine) == EXPECTED_SCOPES
    assert drift(engine) == []


def test_a_catalog_made_by_create_all_of_this_release_is_stamped_at_head(engine: Engine) -> None:
    Base.metadata.create_all(engine)  # what the services did at start before migrations
    with engine.begin() as connection:  # and a table of another application, in the same database
        connection.execute(sa.text("CREATE TABLE members (id INTEGER PRIMARY KEY, email VARCHAR(200))"))

    upgrade(engine)

    assert current_revision(engine) == HEAD
    require_current(engine)
    assert drift(engine) == ["table members is in the database but not in the models"]


def test_a_catalog_from_before_the_baseline_is_refused_not_stamped(engine: Engine) -> None:
    upgrade(engine, BASELINE)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE alembic_version"))
        connection.execute(sa.text("DROP TABLE idempotency_keys"))
        connection.execute(sa.text("DROP TABLE watermarks"))

    with pytest.raises(SchemaOutdated, match=r"lacks table\(s\) idempotency_keys, watermarks"):
        upgrade(engine)
    assert current_revision(engine) is None


def test_a_failed_upgrade_leaves_the_catalog_as_it_was_and_can_be_run_again(engine: Engine) -> None:
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE catalog_objects SET spec = :spec WHERE id = :id").bindparams(
                sa.bindparam("spec", type_=sa.JSON())
            ),
            {"spec": {"business_unit": "x" * 101, "query": "members-of-tier"}, "id": WEEKLY_ID},
        )
    before = snapshot(engine)

    with pytest.raises(RuntimeError, match="ExportDefinition 'weekly-all' has a business_unit of 101 characters"):
        upgrade(engine)

    assert current_revision(engine) == BASELINE
    assert snapshot(engine) == before
    # No column added: refused before changing anything (every later runs column, and the scope's index).
    assert sum("runs." in line or "ix_runs_definition_id" in line for line in drift(engine)) == len(NEW_RUN_COLUMNS) + 1
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE catalog_objects SET spec = :spec WHERE id = :id").bindparams(
                sa.bindparam("spec", type_=sa.JSON())
            ),
            {"spec": {"business_unit": "benelux", "query": "members-of-tier"}, "id": WEEKLY_ID},
        )
    upgrade(engine)
    assert run_scopes(engine)[RUN_WEEKLY] == (WEEKLY_ID, "benelux")


def test_upgrading_an_up_to_date_catalog_changes_nothing(engine: Engine) -> None:
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    upgrade(engine)
    after_first = snapshot(engine), run_scopes(engine)

    upgrade(engine)

    assert current_revision(engine) == HEAD
    assert (snapshot(engine), run_scopes(engine)) == after_first


def test_downgrading_to_the_baseline_keeps_the_rows_and_upgrading_again_restores_the_scopes(engine: Engine) -> None:
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    before = snapshot(engine)
    upgrade(engine)

    downgrade(engine, BASELINE)

    assert current_revision(engine) == BASELINE
    assert snapshot(engine) == before
    assert NEW_RUN_COLUMNS.isdisjoint(_tables(engine).tables["runs"].columns.keys())
    upgrade(engine)
    assert run_scopes(engine) == EXPECTED_SCOPES


def test_runs_recorded_before_0006_keep_their_rows_without_a_request_time(engine: Engine) -> None:
    upgrade(engine, "0005")
    fill_baseline(engine)
    before = snapshot(engine)

    upgrade(engine)

    assert snapshot(engine) == before
    with engine.connect() as connection:
        times = connection.execute(sa.text("SELECT requested_at FROM runs")).scalars().all()
    assert len(times) == len(BASELINE_ROWS["runs"])
    assert set(times) == {None}
    downgrade(engine, "0005")
    assert "requested_at" not in _tables(engine).tables["runs"].columns
    assert snapshot(engine) == before


def test_the_models_and_the_migrations_agree_at_head(engine: Engine) -> None:
    upgrade(engine)

    assert drift(engine) == []


def test_the_revisions_read_without_alembic_are_alembics() -> None:
    # Every service and exportctl command checks the catalog's revision at start, reading this release's
    # revisions from the scripts without loading Alembic: they must be what Alembic reads.
    scripts = ScriptDirectory.from_config(alembic_config())
    assert scripts.get_current_head() == HEAD
    for script in scripts.walk_revisions():
        state = SchemaState(revision=script.revision, tables=frozenset())
        assert not state.is_newer
        assert state.is_head == (script.revision == HEAD)
    assert SchemaState(revision="9999", tables=frozenset()).is_newer


def test_drift_names_what_the_database_lacks(engine: Engine) -> None:
    upgrade(engine, BASELINE)

    lines = drift(engine)

    # What 0002, 0003, 0004, 0006, 0008, 0009, 0010, 0011, 0012, 0013 and 0014 add: the runs' scope columns and
    # their index, the audit log and its indexes, split runs' range count and their ranges, the runs' request time,
    # change counts; change-mode snapshots (three tables, two indexes) and the checkpoints' fixed sync; the attempts
    # table and its three indexes; the dispatcher replicas' heartbeats (and their index), the shared circuit
    # breakers, the breakers open at each replica (and their index) and the breaker emails' outbox; the tables
    # of next-run retries, their claims and the member delivery log (4) and their indexes (5); a mass removal
    # allowed on the runs; when a run's finish was handled; who claimed it, when, and the unhandled finishes' index;
    # who paused a definition's schedule (0016); a replay run's plan, acknowledged steps and claim (0017, 4 columns);
    # which notifier replica holds a notification's claim, until when, since when (0020, 3 columns); the schedule's
    # unconfirmed publication and why its fire times could not be computed (0021, 2 columns); the recipients an
    # email's SMTP server refused while it took it for the others (0022); a digest of the schedule last computed
    # (0023); who names which object, and its index (0025); the run that held a withheld run off (0026); the page a
    # run is sending beyond its checkpoint (0027: extraction_ranges is missing whole before 0004).
    assert len(lines) == 65, lines
    assert "table change_members is missing from the database" in lines
    assert "table delivery_batches is missing from the database" in lines
    assert any("runs.retried" in line and "missing from the database" in line for line in lines)
    assert any("runs.mass_removal_allowed" in line and "missing from the database" in line for line in lines)
    assert any("runs.finish_handled_at" in line and "missing from the database" in line for line in lines)
    assert any("notifications.claimed_by" in line and "missing from the database" in line for line in lines)
    assert any("notifications.claimed_at" in line and "missing from the database" in line for line in lines)
    assert "table attempts is missing from the database" in lines
    assert "table dispatcher_replicas is missing from the database" in lines
    assert "table circuit_breakers is missing from the database" in lines
    assert "table open_breakers is missing from the database" in lines
    assert "table circuit_breaker_mails is missing from the database" in lines
    assert any("runs.requested_at" in line and "missing from the database" in line for line in lines)
    assert "table audit_log is missing from the database" in lines
    assert "table extraction_ranges is missing from the database" in lines
    assert any("extraction_checkpoints.ranges" in line and "missing from the database" in line for line in lines)
    assert any("extraction_checkpoints.withheld_for" in line and "missing from" in line for line in lines)
    assert any("runs.definition_id" in line and "missing from the database" in line for line in lines)
    assert any("runs.business_unit" in line and "missing from the database" in line for line in lines)
    assert any("ix_runs_definition_id" in line for line in lines)


def test_require_current_says_how_to_upgrade_until_the_catalog_is_at_head(engine: Engine) -> None:
    with pytest.raises(SchemaOutdated, match=r"no schema yet, this release needs .*exportctl db upgrade"):
        require_current(engine)
    upgrade(engine, BASELINE)
    with pytest.raises(
        SchemaOutdated, match=rf"at revision {BASELINE}, this release needs {HEAD}: .*exportctl db upgrade"
    ):
        require_current(engine)
    upgrade(engine)

    require_current(engine)


def _stamp_newer(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))


def test_a_catalog_migrated_by_a_newer_release_is_refused(engine: Engine) -> None:
    upgrade(engine)
    _stamp_newer(engine)

    with pytest.raises(
        SchemaOutdated, match=rf"revision 9999, newer than this release.*`exportctl db downgrade {HEAD}`"
    ):
        require_current(engine)
    with pytest.raises(SchemaOutdated, match="newer than this release"):
        upgrade(engine)
    assert current_revision(engine) == "9999"


def test_a_service_on_an_outdated_catalog_exits_saying_how_to_upgrade(tmp_path: Path) -> None:
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    engine = make_engine(catalog_url)
    upgrade(engine, BASELINE)
    engine.dispose()
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXPORT_")}
    # No broker at all: the schema check comes before anything touches Kafka.
    env |= {
        "EXPORT_CATALOG_URL": catalog_url,
        "EXPORT_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "EXPORT_METRICS_PORT": "0",
    }

    process = subprocess.Popen(
        [sys.executable, "-m", "services.notifier"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode != 0
    assert f"at revision {BASELINE}, this release needs {HEAD}" in stderr
    assert "exportctl db upgrade" in stderr
    assert "Traceback" not in stderr


@dataclass
class _Settings:
    catalog_url: str


def exportctl_db(url: str, *argv: str) -> int:
    """``exportctl db ...`` through the functions the CLI registers."""
    parser = argparse.ArgumentParser(prog="exportctl")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["db", *argv])
    return int(args.func(_Settings(url), args))


def test_exportctl_db_current_and_upgrade(
    database_url: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exportctl_db(database_url, "current") == 1
    out, err = capsys.readouterr()
    assert f"catalog at (empty): not at head ({HEAD})" in out.splitlines()
    assert "exportctl db upgrade" in err

    assert exportctl_db(database_url, "upgrade", "--revision", BASELINE) == 0
    assert f"catalog upgraded from (empty) to {BASELINE}" in capsys.readouterr().out.splitlines()
    assert exportctl_db(database_url, "current") == 1
    assert f"catalog at {BASELINE}: not at head ({HEAD})" in capsys.readouterr().out.splitlines()

    assert exportctl_db(database_url, "upgrade") == 0
    assert f"catalog upgraded from {BASELINE} to {HEAD}" in capsys.readouterr().out.splitlines()
    assert exportctl_db(database_url, "upgrade") == 0
    assert f"catalog at {HEAD}: already up to date" in capsys.readouterr().out.splitlines()
    assert exportctl_db(database_url, "current") == 0
    assert f"catalog at {HEAD} (head)" in capsys.readouterr().out.splitlines()
    require_current(engine)


def test_exportctl_db_upgrade_of_a_catalog_from_before_migrations(
    database_url: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    upgrade(engine, BASELINE)
    fill_baseline(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE alembic_version"))

    assert exportctl_db(database_url, "upgrade") == 0

    assert f"catalog upgraded from (predates migrations) to {HEAD}" in capsys.readouterr().out.splitlines()
    assert run_scopes(engine) == EXPECTED_SCOPES


def test_exportctl_db_refuses_a_catalog_of_a_newer_release(
    database_url: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    upgrade(engine)
    _stamp_newer(engine)

    assert exportctl_db(database_url, "upgrade") == 2
    assert "newer than this release" in capsys.readouterr().err
    assert exportctl_db(database_url, "current") == 1
    out, err = capsys.readouterr()
    assert "catalog at 9999: not at head" in out
    assert "roll forward" in err


def test_exportctl_db_downgrade(database_url: str, engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    upgrade(engine)

    assert exportctl_db(database_url, "downgrade", BASELINE) == 0

    assert f"catalog downgraded from {HEAD} to {BASELINE}" in capsys.readouterr().out.splitlines()
    assert current_revision(engine) == BASELINE


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_exportctl_and_a_services_start_never_show_the_catalog_password(
    postgres_database_factory: Callable[[], str], capsys: pytest.CaptureFixture[str], form: str
) -> None:
    """The password as user information (``user:pw@host``) or as libpq's query parameter (``?password=pw``, which
    SQLAlchemy's hide_password leaves as it is: before, the start-up log line, ``exportctl db``'s catalog line and
    ``exportctl demo-data`` showed it)."""
    url = sa.make_url(postgres_database_factory())
    if url.password is None:
        # The throwaway cluster trusts local connections: any password is accepted, so one can be shown.
        url = url.set(password="s3cret-catalog-pw")
    password = str(url.password)
    shown = url.render_as_string(hide_password=True)
    if form == "query":
        url = sa.URL.create(
            url.drivername, url.username, None, url.host, url.port, url.database, {"password": password}
        )
        shown = f"{url.set(query={}).render_as_string()}?password=***"
    url_with_password = url.render_as_string(hide_password=False)

    # A service starting before the migration Job ran: the catalog is empty.
    with structlog.testing.capture_logs() as logs, pytest.raises(SystemExit):
        check_catalog_schema(url_with_password)
    assert [line["catalog"] for line in logs if line["event"] == "catalog schema not current"] == [shown]
    assert exportctl_db(url_with_password, "upgrade") == 0
    assert exportctl_db(url_with_password, "current") == 0
    demo = argparse.Namespace(url=url_with_password, members=3, seed=1)
    assert cmd_demo_data(cast(CliSettings, None), demo) == 0

    out, err = capsys.readouterr()
    assert password not in out + err + str(logs)
    assert out.splitlines()[0] == f"catalog: {shown}"
    assert f"3 demo members written to {shown} in " in out
