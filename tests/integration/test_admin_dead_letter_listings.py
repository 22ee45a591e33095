"""``GET /api/v1/dead-letters``' pages after the first, answered from the listing the admin process kept while the
dead-letter topic did not change (before: the whole topic read at each page: exportctl's listing of G groups read it
G/1000 + 1 times, each read one of the 3 dead-letter read slots).

In-process admin API (the suite's fixtures: seeded objects, its tokens) over the session's Kafka, each test on a
dead-letter topic of its own (2 partitions); exportctl as a process against it over a real HTTP server. The topic's
reads are counted where the admin's source makes them (:mod:`shared.kafka.event_publisher`'s read functions).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client import REGISTRY

from devtools.processes import wait_until
from services.admin.dependencies import MAX_DEAD_LETTER_READS, DeadLetterReplays
from shared.domain.catalog_objects import ExportDefinition, SavedQuery
from shared.domain.member_retries import MemberRetry, RefusalKind, RetryState
from shared.errors import CatalogTimedOut
from shared.events import DeadLetter
from shared.kafka import clients, event_publisher
from shared.kafka.event_publisher import KafkaDeadLetters
from shared.settings import CommonSettings
from tests.admin_app import InProcessApi, in_process_api, seed
from tests.integration.test_admin_dead_letters import BUSY, LIST, exportctl, through_api
from tests.integration.test_cancel_replay_kafka_unavailable import RUNS, _console
from tests.integration.test_console_fields import signed_in
from tests.integration.test_kafka_unavailable import serving
from tests.kafka_helpers import create_topic

pytestmark = pytest.mark.integration

CHANGED = "exportctl: warning: the dead letters changed while they were read"
METRIC = "member_export_admin_dead_letter_listings_total"


@dataclass
class Reads:
    """The whole-topic reads of the dead letters made (each one a read of every record, from the start)."""

    count: int = 0


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    """Counts the admin's reads of the dead-letter topic: every read of the whole topic, and every versioned read
    that read the records (not those the listing kept answered: ``known``)."""
    counted = Reads()
    whole = clients.read_whole_topic

    def read_whole_topic(*args: Any, **kwargs: Any) -> list[bytes]:
        counted.count += 1
        return whole(*args, **kwargs)

    monkeypatch.setattr(event_publisher, "read_whole_topic", read_whole_topic)
    unless = getattr(clients, "read_topic_unless", None)
    if unless is not None:  # the code before had none: every listing read the whole topic

        def read_topic_unless(*args: Any, **kwargs: Any) -> tuple[Any, list[bytes] | None]:
            version, values = unless(*args, **kwargs)
            if values is not None:
                counted.count += 1
            return version, values

        monkeypatch.setattr(event_publisher, "read_topic_unless", read_topic_unless)
    return counted


@dataclass
class Listing:
    """The in-process API reading the dead letters of its own topic on the session's Kafka."""

    api: InProcessApi
    settings: CommonSettings
    bootstrap: str
    replays: DeadLetterReplays

    def add(self, letters: list[DeadLetter]) -> None:
        """Dead letters on the topic, acknowledged, keyed by run (spread over its partitions)."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        try:
            sent = [
                producer.send(
                    self.settings.topics.dead_letters,
                    key=str(letter.run_id).encode(),
                    value=letter.model_dump_json().encode(),
                )
                for letter in letters
            ]
            for future in sent:
                future.get(timeout=30)
        finally:
            producer.close()

    def get(self, who: str = "viewer", **params: Any) -> dict[str, Any]:
        with self.api.client(who) as client:
            answer = client.get(LIST, params=params)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture
def listing(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Listing]:
    with _listing(tmp_path, kafka_bootstrap) as made:
        yield made


@contextmanager
def _listing(tmp_path: Path, kafka_bootstrap: str, catalog_url: str | None = None) -> Iterator[Listing]:
    settings = CommonSettings(
        kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"dlq-{uuid.uuid4().hex[:8]}.", metrics_port=0
    )
    create_topic(kafka_bootstrap, settings.topics.dead_letters, partitions=2)
    with in_process_api(tmp_path, catalog_url=catalog_url) as api:
        with api.client() as client:
            seed(client)
        replays = DeadLetterReplays(lambda: KafkaDeadLetters(settings), 900_000)
        api.app.state.context.replays = replays
        yield Listing(api, settings, kafka_bootstrap, replays)


def _refused(run: uuid.UUID, reason: str, member: int, definition: str = "nightly") -> DeadLetter:
    return DeadLetter(
        reason=reason,
        source_topic="t",
        service="dispatcher",
        run_id=run,
        definition=definition,
        members=[{"id": member}],
        at=datetime.now(UTC),
    )


def _served(source: str) -> float:
    return REGISTRY.get_sample_value(f"{METRIC}", {"source": source}) or 0.0


def test_a_listing_of_several_pages_reads_the_topic_once_while_it_does_not_change(
    listing: Listing, reads: Reads
) -> None:
    """exportctl's 3 pages of 2,500 groups: one read of the topic, the pages after the first answered from the
    listing kept (before: 3 reads, one a page); the same output as ever, and listing again reads nothing while
    nothing was added. The version's check still takes one of the dead-letter reads: with all of them taken, a
    page is 503 ``dead-letters-busy`` as before."""
    runs = [uuid.UUID(int=i + 1) for i in range(5)]
    listing.add([_refused(runs[i % 5], f"HTTP 400: request {i:04} refused", i) for i in range(2_500)])
    read_before, kept_before = _served("read"), _served("kept")
    with serving(listing.api.app) as url:
        listed = exportctl("dead-letters", "list", "-o", "json", env=through_api(url, listing.api.tokens["viewer"]))
        assert listed.returncode == 0, listed.stderr
        assert listed.stderr == ""
        rows = json.loads(listed.stdout)
        assert len(rows) == 2_500
        assert rows == sorted(rows, key=lambda row: (row["run"], row["reason"]))
        assert {row["retry"] for row in rows} == {"1 no retry"}
        assert reads.count == 1  # before: 3
        again = exportctl("dead-letters", "list", env=through_api(url, listing.api.tokens["viewer"]))
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[-1] == "2500 dead letter(s)"
        assert reads.count == 1  # before: 6
    assert (_served("read") - read_before, _served("kept") - kept_before) == (1, 5)
    for _ in range(MAX_DEAD_LETTER_READS):
        assert listing.replays.reads.acquire(blocking=False)
    try:
        with listing.api.client("viewer") as client:
            busy = client.get(LIST, params={"offset": 1_000})
        assert (busy.status_code, busy.json()["detail"], busy.headers["retry-after"]) == (503, BUSY, "10")
    finally:
        for _ in range(MAX_DEAD_LETTER_READS):
            listing.replays.reads.release()
    assert reads.count == 1


def test_a_dead_letter_added_between_pages_is_read_by_the_next_page_and_exportctl_warns(
    listing: Listing, reads: Reads
) -> None:
    run = uuid.UUID(int=7)
    listing.add([_refused(run, f"HTTP 400: request {i:04} refused", i) for i in range(2_100)])
    context = listing.api.app.state.context
    retries = context.retries
    pages: list[int] = []

    class LateLetter:
        """The catalog's retry states; while the first page is answered (after its read), one more dead letter,
        sorted first, comes."""

        def states(self, definition: str, keys: Any) -> Any:
            pages.append(1)
            if len(pages) == 1:
                listing.add([_refused(run, "HTTP 400: request 0000 came late", 9_999)])
            return retries.states(definition, keys)

    context.retries = LateLetter()
    with serving(listing.api.app) as url:
        listed = exportctl("dead-letters", "list", "-o", "json", env=through_api(url, listing.api.tokens["viewer"]))
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.startswith(CHANGED), listed.stderr
    rows = json.loads(listed.stdout)
    # Each group once: the one pushed onto the second page by the late one is not listed twice.
    assert len(rows) == len({row["reason"] for row in rows}) == 2_100
    # The first page read the topic, the second read it again (it changed), the third was the second's listing.
    assert (len(pages), reads.count) == (3, 2)  # before: 3 reads
    late = listing.get(offset=0, limit=1)
    assert (late["total_groups"], late["letters"]) == (2_101, 2_101)
    assert late["groups"][0]["reason"] == "HTTP 400: request 0000 came late"
    assert reads.count == 2


def test_a_scoped_token_sees_only_its_groups_from_a_kept_listing(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, reads: Reads
) -> None:
    """An unscoped listing kept, then read by an ``emea`` token: its runs' groups only, its own counts and retry
    cells, no unreadable record, the topic not read again (before: read again); and back (on both dialects)."""
    with _listing(tmp_path, kafka_bootstrap, catalog_url=database_url) as listing:
        with listing.api.client("operator") as client:
            emea = uuid.UUID(client.post(RUNS).json()["run_id"])  # "nightly" is of emea
        elsewhere = uuid.uuid4()  # a run not recorded in emea
        letters = [_refused(elsewhere, f"HTTP 400: request {i} refused", i) for i in range(30)]
        letters += [_refused(emea, f"HTTP 422: member {i} refused", i) for i in range(3)]
        letters.append(
            DeadLetter(reason="invalid JSON", source_topic="t", service="extractor", payload="{", at=datetime.now(UTC))
        )
        listing.add(letters)
        every = listing.get(limit=10)
        assert (every["total_groups"], every["letters"], len(every["groups"])) == (34, 34, 10)
        scoped = listing.get("emea-viewer", limit=10)
        assert scoped == {
            "letters": 3,
            "total_groups": 3,
            "unreadable": 0,
            "groups": [
                {
                    "run_id": str(emea),
                    "service": None,
                    "definition": "nightly",
                    "reason": f"HTTP 422: member {i} refused",
                    "members": 1,
                    "retry": "1 no retry",
                }
                for i in range(3)
            ],
        }
        assert listing.get("emea-viewer", run=str(elsewhere)) == {
            "letters": 0,
            "total_groups": 0,
            "unreadable": 0,
            "groups": [],
        }
        assert reads.count == 2  # the unscoped listing, and the one of run `elsewhere` (other filters)
        # The unreadable record, an unscoped token's only, sorted first ("(extractor: unreadable record)").
        assert listing.get(limit=1)["groups"][0]["service"] == "extractor"
        assert reads.count == 2  # before: 4


def test_the_kept_listings_are_bounded_in_number_and_in_bytes(listing: Listing, reads: Reads) -> None:
    """At most ``max_listings`` listings (the least recently used one dropped) of ``max_bytes`` in all; a listing of
    more is read at each request, as before."""
    runs = [uuid.UUID(int=i + 1) for i in range(3)]
    listing.add([_refused(run, f"HTTP 400: request {i} refused", i) for run in runs for i in range(10)])
    bounded = listing.replays.listings
    bounded.max_listings = 2
    assert listing.get(run=str(runs[0]))["total_groups"] == 10
    one = bounded.weight  # a run's listing (each run's weighs the same): 10 groups, 10 keys
    bounded.max_bytes = 2 * one + one // 4  # two runs' listings, not every run's (3 times one)
    for run in runs[1:]:
        assert listing.get(run=str(run))["total_groups"] == 10
    assert (reads.count, len(bounded), bounded.weight) == (3, 2, 2 * one)
    listing.get(run=str(runs[2]))  # kept
    listing.get(run=str(runs[1]))  # kept
    assert reads.count == 3
    listing.get(run=str(runs[0]))  # dropped when the third was kept: read again
    assert reads.count == 4
    for _ in range(2):  # every run's: never kept
        assert listing.get()["total_groups"] == 30
    assert (reads.count, len(bounded), bounded.weight) == (6, 2, 2 * one)


def _pending(definition: str, keys: Any) -> dict[str, MemberRetry]:
    """Retry states: every key naming an e-mail address pending (no member id is one)."""
    return {
        key: MemberRetry(key, 400, "refused", RefusalKind.RETRYABLE, 1, RetryState.PENDING, "r")
        for key in keys
        if "@" in key
    }


def test_a_key_column_changed_between_pages_reads_the_topic_again_for_the_right_cells(
    listing: Listing, reads: Reads
) -> None:
    """The saved query's key column changed (``id`` to ``email``) after the first page: the next page reads the
    topic again and its cells count the members by their e-mail addresses (kept keys, ids, would say no retry)."""
    run = uuid.UUID(int=3)
    listing.add(
        [
            _refused(run, f"HTTP 400: request {i} refused", i).model_copy(
                update={"members": [{"id": i, "email": f"m{i}@example.com"}]}
            )
            for i in range(4)
        ]
    )
    listing.api.app.state.context.retries = SimpleNamespace(states=_pending)
    assert {group["retry"] for group in listing.get(limit=2)["groups"]} == {"1 no retry"}
    assert reads.count == 1
    with listing.api.client() as client:
        query = client.get("/api/v1/saved-queries/gold").json()
        changed = client.put("/api/v1/saved-queries/gold", json={**query, "key_column": "email"})
        assert changed.status_code == 200, changed.text
    page = listing.get(offset=2, limit=2)
    assert [group["retry"] for group in page["groups"]] == ["1 pending retry", "1 pending retry"]
    assert reads.count == 2
    assert {group["retry"] for group in listing.get(limit=4)["groups"]} == {"1 pending retry"}
    assert reads.count == 2  # kept again, under the new column


@contextmanager
def _statements(engine: sa.Engine) -> Iterator[list[str]]:
    """The statements run on ``engine`` within the ``with``."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_a_kept_page_asks_the_catalog_about_its_own_groups_definitions_only(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, reads: Reads
) -> None:
    """An outage across 300 exports (a dead letter each): a page of 10 groups answered from the kept listing asks the
    catalog about its 10 definitions, not the 300 (before: each one's key column, 2 queries each, 600 at every
    page), its cells the same (on both dialects)."""
    with _listing(tmp_path, kafka_bootstrap, catalog_url=database_url) as listing:
        definitions = listing.api.app.state.context.definitions
        names = [f"export-{i:03}" for i in range(300)]
        definitions.apply_all([ExportDefinition(name=name, query="gold", template="upsert") for name in names])
        run = uuid.UUID(int=10)
        listing.add([_refused(run, "HTTP 503 after 5 attempts", i, definition=name) for i, name in enumerate(names)])
        assert [group["definition"] for group in listing.get(limit=10)["groups"]] == names[:10]
        with _statements(definitions.database.engine) as statements:
            page = listing.get(offset=10, limit=10)
        assert reads.count == 1  # the page kept
        assert (page["total_groups"], [group["definition"] for group in page["groups"]]) == (300, names[10:20])
        assert {group["retry"] for group in page["groups"]} == {"1 no retry"}
        # Each shown definition: its key column (the definition, its query), its cells (the definition, the retries).
        assert len(statements) <= 4 * 10, statements[:50]  # before: 620


