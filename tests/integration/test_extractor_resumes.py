"""Runs resumed on SQLite and a real PostgreSQL, the extractor's records captured (no Kafka): after a crash with pages
published but not checkpointed and the template's ``batch_size`` edited since (a change run's per-kind templates too,
or a kind's template named or set to ``false``), the records keep the identities (``run:batch_index``, the
Idempotency-Key's stem) and members they had; after a store outage of a run another replica took over, the run is
forgotten here."""

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from services.extractor.extraction import Extractor
from shared.application.actors import Actor, Role
from shared.application.errors import Conflict
from shared.application.objects import delete_object
from shared.catalog import CatalogStores, ChangeSnapshotFollower, SqlChangeSnapshots, SqlRunsStore, make_engine
from shared.cli.__main__ import main as exportctl
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate, SavedQuery
from shared.domain.runs import RunStatus
from shared.events import (
    RUN_EVENT_ADAPTER,
    BatchOutcome,
    ExtractionCompleted,
    MemberBatch,
    RangeRequested,
    RunFailed,
    RunRequested,
)
from shared.kafka import InFlight, Outgoing
from shared.outages import DependencyUnavailable
from shared.querystore import MemberPages, MemberReader, StoreUnavailable
from shared.settings import CommonSettings
from tests.admin_app import in_process_api

pytestmark = pytest.mark.integration

MEMBERS = 40
TOPICS = CommonSettings().topics


class _Crash(Exception):
    pass


@pytest.fixture
def stores(tmp_path, migrated_catalog: Callable[[str], CatalogStores]) -> Iterator[CatalogStores]:
    catalog = migrated_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, name FROM m", key_column="id"))
    catalog.definitions.apply(ExportDefinition(name="d", query="q", template="t"))
    yield catalog
    catalog.close()


def _table(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE m (id integer PRIMARY KEY, name text)"))
        for i in range(1, MEMBERS + 1):
            connection.execute(text(f"INSERT INTO m VALUES ({i}, 'n{i}')"))
    engine.dispose()


def _extractor(stores: CatalogStores, reader: MemberReader, send: Callable[[list[Outgoing]], InFlight], **options):
    return Extractor(
        definitions=stores.definitions,
        runs=stores.runs,
        extraction=stores.extraction,
        reader=reader,
        topics=TOPICS,
        send=send,
        page_size=8,
        record_members=1,
        **options,
    )


def _extract(
    stores: CatalogStores,
    url: str,
    request: RunRequested | RangeRequested,
    *,
    crash_after_sends: int | None = None,
    crash_before_publishing: bool = False,
    delivered: bool = False,
    failures: list[str] | None = None,
    templates: list[str] | None = None,
    **options: Any,
):
    """The run's member records (identity → member ids) and completion events; with ``crash_after_sends``, the
    extractor stops right after its ``crash_after_sends``-th send of records (published, not checkpointed); with
    ``crash_before_publishing``, that send stops before its records are published; with
    ``delivered``, every batch is folded as delivered (a change run's snapshot moves); ``failures`` takes the
    reasons of the run's failure events, ``templates`` the templates its records name."""
    sent: list[Outgoing] = []
    sends = 0

    def send(out: list[Outgoing]) -> InFlight:
        nonlocal sends
        sends += any(o.topic.startswith(TOPICS.member_batches) for o in out)
        crash = crash_after_sends is not None and sends >= crash_after_sends
        if crash and crash_before_publishing:
            raise _Crash
        sent.extend(out)
        if crash:
            raise _Crash
        return InFlight([], timeout_seconds=0.0)

    reader = MemberReader.from_url(url)
    extractor = _extractor(stores, reader, send, **options)
    try:
        try:
            out = extractor.handle(request)
        except _Crash:
            out = []
    finally:
        reader.close()
    records, outcomes = {}, []
    for o in sent:
        if o.topic.startswith(TOPICS.member_batches):
            batch = MemberBatch.model_validate_json(o.value)
            records[batch.identity] = [m["id"] for m in batch.members]
            if templates is not None:
                templates.append(batch.template)
            keys = [str(m["id"]) for m in batch.members]
            outcomes.append(
                BatchOutcome(
                    run_id=batch.run_id,
                    definition=batch.definition,
                    batch_index=batch.batch_index,
                    delivered=len(keys),
                    failed=0,
                    member_keys=keys,
                    change=batch.change,
                )
            )
    events = [RUN_EVENT_ADAPTER.validate_json(o.value) for o in sent + out if o.topic == TOPICS.run_events]
    if failures is not None:
        failures.extend(e.reason for e in events if isinstance(e, RunFailed))
    if delivered:
        SqlRunsStore(stores.database, followers=[ChangeSnapshotFollower()]).fold_run_events([*events, *outcomes])
    return records, [e for e in events if isinstance(e, ExtractionCompleted)]


@pytest.mark.parametrize(("before", "after"), [(2, 4), (4, 2)])
def test_a_run_resumed_after_its_batch_size_was_edited_keeps_its_records_identities(
    database_url: str, stores: CatalogStores, before: int, after: int
):
    _table(database_url)
    stores.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=before))
    request = RunRequested(definition="d")
    # Two pages published; the second's send is where it stops: the first checkpointed at most.
    crashed, _ = _extract(stores, database_url, request, crash_after_sends=2)
    stores.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=after))
    resumed, completed = _extract(stores, database_url, request)
    assert _taken_once(crashed, resumed) == list(range(1, MEMBERS + 1))
    assert [(e.members, e.batches) for e in completed] == [(MEMBERS, MEMBERS // before)]


def _change_definition(stores: CatalogStores, added: int, removed: int) -> None:
    """Definition ``c`` in change mode: added members sent with ``t-add`` (``added`` a request), removed ones with
    ``t-del`` (``removed`` a request), changed ones with the definition's ``t``; any share may be removed."""
    stores.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=8))
    stores.definitions.apply(HttpTemplate(name="t-add", query="q", profile="p", batch_size=added))
    stores.definitions.apply(HttpTemplate(name="t-del", query="q", profile="p", method="DELETE", batch_size=removed))
    sync = {"mode": "changes", "added": "t-add", "removed": "t-del", "max_removed": "100%"}
    stores.definitions.apply(ExportDefinition(name="c", query="q", template="t", sync=sync))


