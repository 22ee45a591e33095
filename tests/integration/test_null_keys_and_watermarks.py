"""A member whose key or watermark is NULL, a run resumed after its definition switched mode, and a split run whose
planning times out: on SQLite and a real PostgreSQL, the extractor's records captured (no Kafka)."""

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from services.extractor.extraction import Extractor
from shared.catalog import CatalogStores, make_engine
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import RUN_EVENT_ADAPTER, ExtractionCompleted, MemberBatch, RunFailed, RunRequested
from shared.kafka import InFlight, Outgoing
from shared.querystore import JsonPage, MemberReader, Page, QueryError
from shared.querystore.paging import Window
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration

NULL_KEY = r"query 'q' returned a member whose key 'id' is NULL"
#: Pages read at most: a run that pages forever is stopped there (and fails the test) rather than hanging.
PAGES_AT_MOST = 50


def _store(url: str, *rows: str) -> str:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE m (id integer, name text, updated_at text)"))
        for row in rows:
            connection.execute(text(f"INSERT INTO m VALUES {row}"))
    engine.dispose()
    return url


@pytest.fixture
def reader(database_url: str) -> Iterator[MemberReader]:
    rows = ["(1, 'a', '2026-01-01')", "(2, 'b', NULL)", "(3, 'c', '2026-01-02')", "(4, 'd', '2026-01-02')"]
    _store(database_url, *rows, "(5, 'e', '2026-01-03')", "(NULL, 'n1', '2026-01-01')", "(NULL, 'n2', NULL)")
    reader = MemberReader.from_url(database_url)
    yield reader
    reader.close()


QUERY = SavedQuery(name="q", sql="SELECT id, name, updated_at FROM m", key_column="id")


@pytest.mark.parametrize("database_json", [True, False])
def test_a_member_whose_key_is_null_fails_the_pages_naming_the_query_and_its_key(
    reader: MemberReader, database_json: bool
):
    # Before: SQLite read its first page (the NULLs) again and again; PostgreSQL left both members out.
    pages = reader.member_pages(QUERY, page_size=2, database_json=database_json)
    with pages, pytest.raises(QueryError, match=NULL_KEY):
        list(itertools.islice(pages, PAGES_AT_MOST))
    with pytest.raises(QueryError, match=NULL_KEY):  # a dry run's first page (all of it: NULLs first or last)
        next(reader.pages(QUERY, page_size=100))


def test_a_member_whose_key_is_null_fails_the_key_reads(reader: MemberReader):
    with pytest.raises(QueryError, match=NULL_KEY):
        list(itertools.islice(reader.key_pages(QUERY, page_size=2), PAGES_AT_MOST))
    with pytest.raises(QueryError, match=NULL_KEY):  # a split run's boundaries (NULLs first or last)
        reader.key_boundaries(QUERY, [1, 7])


def _ids(reader: MemberReader, window: Window) -> list[Any]:
    query = SavedQuery(name="q", sql="SELECT id, name, updated_at FROM m WHERE id IS NOT NULL", key_column="id")
    with reader.member_pages(query, page_size=2, window=window) as pages:
        return [member_id for page in itertools.islice(pages, PAGES_AT_MOST) for member_id in _page_ids(page)]


def _page_ids(page: Page | JsonPage) -> list[Any]:
    if isinstance(page, JsonPage):
        return [orjson.loads(m)["id"] for m in page.members]
    return [m["id"] for m in page.members]


def test_an_incremental_first_run_takes_members_with_no_watermark_and_a_later_run_does_not(reader: MemberReader):
    first, later = Window("updated_at", None, "2026-01-02"), Window("updated_at", "2026-01-01", "2026-01-03")
    assert _ids(reader, first) == [1, 2, 3, 4]
    assert reader.count(QUERY, window=first) == 6  # the NULL keys too: a split run counts them
    assert _ids(reader, later) == [3, 4, 5]


# --- the extractor ------------------------------------------------------------------------------------------------


class _TooManyBatches(Exception):
    pass


#: The member readers of a test's extractors, closed after it.
_READERS: list[MemberReader] = []


@pytest.fixture
def stores(tmp_path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    catalog = migrated_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(QUERY)
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=1))
    yield catalog
    catalog.close()
    while _READERS:
        _READERS.pop().close()


def _extractor(
    stores: CatalogStores, url: str, sent: list[Outgoing], *, crash_at_batch: bool = False, **options: Any
) -> Extractor:
    topics = CommonSettings().topics

    def send(out: list[Outgoing]) -> InFlight:
        if crash_at_batch and any(o.topic.startswith(topics.member_batches) for o in out):
            raise _TooManyBatches("the extractor stopped at its first batch")
        sent.extend(out)
        if sum(o.topic.startswith(topics.member_batches) for o in sent) > PAGES_AT_MOST:
            raise _TooManyBatches(f"more than {PAGES_AT_MOST} batch records")
        return InFlight([], timeout_seconds=0.0)

    _READERS.append(MemberReader.from_url(url, timeout_seconds=options.pop("timeout_seconds", 300.0)))
    return Extractor(
        definitions=stores.definitions,
        runs=stores.runs,
        extraction=stores.extraction,
        reader=_READERS[-1],
        topics=topics,
        send=send,
        page_size=2,
        record_members=1,
        **options,
    )