def test_a_key_column_changed_on_another_page_reads_the_topic_again_for_that_page_only(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, reads: Reads
) -> None:
    """The key column of a definition shown on the second page only changed: the first page is answered from the kept
    listing, its cells the same (before: the topic read again), the second reads the topic again and its cell counts
    the members by their e-mail addresses (on both dialects)."""
    with _listing(tmp_path, kafka_bootstrap, catalog_url=database_url) as listing:
        definitions = listing.api.app.state.context.definitions
        gold = definitions.get(SavedQuery, "gold")
        definitions.apply_all(
            [
                gold.model_copy(update={"name": "silver"}),
                ExportDefinition(name="zz-silver", query="silver", template="upsert"),
            ]
        )
        run = uuid.UUID(int=11)
        letters = [_refused(run, f"HTTP 400: request {i} refused", i) for i in range(4)]
        letters.append(_refused(run, "HTTP 400: request 4 refused", 4, definition="zz-silver"))
        listing.add(
            [
                letter.model_copy(update={"members": [{"id": i, "email": f"m{i}@example.com"}]})
                for i, letter in enumerate(letters)
            ]
        )
        listing.api.app.state.context.retries = SimpleNamespace(states=_pending)
        assert {group["retry"] for group in listing.get(limit=4)["groups"]} == {"1 no retry"}
        definitions.apply_all([gold.model_copy(update={"name": "silver", "key_column": "email"})])
        first = listing.get(limit=4)["groups"]
        assert ([group["definition"] for group in first], {group["retry"] for group in first}) == (
            ["nightly"] * 4,
            {"1 no retry"},
        )
        assert reads.count == 1  # before: 2
        second = listing.get(offset=4, limit=4)["groups"]
        assert [(group["definition"], group["retry"]) for group in second] == [("zz-silver", "1 pending retry")]
        assert reads.count == 2


