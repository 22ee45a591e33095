"""A change-mode run resumed after members were inserted or deleted between its crash and its resume, on SQLite and a
real PostgreSQL (the catalog, its snapshot and the members in the same database), the extractor's records captured (no
Kafka): the page being sent at the crash is re-sent in exactly the batches it was sent in (its bounds written ahead of
its records, its members' batches as staged in the snapshot), so no member reaches the partner under an identity
(``run:batch_index``, the Idempotency-Key's stem) that held other members, none is lost, and every batch index the
run counts was sent (its completion waits for an outcome of each)."""

from collections.abc import Sequence

import pytest

from shared.catalog import CatalogStores, SqlChangeSnapshots
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate
from shared.domain.change_staging import SnapshotRun, Staging
from shared.events import ExtractionCompleted, RunRequested
from tests.integration.test_extractor_page_bounds import CHANGES, KEYS, _change, _partner
from tests.integration.test_extractor_page_bounds import _catalog as _full_catalog
from tests.integration.test_extractor_resumes import _Crash, _extract  # pages of 8

pytestmark = pytest.mark.integration


def _catalog(catalog: CatalogStores, url: str) -> None:
    """Members 10, 20, ... 400 (the full runs' table and query); definition ``c`` in change mode, added and changed
    members each with a template of their own, two members a record (four records a page of 8)."""
    _full_catalog(catalog, url)
    for name in ("t-add", "t-chg", "t-del"):
        catalog.definitions.apply(HttpTemplate(name=name, query="q", profile="p", batch_size=2))
    sync = {"mode": "changes", "added": "t-add", "changed": "t-chg", "removed": "t-del", "max_removed": "100%"}
    catalog.definitions.apply(ExportDefinition(name="c", query="q", template="t", sync=sync))


def _run(catalog: CatalogStores, url: str, second: bool) -> tuple[RunRequested, SqlChangeSnapshots]:
    """The run to crash: the definition's first (every member added) or its second (a first one delivered, every
    member's values changed since)."""
    snapshots = SqlChangeSnapshots(catalog.database)
    if second:
        _extract(catalog, url, RunRequested(definition="c"), delivered=True, snapshots=snapshots)
        _change(url, "UPDATE m SET name = 'v2'")
    return RunRequested(definition="c"), snapshots


def _indexes_all_sent(records: dict[str, list[int]], completed: list[ExtractionCompleted]) -> None:
    """The run's completion counts its batches; each index up to it was sent (else the run waits for ever)."""
    [event] = completed
    assert sorted({int(identity.split(":")[1]) for identity in records}) == list(range(event.batches))


@pytest.mark.parametrize("second", [False, True], ids=["added", "changed"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_run_resumed_after_members_changed_in_the_page_it_was_sending_loses_none_and_reuses_no_identity(
    database_url: str, catalog: CatalogStores, second: bool, change: str
):
    _catalog(catalog, database_url)
    request, snapshots = _run(catalog, database_url, second)
    # Two pages sent (keys 10-80, 90-160): the second's send is where it stops.
    crashed, _ = _extract(catalog, database_url, request, crash_after_sends=2, snapshots=snapshots)
    statements, not_sent = CHANGES[change]
    _change(database_url, *statements)
    resumed, completed = _extract(catalog, database_url, request, snapshots=snapshots)

    # Every member there at the run's start reaches the partner once (those deleted since: sent before the crash);
    # one inserted after its page was checkpointed is the next run's, one inserted in the page sent or after: this
    # one's.
    inserted = {int(s.split("(")[1].split(",")[0]) for s in statements if s.startswith("INSERT")}
    assert inserted - not_sent <= set(_partner({}, resumed)), "members inserted in the page sent: not sent"
    assert _partner(crashed, resumed) == sorted(set(KEYS) | (inserted - not_sent))
    _indexes_all_sent({**crashed, **resumed}, completed)


def test_a_change_runs_page_resumed_after_members_changed_and_crashing_again_is_resumed_in_the_same_batches_again(
    database_url: str, catalog: CatalogStores
):
    _catalog(catalog, database_url)
    request, snapshots = _run(catalog, database_url, second=True)
    crashed, _ = _extract(catalog, database_url, request, crash_after_sends=2, snapshots=snapshots)
    _change(database_url, "INSERT INTO m VALUES (95, 'new', 1)", "DELETE FROM m WHERE id = 110")
    # Resumed, it dies again once the page is sent again (before its acknowledgement); members change again.
    again, _ = _extract(catalog, database_url, request, crash_after_sends=1, snapshots=snapshots)
    _change(database_url, "DELETE FROM m WHERE id = 130", "INSERT INTO m VALUES (125, 'new', 1)")
    resumed, completed = _extract(catalog, database_url, request, snapshots=snapshots)

    for before, after in [(crashed, again), ({**again, **crashed}, resumed)]:
        _partner(before, after)
    assert _partner({**again, **crashed}, resumed) == sorted({*KEYS, 95, 125})
    _indexes_all_sent({**crashed, **again, **resumed}, completed)


class _StagingCrash(SqlChangeSnapshots):
    """The snapshot store, the process dying as it stages the ``crash_at``-th page (after that page's end was written
    ahead, before anything of it was staged or sent)."""

    def __init__(self, catalog: CatalogStores, crash_at: int) -> None:
        super().__init__(catalog.database)
        self.stagings, self.crash_at = 0, crash_at

    def stage(self, run: SnapshotRun, entries: Sequence[Staging]) -> None:
        self.stagings += 1
        if self.stagings == self.crash_at:
            raise _Crash
        super().stage(run, entries)


def test_a_change_run_stopped_before_staging_the_page_it_was_about_to_send_sends_it_anew_from_the_same_index(
    database_url: str, catalog: CatalogStores
):
    _catalog(catalog, database_url)
    request, snapshots = _run(catalog, database_url, second=True)
    crashed, _ = _extract(catalog, database_url, request, snapshots=_StagingCrash(catalog, crash_at=2))
    assert sorted(crashed) == [f"{request.run_id}:{i}" for i in range(4)]  # the first page's only
    _change(database_url, "DELETE FROM m WHERE id IN (30, 100)", "INSERT INTO m VALUES (105, 'new', 1)")
    resumed, completed = _extract(catalog, database_url, request, snapshots=snapshots)

    # 100, deleted before its page was sent, is sent as removed (its last delivered values).
    assert _partner(crashed, resumed) == sorted({*KEYS, 105})
    _indexes_all_sent({**crashed, **resumed}, completed)  # no index left unsent after the first page's
