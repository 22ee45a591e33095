"""Each member as a JSON object written by the database, decoding to what the row path encodes.

The row path (:mod:`shared.member_batches`) reads driver values and writes them with orjson (through
:func:`shared.json_values.jsonable`). Here the page query itself returns each member as JSON text,
which the extractor splices into the batch record without decoding a row to Python. Each column is
written, per dialect and per type, so that the record decodes to the very values the row path gives,
with the same JSON types (``1.0`` stays a float, a whole ``numeric`` an integer):

==========================  ======================================================================
PostgreSQL type             written as
==========================  ======================================================================
integers, oid, boolean,     the database's own JSON (``row_to_json``)
text, varchar, char, name,
uuid, json, jsonb, date
double precision, real      its text (the shortest exact digits), with ``.0`` on whole numbers;
                            NaN and infinities as ``null`` (as orjson writes them)
numeric                     a whole number as an integer, any other as the nearest double (as
                            ``jsonable``); NaN as ``null``
timestamp(tz), time         as Python's ``isoformat``: six fractional digits when there is a
                            fraction, the offset of the session's time zone
bytea                       lowercase hex
anything else (interval,    not written by the database: the query is read through the row path
arrays, enums, inet...)     (the extractor logs which column and which type)
==========================  ======================================================================

SQLite's types belong to values, not columns. ``json_object`` writes integers, text and nulls; reals
are written with 17 significant digits (the same double once decoded), which SQLite's ``printf``
writes exactly from 1e-300 to 1e16 in magnitude.

A value the database cannot write exactly (a SQLite real outside that band or a negative zero; a
PostgreSQL timestamp or date outside years 1 to 9999, a time of 24:00, a numeric beyond 1e300, a zone
offset with seconds together with a fraction) is written as :data:`ROW_PATH_MARKER`, and the reader
reads that page again through the row path, which writes it (or fails as it always did). So is a page
with a SQLite blob (``json_object`` refuses blobs; the row path writes them in hex) and one whose JSON
is not valid UTF-8 (SQLite's text may not be).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Date,
    DateTime,
    Float,
    Integer,
    Interval,
    LargeBinary,
    Numeric,
    Text,
    Time,
    and_,
    case,
    cast,
    extract,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.sql.selectable import LateralFromClause, Subquery

#: Written in place of a value the database cannot write exactly: its page is read again as rows. A
#: member whose own text holds these characters only sends its page through the row path (never wrong).
ROW_PATH_MARKER = "\x01member-export: row path\x01"
#: How the marker appears inside JSON text (control characters escaped, as both engines write them).
ROW_PATH_MARKER_JSON = b"\\u0001member-export: row path\\u0001"

# PostgreSQL type OIDs (pg_type.oid, fixed for built-in types).
_PG_NATIVE = {16, 19, 20, 21, 23, 25, 26, 114, 1042, 1043, 2950, 3802}
_PG_FLOAT4, _PG_FLOAT8, _PG_NUMERIC, _PG_DATE = 700, 701, 1700, 1082
_PG_TIMESTAMP, _PG_TIMESTAMPTZ, _PG_TIME, _PG_BYTEA = 1114, 1184, 1083, 17
_PG_WRITTEN = _PG_NATIVE | {
    _PG_FLOAT4,
    _PG_FLOAT8,
    _PG_NUMERIC,
    _PG_DATE,
    _PG_TIMESTAMP,
    _PG_TIMESTAMPTZ,
    _PG_TIME,
    _PG_BYTEA,
}

#: PostgreSQL's uuid: no ``max(uuid)``. Boolean, bytea and jsonb keys have none either (a name key's is text's) and
#: keep ``max()``, their JSON page failing and read again as rows as before: not checked beyond that (session 48).
_PG_UUID = 2950
#: A ``jsonb`` column: a key of this type is read back as its JSON text (see :func:`last_key`).
PG_JSONB = 3802

#: SQLite's printf writes a double's 17 significant digits exactly within this band (checked on
#: millions of values; beyond 1e100 some last digits are off), so other reals take the row path.
SQLITE_EXACT_BELOW = 1e16
SQLITE_EXACT_FROM = 1e-300


@dataclass(frozen=True)
class ResultColumn:
    """A column of the saved query's result: its name, and the driver's type code (PostgreSQL: the OID)."""

    name: str
    type_code: Any = None


#: Between members in a page's JSON: a character that valid JSON text never holds outside a string and
#: always escapes inside one (the JSON a json column holds included), so splitting on it is exact.
MEMBER_SEPARATOR = "\x1e"


@dataclass(frozen=True)
class MemberJson:
    """How the database writes a member's JSON object (``member``, text), or why it cannot (``reason``)."""

    member: ColumnElement[Any] | None
    reason: str | None = None
    #: PostgreSQL: the member's values, formatted, as a LATERAL subquery joined to ``q``.
    lateral: LateralFromClause | None = None
    dialect: str = ""

    @property
    def check_utf8(self) -> bool:
        """SQLite's text may hold invalid UTF-8 (the row path's driver refuses it); PostgreSQL's cannot."""
        return self.dialect == "sqlite"

    @property
    def binary(self) -> bool:
        """PostgreSQL returns the page in binary format: its JSON as bytes, with no text decoding."""
        return self.dialect == "postgresql"

    def joined(self, member: ColumnElement[Any], key: ColumnElement[Any]) -> ColumnElement[Any]:
        """The aggregate joining a page's members, in key order, with :data:`MEMBER_SEPARATOR`, as bytes.

        One row a page rather than one a member: SQLite hands the GIL back and forth at every row it
        returns, which a busy producer thread turns into waits (a page took 20 times longer so).
        SQLite before 3.44 cannot order an aggregate's input: it reads the ordered, limited page
        subquery in order.
        """
        separator = cast(_text(MEMBER_SEPARATOR), Text)
        if self.dialect == "postgresql":
            ordered = func.string_agg(member, aggregate_order_by(separator, key))
            return func.convert_to(ordered, _text("UTF8"))
        return cast(func.group_concat(member, separator), LargeBinary)