def test_a_kept_listing_expires_after_its_five_minutes(listing: Listing, reads: Reads) -> None:
    """However unchanged the topic, a listing older than ``max_age_seconds`` (5 minutes) is read again."""
    listing.add([_refused(uuid.UUID(int=4), f"HTTP 400: request {i} refused", i) for i in range(3)])
    now = [1_000.0]
    listing.replays.listings.clock = lambda: now[0]
    listing.get()
    now[0] += 299.0
    listing.get()
    assert reads.count == 1
    now[0] += 2.0  # 301 s after it was read
    assert listing.get()["letters"] == 3
    assert reads.count == 2


def test_records_deleted_from_the_start_between_pages_are_read_again(listing: Listing, reads: Reads) -> None:
    """Retention (``delete_records``) dropping a dead letter between pages: the next page reads the topic again and
    counts one dead letter less (not the kept listing's count)."""
    listing.add([_refused(uuid.UUID(int=5), f"HTTP 400: request {i} refused", i) for i in range(6)])
    assert listing.get(limit=2)["letters"] == 6
    topic = listing.settings.topics.dead_letters
    consumer = KafkaConsumer(bootstrap_servers=listing.bootstrap, group_id=None)
    admin = KafkaAdminClient(bootstrap_servers=listing.bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in (0, 1)])
        held = next(partition for partition, end in ends.items() if end > 0)
        admin.delete_records({held: 1})
    finally:
        admin.close()
        consumer.close()
    page = listing.get(offset=2, limit=2)
    assert (page["letters"], page["total_groups"]) == (5, 5)
    assert reads.count == 2


