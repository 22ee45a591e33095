"""The guard against mass removals (``sync.max_removed``) on the real catalog and member store (SQLite and
PostgreSQL): the real extractor, its producer recording what it would publish.

A change run that would remove more of the partner's members than the definition allows fails before it sends
anything, the snapshot unchanged, with a reason naming the counts and the setting; the same run allowed once
sends the removals. Members that leave while a run runs fail it before its removals. Removals not sent are not
guarded. The setting is checked when saved, and the allowance travels with the run request (admin API).
"""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from services.extractor.extraction import Extractor
from shared.catalog import CatalogStores, ChangeSnapshotFollower, SqlChangeSnapshots, SqlRunsStore, make_engine
from shared.catalog.change_tables import ChangeMemberRow
from shared.cli import api_commands
from shared.cli.parser import build_parser
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.events import (
    RUN_EVENT_ADAPTER,
    BatchOutcome,
    ChangeCounts,
    ChangeKind,
    ExtractionCompleted,
    MemberBatch,
    RunFailed,
    RunRequested,
)
from shared.kafka import InFlight, Outgoing
from shared.querystore import MemberReader
from shared.topics import Topics
from tests.admin_app import in_process_api, seed

pytestmark = pytest.mark.integration

MEMBERS = 100


@dataclass
class Guarded:
    """A member store of 100 members, a catalog, and an extractor whose producer records."""

    catalog: CatalogStores
    store: sa.Engine
    extractor: Extractor
    topics: Topics
    records: list[Outgoing] = field(default_factory=list)

    def run(
        self, definition: str, *, allow: bool = False, parameters: dict[str, Any] | None = None
    ) -> tuple[list[MemberBatch], Any]:
        """One run to its end: the member batches it published and its last event; every batch confirmed
        delivered (as the notifier's fold does), so the snapshot moves."""
        self.records.clear()
        request = RunRequested(definition=definition, allow_mass_removal=allow, parameters=parameters or {})
        returned = self.extractor.handle(request)
        records = [*self.records, *returned]
        batches = [MemberBatch.model_validate_json(r.value) for r in records if r.topic != self.topics.run_events]
        events = [RUN_EVENT_ADAPTER.validate_json(r.value) for r in records if r.topic == self.topics.run_events]
        outcomes = [
            BatchOutcome(
                run_id=b.run_id,
                definition=b.definition,
                batch_index=b.batch_index,
                delivered=len(b.members),
                failed=0,
                member_keys=[str(m["id"]) for m in b.members],
                change=b.change,
            )
            for b in batches
        ]
        SqlRunsStore(self.catalog.database, followers=[ChangeSnapshotFollower()]).fold_run_events([*events, *outcomes])
        return batches, events[-1]

    def execute(self, statement: str) -> None:
        with self.store.begin() as connection:
            connection.execute(sa.text(statement))


@pytest.fixture
def guarded(catalog: CatalogStores, database_url: str) -> Iterator[Guarded]:
    """Members 1..100 in the catalog's own database; ``guarded`` deletes removals (at most 50% by default),
    ``loose`` sends none (so it is not guarded)."""
    store = make_engine(database_url)
    with store.begin() as connection:
        connection.execute(sa.text("CREATE TABLE members (id INTEGER PRIMARY KEY, tier TEXT)"))
        connection.execute(
            sa.text("INSERT INTO members VALUES (:id, 'silver')"), [{"id": i} for i in range(1, MEMBERS + 1)]
        )
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, tier FROM members"))
    catalog.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=10))
    catalog.definitions.apply(HttpTemplate(name="t-delete", query="q", profile="p", method="DELETE", batch_size=10))
    changes: dict[str, Any] = {"mode": "changes", "removed": "t-delete"}
    catalog.definitions.apply(ExportDefinition(name="guarded", query="q", template="t", sync=changes))
    catalog.definitions.apply(ExportDefinition(name="loose", query="q", template="t", sync={"mode": "changes"}))
    topics = Topics(f"g{uuid.uuid4().hex[:6]}.")
    reader = MemberReader.from_url(database_url)
    recorded: list[Outgoing] = []

    def send(records: list[Outgoing]) -> InFlight:
        recorded.extend(records)
        return InFlight([], timeout_seconds=1.0)  # nothing to wait for

    extractor = Extractor(
        definitions=catalog.definitions,
        runs=catalog.runs,
        extraction=catalog.extraction,
        reader=reader,
        topics=topics,
        send=send,
        page_size=20,
        snapshots=SqlChangeSnapshots(catalog.database),
    )
    yield Guarded(catalog, store, extractor, topics, recorded)
    reader.close()
    store.dispose()