def last_key(dialect: str, key: ColumnElement[Any], type_code: Any) -> ColumnElement[Any]:
    """The aggregate giving a page's last key, in the key column's own type: its ``max``, or on PostgreSQL for a uuid
    or jsonb key (no ``max`` of either) the first of its keys in descending key order (the JSON page query failed for
    such a key, and each page was read again as rows); a jsonb key as its JSON text, exactly as the next page binds it
    back (the driver's value of a number holds no more digits than a float)."""
    if dialect != "postgresql" or type_code not in (_PG_UUID, PG_JSONB):
        return func.max(key)
    keys: ColumnElement[Any] = func.array_agg(aggregate_order_by(key, key.desc()), type_=ARRAY(key.type))
    return keys[_integer(1)] if type_code == _PG_UUID else cast(keys[_integer(1)], Text)


def member_json(
    dialect: str, q: Subquery, key_column: str, columns: Sequence[ResultColumn], *, sqlite_math: bool = True
) -> MemberJson:
    """How the database writes each member of ``q`` as a JSON object for ``dialect``, or why it cannot.

    ``q`` must expose every column (see :func:`shared.querystore.paging.saved_query`). ``sqlite_math``
    says whether SQLite has its math functions (``atan2`` tells a negative zero apart).
    """
    names = [c.name for c in columns]
    duplicated = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicated:
        return MemberJson(None, f"columns named twice ({', '.join(duplicated)})")
    if key_column not in names:
        return MemberJson(None, f"no key column '{key_column}'")
    if dialect == "sqlite":
        pairs: list[ColumnElement[Any]] = []
        for name in names:
            pairs += [literal(name, Text), _sqlite_value(q.c[name], sqlite_math)]
        return MemberJson(func.json_object(*pairs), dialect=dialect)
    if dialect == "postgresql":
        unwritten = [f"{c.name} (type oid {c.type_code})" for c in columns if c.type_code not in _PG_WRITTEN]
        if unwritten:
            return MemberJson(None, "column types the database does not write as the row path: " + ", ".join(unwritten))
        values = select(*(_pg_value(q.c[c.name], c.type_code).label(c.name) for c in columns)).correlate(q).lateral("j")
        # j.* names the row, never a column of q that happens to be called j.
        member = cast(func.row_to_json(literal_column("j.*")), Text)
        return MemberJson(member, lateral=values, dialect=dialect)
    return MemberJson(None, f"no JSON writer for the {dialect} dialect")


# Constants are written into the SQL (ours alone, never a member's or an editor's text): bound, they cost
# the page query a tenth more on SQLite.


def _text(value: str) -> ColumnElement[Any]:
    """A string constant as SQL text."""
    return literal_column("'" + value.replace("'", "''") + "'", Text)


def _number(value: float) -> ColumnElement[Any]:
    return literal_column(repr(value), Float())


def _integer(value: int) -> ColumnElement[Any]:
    return literal_column(str(value), Integer())


# --- SQLite ---------------------------------------------------------------------------------------------------


