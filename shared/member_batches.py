"""Encode members as member-batch records: template-sized, bounded in bytes, fast (the extractor and replays).

The bytes are exactly the :class:`shared.events.MemberBatch` contract (a unit test holds the two
equal), written with orjson straight from the driver's rows: building and validating a pydantic model
per batch cost more than reading the rows. A batch whose record would exceed the byte bound is split
in halves, recursively, so the split is the same every time the same page is encoded (a resumed run
re-creates the same batch identities).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shared.events import SCHEMA_VERSION, Priority
from shared.querystore.paging import jsonable


class MemberTooLarge(ValueError):
    """One member alone encodes to more bytes than a record may hold."""


@dataclass(frozen=True)
class EncodedBatch:
    """One member-batch record: its index in the run, member count and JSON bytes."""

    batch_index: int
    members: int
    value: bytes


class BatchEncoder:
    """Encodes the rows of one run into member batches."""

    def __init__(
        self,
        *,
        run_id: uuid.UUID,
        definition: str,
        template: str,
        priority: Priority,
        batch_size: int,
        max_record_bytes: int,
        key_column: str,
    ) -> None:
        self.batch_size = batch_size
        self.max_record_bytes = max_record_bytes
        self.key_column = key_column
        self._header: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "type": "member.batch",
            "run_id": str(run_id),
            "definition": definition,
            "template": template,
            "priority": priority.value,
        }

    def encode_page(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]], first_index: int
    ) -> list[EncodedBatch]:
        """The page's batches, numbered on from ``first_index``; raises MemberTooLarge naming the member."""
        batches: list[EncodedBatch] = []
        for start in range(0, len(rows), self.batch_size):
            self._encode_bounded(columns, rows[start : start + self.batch_size], first_index, batches)
        return batches

    def _encode_bounded(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]], first_index: int, out: list[EncodedBatch]
    ) -> None:
        # Batches are numbered consecutively: the next one is always first_index + len(out).
        index = first_index + len(out)
        value = self.encode(columns, rows, index)
        if len(value) <= self.max_record_bytes:
            out.append(EncodedBatch(index, len(rows), value))
            return
        if len(rows) == 1:
            key = rows[0][list(columns).index(self.key_column)] if self.key_column in columns else "?"
            raise MemberTooLarge(
                f"member {self.key_column}={key} encodes to {len(value)} bytes, over the record limit of "
                f"{self.max_record_bytes} bytes (EXPORT_EXTRACTOR_MAX_RECORD_BYTES)"
            )
        half = len(rows) // 2
        self._encode_bounded(columns, rows[:half], first_index, out)
        self._encode_bounded(columns, rows[half:], first_index, out)

    def encode(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], batch_index: int) -> bytes:
        """One batch's record value."""
        document: dict[str, Any] = self._header | {
            "batch_index": batch_index,
            "members": [dict(zip(columns, row, strict=True)) for row in rows],
        }
        try:
            return orjson.dumps(document, default=jsonable)
        except orjson.JSONEncodeError:
            # What orjson refuses (integers beyond 64 bits, say) the standard library writes.
            document["members"] = [{c: jsonable(v) for c, v in member.items()} for member in document["members"]]
            return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
