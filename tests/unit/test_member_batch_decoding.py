"""The dispatcher's member-batch decoder (:func:`shared.member_batch_decoding.decode_member_batch`) gives exactly
what ``MemberBatch.model_validate_json`` gives: the same batch (field values and types, ``int`` against ``float``,
``-0.0``, ``NaN``, integers beyond 64 bits, member key order, the fields set) for any JSON text, and the same
refusal (exception, message, dead-letter reason) for any record the model refuses. The records are written by
hand, token by token (escapes, number forms, whitespace, duplicate keys, nesting near the parser's limit), not
only by an encoder, so texts that different parsers read differently are among them."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

import shared.member_batch_decoding as decoding
from services.dispatcher.dispatching import decode_batch
from services.extractor.extraction import DEFAULT_RECORD_MEMBERS
from shared.events import ChangeKind, MemberBatch, Priority
from shared.kafka import value_decoder
from shared.kafka.loop import Rejection, decode_record
from shared.member_batch_decoding import decode_member_batch, fast_path_problems
from shared.member_batches import members_per_record
from shared.querystore.demo_data import COLUMNS, generate_rows
from tests.benchmarks.common import member_batch_records

# --- JSON texts, token by token ------------------------------------------------------------------------------

WHITESPACE = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n  "])
SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _u_escape(code: int, upper: bool) -> str:
    text = f"\\u{code:04X}" if upper else f"\\u{code:04x}"
    return text


def _char_text(char: str, style: int) -> str:
    """One character of a JSON string: as it is where JSON allows it, else (or by ``style``) escaped."""
    code = ord(char)
    # A surrogate cannot be written as UTF-8: it goes as a lone \\u escape, which the parser refuses.
    must_escape = char in '"\\' or code < 0x20 or 0xD800 <= code <= 0xDFFF
    if style == 1 and char in SHORT_ESCAPES:
        return SHORT_ESCAPES[char]
    if style >= 2 or must_escape:
        upper = style == 3
        if code > 0xFFFF:  # a surrogate pair
            code -= 0x10000
            return _u_escape(0xD800 + (code >> 10), upper) + _u_escape(0xDC00 + (code & 0x3FF), upper)
        return _u_escape(code, upper)
    return char


def string_texts(alphabet: st.SearchStrategy[str] | None = None, max_size: int = 12) -> st.SearchStrategy[str]:
    """JSON strings, each character raw or escaped (short, ``\\u`` lower or upper case, astral ones in pairs)."""
    chars = st.lists(st.tuples(st.characters() if alphabet is None else alphabet, st.integers(0, 3)), max_size=max_size)
    return chars.map(lambda pieces: '"' + "".join(_char_text(c, s) for c, s in pieces) + '"')


#: Numbers as JSON writes them in every form: long mantissas (rounding), exponents, integers of any length.
NUMBER_TEXTS = st.from_regex(r"\A-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?\Z", fullmatch=True)
FLOAT_TEXTS = st.floats(allow_subnormal=True, allow_nan=False, allow_infinity=False).flatmap(
    lambda f: st.sampled_from([repr(f), f"{f:.17e}", f"{f:.17E}", f"{f:.25g}".replace("inf", "1e999")])
)
INTEGER_TEXTS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 3, max_value=2**64 + 3),
    st.integers(min_value=-(2**63) - 3, max_value=-(2**63) + 3),
    st.integers(min_value=-(2**200), max_value=2**200),
).map(str)
#: Texts parsers read differently (orjson: floats for the integers beyond 64 bits, no NaN, Infinity, 1e400).
EDGE_TEXTS = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "1e-400",
        "-0",
        "-0.0",
        "4.9406564584124654e-324",
        "2.2250738585072011e-308",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1.00000000000000011102230246251565404236316680908203125",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        '"\\ud83d\\ude00"',
        '"\\u0000"',
    ]
)
#: Texts the parser refuses.
REFUSED_TEXTS = st.sampled_from(['"\\ud800"', '"\\udc00x"', "01", "1.", "True", "[1,]", '"\\x"', '"\x01"'])
#: Arrays nested around the parser's depth limit (200 levels, the record's own 3 and the member's own included).
DEEP_TEXTS = st.integers(min_value=193, max_value=200).map(lambda n: "[" * n + "]" * n)


def _mostly(common: st.SearchStrategy[str], rare: st.SearchStrategy[str], one_in: int) -> st.SearchStrategy[str]:
    """``common``, or ``rare`` about once in ``one_in`` draws."""
    return st.integers(0, one_in - 1).flatmap(lambda n: rare if n == one_in - 1 else common)


def scalar_texts(hostile: bool) -> st.SearchStrategy[str]:
    scalars = st.one_of(
        st.just("null"),
        st.sampled_from(["true", "false"]),
        INTEGER_TEXTS,
        FLOAT_TEXTS,
        NUMBER_TEXTS,
        string_texts(),
        EDGE_TEXTS,
    )
    return _mostly(scalars, REFUSED_TEXTS, 30) if hostile else scalars


#: Member keys from a few characters, so the same key comes twice (raw or escaped): a duplicate key.
KEY_TEXTS = string_texts(st.sampled_from('aé/"\\\n😀'), max_size=2)


def _array(items: list[str], spaces: list[str]) -> str:
    return "[" + ",".join(f"{s}{item}{s}" for item, s in zip(items, spaces, strict=False)) + "]"


def _object(pairs: list[tuple[str, str]], space: str) -> str:
    return "{" + ",".join(f"{space}{key}{space}:{space}{value}{space}" for key, value in pairs) + "}"


def arrays(items: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(items, max_size=4).flatmap(
        lambda xs: st.lists(WHITESPACE, min_size=len(xs), max_size=len(xs)).map(lambda ws: _array(xs, ws))
    )


def objects(values: st.SearchStrategy[str], max_size: int = 5) -> st.SearchStrategy[str]:
    return st.builds(_object, st.lists(st.tuples(KEY_TEXTS, values), max_size=max_size), WHITESPACE)


def value_texts(hostile: bool = False) -> st.SearchStrategy[str]:
    """Any JSON value: scalars in every form, arrays and objects nested in each other, sometimes near the
    nesting limit; ``hostile``: now and then a text the parser refuses."""
    nested = st.recursive(
        scalar_texts(hostile), lambda inner: st.one_of(arrays(inner), objects(inner, 3)), max_leaves=12
    )
    return _mostly(nested, DEEP_TEXTS, 40)


def members_texts(hostile: bool) -> st.SearchStrategy[str]:
    """The ``members`` field: a list of member objects; ``hostile``: sometimes not a list, or an item not an object."""
    member = objects(value_texts(hostile))
    if hostile:
        member = _mostly(member, st.sampled_from(["1", "null", '"member"', "[]", "[{}]"]), 30)
    members = st.lists(member, max_size=6).map(lambda ms: "[" + ",".join(ms) + "]")
    return _mostly(members, st.sampled_from(["null", "{}", '{"id": 1}', '"members"', "5"]), 20) if hostile else members


# The header: each field in several JSON forms, some read in pydantic's lax way ("1.0" for an int, "yes" for a bool);
# when hostile, now and then a value the model refuses.

RUN_ID = uuid.UUID("7f1c2a3e-1111-4222-8333-444455556666")
#: name → (valid values, values the model refuses)
HEADER_FIELDS: dict[str, tuple[st.SearchStrategy[str], list[str]]] = {
    "schema_version": (st.sampled_from(["1", "1.0", "1e0"]), ["2", '"1"', "true", "NaN"]),
    "type": (st.sampled_from(['"member.batch"', '"member.batc\\u0068"']), ['"run.started"', "null"]),
    "run_id": (st.sampled_from([f'"{RUN_ID}"', f'"{RUN_ID.hex}"', f'"{str(RUN_ID).upper()}"']), ['"x"', "1", "[]"]),
    "definition": (string_texts(), ["5", "null", "{}"]),
    "template": (string_texts(), ["5.5", "null", "[]", "Infinity"]),
    "priority": (st.sampled_from([f'"{p.value}"' for p in Priority]), ['"urgent"', '"HIGH"', "1"]),
    "batch_index": (st.sampled_from(["0", "7", "3.0", "1e2", '"3"', "18446744073709551616"]), ["-1", "1.5", "NaN"]),
    "key_column": (st.sampled_from(['"id"', "null", '"\\u00e9"']), ["NaN", "1", "[]"]),
    "change": (st.sampled_from([f'"{c.value}"' for c in ChangeKind] + ["null"]), ['"moved"', "2"]),
    "retry": (st.sampled_from(["true", "false", '"yes"', "0", '"off"']), ["2", '"maybe"', "null"]),
    "from_a_newer_producer": (value_texts(), []),  # unknown to the model: ignored (NaN or 1e400 in it too)
}
REQUIRED = ("run_id", "definition", "template", "batch_index", "members")


def _present(name: str, hostile: bool) -> st.SearchStrategy[bool]:
    """Whether a field is in the record: a required one always, unless hostile (then missing about once in 20);
    an optional one half the time."""
    if name not in REQUIRED:
        return st.booleans()
    return st.integers(0, 19).map(lambda n: n < 19) if hostile else st.just(True)


@st.composite
def records(draw: st.DrawFn, hostile: bool) -> bytes:
    """A member-batch record as text: the header's fields (the optional ones present or not) and ``members``, in
    any order, sometimes a field twice (the last counts). ``hostile``: now and then a field missing or refused,
    the record damaged as bytes (cut short, a byte changed, a BOM, trailing data)."""
    names = [name for name in [*HEADER_FIELDS, "members"] if draw(_present(name, hostile))]
    names = draw(st.permutations(names))
    if names and draw(st.integers(0, 9)) == 0:
        names.append(draw(st.sampled_from(names)))
    pairs = []
    for name in names:
        if name == "members":
            text = draw(members_texts(hostile))
        else:
            valid, refused = HEADER_FIELDS[name]
            text = draw(_mostly(valid, st.sampled_from(refused), 20) if hostile and refused else valid)
        pairs.append((f'"{name}"', text))
    value = (draw(WHITESPACE) + _object(pairs, draw(WHITESPACE)) + draw(WHITESPACE)).encode()
    damage = draw(st.integers(0, 19)) if hostile else 0
    if damage == 19:  # cut short
        value = value[: draw(st.integers(0, max(0, len(value) - 1)))]
    elif damage == 18:  # a byte changed (invalid UTF-8, a stray character)
        at = draw(st.integers(0, max(0, len(value) - 1)))
        value = value[:at] + bytes([draw(st.integers(0, 255))]) + value[at + 1 :]
    elif damage == 17:
        before, after = (
            draw(st.sampled_from([b"\xef\xbb\xbf", b"\x0c", b""])),
            draw(st.sampled_from([b"", b"x", b"{}"])),
        )
        value = before + value + after
    return value


# --- comparing outcomes --------------------------------------------------------------------------------------


def _exactly(value: Any) -> Any:
    """``value`` with what ``==`` overlooks made visible: types (``True`` against ``1``, ``1`` against ``1.0``),
    a float's sign and ``NaN`` (by ``repr``), and the order of a dict's keys."""
    if isinstance(value, dict):
        return ("dict", [(_exactly(k), _exactly(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_exactly(v) for v in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def outcome(decode: Callable[[bytes], MemberBatch], value: bytes) -> tuple[Any, ...]:
    """What ``decode`` makes of ``value``: the batch, exactly, or the exception's type and message."""
    try:
        batch = decode(value)
    except Exception as exc:  # noqa: BLE001 - the refusal is what is compared
        return ("refused", type(exc).__name__, str(exc))
    return ("decoded", type(batch), sorted(batch.model_fields_set), _exactly(batch.__dict__))