def _taken_once(crashed: dict[str, list[int]], resumed: dict[str, list[int]]) -> list[int]:
    """The members a partner honouring the Idempotency-Key takes (each identity's first record), once no identity
    sent again holds other members."""
    again = {identity: ids for identity, ids in resumed.items() if identity in crashed and crashed[identity] != ids}
    assert again == {}, "a record sent again under one identity holds other members"
    return sorted(i for ids in {**resumed, **crashed}.values() for i in ids)


@pytest.mark.parametrize(("before", "after"), [(2, 4), (4, 2)])
def test_a_change_run_resumed_after_its_added_template_batch_size_was_edited_keeps_its_records_identities(
    database_url: str, stores: CatalogStores, before: int, after: int
):
    _table(database_url)
    _change_definition(stores, before, 2)
    snapshots = SqlChangeSnapshots(stores.database)
    request = RunRequested(definition="c")  # the first run: every member added
    crashed, _ = _extract(stores, database_url, request, crash_after_sends=2, snapshots=snapshots)
    _change_definition(stores, after, 2)
    resumed, completed = _extract(stores, database_url, request, snapshots=snapshots)
    assert _taken_once(crashed, resumed) == list(range(1, MEMBERS + 1))
    assert [(e.members, e.batches, e.changes and e.changes.added) for e in completed] == [
        (MEMBERS, MEMBERS // before, MEMBERS)
    ]


@pytest.mark.parametrize(("before", "after"), [(2, 4), (4, 2)])
def test_a_change_run_resumed_in_its_removals_after_their_template_batch_size_was_edited_keeps_its_identities(
    database_url: str, stores: CatalogStores, before: int, after: int
):
    _table(database_url)
    _change_definition(stores, 8, before)
    snapshots = SqlChangeSnapshots(stores.database)
    _extract(stores, database_url, RunRequested(definition="c"), delivered=True, snapshots=snapshots)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM m"))
    engine.dispose()
    request = RunRequested(definition="c")  # every member removed: its first send is its removals'
    crashed, _ = _extract(stores, database_url, request, crash_after_sends=1, snapshots=snapshots)
    assert len(crashed) == MEMBERS // before
    _change_definition(stores, 8, after)
    resumed, completed = _extract(stores, database_url, request, snapshots=snapshots)
    assert _taken_once(crashed, resumed) == list(range(1, MEMBERS + 1))
    assert [(e.members, e.batches, e.changes and e.changes.removed) for e in completed] == [
        (MEMBERS, MEMBERS // before, MEMBERS)
    ]


@pytest.fixture
def same_stores(catalog: CatalogStores) -> CatalogStores:
    """The catalog in the member store's own database (SQLite or PostgreSQL): the run's checkpoint kept there."""
    catalog.definitions.apply(ConnectionProfile(name="p", base_url="http://127.0.0.1:9"))
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, name FROM m", key_column="id"))
    for name in ("t", "t-add", "t-chg", "t-del"):
        catalog.definitions.apply(HttpTemplate(name=name, query="q", profile="p", batch_size=2))
    return catalog


def _kinds_definition(stores: CatalogStores, changed: bool, removed: bool) -> None:
    """Definition ``c`` in change mode: added members sent with ``t-add``, changed ones with ``t-chg`` when
    ``changed`` (else not sent), removed ones with ``t-del`` when ``removed``; two members a request."""
    sync = {"mode": "changes", "added": "t-add", "changed": changed and "t-chg", "removed": removed and "t-del"}
    stores.definitions.apply(ExportDefinition(name="c", query="q", template="t", sync=sync | {"max_removed": "100%"}))


@pytest.mark.parametrize(
    ("kind", "sent_at_start", "recorded_before_templates"),
    [
        ("changed", True, False),
        ("changed", False, False),
        ("removed", True, False),
        ("removed", False, False),
        ("changed", False, True),  # the kinds it has sizes for: one named since is not sent (set to false: is not)
    ],
)
def test_a_change_run_resumed_after_a_kind_was_named_or_set_to_false_sends_the_kinds_of_its_first_start(
    database_url: str, same_stores: CatalogStores, kind: str, sent_at_start: bool, recorded_before_templates: bool
):
    stores, snapshots = same_stores, SqlChangeSnapshots(same_stores.database)
    _table(database_url)
    start = {"changed": True, "removed": True} | {kind: sent_at_start}
    _kinds_definition(stores, **start)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM m WHERE id % 2 = 0"))
    _extract(stores, database_url, RunRequested(definition="c"), delivered=True, snapshots=snapshots)  # odd ids
    with engine.begin() as connection:  # every page: added (even ids), changed (1, 5, ...), unchanged
        connection.execute(text("DELETE FROM m WHERE id % 4 = 3"))  # removed: 3, 7, ..., 39
        connection.execute(text("UPDATE m SET name = 'x' WHERE id % 4 = 1"))
        for i in range(2, MEMBERS + 1, 2):
            connection.execute(text(f"INSERT INTO m VALUES ({i}, 'n{i}')"))
    engine.dispose()
    request = RunRequested(definition="c")
    crashed, _ = _extract(stores, database_url, request, crash_after_sends=2, snapshots=snapshots)
    if recorded_before_templates:  # a run recorded before the kinds' templates were (session 51): sizes only
        checkpoint = stores.extraction.claim_extraction(request.run_id, "c")
        assert checkpoint.sync is not None
        assert checkpoint.sync.kind_templates is not None
        stores.extraction.save_checkpoint(replace(checkpoint, sync=replace(checkpoint.sync, kind_templates=None)))
    _kinds_definition(stores, **start | {kind: not sent_at_start})  # edited before the resume
    resumed, completed = _extract(stores, database_url, request, snapshots=snapshots)
    kinds = {
        "added": list(range(2, MEMBERS + 1, 2)),
        "changed": list(range(1, MEMBERS + 1, 4)),
        "removed": list(range(3, MEMBERS + 1, 4)),
    }
    expected = sorted(i for name, ids in kinds.items() if name == "added" or start[name] for i in ids)
    # Before: the pages read again went out with other batches under the crashed records' identities, or the kind
    # was sent for part of the run (set to false: the rest taken by the snapshot as delivered), or not at all.
    assert _taken_once(crashed, resumed) == expected
    assert [(e.members, e.changes and (e.changes.added, e.changes.changed, e.changes.removed)) for e in completed] == [
        (len(expected), (20, 10, 10))
    ]


_CHANGES = {"mode": "changes", "added": "t-add", "changed": "t-chg", "removed": "t-del"}


@pytest.mark.parametrize(
    ("started", "edited", "gone", "leaving", "refused"),
    [
        # 10 of 40 removed, allowed at its start; lowered to 4 (10%) at the resume. Before: refused after its last page.
        (_CHANGES | {"max_removed": "25%"}, _CHANGES | {"max_removed": "10%"}, "id % 4 = 0", "id < 0", None),
        # Allowed 10 at its start (removes 10); 2 more left while it was down; raised to 100%. Before: 12 removed.
        (
            _CHANGES | {"max_removed": 10},
            _CHANGES | {"max_removed": "100%"},
            "id % 4 = 0",
            "id IN (2, 3)",
            "would remove 12 of the 40 members the partner has (30.0%), over sync.max_removed 10, at most 10: its "
            "removals were not sent (its 10 added and changed members were) and stay in the snapshot",
        ),
        # Allowed everything at its start (removes 20); switched to full mode (no bound: the default, 50%); 2 more
        # left. Before: refused after its last page, 22 of 40 over the default.
        (_CHANGES | {"max_removed": "100%"}, {"mode": "full"}, "id % 4 IN (0, 3)", "id IN (2, 6)", None),
    ],
)
def test_a_change_run_resumed_after_its_max_removed_was_edited_is_held_to_the_bound_of_its_first_start(
    database_url: str,
    same_stores: CatalogStores,
    started: dict[str, Any],
    edited: dict[str, Any],
    gone: str,
    leaving: str,
    refused: str | None,
):
    stores, snapshots = same_stores, SqlChangeSnapshots(same_stores.database)
    _table(database_url)
    stores.definitions.apply(ExportDefinition(name="c", query="q", template="t", sync=started))
    _extract(stores, database_url, RunRequested(definition="c"), delivered=True, snapshots=snapshots)  # 40 delivered
    engine = make_engine(database_url)
    with engine.begin() as connection:  # every page: two changed members (1, 5, ...); ``gone``: removed
        connection.execute(text("UPDATE m SET name = 'x' WHERE id % 4 = 1"))
        connection.execute(text(f"DELETE FROM m WHERE {gone}"))
    request = RunRequested(definition="c")
    # Its guard passed; three pages published, the first one checkpointed: a resume goes on after it.
    crashed, _ = _extract(stores, database_url, request, crash_after_sends=3, snapshots=snapshots)
    with engine.begin() as connection:  # members of its first page that left while the run was down
        connection.execute(text(f"DELETE FROM m WHERE {leaving}"))
        kept = {row[0] for row in connection.execute(text("SELECT id FROM m"))}
    engine.dispose()
    stores.definitions.apply(ExportDefinition(name="c", query="q", template="t", sync=edited))  # before the resume
    failures: list[str] = []
    resumed, completed = _extract(stores, database_url, request, snapshots=snapshots, failures=failures)
    changed = list(range(1, MEMBERS + 1, 4))
    removed = [i for i in range(1, MEMBERS + 1) if i not in kept]
    if refused is None:
        assert failures == []
        assert _taken_once(crashed, resumed) == sorted(changed + removed)
        assert [(e.members, e.changes and e.changes.removed) for e in completed] == [(10 + len(removed), len(removed))]
    else:  # its removals not sent
        assert [reason.split("mass removal refused: the run ")[-1].split(". Check")[0] for reason in failures] == [
            refused
        ]
        assert (_taken_once(crashed, resumed), completed) == (changed, [])


def test_a_run_taken_over_during_a_store_outage_is_forgotten_and_waits_again_should_it_come_back(
    database_url: str, stores: CatalogStores
):
    _table(database_url)
    stores.definitions.apply(HttpTemplate(name="t", query="q", profile="p", batch_size=4))
    now = [0.0]
    reader = MemberReader.from_url(database_url)
    extractor = _extractor(
        stores, reader, lambda out: InFlight([], timeout_seconds=0.0), store_retry_seconds=60, clock=lambda: now[0]
    )
    pages, away = reader.member_pages, [True]

    def member_pages(*args: Any, **kwargs: Any) -> MemberPages:
        if away[0]:
            raise StoreUnavailable("member store unreachable (connection refused)")
        return pages(*args, **kwargs)

    try:
        reader.member_pages = member_pages  # type: ignore[method-assign]
        taken_over = RunRequested(definition="d")
        with pytest.raises(DependencyUnavailable):  # handed back: another replica takes its partition over
            extractor.handle(taken_over)
        now[0] = 3_600.0
        away[0] = False
        extractor.handle(RunRequested(definition="d"))  # another run, extracted
        assert taken_over.run_id not in extractor._store_down_since  # before: kept for the process's life
        # Back here after another rebalance, the store away a moment: it waits (before: failed at once, "for 3600 s").
        away[0] = True
        with pytest.raises(DependencyUnavailable):
            extractor.handle(taken_over)
    finally:
        reader.close()


def test_a_change_run_resumed_before_its_first_checkpoint_is_not_judged_again_as_if_it_had_sent_nothing(
    database_url: str, same_stores: CatalogStores
):
    stores, snapshots = same_stores, SqlChangeSnapshots(same_stores.database)
    _table(database_url)
    stores.definitions.apply(
        ExportDefinition(name="c", query="q", template="t", sync=_CHANGES | {"max_removed": "25%"})
    )
    _extract(stores, database_url, RunRequested(definition="c"), delivered=True, snapshots=snapshots)  # 40 delivered
    engine = make_engine(database_url)
    with engine.begin() as connection:  # every page: two changed members (1, 5, ...)
        connection.execute(text("UPDATE m SET name = 'x' WHERE id % 4 = 1"))
    request = RunRequested(definition="c")
    # Its guard passed (nothing removed); its first page published (members 1 and 5), then a crash before any
    # checkpoint of its pages.
    crashed, _ = _extract(stores, database_url, request, crash_after_sends=1, snapshots=snapshots)
    assert sorted(i for ids in crashed.values() for i in ids) == [1, 5]
    with engine.begin() as connection:  # half of the members leave while the run is down
        connection.execute(text("DELETE FROM m WHERE id > 20"))
    engine.dispose()
    failures: list[str] = []
    resumed, completed = _extract(stores, database_url, request, snapshots=snapshots, failures=failures)
    # Before: its guard ran again and refused it saying "nothing was sent and the snapshot is unchanged", though
    # members 1 and 5 had reached the partner. Now it goes on (its guard's pass recorded before its first page) and
    # the count after its last page refuses its removals, saying what was sent.
    assert [reason.split("mass removal refused: the run ")[-1].split(". Check")[0] for reason in failures] == [
        "would remove 20 of the 40 members the partner has (50.0%), over sync.max_removed 25%, at most 10: its "
        "removals were not sent (its 5 added and changed members were) and stay in the snapshot"
    ]
    assert (_taken_once(crashed, resumed), completed) == ([1, 5, 9, 13, 17], [])


def test_a_template_an_unfinished_change_run_started_with_is_not_deleted_until_the_run_has_finished(
    database_url: str,
    same_stores: CatalogStores,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    stores, snapshots = same_stores, SqlChangeSnapshots(same_stores.database)
    _table(database_url)
    _kinds_definition(stores, changed=True, removed=True)
    request = RunRequested(definition="c")  # its first run: every member added, sent with t-add
    # Its first page published (its run started, as the notifier records it), then a crash.
    crashed, _ = _extract(stores, database_url, request, crash_after_sends=1, delivered=True, snapshots=snapshots)
    stores.definitions.apply(
        ExportDefinition(name="c", query="q", template="t", sync={"mode": "changes", "added": "t", "removed": "t-del"})
    )
    refusal = _in_use(request, "t-add")
    # No definition names t-add now; the run does. Before: deleted (204), and the run's resume failed
    # ("the added members' template: ... not found", missing_object).
    with in_process_api(tmp_path, catalog_url=database_url) as api, api.client() as client:
        _delete_refused(client, request, "t-add")
        scoped = Actor(name="sales-bot", role=Role.ADMIN, business_units=frozenset({"sales"}))  # the run isn't theirs
        with pytest.raises(Conflict, match=r"^'t-add' is used by 1 run\(s\) outside this token's scope: a run keeps"):
            delete_object(scoped, HttpTemplate, "t-add", store=stores.definitions)
        # Renamed, it would be as missing to the run.
        renamed = client.get("/api/v1/http-templates/t-add").json() | {"name": "t-add-2"}
        answer = client.put("/api/v1/http-templates/t-add", json=renamed)
        assert (answer.status_code, answer.json()["detail"]) == (409, refusal)
        monkeypatch.delenv("EXPORT_API_URL", raising=False)  # exportctl on the catalog: the same refusal
        monkeypatch.setenv("EXPORT_CATALOG_URL", database_url)
        capsys.readouterr()
        assert exportctl(["delete", "HttpTemplate", "t-add"]) == 4
        assert capsys.readouterr().err == f"exportctl: {refusal}\n"

        failures: list[str] = []
        resumed, completed = _extract(stores, database_url, request, snapshots=snapshots, failures=failures)
        assert failures == []
        assert _taken_once(crashed, resumed) == list(range(1, MEMBERS + 1))
        _in_use_until_cancelled(stores, client, request, "t-add", completed)


def _in_use(run: RunRequested, template: str) -> str:
    """The refusal to delete or rename ``template``, which ``run`` (unfinished) keeps."""
    return (
        f"'{template}' is used by unfinished run {run.run_id} (ExportDefinition '{run.definition}'): a run keeps the "
        "templates it started with; wait until it has finished or cancel it"
    )


def _delete_refused(client: Any, run: RunRequested, template: str) -> None:
    answer = client.delete(f"/api/v1/http-templates/{template}")
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"] == _in_use(run, template)


def _in_use_until_cancelled(
    stores: CatalogStores, client: Any, run: RunRequested, template: str, completed: list[ExtractionCompleted]
) -> None:
    """``run``'s extraction over (``completed`` folded), its batches still to deliver: ``template`` still in use,
    deleted once the run is cancelled."""
    for event in completed:
        stores.runs.fold_run_event(event)
    assert stores.runs.get_run(run.run_id).status is RunStatus.DISPATCHING
    _delete_refused(client, run, template)
    answer = client.post(f"/api/v1/runs/{run.run_id}/cancel")
    assert answer.status_code < 300, answer.text
    assert client.delete(f"/api/v1/http-templates/{template}").status_code == 204


def test_a_template_a_full_run_started_with_is_kept_by_its_resume_and_not_deleted_until_the_run_has_finished(
    database_url: str, same_stores: CatalogStores, tmp_path: Path
):
    stores = same_stores
    _table(database_url)
    stores.definitions.apply(ExportDefinition(name="d", query="q", template="t"))
    request = RunRequested(definition="d")
    sent: list[str] = []
    # Two pages published (its run started, as the notifier records it), then a crash.
    crashed, _ = _extract(stores, database_url, request, crash_after_sends=2, delivered=True, templates=sent)
    stores.definitions.apply(HttpTemplate(name="t-new", query="q", profile="p", batch_size=2))
    stores.definitions.apply(ExportDefinition(name="d", query="q", template="t-new"))
    # No definition names t now; the run does. Before: deleted (204), the records published before the crash then
    # failing at the dispatcher (missing_object), and the resume sending the rest with t-new.
    with in_process_api(tmp_path, catalog_url=database_url) as api, api.client() as client:
        _delete_refused(client, request, "t")
        failures: list[str] = []
        resumed, completed = _extract(stores, database_url, request, failures=failures, templates=sent)
        assert failures == []
        assert _taken_once(crashed, resumed) == list(range(1, MEMBERS + 1))
        assert set(sent) == {"t"}  # every record of the run, before the crash and after, with its first template
        _in_use_until_cancelled(stores, client, request, "t", completed)
        # The next run takes the template its definition names now.
        sent.clear()
        _extract(stores, database_url, RunRequested(definition="d"), templates=sent)
        assert set(sent) == {"t-new"}
