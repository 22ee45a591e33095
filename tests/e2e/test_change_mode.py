"""Change mode (``sync: {mode: changes}``) on the real stack: Kafka, the extractor, dispatcher and notifier as
processes, a receiver recording each request's method and members, and a SQLite or PostgreSQL member store.

Run 1 adds every member (POST); after editing, adding and deleting members, run 2 sends exactly those, each kind
with its template (PATCH, POST, DELETE); members the partner refuses are sent again by the next run, alone; a
run whose query lost most members fails, sending nothing, until a run allowed the mass removal sends it; a
kill -9 of the extractor mid-run loses and double-counts nothing, though members change before its restart.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from devtools.http_receiver import HttpReceiver, Receipt
from devtools.pipeline import LocalPipeline
from devtools.processes import wait_until
from devtools.smtp_sink import SmtpSink
from shared.catalog import CatalogStores, make_engine
from shared.catalog.tables import ExtractionCheckpointRow
from shared.domain.runs import RunRecord, RunStatus
from shared.topics import Topics
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e

MEMBERS = 1_000

MANIFEST = """
kind: ConnectionProfile
name: partner
spec: {{base_url: "{url}"}}
---
kind: SavedQuery
name: members
spec: {{sql: "SELECT id, email, tier, points FROM members", key_column: id}}
---
kind: HttpTemplate
name: add-members
spec: {{query: members, profile: partner, path: /v1/members, method: POST, batch_size: 100}}
---
kind: HttpTemplate
name: patch-members
spec: {{query: members, profile: partner, path: /v1/members, method: PATCH, batch_size: 100}}
---
kind: HttpTemplate
name: delete-members
spec: {{query: members, profile: partner, path: /v1/members, method: DELETE, batch_size: 100}}
---
kind: ExportDefinition
name: sync-members
spec:
  query: members
  template: add-members
  sync: {{mode: changes, changed: patch-members, removed: delete-members}}
  retry_rejected: {{invalid_runs: 1}}
  notifications:
    error: {{enabled: true, recipients: [{oncall}]}}
