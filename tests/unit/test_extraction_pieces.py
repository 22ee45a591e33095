"""The extractor's pure pieces: query parameters, paging SQL, batch encoding, run-request decoding."""

import datetime as dt
import decimal
import json
import uuid
import zoneinfo

import pytest
from cloudevents.core.bindings.kafka import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.extractor.extraction import page_size_for
from services.extractor.run_request_decoding import decode_run_request
from shared.domain.catalog_objects import Priority, SavedQuery
from shared.domain.query_parameters import ParameterError, QueryParameter, bind_names, bind_values
from shared.events import RUN_REQUESTED_CLOUDEVENT_TYPE, MemberBatch, RunRequested, Trigger
from shared.json_values import jsonable
from shared.member_batches import BatchEncoder, MemberTooLarge, members_per_record
from shared.querystore.paging import Window, high_watermark, keyset_page

# --- parameters ----------------------------------------------------------------------------------------

DECLARED = {
    "tier": QueryParameter(type="string", required=True),
    "min_points": QueryParameter(type="integer", default=0),
    "since": QueryParameter(type="date"),
    "vip": QueryParameter(type="boolean", default=False),
}


def test_values_come_from_the_request_then_the_definition_then_the_default():
    bound = bind_values(DECLARED, {"tier": "gold"}, {"tier": "silver", "min_points": "500", "since": "2026-01-31"})
    assert bound == {"tier": "gold", "min_points": 500, "since": dt.date(2026, 1, 31), "vip": False}


@pytest.mark.parametrize(
    ("request_values", "message"),
    [
        ({}, "parameter 'tier' is required (string)"),
        ({"tier": "gold", "min_points": "lots"}, "parameter 'min_points': expected integer"),
        ({"tier": "gold", "since": "yesterday"}, "parameter 'since': expected date"),
        ({"tier": "gold", "country": "FR"}, "unknown parameter(s) country; the query declares: tier, min_points"),
    ],
)
def test_a_wrong_value_is_refused_naming_the_parameter(request_values, message):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bind_values(DECLARED, request_values)


def test_a_default_of_the_wrong_type_is_refused_when_the_query_is_saved():
    with pytest.raises(ValidationError, match="expected integer"):
        QueryParameter(type="integer", default="ten")


def test_bind_names_skip_casts_and_escaped_colons():
    assert bind_names("SELECT id::text, :a FROM t WHERE x = :b AND y = :a AND z = '\\:c'") == ["a", "b"]


def test_a_query_must_declare_the_parameters_its_sql_uses():
    with pytest.raises(ValidationError, match=r"undeclared parameter.*:tier"):
        SavedQuery(name="q", sql="SELECT * FROM members WHERE tier = :tier")
    with pytest.raises(ValidationError, match="not a valid parameter name"):
        SavedQuery(name="q", sql="SELECT * FROM members WHERE tier = :_export_limit", parameters={"_export_limit": {}})


# --- paging SQL ----------------------------------------------------------------------------------------


def test_an_incremental_page_reads_the_watermark_slice_after_the_last_key():
    sql = str(keyset_page("SELECT * FROM m", "id", first=False, window=Window("u", "a", "b")))
    assert "WHERE q.u > :_export_since AND q.u <= :_export_until AND q.id > :_export_last_key ORDER BY" in sql
    first_run = str(keyset_page("SELECT * FROM m", "id", first=True, window=Window("u", None, "b")))
    # The first run (no watermark yet) exports members with no watermark too, and the keyset stays outside the OR.
    assert "WHERE q.u <= :_export_until OR q.u IS NULL ORDER BY" in first_run
    later_page = str(keyset_page("SELECT * FROM m", "id", first=False, window=Window("u", None, "b")))
    assert "WHERE (q.u <= :_export_until OR q.u IS NULL) AND q.id > :_export_last_key ORDER BY" in later_page
    assert str(high_watermark("SELECT * FROM m", "u", since=True)).endswith("WHERE q.u > :_export_since")


@given(st.integers(1, 10_000), st.integers(1, 100_000))
def test_pages_are_whole_batches(batch_size, configured):
    size = page_size_for(batch_size, configured)
    assert size % batch_size == 0
    assert size >= configured
    assert size - configured < batch_size


# --- batch encoding ------------------------------------------------------------------------------------

COLUMNS = ("id", "email", "points", "joined_at", "ratio", "vip", "balance", "token", "blob", "day")
values = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=2))])),
    st.datetimes(),
    st.dates(),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.uuids(),
    st.binary(max_size=8),
)
#: A driver gives a column one type (SQLite's values have their own, but it never gives times of day).
times = st.none() | st.times() | st.times(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-4))]))


def _encoder(batch_size=3, max_record_bytes=1_000_000):
    return BatchEncoder(
        run_id=uuid.UUID(int=7),
        definition="d",
        template="t",
        priority=Priority.HIGH,
        batch_size=batch_size,
        max_record_bytes=max_record_bytes,
        key_column="id",
    )


