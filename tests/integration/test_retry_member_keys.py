"""Retries of members whose key is not an integer (a NUMERIC(12,2) key), on SQLite and PostgreSQL: the
dispatcher names a refused member by its key's JSON value (``1042`` for ``1042.00``), and the extractor finds
it again by that name (read by key, compared as the column's type), sends it, and resolves only keys the query
no longer returns as gone; the claim is read and published a chunk of keys at a time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from services.dispatcher.member_outcomes import member_keys
from services.extractor.retry_members import RetryJob, RetryScope, send_retries
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.member_retries import RetryState
from shared.events import BatchOutcome, MemberBatch, Priority, RefusedMember
from shared.kafka import Outgoing
from shared.member_batches import BatchEncoder
from shared.querystore import JsonPage, MemberReader, keyed_reads
from shared.querystore.keyed_reads import members_by_keys
from shared.querystore.reader import _DriverStatement
from shared.topics import Topics
from tests.member_state_helpers import member_state_definition

pytestmark = pytest.mark.integration

QUERY = SavedQuery(name="priced", sql="SELECT code, label FROM priced", key_column="code")
DEFINITION = ExportDefinition(name="export-priced", query="priced", template="t-priced")
TEMPLATE = HttpTemplate(name="t-priced", query="priced", profile="p", batch_size=100)


@pytest.fixture
def reader(database_url: str) -> Iterator[MemberReader]:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE priced (code NUMERIC(12, 2) PRIMARY KEY, label VARCHAR(20))"))
        connection.execute(
            text("INSERT INTO priced VALUES (10.50, 'a'), (1042.00, 'b'), (2000.25, 'c'), (3000.00, 'd')")
        )
    engine.dispose()
    found = MemberReader.from_url(database_url)
    yield found
    found.close()


def _refused(catalog: CatalogStores, keys: list[str]) -> str:
    """An earlier run refused ``keys`` (named as the dispatcher names them) with a 503; the definition's id."""
    definition_id = member_state_definition(catalog, DEFINITION.name)
    outcome = BatchOutcome(
        run_id=uuid.uuid4(),
        definition=DEFINITION.name,
        batch_index=0,
        delivered=0,
        failed=len(keys),
        member_keys=keys,
        refused=[RefusedMember(key=key, status=503, reason="HTTP 503", attempts=1) for key in keys],
    )
    with catalog.database.transaction() as session:
        catalog.retries.follow(session, [outcome])
    return definition_id


def _job(run_id: uuid.UUID, *, full: bool) -> RetryJob:
    return RetryJob(run_id, DEFINITION, QUERY, TEMPLATE, {}, RetryScope(full=full), 5, 100, 1_000_000)


def test_decimal_keys_are_found_again_sent_in_chunks_and_only_missing_ones_are_gone(
    catalog: CatalogStores, reader: MemberReader, monkeypatch: pytest.MonkeyPatch
):
    # As the dispatcher names them from the batch's JSON: 1042.00 is 1042, 10.50 is 10.5.
    definition_id = _refused(catalog, ["10.5", "1042", "2000.25", "77.7"])
    run_id = uuid.uuid4()
    assert catalog.retries.claim_retries(run_id, DEFINITION.name) == 4
    chunks: list[list[str]] = []
    claimed_keys = catalog.retries.claimed_keys

    def in_twos(run: uuid.UUID) -> Iterator[list[str]]:
        for chunk in claimed_keys(run, chunk=2):
            chunks.append(chunk)
            yield chunk

    monkeypatch.setattr(catalog.retries, "claimed_keys", in_twos)
    published: list[list[Outgoing]] = []
    retried = send_retries(
        _job(run_id, full=False), reader=reader, store=catalog.retries, topics=Topics(), publish=published.append
    )
    assert chunks == [["10.5", "1042"], ["2000.25", "77.7"]]
    assert len(published) == 2  # each chunk encoded and published before the next is read
    batches = [MemberBatch.model_validate_json(o.value) for out in published for o in out]
    assert [b.batch_index for b in batches] == [5, 6]
    assert all(b.retry for b in batches)
    assert [(m["code"], m["label"]) for b in batches for m in b.members] == [(10.5, "a"), (1042, "b"), (2000.25, "c")]
    assert (retried.members, retried.batches, retried.retries) == (3, 2, 3)
    states = catalog.retries.states(definition_id, ["10.5", "1042", "2000.25", "77.7"])
    assert states["77.7"].state is RetryState.GONE  # the only key the query no longer returns
    assert {states[k].state for k in ("10.5", "1042", "2000.25")} == {RetryState.PENDING}