def _sqlite_value(value: ColumnElement[Any], math_functions: bool) -> ColumnElement[Any]:
    """Integers, text and nulls as json_object writes them; reals with 17 digits. A blob makes json_object fail,
    and its page is read as rows (cheaper than testing every value for it: a tenth of the page query)."""
    magnitude = func.abs(value)
    # A zero's sign is only seen by atan2 (printf, quote and 1/x all lose it).
    positive_zero = func.atan2(value, _number(-1.0)) > 0 if math_functions else false()
    exact = and_(
        magnitude < _number(SQLITE_EXACT_BELOW),
        or_(magnitude >= _number(SQLITE_EXACT_FROM), and_(value == _number(0.0), positive_zero)),
    )
    real = case((exact, func.json(func.printf(_text("%!.17g"), value))), else_=_text(ROW_PATH_MARKER))
    return case((func.typeof(value) == _text("real"), real), else_=value)


# --- PostgreSQL -----------------------------------------------------------------------------------------------


def _marker() -> ColumnElement[Any]:
    return func.to_json(cast(_text(ROW_PATH_MARKER), Text))


def _pg_constant(value: str, type_: Any) -> ColumnElement[Any]:
    return cast(_text(value), type_)


def _pg_float(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """A double (or real) as the row path writes it: its shortest exact text, with ``.0`` on whole numbers."""
    text = cast(value, Text)
    not_finite = [_pg_constant(v, Float(precision=53)) for v in ("NaN", "Infinity", "-Infinity")]
    return case(
        (value.in_(not_finite), None),
        (text.regexp_match(_text("^-?[0-9]+$")), cast(text.concat(_text(".0")), JSON)),
        else_=cast(text, JSON),
    )


def _pg_numeric(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """A numeric as ``jsonable`` writes it: a whole number exactly, any other as the nearest double."""
    return case(
        (value == _pg_constant("NaN", Numeric()), None),
        (func.abs(value) > _pg_constant("1e300", Numeric()), _marker()),
        (value == func.trunc(value), func.to_json(func.trunc(value))),
        else_=_pg_float(cast(value, Float(precision=53))),
    )


def _pg_date(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """The database's JSON, for the dates Python has (years 1 to 9999); the driver refuses the others."""
    out_of_range = or_(value < _pg_constant("0001-01-01", Date()), value > _pg_constant("9999-12-31", Date()))
    return case((out_of_range, _marker()), else_=func.to_json(value))


_SECONDS = 'YYYY-MM-DD"T"HH24:MI:SS'


def _pg_timestamp(value: ColumnElement[Any], *, zoned: bool) -> ColumnElement[Any]:
    """``isoformat``: whole seconds as the database writes them, a fraction always with six digits."""
    with_fraction = func.to_char(value, _text(_SECONDS + ".US" + ("TZH:TZM" if zoned else "")))
    # A day's margin at both ends: the driver converts to the session's zone, which may cross a year. The
    # bounds have the column's type (compared with a date, each value would be converted first).
    kind = DateTime(timezone=zoned)
    out_of_range = or_(value < _pg_constant("0001-01-02", kind), value >= _pg_constant("9999-12-31", kind))
    whens: list[tuple[Any, Any]] = [
        (out_of_range, _marker()),
        (value == func.date_trunc(_text("second"), value), func.to_json(value)),
    ]
    if zoned:
        # to_char writes no seconds of offset (a zone's local mean time, before 1900): the row path does.
        whens.append((cast(extract("timezone", value), Integer) % _integer(60) != _integer(0), _marker()))
    return case(*whens, else_=func.to_json(with_fraction))


def _pg_time(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """``isoformat`` of a time: the database's text when whole seconds, else six fractional digits."""
    return case(
        (value == _pg_constant("24:00:00", Time()), _marker()),
        (func.strpos(cast(value, Text), _text(".")) == _integer(0), func.to_json(value)),
        else_=func.to_json(func.to_char(cast(value, Interval), _text("HH24:MI:SS.US"))),
    )


def _pg_value(value: ColumnElement[Any], type_code: int) -> ColumnElement[Any]:
    if type_code in _PG_NATIVE:
        return value
    if type_code == _PG_DATE:
        return _pg_date(value)
    if type_code in (_PG_FLOAT4, _PG_FLOAT8):
        return _pg_float(value)
    if type_code == _PG_NUMERIC:
        return _pg_numeric(value)
    if type_code in (_PG_TIMESTAMP, _PG_TIMESTAMPTZ):
        return _pg_timestamp(value, zoned=type_code == _PG_TIMESTAMPTZ)
    if type_code == _PG_TIME:
        return _pg_time(value)
    return func.encode(value, _text("hex"))
