"""Members an earlier run's delivery of failed, sent again by this run (``retry_rejected`` on the definition).

At a run's start the extractor takes the definition's pending retries (a fixed set: a resumed run takes
the same). Members the run sends anyway (a full run's query returns them; an incremental run's window
holds them) are sent once, as part of the run, and counted as retries. At the run's end the others are
read by key with their current values (the saved query filtered to those keys, in bounded chunks) and
published in batches marked ``retry``, after the run's own; a key the query no longer returns is
resolved as gone. Crash-safe: the same set, the same rows, the same batch indexes after a resume.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.kafka import Outgoing
from shared.member_batches import BatchEncoder
from shared.querystore import MemberReader
from shared.querystore.keyed_reads import members_by_keys
from shared.querystore.paging import Window, jsonable
from shared.topics import Topics


class RetryStore(Protocol):
    """The pending retries as the extractor uses them (``shared.catalog.SqlMemberRetries``)."""

    def take_retries(self, run_id: uuid.UUID, definition: str) -> list[str]: ...
    def resolve_gone(self, definition: str, keys: Sequence[str], run_id: uuid.UUID) -> None: ...


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
    keys: Sequence[str],
    *,
    reader: MemberReader,
    store: RetryStore,
    topics: Topics,
    publish: Callable[[list[Outgoing]], None],
) -> Retried:
    """Publish the retry members the run's pages did not carry; say what was retried."""
    query = job.query
    found = members_by_keys(reader, query, keys, parameters=job.parameters)
    rows = found.rows if found is not None else []
    key_index = found.columns.index(query.key_column) if found is not None else 0
    found_keys = {str(jsonable(row[key_index])) for row in rows}
    gone = [key for key in keys if key not in found_keys]
    if gone:
        store.resolve_gone(job.definition.name, gone, job.run_id)
    if job.scope.full:
        carried = found_keys
    elif job.scope.window is None:
        carried = set()
    else:
        in_window = members_by_keys(
            reader, query, sorted(found_keys), parameters=job.parameters, window=job.scope.window
        )
        index = in_window.columns.index(query.key_column) if in_window is not None else 0
        carried = {str(jsonable(row[index])) for row in (in_window.rows if in_window is not None else [])}
    to_send = [row for row in rows if str(jsonable(row[key_index])) not in carried]
    batches = []
    if to_send and found is not None:
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
        batches = encoder.encode_page(found.columns, to_send, job.first_index)
        topic = topics.member_batches_for(job.definition.priority.value)
        publish([Outgoing(topic, f"{job.run_id}:{b.batch_index}", b.value) for b in batches])
    return Retried(members=len(to_send), batches=len(batches), retries=len(carried) + len(to_send))