def test_a_full_run_counts_the_decimal_keys_its_pages_carried_and_sends_none_by_key(
    catalog: CatalogStores, reader: MemberReader
):
    definition_id = _refused(catalog, ["1042", "3000", "5"])
    run_id = uuid.uuid4()
    catalog.retries.claim_retries(run_id, DEFINITION.name)
    published: list[list[Outgoing]] = []
    retried = send_retries(
        _job(run_id, full=True), reader=reader, store=catalog.retries, topics=Topics(), publish=published.append
    )
    assert published == []
    assert (retried.members, retried.batches, retried.retries) == (0, 0, 2)
    assert catalog.retries.states(definition_id, ["5"])["5"].state is RetryState.GONE
    assert catalog.retries.states(definition_id, ["1042"])["1042"].state is RetryState.PENDING


#: Keys with more digits than a float holds on PostgreSQL (``numeric``); floats on SQLite (``real``).
FRACTION_KEYS = ["i / 7.0", "i * 1e30 + i / 7.0", "1 + i * 0.00000000000000000001"]
FRACTIONS = SavedQuery(name="fractions", sql="SELECT code, label FROM fractions", key_column="code")


def _named_as_the_dispatcher_names_them(reader: MemberReader, query: SavedQuery) -> list[str]:
    """Every member's key as the run's records name it (the dispatcher's outcome names, decoded from them)."""
    encoder = BatchEncoder(
        run_id=uuid.uuid4(),
        definition=DEFINITION.name,
        template=TEMPLATE.name,
        priority=Priority.NORMAL,
        batch_size=100,
        max_record_bytes=1_000_000,
        key_column=query.key_column,
    )
    names: list[str] = []
    with reader.member_pages(query, page_size=25) as pages:
        for page in pages:
            if isinstance(page, JsonPage):
                batches = encoder.encode_json_page(page.members, 0)
            else:
                batches = encoder.encode_page(page.columns, page.rows, 0)
            names += [key for b in batches for key in member_keys(MemberBatch.model_validate_json(b.value)) or []]
    return names


# A SQLite real is a float: the 60 keys of `1 + i * 1e-20` are one there, so that case is PostgreSQL's alone.
FRACTION_CASES = [
    (expression, dialect)
    for expression in FRACTION_KEYS
    for dialect in ("sqlite", "postgresql")
    if not (expression.startswith("1 +") and dialect == "sqlite")
]


@pytest.mark.parametrize(("expression", "database_url"), FRACTION_CASES, indirect=["database_url"])
def test_every_refused_member_whose_key_a_float_rounds_is_sent_again(
    catalog: CatalogStores, reader: MemberReader, database_url: str, expression: str
):
    """A record names a fractional numeric by its nearest double (``0.14285714285714285`` for 1/7 with 20 digits,
    ``1.0`` for 1.00000000000000000001): each refused member is still found and sent again by the next run. Before,
    the name was compared with the numeric exactly: 10 of 60 members keyed ``i / 7.0`` were found on PostgreSQL, none
    of the others (resolved as gone)."""
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE fractions AS WITH RECURSIVE s(i) AS "
                "(SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 60) "
                f"SELECT {expression} AS code, 'm' || i AS label FROM s"
            )
        )
    engine.dispose()
    _every_fraction_refused_is_sent_again(catalog, reader)


def _every_fraction_refused_is_sent_again(catalog: CatalogStores, reader: MemberReader) -> None:
    """The 60 members of ``fractions``, refused as the dispatcher names them, are all sent again, none gone."""
    names = _named_as_the_dispatcher_names_them(reader, FRACTIONS)
    assert len(names) == 60
    definition_id = _refused(catalog, names)
    run_id = uuid.uuid4()
    catalog.retries.claim_retries(run_id, DEFINITION.name)
    published: list[list[Outgoing]] = []
    job = RetryJob(run_id, DEFINITION, FRACTIONS, TEMPLATE, {}, RetryScope(full=False), 0, 100, 1_000_000)
    retried = send_retries(job, reader=reader, store=catalog.retries, topics=Topics(), publish=published.append)
    sent = [m["label"] for out in published for o in out for m in MemberBatch.model_validate_json(o.value).members]
    assert sorted(sent) == sorted(f"m{i}" for i in range(1, 61))
    assert retried.members == 60
    states = catalog.retries.states(definition_id, sorted(set(names)))
    assert {state.state for state in states.values()} == {RetryState.PENDING}  # none resolved as gone