def reason(decode: Callable[[bytes], MemberBatch], value: bytes) -> object:
    """What the consumer loop makes of ``value`` with ``decode``: the event, or the rejection and its reason."""
    return decode_record(value_decoder(decode), value, [])


# --- the properties ------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=records(hostile=False))
def test_a_valid_record_decodes_to_exactly_the_models_batch(value: bytes):
    assert outcome(decode_member_batch, value) == outcome(MemberBatch.model_validate_json, value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=records(hostile=True))
def test_any_record_decodes_or_is_refused_exactly_as_the_model_does(value: bytes):
    expected = outcome(MemberBatch.model_validate_json, value)
    assert outcome(decode_member_batch, value) == expected
    if expected[0] == "refused":
        assert reason(decode_member_batch, value) == reason(MemberBatch.model_validate_json, value)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.lists(objects(value_texts()), min_size=1, max_size=8))
def test_valid_members_of_any_kind_take_the_fast_path(members: list[str]):
    """Members the parser reads (NaN, 1e400, integers beyond 64 bits, nesting, duplicate keys included) are kept as
    read, without the model's second decoding; only a text the parser refuses goes to the model."""
    value = (
        f'{{"type":"member.batch","run_id":"{RUN_ID}","definition":"d","template":"t","batch_index":1,'
        f'"members":[{",".join(members)}]}}'
    ).encode()
    expected = outcome(MemberBatch.model_validate_json, value)
    fell_back: list[bytes] = []

    def by_the_model(value: bytes) -> MemberBatch:
        fell_back.append(value)
        return MemberBatch.model_validate_json(value)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decoding, "_decoded_by_the_model", by_the_model)
        assert outcome(decode_member_batch, value) == expected
    assert bool(fell_back) == (expected[0] == "refused")


