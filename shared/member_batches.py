"""Encode members as member-batch records: template-sized, bounded in bytes, fast (the extractor and replays).

The bytes are exactly the :class:`shared.events.MemberBatch` contract (unit tests hold the two equal),
written with orjson straight from the driver's rows (:meth:`BatchEncoder.encode_page`), or spliced from
each member's JSON object as the database wrote it (:meth:`BatchEncoder.encode_json_page`, see
:mod:`shared.querystore.member_json`): building and validating a pydantic model per batch cost more
than reading the rows. A batch whose record would exceed the byte bound is split in halves,
recursively, so the split is the same every time the same page is encoded (a resumed run re-creates
the same batch identities).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shared.events import SCHEMA_VERSION, ChangeKind, Priority
from shared.json_values import finite_jsonable, jsonable


def members_per_record(batch_size: int, record_members: int) -> int:
    """Members per record: whole requests of ``batch_size`` members, at least ``record_members`` where that fits.

    A template of 500 gets one request per record; a one-member template gets ``record_members`` requests per
    record (the dispatcher sends them concurrently), so the per-record costs of Kafka, decoding, the outcome
    event and the run's ledger are not paid once per member.
    """
    return batch_size * max(1, record_members // batch_size)


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
        change: ChangeKind | None = None,
        retry: bool = False,
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
            "key_column": key_column,
        }
        # Optional fields only when set: the records of full runs stay as they were.
        if change is not None:
            self._header["change"] = change.value
        if retry:
            self._header["retry"] = True

    def encode_page(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]], first_index: int
    ) -> list[EncodedBatch]:
        """The page's batches, numbered on from ``first_index``; raises MemberTooLarge naming the member."""
        key = list(columns).index(self.key_column) if self.key_column in columns else None
        return self._batches(
            rows,
            first_index,
            lambda members, index: self.encode(columns, members, index),
            lambda row: "?" if key is None else row[key],
        )

    def encode_json_page(self, members: Sequence[bytes], first_index: int) -> list[EncodedBatch]:
        """The batches of a page of members' JSON objects, numbered on from ``first_index``.

        The same records as :meth:`encode_page` of the same members: the objects are spliced as they are.
        A member too large for a record raises MemberTooLarge without its key (which only rows hold).
        """
        return self._batches(members, first_index, self.encode_json, lambda _: "?")

    def _batches(
        self,
        members: Sequence[Any],
        first_index: int,
        encode: Callable[[Sequence[Any], int], bytes],
        key_of: Callable[[Any], Any],
    ) -> list[EncodedBatch]:
        batches: list[EncodedBatch] = []
        for start in range(0, len(members), self.batch_size):
            self._encode_bounded(members[start : start + self.batch_size], first_index, batches, encode, key_of)
        return batches

    def _encode_bounded(
        self,
        members: Sequence[Any],
        first_index: int,
        out: list[EncodedBatch],
        encode: Callable[[Sequence[Any], int], bytes],
        key_of: Callable[[Any], Any],
    ) -> None:
        # Batches are numbered consecutively: the next one is always first_index + len(out).
        index = first_index + len(out)
        value = encode(members, index)
        if len(value) <= self.max_record_bytes:
            out.append(EncodedBatch(index, len(members), value))
            return
        if len(members) == 1:
            raise MemberTooLarge(
                f"member {self.key_column}={key_of(members[0])} encodes to {len(value)} bytes, over the record "
                f"limit of {self.max_record_bytes} bytes (EXPORT_EXTRACTOR_MAX_RECORD_BYTES)"
            )
        half = len(members) // 2
        self._encode_bounded(members[:half], first_index, out, encode, key_of)
        self._encode_bounded(members[half:], first_index, out, encode, key_of)

    def empty(self, batch_index: int) -> EncodedBatch:
        """A batch of no members under ``batch_index``: the dispatcher sends nothing for it and records its outcome
        (0 delivered), so a run waiting for an outcome of each of its indexes completes."""
        return EncodedBatch(batch_index, 0, self.encode_json([], batch_index))

    def encode(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], batch_index: int) -> bytes:
        """One batch's record value."""
        rows = _as_isoformat(rows)
        document: dict[str, Any] = self._header | {
            "batch_index": batch_index,
            "members": [dict(zip(columns, row, strict=True)) for row in rows],
        }
        try:
            return orjson.dumps(document, default=jsonable)
        except orjson.JSONEncodeError:
            # What orjson refuses (integers beyond 64 bits, say) the standard library writes.
            document["members"] = [{c: finite_jsonable(v) for c, v in member.items()} for member in document["members"]]
            return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()

    def encode_json(self, members: Sequence[bytes], batch_index: int) -> bytes:
        """One batch's record value, from its members' JSON objects."""
        head = orjson.dumps(self._header | {"batch_index": batch_index})
        return b"".join((head[:-1], b',"members":[', b",".join(members), b"]}"))


#: Before this year, zones had offsets with seconds (local mean time; Liberia's -00:44:30 until 1972).
_WHOLE_MINUTE_OFFSETS_SINCE = 1973


def _as_isoformat(rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    """The rows, with the values orjson writes otherwise than ``isoformat`` (the contract) already written.

    orjson 3.13 writes a time of day whose microseconds are 10,000 to 99,999 with five digits
    (``00:00:00.10967`` for ``00:00:00.010967``), and an offset with seconds without them (``+00:09``
    for Paris's ``+00:09:21`` before 1911: another instant). Columns are judged by their first value (a
    driver gives a column one type; SQLite's values, which have types of their own, are never times).
    """
    if not rows:
        return rows
    convert: set[int] = set()
    for index in range(len(rows[0])):
        first = next((row[index] for row in rows if row[index] is not None), None)
        if isinstance(first, dt.datetime):
            if _may_have_offsets_with_seconds(first.tzinfo) and any(
                isinstance(v := row[index], dt.datetime) and v.year < _WHOLE_MINUTE_OFFSETS_SINCE for row in rows
            ):
                convert.add(index)
        elif isinstance(first, dt.time):
            convert.add(index)
    if not convert:
        return rows
    return [tuple(_isoformat(v) if i in convert else v for i, v in enumerate(row)) for row in rows]


#: Zones whose offset is always zero (a driver's datetimes are in the session's zone, UTC on most servers).
_UTC_ZONES = {"UTC", "Etc/UTC", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu", "GMT", "Etc/GMT", "Etc/Greenwich"}


def _may_have_offsets_with_seconds(zone: dt.tzinfo | None) -> bool:
    if zone is None:
        return False
    if isinstance(zone, dt.timezone):
        offset = zone.utcoffset(None)
        return offset is not None and offset.seconds % 60 != 0
    return getattr(zone, "key", None) not in _UTC_ZONES


def _isoformat(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.time | dt.datetime) else value


def member_value(raw: Any) -> Any:
    """One driver value as a member-batch record writes it (a JSON-ready value): the records' contract."""
    return finite_jsonable(_isoformat(raw))