#: jsonb keys (PostgreSQL): numbers, fractions of 20 digits, strings (some spelling numbers), arrays and objects.
JSONB_KEY = (
    "CASE i % 5 WHEN 0 THEN to_jsonb(i) WHEN 1 THEN to_jsonb(i / 7.0) WHEN 2 THEN to_jsonb(i::text)"
    " WHEN 3 THEN jsonb_build_array(i, 's') ELSE jsonb_build_object('a', i % 3, 'b', i) END"
)

#: jsonb objects and arrays holding fractions of 20 digits (a float rounds them), nested, several in one key.
NESTED_FRACTIONS_KEY = (
    "CASE i % 4 WHEN 0 THEN jsonb_build_array(i / 7.0, 's') WHEN 1 THEN jsonb_build_object('a', i % 3, 'b', i / 7.0)"
    " WHEN 2 THEN jsonb_build_object('x', jsonb_build_array(1 + i * 1e-20, i / 3.0), 'y', 'z')"
    " ELSE jsonb_build_array(jsonb_build_object('f', i / 7.0), -i / 11.0) END"
)


@pytest.mark.parametrize("expression", [JSONB_KEY, NESTED_FRACTIONS_KEY], ids=["jsonb", "nested-fractions"])
def test_every_refused_member_whose_key_is_jsonb_is_sent_again(
    postgres_database_factory, migrated_catalog, expression: str
):
    """A record names a jsonb-keyed member by Python's text of its key's JSON value (``{'a': 1, 'b': 4}``, ``5`` for
    the number and the string): each refused member is found again. Before, the pages failed at the second (a number's
    last key bound as an integer), and no object-keyed member was found again (0 of 10 in a probe: resolved as gone).
    A fraction inside an object or array is named by its double: compared as that double before session 51, 5 of the
    60 members keyed by ``NESTED_FRACTIONS_KEY`` were sent again."""
    url = postgres_database_factory()
    catalog = migrated_catalog(url)  # a copy of the migrated template: made before the member table
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE TABLE fractions AS SELECT {expression} AS code, 'm' || i AS label"
                " FROM generate_series(1, 60) i"
            )
        )
    engine.dispose()
    reader = MemberReader.from_url(url)
    try:
        _every_fraction_refused_is_sent_again(catalog, reader)
    finally:
        reader.close()
        catalog.close()


def test_members_read_again_by_name_compile_no_statement_and_each_is_found(
    reader: MemberReader, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Refused members read by name (a NUMERIC(12,2) key: ``BETWEEN``s on PostgreSQL, an ``IN`` on SQLite, where it
    is a float) compile their statements once for the reader: a chunk's 500 ``BETWEEN``s cost some 20 ms of CPU to
    build and compile, more than reading their rows (before: at every read). Chunks of any size find each member."""
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE many (code NUMERIC(12, 2) PRIMARY KEY, label VARCHAR(20))"))
        connection.execute(
            text("INSERT INTO many VALUES (:code, :label)"),
            [{"code": f"{i * 0.03:.2f}", "label": f"m{i}"} for i in range(1, 1_201)],
        )
    engine.dispose()
    query = SavedQuery(name="many", sql="SELECT code, label FROM many", key_column="code")
    names = _named_as_the_dispatcher_names_them(reader, query)
    position = {name: i for i, name in enumerate(names)}
    assert len(position) == 1_200
    compiled = [0]
    statement = _DriverStatement

    def counted(*args: Any, **kwargs: Any) -> Any:
        compiled[0] += 1
        return statement(*args, **kwargs)

    monkeypatch.setattr(keyed_reads, "_DriverStatement", counted)
    for attempt in ("first", "again"):
        before = compiled[0]
        for start, count in [(0, 1), (10, 3), (20, 500), (100, 501), (0, 1_200), (600, 7), (900, 300)]:
            chosen = names[start : start + count] if attempt == "first" else names[-start - count :][:count]
            found = members_by_keys(reader, query, chosen)
            assert found is not None
            wanted = [f"m{position[name] + 1}" for name in sorted(chosen, key=position.__getitem__)]
            assert [row[1] for row in found.rows] == wanted, (attempt, start, count)
        if attempt == "again":
            assert compiled[0] == before  # before: 2 a read (its first key's, its chunks')