def _outcome(sent: list[Outgoing], out: list[Outgoing]) -> tuple[list[Any], list[Any]]:
    """The ids of the members sent, and the run's outcome events (completion, failure)."""
    topics = CommonSettings().topics
    ids = [
        m.get("id")
        for o in sent
        if o.topic.startswith(topics.member_batches)
        for m in MemberBatch.model_validate_json(o.value).members
    ]
    events = [RUN_EVENT_ADAPTER.validate_json(o.value) for o in sent + out if o.topic == topics.run_events]
    return ids, [e for e in events if isinstance(e, ExtractionCompleted | RunFailed)]


def test_a_run_over_a_member_whose_key_is_null_fails_naming_it(database_url: str, stores: CatalogStores):
    url = _store(database_url, "(1, 'a', NULL)", "(NULL, 'n1', NULL)", "(2, 'b', NULL)", "(3, 'c', NULL)")
    stores.definitions.apply(ExportDefinition(name="d", query="q", template="t"))
    sent: list[Outgoing] = []
    # Before: SQLite published its NULL member without end; PostgreSQL completed without it.
    out = _extractor(stores, url, sent).handle(RunRequested(definition="d"))
    ids, outcome = _outcome(sent, out)
    assert ids == []
    assert [type(e) for e in outcome] == [RunFailed]
    assert outcome[0].reason == "query 'q' returned a member whose key 'id' is NULL"


def test_an_incremental_first_run_exports_members_with_no_watermark(database_url: str, stores: CatalogStores):
    url = _store(database_url, "(1, 'a', '2026-01-01')", "(2, 'b', NULL)", "(3, 'c', '2026-01-02')")
    stores.definitions.apply(
        ExportDefinition(name="d", query="q", template="t", incremental={"watermark_column": "updated_at"})
    )
    sent: list[Outgoing] = []
    ids, outcome = _outcome(sent, _extractor(stores, url, sent).handle(RunRequested(definition="d")))
    assert sorted(ids) == [1, 2, 3]  # before: [1, 3]
    assert [e.members for e in outcome if isinstance(e, ExtractionCompleted)] == [3]


def test_a_resumed_run_keeps_the_full_or_incremental_mode_it_started_in(database_url: str, stores: CatalogStores):
    url = _store(database_url, "(1, 'a', '2026-01-01')", "(2, 'b', '2026-01-02')", "(3, 'c', '2026-01-03')")
    incremental = ExportDefinition(name="d", query="q", template="t", incremental={"watermark_column": "updated_at"})
    stores.definitions.apply(incremental)
    first = RunRequested(definition="d")
    sent: list[Outgoing] = []
    assert sorted(_outcome(sent, _extractor(stores, url, sent).handle(first))[0]) == [1, 2, 3]
    assert stores.extraction.advance_watermark(first.run_id)

    stores.definitions.apply(ExportDefinition(name="d", query="q", template="t"))  # full
    full = RunRequested(definition="d")
    with pytest.raises(_TooManyBatches):
        _extractor(stores, url, [], crash_at_batch=True).handle(full)
    stores.definitions.apply(incremental)  # switched back while the full run is under way
    sent = []
    ids, outcome = _outcome(sent, _extractor(stores, url, sent).handle(full))
    assert sorted(ids) == [1, 2, 3]  # before: [] (resumed as an incremental run with nothing new)
    assert [e.members for e in outcome if isinstance(e, ExtractionCompleted)] == [3]


def test_a_run_whose_split_planning_times_out_is_extracted_unsplit(postgres_database_factory, stores: CatalogStores):
    url = postgres_database_factory()
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE big (id integer PRIMARY KEY, name text)"))
        connection.execute(text("INSERT INTO big SELECT g, 'n' || g FROM generate_series(1, 3000) g"))
    engine.dispose()
    # Each row a millisecond: a page of 2 is quick by its key's index, counting the 3,000 takes 3 s.
    sql = "SELECT id, name FROM big WHERE pg_sleep(0.001) IS NOT NULL"
    stores.definitions.apply(SavedQuery(name="slow", sql=sql, key_column="id"))
    stores.definitions.apply(HttpTemplate(name="ts", query="slow", profile="p", batch_size=1))
    stores.definitions.apply(ExportDefinition(name="d", query="slow", template="ts"))
    sent: list[Outgoing] = []
    extractor = _extractor(
        stores,
        url,
        sent,
        timeout_seconds=1.0,
        range_members=100,
        run_request_partitions=lambda: 3,
        other_replicas=lambda: True,
    )
    with pytest.raises(_TooManyBatches):  # before: the run failed (query 'slow' timed out) with no batch sent
        extractor.handle(RunRequested(definition="d"))
    ids, outcome = _outcome(sent, [])
    assert len(ids) > PAGES_AT_MOST
    assert ids == list(range(1, len(ids) + 1))
    assert outcome == []