INVALID_RECORDS = {
    "not JSON": b"members",
    "empty": b"",
    "cut short": b'{"type":"member.batch","run_id":"7f1c2a3e-1111-4222-8333-444455556666","members":[{"id":1}',
    "trailing data": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t",'
    b'"batch_index":0,"members":[]} {}',
    "a BOM": b'\xef\xbb\xbf{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t",'
    b'"batch_index":0,"members":[]}',
    "invalid UTF-8": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"\xff","template":"t",'
    b'"batch_index":0,"members":[]}',
    "a lone surrogate": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t",'
    b'"batch_index":0,"members":[{"id":"\\ud800"}]}',
    "nested too deep": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t",'
    b'"batch_index":0,"members":[{"id":' + b"[" * 250 + b"]" * 250 + b"}]}",
    "not an object": b"[1, 2]",
    "no members": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t","batch_index":0}',
    "members not a list": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t",'
    b'"batch_index":0,"members":{"id":1}}',
    "members null": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t",'
    b'"batch_index":0,"members":null}',
    "a member not an object": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t",'
    b'"batch_index":0,"members":[{"id":1},2,{"id":3}]}',
    "the wrong type": b'{"type":"run.started","run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d",'
    b'"template":"t","batch_index":0,"members":[]}',
    "a newer schema": b'{"schema_version":2,"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d",'
    b'"template":"t","batch_index":0,"members":[]}',
    "a negative index and a bad run id": b'{"run_id":"nope","definition":"d","template":"t","batch_index":-1,'
    b'"members":[{"id":1}]}',
    "an unknown priority": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t",'
    b'"priority":"urgent","batch_index":0,"members":[]}',
    "NaN as the key column": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d","template":"t",'
    b'"batch_index":0,"key_column":NaN,"members":[]}',
    "the last of two members fields invalid": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d",'
    b'"template":"t","batch_index":0,"members":[],"members":5}',
    "an invalid header and an invalid member": b'{"run_id":"7f1c2a3e-1111-4222-8333-444455556666","definition":"d",'
    b'"template":"t","batch_index":-1,"members":[{"id":1},[]]}',
}