def test_a_topic_deleted_and_created_again_at_the_same_offsets_is_read_again(listing: Listing, reads: Reads) -> None:
    """The dead-letter topic deleted and created again, holding as many dead letters as before (its offsets the
    same): the listing lists the new ones (before: the kept listing of the old topic, for up to 5 minutes)."""
    run = uuid.UUID(int=6)
    listing.add([_refused(run, f"HTTP 400: old {i}", i) for i in range(3)])
    assert [group["reason"] for group in listing.get()["groups"]] == [f"HTTP 400: old {i}" for i in range(3)]
    topic = listing.settings.topics.dead_letters
    admin = KafkaAdminClient(bootstrap_servers=listing.bootstrap)
    try:
        admin.delete_topics([topic])
        wait_until(lambda: topic not in admin.list_topics(), timeout=30, what=f"{topic} deleted")
    finally:
        admin.close()
    create_topic(listing.bootstrap, topic, partitions=2)
    listing.add([_refused(run, f"HTTP 400: new {i}", i) for i in range(3)])  # the same run: the same partition
    assert [group["reason"] for group in listing.get()["groups"]] == [f"HTTP 400: new {i}" for i in range(3)]
    assert reads.count == 2


def test_a_listing_kept_for_a_scoped_caller_answers_an_unscoped_one_in_full(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, reads: Reads
) -> None:
    """Kept from an ``emea`` token's request, the listing answers an unscoped token with every group (other runs',
    the unreadable record), its counts and its cells, the topic not read again (on both dialects)."""
    with _listing(tmp_path, kafka_bootstrap, catalog_url=database_url) as listing:
        with listing.api.client("operator") as client:
            emea = uuid.UUID(client.post(RUNS).json()["run_id"])
        elsewhere = uuid.uuid4()
        letters = [_refused(elsewhere, f"HTTP 400: request {i} refused", i) for i in range(4)]
        letters += [_refused(emea, f"HTTP 422: member {i} refused", i) for i in range(2)]
        letters.append(
            DeadLetter(reason="invalid JSON", source_topic="t", service="extractor", payload="{", at=datetime.now(UTC))
        )
        listing.add(letters)
        assert (listing.get("emea-viewer")["total_groups"], reads.count) == (2, 1)
        every = listing.get()
        assert reads.count == 1
        assert (every["letters"], every["total_groups"]) == (7, 7)
        assert every["groups"][0] == {
            "run_id": None,
            "service": "extractor",
            "definition": None,
            "reason": "invalid JSON",
            "members": 1,
            "retry": None,
        }
        assert [group["retry"] for group in every["groups"][1:]] == ["1 no retry"] * 6