def _counts(last: Any) -> ChangeCounts:
    """The change counts of a run that completed its extraction."""
    assert isinstance(last, ExtractionCompleted), last
    assert last.changes is not None
    return last.changes


def _staged_rows(catalog: CatalogStores) -> int:
    """Snapshot rows a run staged and no outcome confirmed yet."""
    with catalog.database.engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).where(ChangeMemberRow.awaiting == sa.true())) or 0)


def test_a_run_removing_most_members_sends_nothing_until_allowed_once(guarded: Guarded):
    batches, last = guarded.run("guarded")
    assert (_counts(last).added, sum(len(b.members) for b in batches)) == (MEMBERS, MEMBERS)

    # The query now selects 10 of the 100 members (a staging table half loaded, a wrong filter), and 3 new ones.
    guarded.execute("DELETE FROM members WHERE id > 10")
    guarded.execute("INSERT INTO members VALUES (501, 'gold'), (502, 'gold'), (503, 'gold')")
    batches, refused = guarded.run("guarded")
    assert batches == [], "nothing sent: not the 3 added members either"
    assert isinstance(refused, RunFailed)
    assert refused.reason.startswith(
        "mass removal refused: the run would remove 90 of the 100 members the partner has (90.0%), over "
        "sync.max_removed 50% (the default), at most 50: nothing was sent and the snapshot is unchanged."
    )
    assert "exportctl run guarded --allow-mass-removal" in refused.reason
    assert _staged_rows(guarded.catalog) == 0

    # Allowed once: the same removals go (the refused run changed nothing: all 90 are still the partner's).
    batches, last = guarded.run("guarded", allow=True)
    counts = _counts(last)
    assert (counts.added, counts.removed, counts.unchanged) == (3, 90, 10)
    removed = sorted(m["id"] for b in batches if b.change is ChangeKind.REMOVED for m in b.members)
    assert removed == list(range(11, MEMBERS + 1))
    # The run records say which run was allowed the mass removal.
    records = [guarded.catalog.runs.get_run(event.run_id) for event in (refused, last)]
    assert [r.mass_removal_allowed for r in records if r is not None] == [False, True]
    # The next run is not allowed anything: the 13 members are the partner's now, and 7 leaving is over 50%.
    guarded.execute("DELETE FROM members WHERE id <= 7")
    assert isinstance(guarded.run("guarded")[1], RunFailed)


def test_a_limit_set_on_the_definition_and_removals_not_sent(guarded: Guarded):
    guarded.run("guarded")
    guarded.run("loose")
    guarded.execute("DELETE FROM members WHERE id > 85")  # 15 of 100 leave
    guarded.catalog.definitions.apply(
        ExportDefinition(
            name="guarded", query="q", template="t", sync={"mode": "changes", "removed": "t-delete", "max_removed": 14}
        )
    )
    batches, refused = guarded.run("guarded")
    assert (batches, type(refused)) == ([], RunFailed)
    assert "remove 15 of the 100 members the partner has (15.0%), over sync.max_removed 14, at most 14" in (
        refused.reason
    )
    guarded.catalog.definitions.apply(
        ExportDefinition(
            name="guarded",
            query="q",
            template="t",
            sync={"mode": "changes", "removed": "t-delete", "max_removed": "15%"},
        )
    )
    batches, last = guarded.run("guarded")
    assert _counts(last).removed == 15
    # Removals not sent remove nothing at the partner: not guarded (the snapshot forgets them).
    guarded.execute("DELETE FROM members WHERE id > 5")
    batches, last = guarded.run("loose")
    assert (_counts(last).removed, batches) == (95, [])


