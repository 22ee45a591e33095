"""A saved query's text cannot escape the paging wrapper (issue 12, finding 10), on SQLite and PostgreSQL.

The review saved ``…WHERE ? > 0) AS q --``: the placeholder took the wrapper's LIMIT value and the comment
hid the rest of the wrapper, so a dry run of one request read every member. Today such text is refused at
save; a query saved by an older release is refused by the reader before it runs.
"""

from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import make_url

from shared.catalog import make_engine
from shared.domain.catalog_objects import SavedQuery
from shared.querystore import MemberReader, QueryError
from shared.querystore.demo_data import create_demo_members

pytestmark = pytest.mark.integration

MEMBERS = 50


def _reader(url: str) -> MemberReader:
    engine = make_engine(url)
    create_demo_members(engine, MEMBERS)
    engine.dispose()
    return MemberReader.from_url(url)


@pytest.fixture
def reader(database_url: str) -> Iterator[MemberReader]:
    reader = _reader(database_url)
    yield reader
    reader.close()


def _saved_by_an_older_release(sql: str) -> SavedQuery:
    """The query as the catalog may hold it from before this release: never checked by today's rules."""
    return SavedQuery.model_construct(name="evil", sql=sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, email FROM members WHERE ? > 0) AS q --",  # the review's: SQLite binds the LIMIT to '?'
        "SELECT id, email FROM members WHERE $1 > 0) AS q --",  # PostgreSQL's numbered form (and SQLite's)
    ],
)
def test_the_reviews_injection_cannot_take_over_the_page_limit(reader: MemberReader, sql: str):
    with pytest.raises(QueryError, match=r"^query 'evil' is refused: sql must not contain comments .* placeholders"):
        next(reader.pages(_saved_by_an_older_release(sql), page_size=1))
    with pytest.raises(QueryError, match="is refused"):
        reader.columns(_saved_by_an_older_release(sql))


def test_a_query_that_orders_and_limits_itself_is_still_paged_by_the_wrapper(reader: MemberReader):
    query = SavedQuery(name="last-ten", sql="SELECT id, email FROM members ORDER BY id DESC LIMIT 10")
    pages = [[m["id"] for m in page.members] for page in reader.pages(query, page_size=3)]
    assert pages == [[41, 42, 43], [44, 45, 46], [47, 48, 49], [50]]


def test_postgresql_reads_strings_as_the_check_did(postgres_database_factory: Callable[[], str]):
    # With standard_conforming_strings off, PostgreSQL reads a backslash in a string as an escape: text
    # the parser saw inside a string would be SQL to the server. The reader turns it on for its queries.
    url = postgres_database_factory()
    database = make_url(url).database
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False), autocommit=True) as db:
        db.execute(f'ALTER DATABASE "{database}" SET standard_conforming_strings = off')
    reader = _reader(url)
    try:
        query = SavedQuery(name="backslash", sql="SELECT id, '\\' AS backslash FROM members WHERE id = 1")
        [page] = reader.pages(query, page_size=10)
    finally:
        reader.close()
    assert page.members == [{"id": 1, "backslash": "\\"}]