def test_a_slow_catalog_while_a_kept_listing_is_checked_is_not_a_kafka_failure(
    listing: Listing, reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog asked whether the kept keys still serve (each definition's key column) after Kafka's version read
    is over: a catalog taking longer than the read's 60 s there, and saying the key column changed, gets the topic
    read again, 200 (before: asked while the read's deadline ran, the read after it timed out: 503
    ``dead-letters-unreadable``, Kafka blamed). The read's clock is moved by the catalog, not waited."""
    listing.add([_refused(uuid.UUID(int=8), f"HTTP 400: request {i} refused", i) for i in range(3)])
    assert listing.get(limit=1)["total_groups"] == 3
    with listing.api.client() as client:
        query = client.get("/api/v1/saved-queries/gold").json()
        assert client.put("/api/v1/saved-queries/gold", json={**query, "key_column": "email"}).status_code == 200
    skew = [0.0]
    monkeypatch.setattr(clients, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + skew[0]))
    context = listing.api.app.state.context
    definitions = context.definitions

    class Slow:
        """The catalog's definitions, each call taking 61 s of the read's clock."""

        def __getattr__(self, name: str) -> Any:
            found = getattr(definitions, name)
            if not callable(found):
                return found

            def slow(*args: Any, **kwargs: Any) -> Any:
                skew[0] += 61.0
                return found(*args, **kwargs)

            return slow

    context.definitions = Slow()
    try:
        with listing.api.client("viewer") as client:
            answer = client.get(LIST, params={"offset": 1, "limit": 1})
    finally:
        context.definitions = definitions
    assert answer.status_code == 200, answer.text
    assert answer.json()["total_groups"] == 3
    assert reads.count == 2


def test_an_answer_the_catalog_timed_out_is_not_counted(listing: Listing, reads: Reads) -> None:
    """A listing whose retry cells time out in the catalog (503 ``catalog-timed-out``) counts no answer in the
    metric (before: counted ``read``)."""
    listing.add([_refused(uuid.UUID(int=9), "HTTP 400: refused", 1)])

    def timed_out(definition: str, keys: Any) -> Any:
        raise CatalogTimedOut("member retries", None, "57014")

    listing.api.app.state.context.retries = SimpleNamespace(states=timed_out)
    read_before, kept_before = _served("read"), _served("kept")
    with listing.api.client("viewer") as client:
        answer = client.get(LIST)
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"].endswith("catalog-timed-out")
    assert (_served("read") - read_before, _served("kept") - kept_before) == (0, 0)


@contextmanager
def _console_of_a_run(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Listing, Any, uuid.UUID]]:
    """A listing's admin app, an operator signed in to its console (over the listing's kept listings), a run."""
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # before the app is made: its console reads it
    with (
        _listing(tmp_path, kafka_bootstrap) as listing,
        listing.api.client("operator") as client,
        signed_in(listing.api, "operator") as console,
    ):
        run = uuid.UUID(client.post(RUNS).json()["run_id"])
        _console(listing.api.app).replays = listing.replays
        yield listing, console, run


