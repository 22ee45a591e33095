"""A change run's removals, a chunk at a time (published and checkpointed chunk by chunk, not all at once at the
end), and a run resumed in its removal phase: the same batches, those published before the crash not again.

The member store is left out (every member is removed: no page), the snapshot store is the real one."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import pytest

import services.extractor.change_extraction as change_extraction
from services.extractor.change_extraction import ChangeRun
from shared.catalog.change_snapshots import SqlChangeSnapshots
from shared.catalog.stores import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.change_staging import StagedMember, Staging
from shared.domain.checkpoints import Checkpoint, RunSync
from shared.domain.member_hashes import key_hash
from shared.domain.sync_mode import SyncMode
from shared.events import ChangeKind
from shared.kafka import Outgoing
from shared.topics import Topics

pytestmark = pytest.mark.integration

MEMBERS = 12


class _Acknowledged:
    def wait(self, timeout_seconds: float | None = None) -> None:
        return None


@dataclass
class _Host:
    """The extractor as a change run uses it, with a member store of no members and a producer that records."""

    definitions: Any
    sends: list[list[Outgoing]] = field(default_factory=list)
    topics: Topics = field(default_factory=lambda: Topics("t."))
    page_size: int = 100
    max_record_bytes: int = 1_000_000
    record_members: int = 1

    @property
    def reader(self) -> Any:
        return self

    def member_pages(self, *args: Any, **kwargs: Any) -> Any:
        return nullcontext()

    def send(self, records: list[Outgoing]) -> Any:
        self.sends.append(records)
        return _Acknowledged()

    def _query(self, read: Callable[[], Any]) -> Any:
        return read()

    def _stop_if(self, run_id: uuid.UUID, statuses: Any) -> None:
        return None

    def _timed(self, pages: Any) -> Iterator[Any]:
        return iter(())


def _run(catalog: CatalogStores, host: _Host, run_id: uuid.UUID, saves: list[Checkpoint]) -> ChangeRun:
    return ChangeRun(
        host,  # type: ignore[arg-type]
        SqlChangeSnapshots(catalog.database),
        run_id=run_id,
        definition=catalog.definitions.get(ExportDefinition, "leaving"),
        query=catalog.definitions.get(SavedQuery, "q"),
        parameters={},
        save=saves.append,
        fail=lambda message, reason: RuntimeError(message),
    )


@pytest.fixture
def leaving(catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch) -> CatalogStores:
    """A definition whose snapshot holds 12 delivered members the query no longer selects; chunks of 5."""
    monkeypatch.setattr(change_extraction, "_REMOVED_READ", 5)
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=2))
    catalog.definitions.apply(
        # Every member leaves, on purpose: no bound on removals (see tests/integration/test_removal_guard.py).
        ExportDefinition(
            name="leaving",
            query="q",
            template="t",
            sync={"mode": "changes", "removed": "t", "max_removed": "100%"},
        )
    )
    snapshots = SqlChangeSnapshots(catalog.database)
    run = snapshots.begin("leaving", str(uuid.uuid4()))
    members = [StagedMember(key_hash(str(i)), str(i), i, f'{{"id":{i}}}'.encode()) for i in range(MEMBERS)]
    snapshots.stage(run, [Staging(ChangeKind.ADDED, None, members)])  # a kind not sent: taken as delivered
    return catalog


def _fresh(run_id: uuid.UUID) -> Checkpoint:
    return Checkpoint(run_id, None, 0, 0, completed=False, sync=RunSync(SyncMode.CHANGES, full_scope=True))


def test_removals_are_published_and_checkpointed_a_chunk_at_a_time(leaving: CatalogStores):
    host, saves, run_id = _Host(leaving.definitions), list[Checkpoint](), uuid.uuid4()
    final, counts = _run(leaving, host, run_id, saves).extract(_fresh(run_id))
    assert counts.removed == MEMBERS
    assert [len(records) for records in host.sends] == [2, 3, 1], "chunks of 5 removed members, 2 a batch"
    assert [s.next_batch_index for s in saves if s.next_batch_index] == [2, 5, 6]
    assert (final.next_batch_index, final.members) == (6, MEMBERS)


def test_a_run_resumed_in_its_removal_phase_sends_the_rest_under_the_same_identities(leaving: CatalogStores):
    first, saves, run_id = _Host(leaving.definitions), list[Checkpoint](), uuid.uuid4()
    _run(leaving, first, run_id, saves).extract(_fresh(run_id))
    crashed = next(s for s in saves if s.next_batch_index == 2)  # after the first chunk's batches
    again = _Host(leaving.definitions)
    final, counts = _run(leaving, again, run_id, []).extract(crashed)
    assert [r.key for records in again.sends for r in records] == [
        r.key for records in first.sends[1:] for r in records
    ]
    assert [r.value for records in again.sends for r in records] == [
        r.value for records in first.sends[1:] for r in records
    ]
    assert (final.next_batch_index, final.members, counts.removed) == (6, MEMBERS, MEMBERS)
