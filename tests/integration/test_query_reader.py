"""Keyset paging over SQLite and a real PostgreSQL."""

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from devtools.processes import wait_until
from shared.catalog import make_engine
from shared.domain.catalog_objects import SavedQuery
from shared.member_keys import row_key
from shared.querystore import JsonPage, MemberReader, Page, QueryError, QueryTimeout
from shared.querystore.demo_data import create_demo_members
from shared.querystore.keyed_reads import members_by_keys
from shared.querystore.paging import Window
from shared.querystore.reader import MemberPages

pytestmark = pytest.mark.integration


@pytest.fixture
def reader(database_url: str) -> Iterator[MemberReader]:
    engine = make_engine(database_url)
    create_demo_members(engine, 2_345)
    engine.dispose()
    reader = MemberReader.from_url(database_url)
    yield reader
    reader.close()


def test_pages_cover_every_member_once_in_key_order(reader: MemberReader):
    query = SavedQuery(name="all", sql="SELECT id, email, tier, joined_at FROM members")
    pages = list(reader.pages(query, page_size=500))
    ids = [m["id"] for page in pages for m in page.members]
    assert ids == list(range(1, 2_346))
    assert [len(p.members) for p in pages] == [500, 500, 500, 500, 345]
    assert pages[0].last_key == 500
    assert isinstance(pages[0].members[0]["joined_at"], str)


def test_paging_resumes_after_a_key(reader: MemberReader):
    query = SavedQuery(name="all", sql="SELECT id FROM members")
    ids = [m["id"] for page in reader.pages(query, page_size=1000, after=2_000) for m in page.members]
    assert ids == list(range(2_001, 2_346))


def test_a_filtering_query_pages_by_key_too(reader: MemberReader):
    query = SavedQuery(name="gold", sql="SELECT id, tier FROM members WHERE tier = 'gold'")
    members = [m for page in reader.pages(query, page_size=37) for m in page.members]
    assert members
    assert {m["tier"] for m in members} == {"gold"}
    assert [m["id"] for m in members] == sorted({m["id"] for m in members})


def test_a_broken_query_fails_with_its_name_and_the_reason(reader: MemberReader):
    query = SavedQuery(name="broken", sql="SELECT id FROM no_such_table")
    with pytest.raises(QueryError, match=r"query 'broken' failed: .*no_such_table"):
        list(reader.pages(query, page_size=10))


def test_a_query_without_its_key_column_is_refused(reader: MemberReader):
    query = SavedQuery(name="nokey", sql="SELECT id AS member_id, email FROM members", key_column="member_id")
    assert next(reader.pages(query, page_size=10)).members[0]["member_id"] == 1
    wrong = SavedQuery(name="wrong", sql="SELECT email FROM members", key_column="id")
    with pytest.raises(QueryError, match="wrong"):
        list(reader.pages(wrong, page_size=10))


def test_queries_run_read_only(reader: MemberReader):
    # The parser refuses a write hidden in a CTE at save, and the reader before it runs (a query saved by an
    # older release); the engine refuses writes on the reader's connections as well.
    sneaky_sql = "WITH gone AS (DELETE FROM members RETURNING id) SELECT id FROM gone"
    with pytest.raises(ValidationError, match="it changes data"):
        SavedQuery(name="sneaky", sql=sneaky_sql)
    with pytest.raises(QueryError, match="query 'sneaky' is refused: sql must only read members"):
        list(reader.pages(SavedQuery.model_construct(name="sneaky", sql=sneaky_sql), page_size=10))
    every = SavedQuery(name="all", sql="SELECT id FROM members")
    with reader._cursor(every) as cursor, pytest.raises(reader.engine.dialect.loaded_dbapi.Error):
        cursor.execute("DELETE FROM members")
    survivors = [m for p in reader.pages(every, page_size=5000) for m in p.members]
    assert len(survivors) == 2_345