def test_members_leaving_while_the_run_runs_fail_it_before_its_removals(
    guarded: Guarded, monkeypatch: pytest.MonkeyPatch
):
    guarded.run("guarded")
    guarded.execute("INSERT INTO members VALUES (501, 'gold'), (502, 'gold')")
    keys = MemberReader.key_pages

    def emptied_after_the_pass(reader: MemberReader, *args: Any, **kwargs: Any) -> Iterator[list[Any]]:
        pages = list(keys(reader, *args, **kwargs))  # every member still there: the pass lets the run go
        guarded.execute("DELETE FROM members WHERE id <= 80")  # then a reload empties the table under the run
        yield from pages

    monkeypatch.setattr(MemberReader, "key_pages", emptied_after_the_pass)
    batches, refused = guarded.run("guarded")
    assert isinstance(refused, RunFailed)
    assert sorted(m["id"] for b in batches for m in b.members) == [501, 502], "only the added members went"
    assert "would remove 80 of the 100 members" in refused.reason
    assert "its removals were not sent (its 2 added and changed members were) and stay in the snapshot" in (
        refused.reason
    )
    monkeypatch.undo()
    batches, last = guarded.run("guarded", allow=True)
    assert _counts(last).removed == 80, "the removals stayed in the snapshot"


def test_a_run_with_parameters_is_counted_from_every_key_page_and_its_way_through_is_the_same_run(
    guarded: Guarded, monkeypatch: pytest.MonkeyPatch
):
    # A query whose parameter says which tier to leave out; a quarter of the members are gold.
    guarded.execute("UPDATE members SET tier = 'gold' WHERE id % 4 = 0")
    guarded.catalog.definitions.apply(
        SavedQuery(
            name="by-tier",
            sql="SELECT id, tier FROM members WHERE tier <> :excluded",
            parameters={"excluded": {"default": "none"}},
        )
    )
    guarded.catalog.definitions.apply(HttpTemplate(name="t-tier", query="by-tier", profile="p", batch_size=10))
    guarded.catalog.definitions.apply(
        HttpTemplate(name="t-tier-delete", query="by-tier", profile="p", method="DELETE", batch_size=10)
    )
    sync = {"mode": "changes", "removed": "t-tier-delete"}
    guarded.catalog.definitions.apply(ExportDefinition(name="tiers", query="by-tier", template="t-tier", sync=sync))
    # The guard's pass reads 7 keys a page (20,000 in production): its later pages bind the last key read.
    monkeypatch.setattr("services.extractor.change_extraction.KEY_PAGE", 7)
    pages_read: list[int] = []
    keys = MemberReader.key_pages

    def counted(reader: MemberReader, *args: Any, **kwargs: Any) -> Iterator[list[Any]]:
        for page in keys(reader, *args, **kwargs):
            pages_read.append(len(page))
            yield page

    monkeypatch.setattr(MemberReader, "key_pages", counted)
    assert _counts(guarded.run("tiers")[1]).added == MEMBERS

    # Leaving the gold members out removes 25 of 100: under the bound.
    batches, last = guarded.run("tiers", parameters={"excluded": "gold"})
    assert _counts(last).removed == 25
    assert sorted(m["id"] for b in batches if b.change is ChangeKind.REMOVED for m in b.members) == list(
        range(4, MEMBERS + 1, 4)
    )
    # Read until the bound could no longer be reached: 50 of the partner's members seen, in 8 pages of 7 keys.
    assert pages_read == [7] * 8

    # Leaving the silver ones out would remove all 75 the partner has now: refused (the gold ones not added).
    pages_read.clear()
    batches, refused = guarded.run("tiers", parameters={"excluded": "silver"})
    assert (batches, type(refused)) == ([], RunFailed)
    assert "the run would remove 75 of the 75 members the partner has (100.0%)" in refused.reason
    assert sum(pages_read) == 25, "a refusal counts every key the query selects"
    # The way through is this run (its parameter), not one with the definition's values: run as it says.
    command = refused.reason.split("run it once with '")[1].split("' (API: ")[0]
    argv = shlex.split(command)
    assert argv[:2] == ["exportctl", "run"]
    args = build_parser().parse_args(argv[1:])
    assert (args.definition, args.param, args.allow_mass_removal) == ("tiers", ["excluded=silver"], True)
    body = json.loads(refused.reason.split("(API: ")[1].rsplit("), or raise", 1)[0])
    assert body == {"parameters": {"excluded": "silver"}, "allow_mass_removal": True}
    batches, last = guarded.run("tiers", parameters=body["parameters"], allow=body["allow_mass_removal"])
    assert (_counts(last).removed, _counts(last).added) == (75, 25), "the silver ones go, the gold ones come back"


