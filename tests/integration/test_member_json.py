"""Members' JSON written by the database decodes to what the row path encodes, on SQLite and PostgreSQL.

The extractor splices the JSON each engine writes (``shared/querystore/member_json.py``) into its batch
records; the row path (driver values through orjson) is the reference, itself held to the MemberBatch
contract by the unit tests. Every column type is compared after decoding, strictly: same JSON types
(``1.0`` is not ``1``), same values, same keys in the same order. Values the database cannot write
exactly must come through the row path instead (and still equal).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Json
from sqlalchemy import make_url

from shared.catalog import make_engine
from shared.domain.catalog_objects import Priority, SavedQuery
from shared.events import MemberBatch
from shared.member_batches import BatchEncoder
from shared.querystore import JsonPage, MemberReader, Page, QueryError

pytestmark = pytest.mark.integration

BATCH = 3


def _encoder() -> BatchEncoder:
    return BatchEncoder(
        run_id=uuid.UUID(int=18),
        definition="d",
        template="t",
        priority=Priority.NORMAL,
        batch_size=BATCH,
        max_record_bytes=1_000_000,
        key_column="id",
    )


def _strict(value: Any) -> Any:
    """A decoded JSON value with its types made part of equality (1 != 1.0, -0.0 != 0.0, key order counts)."""
    if isinstance(value, dict):
        return ("object", [(k, _strict(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("array", [_strict(v) for v in value])
    if isinstance(value, float):
        return ("float", value, math.copysign(1.0, value))
    return (type(value).__name__, value)


def _decoded(records: list[bytes]) -> list[Any]:
    members = []
    for record in records:
        MemberBatch.model_validate_json(record)  # the contract, as the dispatcher reads it
        members += json.loads(record)["members"]
    return [_strict(m) for m in members]


def _differences(by_json: list[Any], by_rows: list[Any]) -> list[tuple[int, str, Any, Any]]:
    """Where two decoded member lists differ: (member, column, JSON path's value, row path's value)."""
    found = []
    for index, (written, read) in enumerate(zip(by_json, by_rows, strict=True)):
        read_fields = dict(read[1])
        found += [(index, k, v, read_fields.get(k)) for k, v in written[1] if read_fields.get(k) != v]
        if [k for k, _ in written[1]] != [k for k, _ in read[1]]:
            found.append((index, "(key order)", written[1], read[1]))
    return found


def _both_paths(reader: MemberReader, query: SavedQuery, page_size: int = 4) -> tuple[list[Any], list[Any], int, int]:
    """The members as the row path and as the JSON path encode them, the JSON pages and the row pages read."""
    encoder = _encoder()
    rows: list[bytes] = []
    for page in reader.pages(query, page_size=page_size):
        rows += [b.value for b in encoder.encode_page(page.columns, page.rows, len(rows))]
    written: list[bytes] = []
    json_pages = row_pages = 0
    with reader.member_pages(query, page_size=page_size) as pages:
        assert pages.json, pages.reason
        for member_page in pages:
            if isinstance(member_page, JsonPage):
                json_pages += 1
                written += [b.value for b in encoder.encode_json_page(member_page.members, len(written))]
            else:
                assert isinstance(member_page, Page)
                row_pages += 1
                written += [b.value for b in encoder.encode_page(member_page.columns, member_page.rows, len(written))]
    return _decoded(rows), _decoded(written), json_pages, row_pages


# --- PostgreSQL -------------------------------------------------------------------------------------------------

PG_COLUMNS = """
    id bigint PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision, n numeric,
    n2 numeric(12, 2), t text, vc varchar(40), ch char(4), b boolean, d date, ts timestamp, tstz timestamptz,
    tm time, u uuid, j json, jb jsonb, by bytea, "Mixed Case ""quoted"" name" text