def test_a_query_cannot_run_longer_than_the_operators_timeout(database_url: str):
    # Issue 12, finding 8: an editor's timeout_seconds (up to a day) used to replace the operator's.
    # Counting to 20 million takes seconds on either engine; the operator allows half a second.
    slow = SavedQuery(
        name="slow",
        sql="WITH RECURSIVE c(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM c WHERE id < 20000000) "
        "SELECT id FROM c WHERE id < 0",
        timeout_seconds=86_400,
    )
    reader = MemberReader.from_url(database_url, timeout_seconds=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(QueryTimeout, match=r"^query 'slow' timed out after 0\.5 s$"):
            list(reader.pages(slow, page_size=10))
    finally:
        reader.close()
    assert time.monotonic() - started < 3


def test_key_ranges_of_a_split_run_are_counted_cut_and_read_within_their_bounds(reader: MemberReader):
    # A filtering query: ranks are over its rows, not the table's.
    query = SavedQuery(name="gold", sql="SELECT id, tier FROM members WHERE tier = 'gold'")
    every = [m["id"] for page in reader.pages(query, page_size=10_000) for m in page.members]
    assert reader.count(query) == len(every)
    ranks = [len(every) // 3, 2 * len(every) // 3]
    lower, upper = reader.key_boundaries(query, ranks)
    assert [lower, upper] == [every[rank - 1] for rank in ranks]
    assert reader.key_boundaries(query, [len(every) + 5]) == []  # fewer rows than the rank: no key
    with reader.member_pages(query, page_size=7, after=lower, until=upper) as pages:
        written = [page for page in pages if isinstance(page, JsonPage)]
    assert [json.loads(m)["id"] for page in written for m in page.members] == every[ranks[0] : ranks[1]]
    with reader.member_pages(query, page_size=7, after=lower, until=upper, database_json=False) as pages:
        read = list(pages)
    assert [m["id"] for page in read if isinstance(page, Page) for m in page.members] == every[ranks[0] : ranks[1]]


def _written(reader: MemberReader, query: SavedQuery, *, after: Any = None, until: Any = None) -> list[dict[str, Any]]:
    """The members the reader writes as JSON (the extractor's path), in key order."""
    with reader.member_pages(query, page_size=2, after=after, until=until) as pages:
        read = list(pages)
    assert all(isinstance(page, JsonPage) for page in read)
    return [json.loads(m) for page in read if isinstance(page, JsonPage) for m in page.members]


def test_a_query_edited_or_a_store_column_added_since_the_last_run_is_read_as_it_is_now(
    reader: MemberReader, database_url: str
):
    """The statements built around a query are kept from run to run (a burst of small runs would build them once
    a run): an edited query, a column added to the store, a range or a whole run read after one another are each
    read as they are, never with another's statement."""
    first = SavedQuery(name="few", sql="SELECT id, email FROM members WHERE id <= 3")
    assert [sorted(m) for m in _written(reader, first)] == [["email", "id"]] * 3
    edited = SavedQuery(name="few", sql="SELECT id, tier FROM members WHERE id <= 2")
    assert [(m["id"], sorted(m)) for m in _written(reader, edited)] == [(1, ["id", "tier"]), (2, ["id", "tier"])]
    assert [m["id"] for m in _written(reader, first, after=1, until=2)] == [2]
    assert [m["id"] for m in _written(reader, first)] == [1, 2, 3]

    everything = SavedQuery(name="all", sql="SELECT * FROM members WHERE id <= 2")
    assert "note" not in _written(reader, everything)[0]
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE members ADD COLUMN note VARCHAR(20)"))
        connection.execute(text("UPDATE members SET note = 'added'"))
    engine.dispose()
    assert [m["note"] for m in _written(reader, everything)] == ["added", "added"]


def test_closing_the_pages_waits_for_the_page_being_read_so_its_connection_is_checked_back_in(database_url: str):
    """A run stopped while the next page is being read: once ``close()`` returns, that read's connection is
    back in the engine's pool, so disposing of the engine closes it (else the garbage collector would)."""
    engine = make_engine(database_url)
    reading, release = threading.Event(), threading.Event()

    def pages() -> Iterator[Page]:
        yield Page(("id",), [(1,)], 1)
        with engine.connect():  # the second page's read, under way when the run stops
            reading.set()
            release.wait(timeout=10)
        yield Page(("id",), [(2,)], 2)

    member_pages = MemberPages(pages(), json=False, reason=None)
    assert len(next(member_pages)) == 1
    assert reading.wait(timeout=10)

    # The read ends a moment after the run asks it to stop (as a query under way does).
    def end_the_read_once_asked_to_stop() -> None:
        member_pages._ahead._stopping.wait(10)
        release.set()

    threading.Thread(target=end_the_read_once_asked_to_stop).start()
    member_pages.close()
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    assert checked_out == 0


# --- PostgreSQL: two JSON pages read at once --------------------------------------------------------------------

#: Waits at every member after the first 500 until the test's session lets go of advisory lock 4711. Declared
#: immutable, so a read of the query's keys alone (where a page ends) never calls it; only the pages do.
GATE = """
CREATE FUNCTION gate(k integer) RETURNS integer IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
    IF k > 500 THEN PERFORM pg_advisory_xact_lock_shared(4711); END IF;
    RETURN k;
END $$
"""
GATED = SavedQuery(name="gated", sql="SELECT id, email, gate(id) AS gated FROM members")


@pytest.fixture
def gated_store(postgres_database_factory) -> Iterator[Any]:
    """A PostgreSQL store of 2,345 members with :data:`GATE`, and a connection (of an engine of its own) holding the
    gate shut."""
    url = postgres_database_factory()
    engine, keeper = make_engine(url), make_engine(url, isolation_level="AUTOCOMMIT")
    create_demo_members(engine, 2_345)
    with engine.begin() as connection:
        connection.execute(text(GATE))
    with keeper.connect() as gatekeeper:
        gatekeeper.execute(text("SELECT pg_advisory_lock(4711)"))
        yield engine, gatekeeper
    engine.dispose()
    keeper.dispose()


def _pages_at_the_gate(gatekeeper: Any) -> int:
    """The page queries (not reads of keys alone) waiting at the gate."""
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' AND query LIKE '%string_agg%'"
    return int(gatekeeper.execute(text(waiting)).scalar())


def test_on_postgresql_the_next_two_pages_are_read_at_once_and_come_in_key_order(gated_store):
    engine, gatekeeper = gated_store
    reader = MemberReader(engine, timeout_seconds=30)
    with reader.member_pages(GATED, page_size=500) as pages:
        first = next(pages)
        try:
            # Pages 2 and 3 both wait at the gate: two queries of the run's at once (before: one after the other).
            wait_until(lambda: _pages_at_the_gate(gatekeeper) == 2, timeout=5, what="two page queries at once")
        finally:
            gatekeeper.execute(text("SELECT pg_advisory_unlock(4711)"))
        read = [first, *pages]
    assert all(isinstance(page, JsonPage) for page in read)
    assert [len(page) for page in read] == [500, 500, 500, 500, 345]
    assert [json.loads(m)["id"] for page in read if isinstance(page, JsonPage) for m in page.members] == list(
        range(1, 2_346)
    )
    assert [page.last_key for page in read] == [500, 1_000, 1_500, 2_000, 2_345]


def test_pages_found_ahead_to_end_elsewhere_are_read_after_their_own_last_key(gated_store, monkeypatch):
    """Members added or removed between finding where a page ends and reading the page: the pages are the ones
    read one after the other (here the ends found ahead are off, as they would be then)."""
    engine, gatekeeper = gated_store
    gatekeeper.execute(text("SELECT pg_advisory_unlock(4711)"))
    found_ends = MemberReader._page_ends
    wrong = iter([lambda key: key - 1, lambda key: None, lambda key: key + 2])

    def ends_off(self: MemberReader, *args: Any) -> Any:
        find = found_ends(self, *args)
        return lambda after: next(wrong, lambda key: key)(find(after))

    monkeypatch.setattr(MemberReader, "_page_ends", ends_off)
    with MemberReader(engine, timeout_seconds=30).member_pages(GATED, page_size=500) as pages:
        read = list(pages)
    assert [len(page) for page in read] == [500, 500, 500, 500, 345]
    assert [json.loads(m)["id"] for page in read if isinstance(page, JsonPage) for m in page.members] == list(
        range(1, 2_346)
    )


def test_closing_the_pages_waits_for_the_pages_being_read_ahead(gated_store):
    """A run stopped while two pages are read ahead: once ``close()`` returns, both reads' connections are back in
    the engine's pool."""
    engine, gatekeeper = gated_store
    pages = MemberReader(engine, timeout_seconds=30).member_pages(GATED, page_size=500)

    def open_the_gate_once_asked_to_stop() -> None:  # the reads end a moment after the run asks to stop
        pages._ahead._stopping.wait(30)
        gatekeeper.execute(text("SELECT pg_advisory_unlock(4711)"))

    opener = threading.Thread(target=open_the_gate_once_asked_to_stop)
    opener.start()
    try:
        assert len(next(pages)) == 500
        wait_until(lambda: _pages_at_the_gate(gatekeeper) == 2, timeout=5, what="two page queries at once")
    finally:
        pages.close()
        opener.join(10)
    assert engine.pool.checkedout() == 0


def test_a_query_whose_keys_cost_as_much_as_its_members_is_read_one_page_at_a_time(gated_store, monkeypatch):
    """Finding where each page ends would cost the store about as much again as the pages: after a few pages the
    reader stops reading ahead; a query whose keys are cheap (a costly column only the pages compute) keeps on."""
    engine, _ = gated_store
    found_ends = MemberReader._page_ends
    ends_read: list[Any] = []

    def counted(self: MemberReader, *args: Any) -> Any:
        find = found_ends(self, *args)

        def end(after: Any) -> Any:
            ends_read.append(after)
            return find(after)

        return end

    monkeypatch.setattr(MemberReader, "_page_ends", counted)
    # 20 pages of 30 members: the reader judges from the 8th page on.
    costly = "SELECT id, email FROM members WHERE id <= 600 AND length(repeat(md5(email), 2000)) > 0"
    cheap = "SELECT id, length(repeat(md5(email), 20000)) AS weight FROM members WHERE id <= 600"
    for sql, fewest, most in ((costly, 0, 12), (cheap, 19, 21)):
        ends_read.clear()
        query = SavedQuery(name="q", sql=sql)
        with MemberReader(engine, timeout_seconds=30).member_pages(query, page_size=30) as pages:
            read = list(pages)
        assert [json.loads(m)["id"] for page in read if isinstance(page, JsonPage) for m in page.members] == list(
            range(1, 601)
        )
        assert fewest <= len(ends_read) <= most, sql


def _page_statements(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The starts of the JSON page statements the reader runs on the store (one a page read, kept or dropped)."""
    starts: list[Any] = []
    read = MemberReader._json_page

    def counted(self: MemberReader, query: Any, statement: Any, base: Any, last_key: Any, check_utf8: bool) -> Any:
        starts.append(last_key)
        return read(self, query, statement, base, last_key, check_utf8)

    monkeypatch.setattr(MemberReader, "_json_page", counted)
    return starts


def _row_page_statements(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The starts of the row page statements the reader runs on the store (a JSON page read again as rows too)."""
    starts: list[Any] = []
    read = MemberReader._row_page

    def counted(self: MemberReader, query: Any, statement: Any, base: Any, last_key: Any) -> Any:
        starts.append(last_key)
        return read(self, query, statement, base, last_key)

    monkeypatch.setattr(MemberReader, "_row_page", counted)
    return starts


def test_a_real_key_s_pages_read_ahead_are_each_read_once(postgres_database_factory, monkeypatch):
    # The session 47 review: the ends found ahead were read as text (49.9), the JSON page's last key in binary
    # format (49.900001525878906); never equal, every page read ahead was dropped and read again (9 for 5 pages).
    engine = make_engine(postgres_database_factory())
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE r (k real PRIMARY KEY, v text)"))
        connection.execute(text("INSERT INTO r SELECT (i / 10.0)::real, 'v' || i FROM generate_series(1, 2345) i"))
    starts = _page_statements(monkeypatch)
    query = SavedQuery(name="real", sql="SELECT k, v FROM r", key_column="k")
    try:
        with MemberReader(engine, timeout_seconds=30).member_pages(query, page_size=499) as pages:
            read = list(pages)
    finally:
        engine.dispose()
    members = [json.loads(m)["v"] for page in read if isinstance(page, JsonPage) for m in page.members]
    assert members == [f"v{i}" for i in range(1, 2_346)]
    assert len(read) == 5
    assert len(starts) == 5, f"page statements run on the store: {starts}"


def test_one_page_in_flight_reads_a_run_within_a_role_limited_to_two_connections(postgres_database_factory):
    # Two pages in flight and the read of the next page's start take 3 of the store's connections: a role limited to
    # 2 failed every run as an outage (the session 47 review). EXPORT_EXTRACTOR_PAGES_IN_FLIGHT=1 reads one at a time.
    url = postgres_database_factory()
    owner = make_engine(url)
    create_demo_members(owner, 5_000)
    role = "reader_" + url.rsplit("/", 1)[1][-12:]
    with owner.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2"))
        connection.execute(text(f"GRANT SELECT ON members TO {role}"))
    owner.dispose()
    engine = make_engine(url.replace("postgres@", f"{role}@"))
    query = SavedQuery(name="all", sql="SELECT id, email, first_name, last_name, tier, points FROM members")
    try:
        reader = MemberReader(engine, timeout_seconds=30, pages_in_flight=1)
        with reader.member_pages(query, page_size=500) as pages:
            last_keys = [page.last_key for page in pages]
    finally:
        engine.dispose()
    assert last_keys == list(range(500, 5_001, 500))


def test_pages_in_flight_is_one_or_more_and_one_on_sqlite(postgres_database_factory, tmp_path):
    postgresql = make_engine(postgres_database_factory())
    sqlite = make_engine(f"sqlite:///{tmp_path / 'members.db'}")
    try:
        with pytest.raises(ValueError, match="pages_in_flight must be 1 or more, not 0"):
            MemberReader(postgresql, pages_in_flight=0)
        assert MemberReader(postgresql).pages_in_flight == 2
        assert MemberReader(postgresql, pages_in_flight=3).pages_in_flight == 3
        assert MemberReader(sqlite, pages_in_flight=3).pages_in_flight == 1
    finally:
        postgresql.dispose()
        sqlite.dispose()


def _real_keys(database_url: str, count: int) -> Any:
    """A store of ``count`` members keyed by a ``real`` (1/10 to count/10: 49.9 is stored as 49.900001525878906 on
    PostgreSQL, where a float is a ``double precision``), each member's ``v`` its rank."""
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE r (k real PRIMARY KEY, v integer)"))
        connection.execute(text("INSERT INTO r VALUES (:k, :v)"), [{"k": i / 10, "v": i} for i in range(1, count + 1)])
    return engine


REAL = SavedQuery(name="real", sql="SELECT k, v FROM r", key_column="k")


def test_a_real_key_s_row_pages_hold_each_member_once_in_key_order(database_url: str):
    # Before: a row page's last key read as text (49.9) went back as a double precision, below the stored
    # 49.900001525878906, and the next page started with the member the page ended on (2,347 members for 2,345).
    engine = _real_keys(database_url, 2_345)
    reader = MemberReader(engine, timeout_seconds=30)
    try:
        pages = list(reader.pages(REAL, page_size=499))
        with reader.member_pages(REAL, page_size=499, database_json=False) as member_pages:
            rows = list(member_pages)
        # A run resumed from its checkpoint (the page's last key, kept as JSON), and the key-only pass.
        checkpoint = json.loads(json.dumps(pages[0].last_key))
        resumed = [m["v"] for page in reader.pages(REAL, page_size=499, after=checkpoint) for m in page.members]
        keys = [key for page in reader.key_pages(REAL, page_size=499) for key in page]
    finally:
        engine.dispose()
    assert [m["v"] for page in pages for m in page.members] == list(range(1, 2_346))
    assert [len(page) for page in pages] == [499, 499, 499, 499, 349]
    assert [m["v"] for page in rows if isinstance(page, Page) for m in page.members] == list(range(1, 2_346))
    assert resumed == list(range(500, 2_346))
    assert len(keys) == len(set(keys)) == 2_345


def test_a_real_key_s_ranges_split_at_their_keys_and_hold_each_member_once(database_url: str):
    # Before: each range's upper key (read as text: 49.9) left its own member to the next range, and the keys at the
    # ranks were found from the previous one's, off by one a range.
    engine = _real_keys(database_url, 1_500)
    reader = MemberReader(engine, timeout_seconds=30)
    try:
        lower, upper = reader.key_boundaries(REAL, [499, 998])
        ranges = [(None, lower), (lower, upper), (upper, None)]
        read = []
        for after, until in ranges:
            with reader.member_pages(REAL, page_size=97, after=after, until=until, database_json=False) as pages:
                read.append([m["v"] for page in pages if isinstance(page, Page) for m in page.members])
    finally:
        engine.dispose()
    assert [lower, upper] == [49.9, 99.8]
    assert read == [list(range(1, 500)), list(range(500, 999)), list(range(999, 1_501))]


def test_a_real_watermark_s_highest_member_is_in_the_window_up_to_it(database_url: str):
    # Incremental runs read the members changed up to the highest watermark: read as text (49.9) and bound as a double
    # precision, it left out the member that holds it, sent a run late.
    engine = _real_keys(database_url, 499)
    reader = MemberReader(engine, timeout_seconds=30)
    query = SavedQuery(name="since", sql="SELECT v, k FROM r", key_column="v")
    try:
        until = reader.high_watermark(query, "k", since=None)
        window = Window("k", 49.8, until)
        members = [m["v"] for page in reader.pages(query, page_size=10, window=window) for m in page.members]
        counted = reader.count(query, window=window)
    finally:
        engine.dispose()
    assert until == 49.9
    assert members == [499]
    assert counted == 1


KEY_TYPES = {
    "integer": "i * 3",
    "bigint": "i::bigint * 10000000000",
    "text": "'k' || lpad(i::text, 4, '0')",
    "uuid": "md5(i::text)::uuid",
    "date": "date '2020-01-01' + i",
    "real": "(i / 10.0)::real",
    "double precision": "i * 0.1::float8",
    "numeric": "i / 4.0",
    "numeric of 21 digits": "1 + i * 0.00000000000000000001",
    "timestamp": "timestamp '2020-01-01 00:00:00.123456' + i * interval '1.5 second'",
    "timestamptz": "timestamptz '2020-01-01 00:00:00.5+02' + i * interval '1 hour'",
}


def _keyed_table(url: str, key: str, count: int) -> tuple[Any, list[int]]:
    """Table ``t`` of ``count`` members, ``k`` the expression ``key`` of ``i`` (its primary key), ``v`` the ``i``;
    its engine and the ``v`` in key order."""
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE t AS SELECT {key} AS k, i AS v FROM generate_series(1, {count}) i"))
        connection.execute(text("ALTER TABLE t ADD PRIMARY KEY (k)"))
        ordered = [row[0] for row in connection.execute(text("SELECT v FROM t ORDER BY k"))]
    return engine, ordered


def _values_of(page: Page | JsonPage, column: str) -> list[Any]:
    """A column's values in a page, as JSON."""
    if isinstance(page, JsonPage):
        return [json.loads(member)[column] for member in page.members]
    return [member[column] for member in page.members]


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_on_postgresql_every_key_type_s_pages_hold_each_member_once_in_key_order(
    postgres_database_factory, monkeypatch, key_type
):
    """Each page's last key goes back as the key column's own type, as the next page's start, from a checkpoint
    (JSON), as a range's upper key and as a retried member's key. Each page is read once, as JSON: a uuid key's JSON
    page query failed (PostgreSQL has no ``max(uuid)``) and every page was read again as rows, two queries a page."""
    engine, ordered = _keyed_table(postgres_database_factory(), KEY_TYPES[key_type], 150)
    query = SavedQuery(name="t", sql="SELECT k, v FROM t", key_column="k")
    reader = MemberReader(engine, timeout_seconds=30)
    json_statements, row_statements = _page_statements(monkeypatch), _row_page_statements(monkeypatch)
    try:
        read = {}
        for database_json in (True, False):
            with reader.member_pages(query, page_size=7, database_json=database_json) as pages:
                read[database_json] = list(pages)
            if database_json:
                statements = (len(json_statements), len(row_statements))
        rows = [m["v"] for page in read[False] if isinstance(page, Page) for m in page.members]
        written = [v for page in read[True] for v in _values_of(page, "v")]
        checkpoint = json.loads(json.dumps(read[False][3].last_key))
        resumed = [m["v"] for page in reader.pages(query, page_size=7, after=checkpoint) for m in page.members]
        (upper,) = reader.key_boundaries(query, [75])
        with reader.member_pages(query, page_size=7, until=json.loads(json.dumps(upper))) as pages:
            first_range = [v for page in pages for v in _values_of(page, "v")]
        retried = members_by_keys(reader, query, [row_key(r[0]) for page in read[False][:2] for r in page.rows])
    finally:
        engine.dispose()
    assert rows == ordered
    assert written == ordered
    assert [isinstance(page, JsonPage) for page in read[True]] == [True] * 22
    assert statements == (22, 0), "JSON page statements and row page statements run for 22 pages"
    assert resumed == ordered[28:]
    assert first_range == ordered[:75]
    assert retried is not None
    if key_type == "numeric of 21 digits":  # a record names every member by its nearest double, 1.0: all are found
        assert [row[1] for row in retried.rows] == ordered
    else:
        assert [row[1] for row in retried.rows] == ordered[:14]


@pytest.mark.parametrize("key", ["50.0", "49.9", "0.30000000000000004", "1e-07"])
def test_a_member_whose_key_is_a_float_is_found_by_its_key(database_url: str, key: str):
    """A refused member named by its key's JSON value is read again by it (a retry): a ``real`` 50 is ``50.0`` in
    the batch's JSON and ``50`` as PostgreSQL's text, which the key used to be compared as."""
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE f (k real PRIMARY KEY, v text)"))
        connection.execute(text("INSERT INTO f VALUES (:k, :v)"), [{"k": float(key), "v": key}, {"k": 7.25, "v": "x"}])
    reader = MemberReader(engine, timeout_seconds=30)
    query = SavedQuery(name="f", sql="SELECT k, v FROM f", key_column="k")
    try:
        # As the member's batch names it (PostgreSQL's real 0.30000000000000004 is 0.3).
        (name,) = [row_key(row[0]) for page in reader.pages(query, page_size=10) for row in page.rows if row[1] == key]
        found = members_by_keys(reader, query, [name])
    finally:
        engine.dispose()
    assert found is not None
    assert [row[1] for row in found.rows] == [key]


def _bounded(pages: Iterator[Page | JsonPage], most: int) -> list[Page | JsonPage]:
    """At most ``most`` pages (a run whose next page starts where the last began again never ends)."""
    read: list[Page | JsonPage] = []
    for page in pages:
        read.append(page)
        if len(read) == most:
            break
    return read


UNNAMED_KEY = r"query 't' returned a member whose key 'k' is NaN or an infinity, which its record cannot name"


def test_on_postgresql_a_numeric_infinity_or_nan_value_is_written_as_null(postgres_database_factory):
    """Numeric NaN and infinities (PostgreSQL 14+) as values: null on both paths (as the JSON pages write them, and
    orjson a float's). Before, the run failed at the page ending on an infinity (``int(Decimal('Infinity'))``)."""
    engine = make_engine(postgres_database_factory())
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (k numeric PRIMARY KEY, v numeric, i integer)"))
        connection.execute(text("INSERT INTO t SELECT i, i / 4.0, i FROM generate_series(1, 9) i"))
        connection.execute(text("INSERT INTO t VALUES (10, 'Infinity', 10), (11, 'NaN', 11), (12, '-Infinity', 12)"))
    query = SavedQuery(name="t", sql="SELECT k, v, i FROM t", key_column="k")
    reader = MemberReader(engine, timeout_seconds=30)
    try:
        read = {}
        for database_json in (True, False):
            with reader.member_pages(query, page_size=3, database_json=database_json) as pages:
                read[database_json] = _bounded(pages, 20)
    finally:
        engine.dispose()
    for database_json in (True, False):
        members = {
            i: v
            for i, v in zip(
                *([x for page in read[database_json] for x in _values_of(page, c)] for c in ("i", "v")), strict=True
            )
        }
        assert list(members) == list(range(1, 13))
        assert [members[i] for i in (10, 11, 12)] == [None] * 3
        assert members[2] == 0.5


# SQLite has no NaN real (it stores NULL, refused as a NULL key): its infinities only.
UNNAMED_CASES = [("NaN", "postgresql")] + [
    (key, d) for key in ("Infinity", "-Infinity") for d in ("sqlite", "postgresql")
]


@pytest.mark.parametrize(("key", "database_url"), UNNAMED_CASES, indirect=["database_url"])
def test_a_numeric_or_float_key_that_is_nan_or_an_infinity_fails_the_reads_naming_the_key(database_url: str, key: str):
    """A record writes a NaN or infinite key as null (JSON has neither): NaN, Infinity and -Infinity would be one
    member's name, a refused one is not found again (it was resolved as gone). Such a key fails the run as a NULL key
    does, wherever it sorts (a negative infinity first, the others last), on every path. Before, the pages read them,
    each member's record keyed null (PostgreSQL; SQLite has no NaN: a real's infinities)."""
    postgres = database_url.startswith("postgresql")
    engine = make_engine(database_url)
    column = "numeric" if postgres else "real"
    value = f"'{key}'" if postgres else {"Infinity": "9e999", "-Infinity": "-9e999"}[key]
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE t (k {column} PRIMARY KEY, v integer)"))
        connection.execute(text("INSERT INTO t VALUES (1, 1), (2, 2), (3, 3), (4, 4)"))
        connection.execute(text(f"INSERT INTO t VALUES ({value}, 5)"))
    query = SavedQuery(name="t", sql="SELECT k, v FROM t", key_column="k")
    reader = MemberReader(engine, timeout_seconds=30)
    try:
        for database_json in (True, False):
            refused = pytest.raises(QueryError, match=UNNAMED_KEY)
            with refused, reader.member_pages(query, page_size=2, database_json=database_json) as pages:
                _bounded(pages, 10)
        with pytest.raises(QueryError, match=UNNAMED_KEY):
            list(reader.key_pages(query, page_size=2))
        with pytest.raises(QueryError, match=UNNAMED_KEY):
            reader.key_boundaries(query, [1, 5])
    finally:
        engine.dispose()


#: Key types PostgreSQL has no ``max()`` for (bytea and boolean pages are read as rows, jsonb ones as JSON: the last key
#: its text), members: how many the table holds.
ROW_KEY_TYPES = {
    "bytea": ("decode(lpad(to_hex(i * 37 % 256), 2, '0') || lpad(to_hex(i), 4, '0'), 'hex')", 60),
    "boolean": ("i % 2 = 0", 2),
    "jsonb": ("jsonb_build_object('a', i % 3, 'b', i)", 60),
}


@pytest.mark.parametrize("key_type", ROW_KEY_TYPES)
def test_on_postgresql_a_bytea_boolean_or_jsonb_key_s_pages_hold_each_member_once(postgres_database_factory, key_type):
    """A bytea key's last key read back as its hex text went to PostgreSQL as escaped text (``'01ab'`` is the bytes
    ``0``, ``1``, ``a``, ``b``): pages started over and a run never ended; a jsonb key went as Python's text of a dict,
    which PostgreSQL refused. A refused member keyed by bytes, a boolean or a jsonb object is found by its name (hex,
    ``True``, Python's text of the object: before, a jsonb one was not)."""
    expression, count = ROW_KEY_TYPES[key_type]
    engine, ordered = _keyed_table(postgres_database_factory(), expression, count)
    query = SavedQuery(name="t", sql="SELECT k, v FROM t", key_column="k")
    reader = MemberReader(engine, timeout_seconds=30)
    size = 7 if count > 2 else 1
    try:
        read = {}
        for database_json in (True, False):
            with reader.member_pages(query, page_size=size, database_json=database_json) as pages:
                read[database_json] = _bounded(pages, 2 * count)
        checkpoint = json.loads(json.dumps(read[False][0].last_key))
        with reader.member_pages(query, page_size=size, after=checkpoint) as pages:
            resumed = [v for page in _bounded(pages, 2 * count) for v in _values_of(page, "v")]
        first = [row_key(row[0]) for row in read[False][0].rows]
        found = members_by_keys(reader, query, first)
    finally:
        engine.dispose()
    for database_json in (True, False):
        assert [v for page in read[database_json] for v in _values_of(page, "v")] == ordered
    assert resumed == ordered[size:]
    assert found is not None
    assert [row[1] for row in found.rows] == ordered[:size]


#: jsonb keys of one type of JSON value each, and of all (members: 60).
JSONB_KEYS = {
    "number": "to_jsonb(i)",
    "fraction of 20 digits": "to_jsonb(i / 7.0)",
    "string": "to_jsonb('s' || i)",
    "number-like string": "to_jsonb(i::text)",
    "mixed": "CASE i % 4 WHEN 0 THEN to_jsonb(i) WHEN 1 THEN to_jsonb('s' || i) WHEN 2 THEN jsonb_build_array(i)"
    " ELSE to_jsonb(i % 3 = 0) || jsonb_build_object('i', i) END",
}


@pytest.mark.parametrize("key_type", JSONB_KEYS)
def test_on_postgresql_a_jsonb_scalar_key_s_pages_hold_each_member_once_and_its_members_are_found_by_name(
    postgres_database_factory, key_type
):
    """A jsonb number or string as a key: before, the second page failed (a number's last key went as an integer,
    ``operator does not exist: jsonb > smallint``; a string's as text, ``invalid input syntax for type json``), and a
    fraction's pages repeated the member each ended on (its last key went as its double). A refused member is found
    by its name (Python's text of its JSON value: ``5`` for the number and the string)."""
    engine, ordered = _keyed_table(postgres_database_factory(), JSONB_KEYS[key_type], 60)
    query = SavedQuery(name="t", sql="SELECT k, v FROM t", key_column="k")
    reader = MemberReader(engine, timeout_seconds=30)
    try:
        read = {}
        for database_json, size in itertools.product((True, False), (1, 7)):
            with reader.member_pages(query, page_size=size, database_json=database_json) as pages:
                read[database_json, size] = _bounded(pages, 120)
        checkpoint = json.loads(json.dumps(read[True, 7][2].last_key))
        with reader.member_pages(query, page_size=7, after=checkpoint) as pages:
            resumed = [v for page in _bounded(pages, 120) for v in _values_of(page, "v")]
        names = [row_key(row[0]) for page in read[False, 7] for row in page.rows]
        found = members_by_keys(reader, query, names[5:40])
    finally:
        engine.dispose()
    for (database_json, size), pages_read in read.items():
        assert [v for page in pages_read for v in _values_of(page, "v")] == ordered, (database_json, size)
    assert resumed == ordered[21:]
    assert found is not None
    assert [row[1] for row in found.rows] == ordered[5:40]


def test_on_sqlite_a_run_keyed_by_blobs_fails_naming_its_key_column(tmp_path):
    """SQLite sorts every blob after every text: a blob key read back as text started each page over, and the run
    never ended. It fails at its first page instead, saying why."""
    engine = make_engine(f"sqlite:///{tmp_path / 'blobs.sqlite'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (k BLOB PRIMARY KEY, v INTEGER)"))
        connection.execute(text("INSERT INTO t VALUES (x'01', 1), (x'02', 2), (x'03', 3)"))
    query = SavedQuery(name="blobs", sql="SELECT k, v FROM t", key_column="k")
    reader = MemberReader(engine, timeout_seconds=30)
    try:
        for database_json in (True, False):
            refused = pytest.raises(QueryError, match=r"query 'blobs': its key column 'k' holds blobs")
            with refused, reader.member_pages(query, page_size=2, database_json=database_json) as pages:
                _bounded(pages, 10)
    finally:
        engine.dispose()