@given(st.lists(st.tuples(*([values] * len(COLUMNS))), min_size=1, max_size=10))
def test_fast_encoding_is_the_member_batch_contract(rows):
    rows = [(i, *row[1:]) for i, row in enumerate(rows)]
    for batch in _encoder().encode_page(COLUMNS, rows, first_index=4):
        decoded = MemberBatch.model_validate_json(batch.value)
        start = (batch.batch_index - 4) * 3
        expected = [{c: jsonable(v) for c, v in zip(COLUMNS, row, strict=True)} for row in rows[start : start + 3]]
        assert decoded.members == json.loads(json.dumps(expected))
        assert (decoded.run_id, decoded.priority, decoded.template) == (uuid.UUID(int=7), Priority.HIGH, "t")


@given(st.lists(st.tuples(*([values] * len(COLUMNS))), min_size=1, max_size=12), st.integers(1, 5))
def test_members_json_spliced_is_the_same_record_as_the_rows(rows, batch_size):
    """The database-written path: each member's JSON object spliced gives the row path's very bytes."""
    rows = [(i, *row[1:]) for i, row in enumerate(rows)]
    encoder = _encoder(batch_size)
    members = [
        MemberBatch.model_validate_json(b.value).members for b in encoder.encode_page(COLUMNS, rows, first_index=2)
    ]
    member_json = [json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode() for ms in members for m in ms]
    spliced = encoder.encode_json_page(member_json, first_index=2)
    assert [b.value for b in spliced] == [
        json.dumps(json.loads(b.value), separators=(",", ":"), ensure_ascii=False).encode()
        for b in encoder.encode_page(COLUMNS, rows, first_index=2)
    ]
    assert [(b.batch_index, b.members) for b in spliced] == [
        (b.batch_index, b.members) for b in encoder.encode_page(COLUMNS, rows, first_index=2)
    ]


@given(st.lists(st.tuples(values, times), min_size=1, max_size=10))
def test_times_of_day_are_the_member_batch_contract(rows):
    rows = [(i, *row) for i, row in enumerate(rows)]
    columns = ("id", "other", "at")
    for batch in _encoder().encode_page(columns, rows, first_index=0):
        decoded = MemberBatch.model_validate_json(batch.value)
        start = batch.batch_index * 3
        expected = [{c: jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows[start : start + 3]]
        assert decoded.members == json.loads(json.dumps(expected))


def test_times_of_day_keep_their_microseconds():
    # orjson 3.13 writes 00:00:00.010967 as "00:00:00.10967" (a tenth of a second): not through us.
    rows = [(1, dt.time(0, 0, 0, 10967)), (2, None), (3, dt.time(12, 5, 7, 99999))]
    members = MemberBatch.model_validate_json(_encoder().encode(("id", "at"), rows, 0)).members
    assert [m["at"] for m in members] == ["00:00:00.010967", None, "12:05:07.099999"]


def test_offsets_with_seconds_keep_them():
    # orjson 3.13 writes Paris's local mean time (+00:09:21) as +00:09: another instant.
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    rows = [
        (1, dt.datetime(1850, 1, 1, 12, 9, 21, tzinfo=paris)),
        (2, dt.datetime(2026, 7, 1, 14, 0, tzinfo=paris)),
        (3, dt.datetime(1850, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(minutes=9, seconds=21)))),
    ]
    members = MemberBatch.model_validate_json(_encoder().encode(("id", "at"), rows, 0)).members
    assert [m["at"] for m in members] == [
        "1850-01-01T12:09:21+00:09:21",
        "2026-07-01T14:00:00+02:00",
        "1850-01-01T12:00:00+00:09:21",
    ]


def test_a_json_column_stays_json_beside_an_integer_beyond_64_bits():
    rows = [(1, 2**70, {"tags": ["a"], "n": 1.5})]
    member = MemberBatch.model_validate_json(_encoder().encode(("id", "big", "doc"), rows, 0)).members[0]
    assert member == {"id": 1, "big": 2**70, "doc": {"tags": ["a"], "n": 1.5}}


@given(st.lists(st.text(max_size=300), min_size=1, max_size=60), st.integers(1, 20))
def test_spliced_members_split_by_bytes_as_rows_do(texts, batch_size):
    rows = [(i, text) for i, text in enumerate(texts)]
    bound = 1_500
    by_rows = _encoder(batch_size, bound).encode_page(("id", "note"), rows, first_index=10)
    spliced = [json.dumps({"id": i, "note": t}, separators=(",", ":"), ensure_ascii=False).encode() for i, t in rows]
    by_json = _encoder(batch_size, bound).encode_json_page(spliced, first_index=10)
    assert [(b.batch_index, b.members) for b in by_json] == [(b.batch_index, b.members) for b in by_rows]
    assert [MemberBatch.model_validate_json(b.value) for b in by_json] == [
        MemberBatch.model_validate_json(b.value) for b in by_rows
    ]