"""
PG_NAMES = [
    "id", "i2", "i4", "i8", "f4", "f8", "n", "n2", "t", "vc", "ch", "b", "d", "ts", "tstz", "tm", "u", "j", "jb", "by",
    'Mixed Case "quoted" name',
]  # fmt: skip

_characters = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
_text = st.text(_characters, max_size=12)
_json_scalar = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | _text
)
_json = st.recursive(
    _json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3), max_leaves=6
)
_zones = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(-dt.timedelta(hours=3))])
PG_VALUES = {
    "i2": st.integers(-(2**15), 2**15 - 1),
    "i4": st.integers(-(2**31), 2**31 - 1),
    "i8": st.integers(-(2**63), 2**63 - 1),
    "f4": st.floats(width=32),
    "f8": st.floats()
    | st.sampled_from([0.1 + 0.2, 1.0, -0.0, 1e15, 1e16, 123456789012345.0, 5e-324, 1.7976931348623157e308]),
    "n": st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda d: abs(d.adjusted()) < 400)
    | st.sampled_from(
        [decimal.Decimal(v) for v in ("3.00", "2.50", "1e400", "NaN", "Infinity", "-Infinity", "0.1", "-0")]
    ),
    "n2": st.decimals(min_value=-(10**9), max_value=10**9, places=2),
    "t": _text | st.sampled_from(['quote " and \\ backslash', "line\nbreak\ttab\x01", "émoji 🎉 中文", "\x7f"]),
    "vc": _text,
    "ch": st.text(_characters, max_size=4),
    "b": st.booleans(),
    "d": st.dates(),
    "ts": st.datetimes(min_value=dt.datetime(1, 1, 3), max_value=dt.datetime(9999, 12, 29)),
    "tstz": st.datetimes(min_value=dt.datetime(1, 1, 3), max_value=dt.datetime(9999, 12, 29), timezones=_zones),
    "tm": st.times(),
    "u": st.uuids(),
    "j": _json,
    "jb": _json,
    "by": st.binary(max_size=6),
    'Mixed Case "quoted" name': _text,
}


def _pg_row(draw: st.DrawFn) -> dict[str, Any]:
    return {name: draw(st.none() | strategy) for name, strategy in PG_VALUES.items()}


pg_rows = st.lists(st.composite(_pg_row)(), min_size=1, max_size=9)


@pytest.fixture(scope="module")
def pg_store(postgres_database_factory) -> Iterator[tuple[str, MemberReader]]:
    url = postgres_database_factory()
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)) as c:
        c.execute(f"CREATE TABLE members ({PG_COLUMNS})")
    reader = MemberReader.from_url(url)
    yield url, reader
    reader.close()


def _pg_fill(url: str, rows: list[dict[str, Any]], timezone: str = "Etc/UTC") -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("TRUNCATE members")
        c.execute(f"ALTER DATABASE {make_url(url).database} SET timezone = '{timezone}'")
        columns = ", ".join(psycopg.sql.Identifier(n).as_string(c) for n in PG_NAMES)
        marks = ", ".join("%s" for _ in PG_NAMES)
        for index, row in enumerate(rows, 1):
            values = [index] + [
                Json(row[n]) if n in ("j", "jb") and row[n] is not None else row[n] for n in PG_NAMES[1:]
            ]
            c.execute(f"INSERT INTO members ({columns}) VALUES ({marks})", values)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=pg_rows)
def test_postgresql_writes_every_column_type_as_the_row_path(pg_store, rows):
    url, reader = pg_store
    _pg_fill(url, rows)
    by_rows, by_json, json_pages, row_pages = _both_paths(reader, SavedQuery(name="all", sql="SELECT * FROM members"))
    assert by_json == by_rows, _differences(by_json, by_rows)
    # Only a numeric beyond 1e300 sends its page through the row path here.
    huge = [
        i // 4
        for i, row in enumerate(rows)
        if row["n"] is not None and not row["n"].is_nan() and abs(row["n"]) > 10**300
    ]
    assert (json_pages, row_pages) == (math.ceil(len(rows) / 4) - len(set(huge)), len(set(huge))), repr(rows)


def test_postgresql_writes_the_common_values_itself(pg_store):
    """Ordinary values never take the row path: the JSON path is not a fallback that only looks equal."""
    url, _ = pg_store
    rows = [
        {
            "i2": 1, "i4": -2, "i8": 2**62, "f4": 0.5, "f8": 0.1 + 0.2, "n": decimal.Decimal("12.50"),
            "n2": decimal.Decimal("3.00"), "t": 'Zoé "Q" \\', "vc": "x", "ch": "ab", "b": True,
            "d": dt.date(2026, 1, 31), "ts": dt.datetime(2026, 1, 2, 3, 4, 5, 120000),
            "tstz": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "tm": dt.time(23, 59, 59, 1),
            "u": uuid.UUID(int=5), "j": {"a": [1, 2.0, None]}, "jb": {"z": 1, "a": 1.5}, "by": b"\x00\xff",
            'Mixed Case "quoted" name': "ok",
        }
    ] * 5  # fmt: skip
    _pg_fill(url, rows)
    reader = MemberReader.from_url(url)
    try:
        every = SavedQuery(name="all", sql="SELECT * FROM members")
        by_rows, by_json, json_pages, row_pages = _both_paths(reader, every)
    finally:
        reader.close()
    assert by_json == by_rows
    assert (json_pages, row_pages) == (2, 0)
    member = dict(by_json[0][1])
    assert member["n2"] == ("int", 3)  # a whole numeric is an integer, as jsonable writes it
    assert member["f8"] == ("float", 0.30000000000000004, 1.0)
    assert member["ts"] == ("str", "2026-01-02T03:04:05.120000")


def test_postgresql_offsets_follow_the_sessions_time_zone_as_the_driver_does(pg_store):
    url, _ = pg_store
    moments = [
        dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 1, 12, 0, 0, 500000, tzinfo=dt.UTC),
        dt.datetime(1850, 1, 1, 12, 0, tzinfo=dt.UTC),  # local mean time: +00:09:21
        dt.datetime(1850, 1, 1, 12, 0, 0, 500000, tzinfo=dt.UTC),  # ... with a fraction: the row path writes it
    ]
    _pg_fill(url, [dict.fromkeys(PG_VALUES) | {"tstz": moment} for moment in moments], timezone="Europe/Paris")
    reader = MemberReader.from_url(url)  # new connections: the database's new time zone
    try:
        by_rows, by_json, json_pages, row_pages = _both_paths(
            reader, SavedQuery(name="all", sql="SELECT id, tstz FROM members"), page_size=1
        )
    finally:
        reader.close()
    assert by_json == by_rows, _differences(by_json, by_rows)
    assert [dict(m[1])["tstz"][1] for m in by_json] == [
        "2026-07-01T14:00:00+02:00",
        "2026-01-01T13:00:00.500000+01:00",
        "1850-01-01T12:09:21+00:09:21",
        "1850-01-01T12:09:21.500000+00:09:21",
    ]
    assert (json_pages, row_pages) == (3, 1)


@pytest.mark.parametrize(
    ("column", "value"),
    [("d", "infinity"), ("ts", "-infinity"), ("tstz", "infinity"), ("d", "0044-03-15 BC"), ("tm", "24:00:00")],
)
def test_postgresql_values_python_cannot_hold_fail_as_on_the_row_path(pg_store, column, value):
    url, reader = pg_store
    _pg_fill(url, [])
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"INSERT INTO members (id, {column}) VALUES (1, %s)", [value])
    query = SavedQuery(name="all", sql="SELECT * FROM members")
    with pytest.raises(QueryError) as by_rows:
        list(reader.pages(query, page_size=10))
    with pytest.raises(QueryError) as by_json, reader.member_pages(query, page_size=10) as pages:
        list(pages)
    assert str(by_json.value) == str(by_rows.value)


def test_postgresql_types_it_cannot_write_send_the_query_through_the_row_path(pg_store):
    _, reader = pg_store
    query = SavedQuery(name="odd", sql="SELECT id, interval '1 day' AS span, ARRAY[1, 2] AS list FROM members")
    with reader.member_pages(query, page_size=10) as pages:
        assert not pages.json
        assert pages.reason == (
            "column types the database does not write as the row path: span (type oid 1186), list (type oid 1007)"
        )
    twice = SavedQuery(name="twice", sql="SELECT id, t, vc AS t FROM members")
    with reader.member_pages(twice, page_size=10) as pages:
        assert (pages.json, pages.reason) == (False, "columns named twice (t)")


# --- SQLite -----------------------------------------------------------------------------------------------------

SQLITE_COLUMNS = 'id INTEGER PRIMARY KEY, i INTEGER, r REAL, n NUMERIC, t TEXT, any_, b BLOB, "odd ""name""" TEXT'
SQLITE_NAMES = ["i", "r", "n", "t", "any_", "b", 'odd "name"']
_sqlite_value = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.sampled_from([0.1 + 0.2, 1.0, -0.0, 1e15, 1e16, 1e300, 5e-324, 1 / 3])
    | _text
    | st.sampled_from(['{"a": 1}', 'quote " \\', "émoji 🎉"])
    | st.binary(max_size=4)
)