def test_the_setting_is_checked_when_saved_and_the_allowance_travels_with_the_run_request(tmp_path: Path):
    with in_process_api(tmp_path) as api, api.client() as client:
        seed(client)
        definition = client.get("/api/v1/export-definitions/nightly").json()
        for wrong in ("10", "ten", "150%", -3):
            body = {**definition, "sync": {"mode": "changes", "max_removed": wrong}}
            answer = client.put("/api/v1/export-definitions/nightly", json=body)
            assert answer.status_code == 422, answer.text
            assert "sync.max_removed" in str(answer.json()), answer.text
        full = client.put(
            "/api/v1/export-definitions/nightly", json={**definition, "sync": {"mode": "full", "max_removed": "5%"}}
        )
        assert full.status_code == 422
        assert "field 'sync.max_removed': the bound on removals applies to sync mode 'changes' only" in full.text
        saved = client.put(
            "/api/v1/export-definitions/nightly", json={**definition, "sync": {"mode": "changes", "max_removed": "5%"}}
        )
        assert saved.status_code == 200, saved.text
        assert saved.json()["sync"]["max_removed"] == "5%"

        key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
        allowed = client.post("/api/v1/export-definitions/nightly/runs", json={"allow_mass_removal": True}, headers=key)
        assert allowed.status_code == 202, allowed.text
        assert [r.allow_mass_removal for r in api.publisher.run_requests] == [True]
        # The same key without the allowance is another request: refused, not the allowed run.
        again = client.post("/api/v1/export-definitions/nightly/runs", json={}, headers=key)
        assert again.status_code == 422, again.text
        plain = client.post("/api/v1/export-definitions/nightly/runs", json={})
        assert plain.status_code == 202
        assert [r.allow_mass_removal for r in api.publisher.run_requests] == [True, False]
        views = [client.get(f"/api/v1/runs/{answer.json()['run_id']}").json() for answer in (allowed, plain)]
        assert [view["mass_removal_allowed"] for view in views] == [True, False], "the run records say so at once"
        # A strict boolean: "true", 1 or null are refused naming the field, and nothing is run.
        for loose in ("true", 1, None):
            refused = client.post("/api/v1/export-definitions/nightly/runs", json={"allow_mass_removal": loose})
            assert refused.status_code == 422, refused.text
            assert [e["field"] for e in refused.json()["errors"]] == ["body.allow_mass_removal"]
        assert len(api.publisher.run_requests) == 2

        # exportctl in API mode: its flag reaches the run request (and without it, no field is sent).
        class _Api:
            def call(self, method: str, path: str, **kwargs: Any) -> Any:
                answer = client.request(method, f"/api/v1{path}", json=kwargs.get("json_body"))
                assert answer.status_code < 300, answer.text
                return answer.json()

        for argv in (["run", "nightly", "--allow-mass-removal"], ["run", "nightly"]):
            assert api_commands.cmd_run(_Api(), build_parser().parse_args(argv)) == 0  # type: ignore[arg-type]
        assert [r.allow_mass_removal for r in api.publisher.run_requests[2:]] == [True, False]