@pytest.mark.parametrize("value", INVALID_RECORDS.values(), ids=INVALID_RECORDS.keys())
def test_an_invalid_record_is_refused_with_the_models_error_and_reason(value: bytes):
    with pytest.raises(ValidationError) as expected:
        MemberBatch.model_validate_json(value)
    with pytest.raises(type(expected.value)) as refused:
        decode_member_batch(value)
    assert str(refused.value) == str(expected.value)
    assert reason(decode_member_batch, value) == reason(MemberBatch.model_validate_json, value)


#: The benchmark's query: what ``bench_e2e`` exports (8 of the demo members' columns).
BENCH_COLUMNS = ("id", "email", "first_name", "last_name", "tier", "points", "locale", "consent_email")


def _extractor_records(members: int, batch_size: int) -> list[bytes]:
    """The records the extractor writes for ``members`` demo members, ``batch_size`` members a request."""
    positions = [COLUMNS.index(column) for column in BENCH_COLUMNS]
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute(f"CREATE TABLE members ({', '.join(BENCH_COLUMNS)})")
        connection.executemany(
            f"INSERT INTO members VALUES ({', '.join('?' for _ in BENCH_COLUMNS)})",
            [[row[p] for p in positions] for page in generate_rows(members) for row in page],
        )
        cursor = connection.execute(f"SELECT {', '.join(BENCH_COLUMNS)} FROM members ORDER BY id")
        records = member_batch_records(
            cursor, template="t", batch_size=members_per_record(batch_size, DEFAULT_RECORD_MEMBERS), page_size=5_000
        )
    finally:
        connection.close()
    return [value for _, value in records]