@pytest.fixture
def sqlite_store(tmp_path) -> Iterator[tuple[str, MemberReader]]:
    url = f"sqlite:///{tmp_path / 'members.db'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE members ({SQLITE_COLUMNS})")
    engine.dispose()
    reader = MemberReader.from_url(url)
    yield url, reader
    reader.close()


def _sqlite_fill(url: str, rows: list[list[Any]]) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM members")
        driver = connection.connection.driver_connection
        marks = ", ".join("?" for _ in range(len(SQLITE_NAMES) + 1))
        numbered = [[i, *row] for i, row in enumerate(rows, 1)]
        driver.executemany(f"INSERT INTO members VALUES ({marks})", numbered)
    engine.dispose()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_sqlite_value, min_size=len(SQLITE_NAMES), max_size=len(SQLITE_NAMES)), max_size=9))
def test_sqlite_writes_every_value_as_the_row_path(sqlite_store, rows):
    url, reader = sqlite_store
    _sqlite_fill(url, rows)
    by_rows, by_json, _, _ = _both_paths(reader, SavedQuery(name="all", sql="SELECT * FROM members"))
    assert by_json == by_rows


def test_sqlite_writes_the_common_values_itself_and_reads_the_others_as_rows(sqlite_store):
    url, reader = sqlite_store
    ordinary = [7, 0.1 + 0.2, 2.5, 'a "quoted" text', '{"json": "as text"}', None, "é"]
    _sqlite_fill(url, [ordinary] * 4 + [[1, -0.0, 1, "x", 1e300, None, "y"]] + [[1, 1.0, 1, "x", 1, b"\x01\xab", "y"]])
    query = SavedQuery(name="all", sql="SELECT * FROM members")
    by_rows, by_json, json_pages, row_pages = _both_paths(reader, query, page_size=2)
    assert by_json == by_rows, _differences(by_json, by_rows)
    assert (json_pages, row_pages) == (2, 1)  # -0.0, 1e300 and a blob: the third page is read as rows
    member = dict(by_json[0][1])
    assert member["r"] == ("float", 0.30000000000000004, 1.0)
    assert member["any_"] == ("str", '{"json": "as text"}')  # text holding JSON stays text, as on the row path