def test_the_consoles_dead_letters_page_of_a_run_viewed_again_reads_the_topic_once(
    tmp_path: Path, kafka_bootstrap: str, reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console's dead-letters page of a run answered from the listing the process keeps (the API's): viewed
    twice, the topic read once (before: at each view), its reasons whole (not the API's first 100 characters); a
    dead letter added, the next view reads it."""
    long_reason = "HTTP 400: " + "r" * 150
    with _console_of_a_run(tmp_path, kafka_bootstrap, monkeypatch) as (listing, console, run):
        listing.add([_refused(run, long_reason, i) for i in range(2)])
        for _ in range(2):
            page = console.client.get(f"/console/runs/{run}/dead-letters")
            assert page.status_code == 200, page.text
            assert f'<td>{long_reason}</td><td class="num">2</td>' in page.text
        assert reads.count == 1  # before: 2
        assert listing.get(run=str(run))["groups"][0]["reason"] == long_reason[:100]
        assert reads.count == 2  # the API's listing: its reasons' 100 characters, another listing
        listing.add([_refused(run, long_reason, 3)])
        page = console.client.get(f"/console/runs/{run}/dead-letters")
        assert f'<td>{long_reason}</td><td class="num">3</td>' in page.text
        assert reads.count == 3


def test_the_consoles_page_after_an_api_page_shows_its_reasons_whole(
    tmp_path: Path, kafka_bootstrap: str, reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's page of a run first (its reasons' first 100 characters kept), then the console's: the console's
    reasons whole, from a listing of its own (the topic read twice), not the API's cut ones."""
    long_reason = "HTTP 400: " + "r" * 150
    with _console_of_a_run(tmp_path, kafka_bootstrap, monkeypatch) as (listing, console, run):
        listing.add([_refused(run, long_reason, i) for i in range(2)])
        assert listing.get(run=str(run))["groups"][0]["reason"] == long_reason[:100]
        assert reads.count == 1
        page = console.client.get(f"/console/runs/{run}/dead-letters")
        assert page.status_code == 200, page.text
        assert f'<td>{long_reason}</td><td class="num">2</td>' in page.text
        assert reads.count == 2