def test_the_extractors_records_decode_without_the_models_second_pass(monkeypatch: pytest.MonkeyPatch):
    """The records a run sends (batches of 500; one-member batches, 64 a record) take the fast path, to the same
    batches: the dispatcher's saving is real only while they do."""
    values = _extractor_records(1_000, 500) + _extractor_records(128, 1)
    expected = [MemberBatch.model_validate_json(v) for v in values]
    monkeypatch.setattr(decoding, "_decoded_by_the_model", lambda v: pytest.fail("fell back to the model"))
    decoded = [decode_member_batch(v) for v in values]
    assert [_exactly(b.__dict__) for b in decoded] == [_exactly(b.__dict__) for b in expected]
    assert [len(b.members) for b in decoded] == [500, 500, 64, 64]


def test_the_contract_has_nothing_the_fast_path_would_skip():
    """The fast path validates the header with the model and trusts ``members``' type alone: anything of the model
    that looks at a member or at ``members`` beside the other fields must be taken into the decoder first (until
    then the decoder leaves every record to the model)."""
    assert fast_path_problems(MemberBatch) == []
    assert decoding._FAST


def _nonempty_members(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not all(members):
        raise ValueError("an empty member")
    return members


class _AtMostTwoMembers(MemberBatch):
    members: Annotated[list[dict[str, Any]], Field(max_length=2)]


class _NoEmptyMember(MemberBatch):
    members: Annotated[list[dict[str, Any]], AfterValidator(_nonempty_members)]


class _ShortStrings(MemberBatch):
    model_config = ConfigDict(str_strip_whitespace=True, str_max_length=3)


class _CheckedAfterInit(MemberBatch):
    def model_post_init(self, context: Any, /) -> None:
        if len(self.members) > 2:
            raise ValueError("too many members")


class _KeyColumnChecked(MemberBatch):
    @field_validator("key_column")
    @classmethod
    def _a_members_key(cls, key_column: str | None, info: ValidationInfo) -> str | None:
        if key_column is not None and any(key_column not in member for member in info.data["members"]):
            raise ValueError("the key column is not a member's field")
        return key_column


def _record(header: str = "", members: str = '[{"id":1},{"id":2},{"id":3}]') -> bytes:
    return (
        f'{{"run_id":"{RUN_ID}","definition":"d","template":"t","batch_index":0{header},"members":{members}}}'
    ).encode()


#: Changes of the contract the fast path would decode differently from the model: a record the model refuses
#: and the fast path would decode (the review's four, and a field validator reading ``members``).
CHANGED_CONTRACTS = {
    "max_length on members": (_AtMostTwoMembers, _record()),
    "an AfterValidator on members": (_NoEmptyMember, _record(members="[{}]")),
    "string rules in model_config (member keys)": (_ShortStrings, _record(members='[{" long_key ":1}]')),
    "model_post_init": (_CheckedAfterInit, _record()),
    "a validator of another field reading members": (_KeyColumnChecked, _record(header=',"key_column":"email"')),
}


@pytest.mark.parametrize(("model", "value"), CHANGED_CONTRACTS.values(), ids=CHANGED_CONTRACTS.keys())
def test_a_contract_change_the_fast_path_would_get_wrong_is_found(
    model: type[MemberBatch], value: bytes, monkeypatch: pytest.MonkeyPatch
):
    """Each change makes the model refuse a record the fast path, unchanged, would decode: the guard must see it
    (the guard before looked at validators and ``members``' annotation only, and saw none of these)."""
    with pytest.raises(ValidationError):
        model.model_validate_json(value)
    monkeypatch.setattr(decoding, "MemberBatch", model)
    assert isinstance(decoding._decoded_fast(value), model), "the fast path would let it through"
    assert fast_path_problems(model) != []


#: Values a field unknown to the model may hold: the model ignores them, and so does the fast path (dropped
#: before the header is validated, never written back): NaN and the infinities, which JSON cannot write, an
#: integer too long for ``int()``'s default limit, a deep structure, a large one.
UNKNOWN_FIELD_VALUES = {
    "NaN": "NaN",
    "-Infinity": "-Infinity",
    "1e400": "1e400",
    "4,300 digits": "9" * 4_300,
    "nested 190 levels": "[" * 190 + "]" * 190,
    "500 members": "["
    + ",".join(f'{{"id":{i},"email":"m{i}@example.org","points":{i * 3}}}' for i in range(500))
    + "]",
}


@pytest.mark.parametrize("text", UNKNOWN_FIELD_VALUES.values(), ids=UNKNOWN_FIELD_VALUES.keys())
def test_a_field_unknown_to_the_model_takes_the_fast_path_whatever_it_holds(text: str):
    value = _record(header=f',"previous_members":{text}')
    fell_back: list[None] = []
    assert outcome(lambda v: decode_member_batch(v, lambda: fell_back.append(None)), value) == outcome(
        MemberBatch.model_validate_json, value
    )
    assert fell_back == []


def _fallbacks() -> float:
    return REGISTRY.get_sample_value("member_export_dispatcher_batch_decode_fallbacks_total") or 0.0


def test_the_dispatcher_counts_the_records_left_to_the_model():
    """What the dispatcher's consumer loop decodes: a record the fast path leaves to the model (an invalid one
    here: none valid does today) shows in ``member_export_dispatcher_batch_decode_fallbacks_total``."""
    decoder = value_decoder(decode_batch)
    before = _fallbacks()
    assert isinstance(decode_record(decoder, _record(), []), MemberBatch)
    assert isinstance(decode_record(decoder, _record(header=',"zz":NaN'), []), MemberBatch)
    assert _fallbacks() == before
    for value in (_record(header=',"key_column":NaN'), _record(members='[{"id":1},2]'), b"members"):
        assert isinstance(decode_record(decoder, value, []), Rejection)
    assert _fallbacks() == before + 3
