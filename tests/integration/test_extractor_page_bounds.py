"""A run resumed after members were inserted or deleted between its crash and its resume, on SQLite and a real
PostgreSQL (the catalog and the members in the same database), the extractor's records captured (no Kafka): the page
being sent at the crash is re-read exactly (its last key and the batch index after it were written ahead of its
records), so no member reaches the partner under an identity (``run:batch_index``, the Idempotency-Key's stem) that
held other members, and none is lost."""

import pytest
from sqlalchemy import text

from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.runs import RunStatus
from shared.events import RangeRequested, RunRequested
from tests.integration.test_extractor_resumes import _extract  # pages of 8, records of the template's batch size

pytestmark = pytest.mark.integration

#: 40 members, keys 10, 20, ... 400 (room for members inserted between them); pages of 8, two members a record.
KEYS = list(range(10, 410, 10))


def _catalog(catalog: CatalogStores, url: str, *, incremental: bool = False) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE m (id integer PRIMARY KEY, name text, updated integer)"))
        for key in KEYS:
            connection.execute(text(f"INSERT INTO m VALUES ({key}, 'n{key}', 1)"))
    engine.dispose()
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, name, updated FROM m", key_column="id"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=2))
    watermark = {"watermark_column": "updated"} if incremental else None
    catalog.definitions.apply(ExportDefinition(name="d", query="q", template="t", incremental=watermark))


