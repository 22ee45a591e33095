"""Members an earlier run's delivery of failed, sent again by this run (``retry_rejected`` on the definition).

At a run's start the extractor takes the definition's pending retries (a fixed set, recorded even when
empty: a resumed run, and the run's end, read the same). Members the run sends anyway (a full run's query
returns them; an incremental run's window holds them) are sent once, as part of the run, and counted as
retries. At the run's end the others are read by key with their current values (the saved query filtered
to those keys) and published in batches marked ``retry``, after the run's own, a chunk of keys at a time
(bounded memory); a key the query no longer returns is resolved as gone. Keys are named as outcomes name
them (``shared.member_keys.row_key``). Crash-safe: the same set, the same rows, the same batch indexes
after a resume.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.kafka import Outgoing
from shared.member_batches import BatchEncoder
from shared.member_keys import row_key
from shared.querystore import MemberReader
from shared.querystore.keyed_reads import members_by_keys
from shared.querystore.paging import Window
from shared.querystore.reader import key_value
from shared.topics import Topics


class RetryStore(Protocol):
    """The pending retries as the extractor uses them (``shared.catalog.SqlMemberRetries``)."""

    def claim_retries(self, run_id: uuid.UUID, definition: str) -> int: ...
    def claimed(self, run_id: uuid.UUID) -> int: ...
    def claimed_keys(self, run_id: uuid.UUID) -> Iterator[list[str]]: ...
    def resolve_gone(self, run_id: uuid.UUID, keys: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class Retried:
    """What a run did with its retries: members published by key, in how many batches, and how many in all
    (those its own pages carried included) it sent again."""

    members: int = 0
    batches: int = 0
    retries: int = 0


@dataclass(frozen=True)
class RetryScope:
    """Which retry members the run's own pages carried: all the query returns (``full``), those in
    ``window`` (an incremental run), or none (an incremental run with nothing new)."""

    full: bool
    window: Window | None = None


@dataclass(frozen=True)
class RetryJob:
    """One run's retries to send: its objects, bound parameters, scope and first free batch index."""

    run_id: uuid.UUID
    definition: ExportDefinition
    query: SavedQuery
    template: HttpTemplate
    parameters: dict[str, Any]
    scope: RetryScope
    first_index: int
    record_size: int
    max_record_bytes: int


def send_retries(
    job: RetryJob,
    *,
    reader: MemberReader,
    store: RetryStore,
    topics: Topics,
    publish: Callable[[list[Outgoing]], None],
) -> Retried:
    """Publish the retry members the run's pages did not carry; say what was retried.

    The run's claim is read a chunk of keys at a time (``store.claimed_keys``); each chunk's members are read,
    encoded and published before the next: memory bounded by a chunk, however many members are pending. A
    full run only needs to know which claimed keys its query still returns (the key column alone)."""
    query = job.query
    encoder = BatchEncoder(
        run_id=job.run_id,
        definition=job.definition.name,
        template=job.template.name,
        priority=job.definition.priority,
        batch_size=job.record_size,
        max_record_bytes=job.max_record_bytes,
        key_column=query.key_column,
        retry=True,
    )
    topic = topics.member_batches_for(job.definition.priority.value)
    index, sent, carried = job.first_index, 0, 0
    for keys in store.claimed_keys(job.run_id):
        found = members_by_keys(reader, query, keys, parameters=job.parameters, key_only=job.scope.full)
        rows = found.rows if found is not None else []
        key_index = found.columns.index(query.key_column) if found is not None else 0
        named = [(row_key(row[key_index]), row) for row in rows]
        found_keys = {key for key, _ in named}
        gone = [key for key in keys if key not in found_keys]
        if gone:
            store.resolve_gone(job.run_id, gone)
        if job.scope.full:
            carried += len(found_keys)  # the run's own pages sent them all
            continue
        # Told apart by their exact keys: members a record names alike (numerics of one nearest double) may lie
        # on both sides of the window.
        in_window: set[Any] = set()
        if job.scope.window is not None and found_keys:
            page = members_by_keys(
                reader, query, sorted(found_keys), parameters=job.parameters, window=job.scope.window, key_only=True
            )
            if page is not None:
                in_window = {key_value(row[0]) for row in page.rows}
        to_send = [row for _, row in named if key_value(row[key_index]) not in in_window]
        carried += len(in_window)
        if to_send and found is not None:
            batches = encoder.encode_page(found.columns, to_send, index)
            publish([Outgoing(topic, f"{job.run_id}:{b.batch_index}", b.value) for b in batches])
            index += len(batches)
            sent += len(to_send)
    return Retried(members=sent, batches=index - job.first_index, retries=carried + sent)