def test_sqlite_keeps_json_made_by_the_query_a_string(sqlite_store):
    url, reader = sqlite_store
    _sqlite_fill(url, [[1, 2.0, 3, "t", None, None, "n"]])
    query = SavedQuery(name="made", sql="SELECT id, json_object('a', i) AS doc, json_array(r) AS list FROM members")
    by_rows, by_json, json_pages, _ = _both_paths(reader, query)
    assert by_json == by_rows
    assert dict(by_json[0][1])["doc"] == ("str", '{"a":1}')
    assert json_pages == 1


def test_sqlite_text_that_is_not_utf8_fails_as_on_the_row_path(sqlite_store):
    url, reader = sqlite_store
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO members (id, t) VALUES (1, CAST(x'41ff42' AS TEXT))")
    engine.dispose()
    query = SavedQuery(name="all", sql="SELECT * FROM members")
    with pytest.raises(QueryError) as by_rows:
        list(reader.pages(query, page_size=10))
    with pytest.raises(QueryError) as by_json, reader.member_pages(query, page_size=10) as pages:
        list(pages)
    assert str(by_json.value) == str(by_rows.value)


def test_json_pages_keep_key_order_across_pages_of_a_filtering_query(sqlite_store):
    url, reader = sqlite_store
    _sqlite_fill(url, [[i % 7, float(i), i, f"m{i}", None, None, None] for i in range(1, 200)])
    query = SavedQuery(name="some", sql="SELECT t, id, r FROM members WHERE i > 2 ORDER BY t DESC")
    by_rows, by_json, json_pages, _ = _both_paths(reader, query, page_size=10)
    assert by_json == by_rows
    ids = [dict(m[1])["id"][1] for m in by_json]
    assert ids == sorted(ids)
    assert json_pages == math.ceil(len(ids) / 10)