def _change(url: str, *statements: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    engine.dispose()


def _partner(crashed: dict[str, list[int]], resumed: dict[str, list[int]]) -> list[int]:
    """The members a partner honouring the Idempotency-Key takes (each identity's first record), after checking
    that no identity sent again holds members other than the first time (the partner would drop them as seen) and
    that no member came under two identities (sent twice)."""
    again = {identity: ids for identity, ids in resumed.items() if identity in crashed and crashed[identity] != ids}
    changed = {i: (crashed[i], ids) for i, ids in again.items() if not set(ids) <= set(crashed[i])}
    assert changed == {}, "a record sent again under one identity holds other members (dropped as seen: lost)"
    taken = {**resumed, **crashed}
    identities: dict[int, list[str]] = {}
    for identity, ids in taken.items():
        for i in ids:
            identities.setdefault(i, []).append(identity)
    assert {i: ids for i, ids in identities.items() if len(ids) > 1} == {}, "members under two identities"
    return sorted(identities)


# Two pages sent (keys 10-80, 90-160, batches of two: 90-100, 110-120, 130-140, 150-160): the second's send is where
# it stops, the first page checkpointed. Then: a member deleted and one inserted in the first page's keys (the
# next run's); the second page's last member deleted and a member inserted after it; the second page's members all
# deleted; members deleted inside it (a batch's last and the next one's first); members inserted inside a batch of it
# and between two of its batches (sent, under identities of their own).
CHANGES = {
    "first page changed": (("DELETE FROM m WHERE id = 30", "INSERT INTO m VALUES (15, 'new', 1)"), {15}),
    "last of the page sent deleted": (("DELETE FROM m WHERE id = 160", "INSERT INTO m VALUES (165, 'new', 1)"), set()),
    "page sent emptied": (("DELETE FROM m WHERE id BETWEEN 90 AND 160",), set()),
    "deleted inside the page sent": (("DELETE FROM m WHERE id IN (100, 110)",), set()),
    "inserted inside the page sent": (
        ("INSERT INTO m VALUES (95, 'new', 1)", "INSERT INTO m VALUES (105, 'new', 1)"),
        set(),
    ),
}


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_run_resumed_after_members_changed_in_the_pages_it_was_sending_loses_none_and_reuses_no_identity(
    database_url: str, catalog: CatalogStores, incremental: bool, change: str
):
    _catalog(catalog, database_url, incremental=incremental)
    request = RunRequested(definition="d")
    crashed, _ = _extract(catalog, database_url, request, crash_after_sends=2)
    statements, not_sent = CHANGES[change]
    _change(database_url, *statements)
    resumed, completed = _extract(catalog, database_url, request)

    # Every member there at the run's start reaches the partner once (those deleted since: sent before the crash);
    # a member inserted after its page was checkpointed is the next run's, one inserted after the page sent: this one's.
    inserted = {int(s.split("(")[1].split(",")[0]) for s in statements if s.startswith("INSERT")}
    assert inserted - not_sent <= set(_partner({}, resumed)), "members inserted in the page sent: sent again"
    assert _partner(crashed, resumed) == sorted(set(KEYS) | (inserted - not_sent))
    assert len(completed) == 1


def test_a_range_resumed_after_members_changed_in_the_page_it_was_sending_loses_none_and_reuses_no_identity(
    database_url: str, catalog: CatalogStores
):
    _catalog(catalog, database_url)
    request = RunRequested(definition="d")
    # Split in two ranges (keys up to 200, after 200): the run's request publishes their requests.
    records, _ = _extract(catalog, database_url, request, range_members=20, run_request_partitions=lambda: 2)
    assert records == {}
    [_first, second] = catalog.extraction.run_ranges(request.run_id)
    task = RangeRequested(run_id=request.run_id, definition="d", range_index=1, ranges=2)
    crashed, _ = _extract(catalog, database_url, task, crash_after_sends=2)
    _change(database_url, "DELETE FROM m WHERE id = 360", "INSERT INTO m VALUES (365, 'new', 1)")
    resumed, _ = _extract(catalog, database_url, task)

    assert _partner(crashed, resumed) == sorted({k for k in KEYS if k > 200} | {365})
    assert min(int(i.split(":")[1]) for i in crashed) == second.first_batch_index


def test_a_page_resumed_after_members_changed_and_crashing_again_is_resumed_in_the_same_batches_again(
    database_url: str, catalog: CatalogStores
):
    _catalog(catalog, database_url)
    request = RunRequested(definition="d")
    crashed, _ = _extract(catalog, database_url, request, crash_after_sends=2)
    _change(database_url, "INSERT INTO m VALUES (95, 'new', 1)", "DELETE FROM m WHERE id = 110")
    # Resumed, it dies again once the page is sent again (before its acknowledgement); members change again.
    again, _ = _extract(catalog, database_url, request, crash_after_sends=1)
    _change(database_url, "DELETE FROM m WHERE id = 130", "INSERT INTO m VALUES (125, 'new', 1)")
    resumed, completed = _extract(catalog, database_url, request)

    for before, after in [(crashed, again), ({**again, **crashed}, resumed)]:
        _partner(before, after)
    assert _partner({**again, **crashed}, resumed) == sorted({*KEYS, 95, 125})
    assert len(completed) == 1


# The page being sent (keys 90-160: batches 4 to 7) never reached Kafka: the extractor stopped before publishing it.
# Then every member of one of its batches, or of all of them, is deleted.
EMPTIED = {
    "one batch of the page emptied": ("DELETE FROM m WHERE id IN (110, 120)", {110, 120}),
    "the page emptied": ("DELETE FROM m WHERE id BETWEEN 90 AND 160", set(range(90, 170, 10))),
}


def _run_of(catalog: CatalogStores, run_id, records: dict[str, list[int]]):
    """The run as the notifier folded its events and its batches' outcomes, after checking that every batch index
    it waits for was published (an index never sent never gets an outcome: the run would stay dispatching)."""
    run = catalog.runs.get_run(run_id)
    assert run is not None
    sent = sorted(int(identity.split(":")[1]) for identity in records)
    assert sent == list(range(run.batches_expected or 0)), "a batch index the run waits for was never sent"
    return run


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
@pytest.mark.parametrize("change", list(EMPTIED))
def test_a_run_resumed_after_the_members_of_a_batch_never_published_were_deleted_completes_with_true_counts(
    database_url: str, catalog: CatalogStores, incremental: bool, change: str
):
    _catalog(catalog, database_url, incremental=incremental)
    request = RunRequested(definition="d")
    crashed, _ = _extract(
        catalog, database_url, request, crash_after_sends=2, crash_before_publishing=True, delivered=True
    )
    assert sorted(crashed) == [f"{request.run_id}:{i}" for i in range(4)]
    statement, deleted = EMPTIED[change]
    _change(database_url, statement)
    resumed, completed = _extract(catalog, database_url, request, delivered=True)

    assert _partner(crashed, resumed) == sorted(set(KEYS) - deleted)
    run = _run_of(catalog, request.run_id, {**crashed, **resumed})
    assert (run.status, run.extracted, run.delivered) == (RunStatus.SUCCEEDED, 40 - len(deleted), 40 - len(deleted))
    assert [c.batches for c in completed] == [run.batches_expected]


def test_a_range_resumed_after_the_members_of_a_batch_never_published_were_deleted_completes_its_run(
    database_url: str, catalog: CatalogStores
):
    _catalog(catalog, database_url)
    request = RunRequested(definition="d")
    # Split in two ranges (keys up to 200, after 200): the run's request publishes their requests.
    _extract(catalog, database_url, request, range_members=20, run_request_partitions=lambda: 2, delivered=True)
    tasks = [RangeRequested(run_id=request.run_id, definition="d", range_index=i, ranges=2) for i in range(2)]
    first, _ = _extract(catalog, database_url, tasks[0], delivered=True)
    crashed, _ = _extract(
        catalog, database_url, tasks[1], crash_after_sends=2, crash_before_publishing=True, delivered=True
    )
    _change(database_url, "DELETE FROM m WHERE id IN (310, 320)")  # a batch of the range's second page
    resumed, completed = _extract(catalog, database_url, tasks[1], delivered=True)

    assert _partner({**first, **crashed}, resumed) == sorted(set(KEYS) - {310, 320})
    [second] = catalog.extraction.run_ranges(request.run_id)[1:]
    records = {**first, **crashed, **resumed}
    assert sorted(int(i.split(":")[1]) for i in records if i in resumed or i in crashed) == list(
        range(second.first_batch_index, second.next_batch_index)
    ), "a batch index of the range was never sent"
    run = catalog.runs.get_run(request.run_id)
    assert run is not None
    assert (run.status, run.extracted, run.delivered) == (RunStatus.SUCCEEDED, 38, 38)
    assert [c.batches for c in completed] == [run.batches_expected]