"""
ONCALL = "oncall@example.com"


@dataclass
class ChangeStack:
    """The stack of one member store: its engine (to edit members), the receiver, the pipeline."""

    pipeline: Pipeline
    store: sa.Engine
    receiver: HttpReceiver

    def run(self, *flags: str) -> tuple[uuid.UUID, RunRecord]:
        """Run the definition to its end (``exportctl run`` with ``flags``); its id and record."""
        result = self.pipeline.exportctl("run", "sync-members", "--wait", "--timeout", "120", *flags)
        run_id = uuid.UUID(result.stdout.splitlines()[0].split()[1])
        record = self.pipeline.catalog.runs.get_run(run_id)
        assert record is not None, result.stdout + result.stderr
        return run_id, record

    def accepted(self, run_id: uuid.UUID) -> list[Receipt]:
        return [
            r
            for r in self.receiver.receipts()
            if r.status < 300 and r.headers["Idempotency-Key"].startswith(f"{run_id}:")
        ]

    def sent(self, run_id: uuid.UUID) -> dict[str, Counter[int]]:
        """The members each method delivered in the run, counted once a batch (a batch sent twice after a crash
        has one Idempotency-Key: the receiver would take it once)."""
        by_key: dict[str, tuple[str, list[int]]] = {}
        for receipt in self.accepted(run_id):
            ids = sorted(m["id"] for m in receipt.members)
            key = receipt.headers["Idempotency-Key"]
            assert by_key.setdefault(key, (receipt.method, ids)) == (receipt.method, ids), "same key, same request"
        sent: dict[str, Counter[int]] = defaultdict(Counter)
        for method, ids in by_key.values():
            sent[method].update(ids)
        return sent

    def execute(self, *statements: str) -> None:
        with self.store.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement))


def _member_store(url: str) -> sa.Engine:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("CREATE TABLE members (id INTEGER PRIMARY KEY, email TEXT, tier TEXT, points INTEGER)")
        )
        connection.execute(
            sa.text("INSERT INTO members VALUES (:id, :email, :tier, :points)"),
            [{"id": i, "email": f"m{i}@example.com", "tier": "silver", "points": i} for i in range(1, MEMBERS + 1)],
        )
    return engine


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_database_factory: Callable[[], str],
) -> Iterator[ChangeStack]:
    work_dir: Path = tmp_path_factory.mktemp(f"changes-{request.param}")
    store_url = f"sqlite:///{work_dir / 'members.db'}" if request.param == "sqlite" else postgres_database_factory()
    store = _member_store(store_url)
    prefix = f"chg{uuid.uuid4().hex[:8]}."
    with HttpReceiver() as receiver, SmtpSink() as sink:
        env = {
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "EXPORT_TOPIC_PREFIX": prefix,
            "EXPORT_TOPIC_PARTITIONS": "3",
            "EXPORT_CATALOG_URL": f"sqlite:///{work_dir / 'catalog.db'}",
            "EXPORT_QUERY_STORE_URL": store_url,
            "EXPORT_METRICS_PORT": "0",
            "EXPORT_SMTP_HOST": "127.0.0.1",
            "EXPORT_SMTP_PORT": str(sink.port),
            "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
            "EXPORT_DISPATCHER_BACKOFF_INITIAL_SECONDS": "0.05",
            "EXPORT_EXTRACTOR_PAGE_SIZE": "100",
            "EXPORT_KAFKA_SESSION_TIMEOUT_MS": "6000",  # the killed extractor's run request moves on sooner
            "EXPORTCTL_CONFIG": str(work_dir / "no-exportctl-config.yaml"),
        }
        manifest = work_dir / "changes.yaml"
        manifest.write_text(MANIFEST.format(url=receiver.url, oncall=ONCALL))
        catalog = CatalogStores.from_url(env["EXPORT_CATALOG_URL"], migrate=True)
        with LocalPipeline(env, work_dir / "logs", services=("extractor", "dispatcher", "notifier")) as services:
            pipeline = Pipeline(
                env, Topics(prefix), kafka_bootstrap, catalog, receiver, receiver, sink, services, work_dir, 0, {}
            )
            applied = pipeline.exportctl("apply", "-f", str(manifest))
            assert applied.returncode == 0, applied.stdout + applied.stderr
            yield ChangeStack(pipeline, store, receiver)
            exit_codes = services.stop()
        catalog.close()
    store.dispose()
    assert exit_codes == dict.fromkeys(services.services, 0), "services should stop cleanly on SIGTERM"


def _counts(record: RunRecord) -> tuple[int | None, ...]:
    return (record.added, record.changed, record.unchanged, record.removed)


def test_runs_send_only_what_changed_each_kind_with_its_template(stack: ChangeStack):
    first, record = stack.run()
    assert (record.status, record.extracted, record.delivered, record.failed) == (
        RunStatus.SUCCEEDED,
        MEMBERS,
        MEMBERS,
        0,
    )
    assert _counts(record) == (MEMBERS, 0, 0, 0)
    assert stack.sent(first) == {"POST": Counter(range(1, MEMBERS + 1))}

    stack.execute(
        "UPDATE members SET points = points + 1000 WHERE id <= 100",
        "INSERT INTO members SELECT id + 5000, email, 'gold', points FROM members WHERE id <= 50",
        "DELETE FROM members WHERE id BETWEEN 971 AND 1000",
    )
    second, record = stack.run()
    assert (record.status, record.extracted, record.delivered) == (RunStatus.SUCCEEDED, 180, 180)
    assert _counts(record) == (50, 100, MEMBERS - 100 - 30, 30)
    sent = stack.sent(second)
    assert sent["PATCH"] == Counter(range(1, 101))
    assert sent["POST"] == Counter(range(5001, 5051))
    assert sent["DELETE"] == Counter(range(971, MEMBERS + 1))
    deleted = {m["id"]: m for r in stack.accepted(second) if r.method == "DELETE" for m in r.members}
    assert deleted[980] == {"id": 980, "email": "m980@example.com", "tier": "silver", "points": 980}, "last values"

    # The partner refuses 10 of 40 changed members (400, invalid; retry_rejected.invalid_runs 1): the next run
    # sends exactly those 10, alone.
    stack.execute("UPDATE members SET tier = 'gold' WHERE id BETWEEN 201 AND 240")
    stack.receiver.state.reject_members = frozenset(range(231, 241))
    refused_run, record = stack.run()
    assert (record.delivered, record.failed) == (30, 10)
    assert _counts(record)[:2] == (0, 40)
    assert stack.sent(refused_run) == {"PATCH": Counter(range(201, 231))}
    stack.receiver.state.reject_members = frozenset()
    third, record = stack.run()
    assert (record.status, record.delivered, record.failed) == (RunStatus.SUCCEEDED, 10, 0)
    assert _counts(record) == (0, 10, MEMBERS - 30 + 50 - 10, 0)
    assert stack.sent(third) == {"PATCH": Counter(range(231, 241))}

    quiet, record = stack.run()
    assert (record.status, record.extracted, _counts(record)) == (RunStatus.SUCCEEDED, 0, (0, 0, MEMBERS + 20, 0))
    assert stack.sent(quiet) == {}


def test_a_run_that_would_remove_most_members_fails_until_one_is_allowed_to(stack: ChangeStack):
    # The query selects 102 of the partner's 1,020 members (a staging table half loaded, a wrong filter).
    members = MEMBERS + 20
    stack.execute(
        "CREATE TABLE hidden AS SELECT * FROM members WHERE id > 102",
        "DELETE FROM members WHERE id > 102",
    )
    refused, record = stack.run()
    assert (record.status, record.mass_removal_allowed) == (RunStatus.FAILED, False)
    reason = (
        f"mass removal refused: the run would remove {members - 102} of the {members} members the partner has "
        "(90.0%), over sync.max_removed 50% (the default), at most 510: nothing was sent and the snapshot is "
        "unchanged."
    )
    assert record.failure_reason is not None
    assert record.failure_reason.startswith(reason)
    assert stack.sent(refused) == {}, "no DELETE (nor anything else) reached the partner"
    wait_until(
        lambda: any(m.message["X-Export-Run-Id"] == str(refused) for m in stack.pipeline.sink.received()),
        timeout=30,
        what="the refused run's error email",
    )
    mail = next(m for m in stack.pipeline.sink.received() if m.message["X-Export-Run-Id"] == str(refused))
    assert mail.recipients == [ONCALL]
    assert reason in " ".join(mail.text().split())

    # Allowed once: the removals the refused run held back go (the snapshot did not move).
    allowed, record = stack.run("--allow-mass-removal")
    assert (record.status, _counts(record)) == (RunStatus.SUCCEEDED, (0, 0, 102, members - 102))
    assert record.mass_removal_allowed, "the run's record says its request allowed it"
    with stack.store.connect() as connection:
        hidden = [row[0] for row in connection.execute(sa.text("SELECT id FROM hidden"))]
    assert stack.sent(allowed) == {"DELETE": Counter(hidden)}

    # The members come back (the next run adds them again): the store as the tests after this one expect it.
    stack.execute("INSERT INTO members SELECT * FROM hidden", "DROP TABLE hidden")


def _checkpoint(stack: ChangeStack) -> ExtractionCheckpointRow | None:
    with stack.pipeline.catalog.database.transaction() as session:
        rows = session.scalars(
            sa.select(ExtractionCheckpointRow).where(ExtractionCheckpointRow.definition == "sync-members")
        ).all()
        return next((row for row in rows if not row.completed), None)


def test_a_kill_9_of_the_extractor_mid_run_loses_and_double_counts_nothing(stack: ChangeStack):
    stack.run()  # whatever the test before left: the snapshot is now the store
    before = MEMBERS + 20
    # 20,000 added (a run of 200 batches, long enough to be killed in), 10 changed, 10 removed.
    with stack.store.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO members VALUES (:id, :email, 'bronze', 0)"),
            [{"id": i, "email": f"m{i}@example.com"} for i in range(10_001, 30_001)],
        )
    stack.execute(
        "UPDATE members SET points = points + 7 WHERE id BETWEEN 301 AND 310",
        "DELETE FROM members WHERE id BETWEEN 311 AND 320",
    )
    result = stack.pipeline.exportctl("run", "sync-members")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = uuid.UUID(result.stdout.splitlines()[0].split()[1])

    def mid_run() -> bool:
        row = _checkpoint(stack)
        return row is not None and row.run_id == str(run_id) and row.next_batch_index >= 20

    wait_until(mid_run, timeout=60, interval=0.01, what="the run's checkpoint at batch 20")
    stack.pipeline.services.kill("extractor")
    row = _checkpoint(stack)
    assert row is not None, "killed mid-run"
    assert row.next_batch_index < 190
    # Members of the pages before the checkpoint change before the restart: the resumed run neither sends nor
    # counts them (its counts are the checkpoint's), the next run does.
    stack.execute("UPDATE members SET points = points + 1 WHERE id <= 5")
    stack.pipeline.services.start_service("extractor")

    def finished() -> bool:
        record = stack.pipeline.catalog.runs.get_run(run_id)
        return record is not None and record.status in (RunStatus.SUCCEEDED, RunStatus.FAILED)

    wait_until(finished, timeout=120, what="the resumed run to finish")
    record = stack.pipeline.catalog.runs.get_run(run_id)
    assert record is not None
    assert (record.status, record.extracted, record.delivered, record.failed) == (
        RunStatus.SUCCEEDED,
        20_020,
        20_020,
        0,
    )
    assert _counts(record) == (20_000, 10, before - 20, 10)
    sent = stack.sent(run_id)
    assert sent == {
        "POST": Counter(range(10_001, 30_001)),
        "PATCH": Counter(range(301, 311)),
        "DELETE": Counter(range(311, 321)),
    }, "every change once (a batch sent again only under its own Idempotency-Key)"
    next_run, after = stack.run()
    assert (after.extracted, _counts(after)) == (5, (0, 5, before - 15 + 20_000, 0)), "the snapshot moved for all"
    assert stack.sent(next_run) == {"PATCH": Counter(range(1, 6))}