def test_a_spliced_member_larger_than_a_record_fails():
    with pytest.raises(MemberTooLarge, match=r"member id=\? encodes to .* over the record limit of 200 bytes"):
        _encoder(10, 200).encode_json_page([b'{"id":41}', b'{"id":42,"note":"' + b"y" * 500 + b'"}'], 0)


def test_integers_beyond_64_bits_and_decimals_still_encode():
    rows = [(1, 2**70, decimal.Decimal("2.50"))]
    member = MemberBatch.model_validate_json(_encoder().encode(("id", "big", "price"), rows, 0)).members[0]
    assert member == {"id": 1, "big": 2**70, "price": 2.5}


@given(st.lists(st.text(max_size=300), min_size=1, max_size=60), st.integers(1, 20))
def test_byte_bounded_batches_hold_every_member_once_in_order(texts, batch_size):
    rows = [(i, text) for i, text in enumerate(texts)]
    bound = 1_500
    first = _encoder(batch_size, bound).encode_page(("id", "note"), rows, first_index=10)
    again = _encoder(batch_size, bound).encode_page(("id", "note"), rows, first_index=10)
    assert first == again  # the same page always gives the same batch identities
    assert [b.batch_index for b in first] == list(range(10, 10 + len(first)))
    assert all(len(b.value) <= bound for b in first)
    ids = [m["id"] for b in first for m in MemberBatch.model_validate_json(b.value).members]
    assert ids == list(range(len(texts)))


def test_a_member_larger_than_a_record_fails_naming_it():
    with pytest.raises(MemberTooLarge, match=r"member id=42 encodes to .* over the record limit of 260 bytes"):
        _encoder(10, 260).encode_page(("id", "note"), [(41, "x"), (42, "y" * 500)], 0)


# --- run requests --------------------------------------------------------------------------------------


def _cloudevent(data, **attributes):
    return CloudEvent(
        attributes={"type": RUN_REQUESTED_CLOUDEVENT_TYPE, "source": "/crm/segments", "id": "evt-1"} | attributes,
        data=data,
    )


@pytest.mark.parametrize("binding", [to_structured, to_binary])
def test_a_cloudevent_run_request_is_accepted_in_both_modes(binding):
    message = binding(
        _cloudevent({"definition": "vip", "parameters": {"tier": "gold"}}, datacontenttype="application/json"),
        JSONFormat(),
    )
    request = decode_run_request(message.value, list(message.headers.items()))
    assert (request.definition, request.parameters, request.trigger) == ("vip", {"tier": "gold"}, Trigger.EVENT)
    assert request.requested_by == "/crm/segments"
    again = decode_run_request(message.value, list(message.headers.items()))
    assert again.run_id == request.run_id  # a republished event is the same run


@pytest.mark.parametrize("content_type", [b"application/json", b"application/json; charset=utf-8", None])
def test_a_structured_cloudevent_sent_as_plain_json_is_accepted_with_its_time(content_type):
    # What the older v1 SDK API (and many hand-written producers) send: the structured event's JSON under
    # application/json, or with no content type at all.
    event = _cloudevent(
        {"definition": "vip"}, time=dt.datetime(2026, 11, 30, 8, 15, tzinfo=dt.UTC), datacontenttype="application/json"
    )
    message = to_structured(event, JSONFormat())
    headers = [("content-type", content_type)] if content_type is not None else []
    request = decode_run_request(message.value, headers)
    assert (request.definition, request.trigger, request.requested_by) == ("vip", Trigger.EVENT, "/crm/segments")
    assert request.requested_at == dt.datetime(2026, 11, 30, 8, 15, tzinfo=dt.UTC)


def test_a_cloudevent_may_name_its_run_id():
    run_id = uuid.uuid4()
    message = to_structured(_cloudevent({"definition": "vip", "run_id": str(run_id)}), JSONFormat())
    assert decode_run_request(message.value, list(message.headers.items())).run_id == run_id


def test_a_cloudevent_of_another_type_is_refused_naming_the_expected_type():
    message = to_binary(_cloudevent({"definition": "vip"}, type="com.example.other"), JSONFormat())
    with pytest.raises(ValueError, match=f"expected '{RUN_REQUESTED_CLOUDEVENT_TYPE}'"):
        decode_run_request(message.value, list(message.headers.items()))


def test_a_cloudevent_without_a_definition_is_refused():
    message = to_structured(_cloudevent({"parameters": {}}), JSONFormat())
    with pytest.raises(ValidationError, match="definition"):
        decode_run_request(message.value, list(message.headers.items()))


def test_our_own_json_event_needs_no_headers():
    request = RunRequested(definition="vip", parameters={"tier": "gold"})
    assert decode_run_request(request.to_bytes(), []) == request


@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_a_record_holds_whole_requests_and_at_least_the_record_members_where_they_fit(batch_size, record_members):
    size = members_per_record(batch_size, record_members)
    assert size % batch_size == 0  # whole requests
    if batch_size >= record_members:
        assert size == batch_size  # one request per record
    else:  # as many whole requests as fit in record_members
        assert record_members - batch_size < size <= record_members
