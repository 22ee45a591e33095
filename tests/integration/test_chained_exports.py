"""Chained exports (``schedule.after``) and the save-time rules of a definition's notifications, on the real
catalog (SQLite and PostgreSQL): the run of B is requested once per finished run of A, cycles are refused."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from devtools.smtp_sink import SmtpSink
from services.notifier.mailer import SmtpMailer
from services.notifier.notifying import Notifier
from shared.application.actors import Actor, Role
from shared.application.chains import CollectedRequests, request_following_runs
from shared.application.checks import ObjectChecks
from shared.application.errors import Conflict, Invalid
from shared.application.objects import apply_objects, delete_object, replace_object, save_definition_step
from shared.application.runs import request_run
from shared.catalog import CatalogStores
from shared.cli.object_views import print_schedule, schedule_preview
from shared.domain.catalog_objects import (
    CatalogObject,
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    Notifications,
    SavedQuery,
    stored_form,
)
from shared.domain.destinations import DestinationPolicy
from shared.domain.runs import RunRecord
from shared.domain.secret_references import SecretReferencePolicy
from shared.errors import ObjectInUse
from shared.events import (
    AnyRunEvent,
    BatchOutcome,
    ExtractionCompleted,
    RunFailed,
    RunRequested,
    RunStarted,
    Trigger,
)
from shared.kafka import Outgoing
from tests.integration.test_catalog_references_atomic import after_first_call

pytestmark = pytest.mark.integration

ADMIN = Actor(name="alice", role=Role.ADMIN)
BASE: list[CatalogObject] = [
    ConnectionProfile(name="partner", base_url="https://partner.example.com"),
    SavedQuery(name="q", sql="SELECT id FROM members"),
    HttpTemplate(name="t", query="q", profile="partner"),
]


def checks(policy: str = "") -> ObjectChecks:
    return ObjectChecks(
        policy=DestinationPolicy.parse(policy),
        resolve_host=lambda host: ["10.1.2.3"] if host.endswith(".internal") else ["93.184.215.14"],
        secret_references=SecretReferencePolicy.parse("PARTNER_", "/var/run/secrets/member-export"),
    )


def export(name: str, **spec: Any) -> ExportDefinition:
    return ExportDefinition.model_validate({"name": name, "query": "q", "template": "t", **spec})


def chained(name: str, after: str, statuses: list[str] | None = None, enabled: bool = True) -> ExportDefinition:
    return export(
        name,
        schedule={"enabled": enabled, "after": {"definition": after} | ({"statuses": statuses} if statuses else {})},
    )


def save(catalog: CatalogStores, *objects: CatalogObject) -> None:
    apply_objects(ADMIN, list(objects), store=catalog.definitions, checks=checks())


def test_a_chain_that_loops_back_is_refused_at_save_naming_the_cycle(catalog: CatalogStores):
    save(catalog, *BASE, export("a"), chained("b", after="a"), chained("c", after="b"))
    with pytest.raises(Invalid) as refused:
        save(catalog, chained("a", after="c"))
    assert refused.value.problems == [
        "ExportDefinition 'a': field 'schedule.after.definition': "
        "chained exports would run in a cycle: a -> c -> b -> a"
    ]
    with pytest.raises(Invalid, match="cycle: d -> d"):
        save(catalog, chained("d", after="d"))
    with pytest.raises(Invalid, match="ExportDefinition 'nope' does not exist"):
        save(catalog, chained("e", after="nope"))
    assert catalog.definitions.get(ExportDefinition, "a").schedule.after is None  # nothing written


def test_a_followed_definition_may_be_neither_deleted_nor_renamed_while_another_follows_it(catalog: CatalogStores):
    """As a query or template in use: 409 in-use naming the follower. Before, the delete (204) or rename (200) was
    stored: the follower never ran again, and any edit of it was refused (it followed a definition gone)."""
    save(catalog, *BASE, export("a"), chained("b", after="a"))
    store = catalog.definitions
    with pytest.raises(Conflict) as deleting:
        delete_object(ADMIN, ExportDefinition, "a", store=store)
    renamed = stored_form(store.get(ExportDefinition, "a")) | {"name": "a2"}
    with pytest.raises(Conflict) as renaming:
        replace_object(ADMIN, ExportDefinition, "a", renamed, store=store, checks=checks())
    with pytest.raises(ObjectInUse):  # the store's own guarantee, with no check before it
        store.delete(ExportDefinition, "a")
    assert (deleting.value.slug, deleting.value.reason) == (
        "in-use",
        "'a' is used by ExportDefinition 'b': delete those first",
    )
    assert renaming.value.reason == "'a' is used by ExportDefinition 'b': it cannot be renamed"
    assert {d.name for d in store.list_objects(ExportDefinition)} == {"a", "b"}
    save(catalog, export("b"))  # b no longer follows a: a goes
    delete_object(ADMIN, ExportDefinition, "a", store=store)
    assert {d.name for d in store.list_objects(ExportDefinition)} == {"b"}


def test_a_definition_deleted_while_a_follower_of_it_is_saved_is_refused_as_in_use(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    """The delete's check finds no follower; one is stored before its write: the store, in the delete's
    transaction, finds it and refuses, as for a query or template (the follower stays runnable)."""
    save(catalog, *BASE, export("a"))
    store = catalog.definitions
    after_first_call(monkeypatch, "referrers", lambda: save(catalog, chained("b", after="a")))
    with pytest.raises(Conflict) as refused:
        delete_object(ADMIN, ExportDefinition, "a", store=store)
    assert refused.value.reason == "'a' is used by ExportDefinition 'b': delete those first"
    assert store.get(ExportDefinition, "b").schedule.after.definition == "a"


def test_webhook_urls_pass_the_ssrf_guard_and_secrets_the_allow_lists_at_save(catalog: CatalogStores):
    hooks = {
        "ops": {"url": "https://hooks.internal/x", "signing_secret": "env:EXPORT_SMTP_PASSWORD"},
        "chat": {"url": "https://hooks.example.com/services/T/B/x", "format": "slack"},
    }
    with pytest.raises(Invalid) as refused:
        save(catalog, *BASE, export("a", notifications={"webhooks": hooks}))
    problems = " ".join(refused.value.problems)
    assert "field 'notifications.webhooks.ops.url': destination hooks.internal (10.1.2.3) is a private address" in (
        problems
    )
    assert "field 'notifications.webhooks.ops.signing_secret'" in problems
    assert "chat" not in problems
    save(catalog, *BASE, export("a", notifications={"webhooks": {"chat": hooks["chat"]}}))


def notifier_on(catalog: CatalogStores, sink: SmtpSink) -> Notifier:
    return Notifier(
        definitions=catalog.definitions,
        runs=catalog.runs,
        watermarks=catalog.extraction,
        mailer=SmtpMailer("127.0.0.1", sink.port, max_attempts=1),
        sender="exports@example.com",
        link_base_url=None,
        chain_runs=catalog.runs,
    )


def succeeded(definition: str) -> list[AnyRunEvent]:
    run_id = uuid.uuid4()
    return [
        RunStarted(run_id=run_id, definition=definition, trigger=Trigger.SCHEDULE),
        ExtractionCompleted(run_id=run_id, definition=definition, members=1, batches=1),
        BatchOutcome(run_id=run_id, definition=definition, batch_index=0, delivered=1, failed=0),
    ]


def run_requests(results: list[list[Outgoing] | BaseException]) -> list[RunRequested]:
    requests = []
    for result in results:
        assert not isinstance(result, BaseException), result
        requests += [RunRequested.model_validate_json(o.value) for o in result if "run-requests" in o.topic]
    return requests


@pytest.fixture
def sink():
    with SmtpSink() as sink:
        yield sink


def test_a_follower_is_requested_once_per_successful_run_of_what_it_follows(catalog: CatalogStores, sink: SmtpSink):
    save(catalog, *BASE, export("a"), chained("b", after="a"), chained("off", after="a", enabled=False))
    notifier = notifier_on(catalog, sink)
    run_a = succeeded("a")
    first = run_requests(notifier.handle_all(run_a))
    redelivered = run_requests(notifier.handle_all(run_a)) + run_requests([notifier.handle(run_a[-1])])
    [request] = first
    assert (request.definition, request.trigger, request.requested_by) == ("b", Trigger.EVENT, "chain:a")
    # A redelivery asks for the same run again (its request may have been lost): never another run.
    assert {r.run_id for r in redelivered} <= {request.run_id}
    [run_b] = catalog.runs.list_runs("b")
    assert (run_b.run_id, run_b.status.value, run_b.trigger) == (request.run_id, "queued", "event")
    once_started: list[AnyRunEvent] = [RunStarted(run_id=run_b.run_id, definition="b", trigger=Trigger.EVENT)]
    notifier.handle_all(once_started)
    assert run_requests(notifier.handle_all(run_a)) == []  # B started: nothing asked again
    second = run_requests(notifier.handle_all(succeeded("a")))  # the next run of A: the next run of B
    assert [r.definition for r in second] == ["b"]
    assert second[0].run_id != request.run_id
    assert catalog.runs.list_runs("off") == []


def test_a_follower_of_successes_is_not_requested_after_a_failure(catalog: CatalogStores, sink: SmtpSink):
    save(catalog, *BASE, export("a"), chained("b", after="a"), chained("cleanup", after="a", statuses=["failed"]))
    notifier = notifier_on(catalog, sink)
    requests = run_requests(notifier.handle_all([RunFailed(run_id=uuid.uuid4(), definition="a", reason="boom")]))
    assert [r.definition for r in requests] == ["cleanup"]
    assert catalog.runs.list_runs("b") == []


def test_next_runs_says_after_what_a_chained_export_runs(capsys: pytest.CaptureFixture[str]):
    schedule = chained("b", after="a", statuses=["succeeded", "completed_with_errors"]).schedule
    preview = schedule_preview("b", schedule.model_dump(mode="json"), None, [])
    print_schedule(preview, "table")
    assert capsys.readouterr().out.splitlines() == [
        "after a (succeeded, completed_with_errors): runs after each such run of that export, not by the clock"
    ]


def test_saving_one_step_keeps_the_webhooks_and_the_chain_it_does_not_mention(catalog: CatalogStores):
    secret = "env:PARTNER_HOOKS_SECRET"
    hooks = {"ops": {"url": "https://hooks.example.com/x", "signing_secret": secret}}
    save(catalog, *BASE, export("a"), export("b", notifications={"webhooks": hooks}))
    save(
        catalog,
        chained("b", after="a").model_copy(
            update={"notifications": catalog.definitions.get(ExportDefinition, "b").notifications}
        ),
    )
    step = {"error": {"enabled": True, "recipients": ["oncall@example.com"]}}  # as the console's form sends it
    save_definition_step(ADMIN, "b", step, store=catalog.definitions, checks=checks(), field_name="notifications")
    save_definition_step(
        ADMIN,
        "b",
        {"enabled": False, "timezone": "UTC"},
        store=catalog.definitions,
        checks=checks(),
        field_name="schedule",
    )
    saved = catalog.definitions.get(ExportDefinition, "b")
    assert saved.notifications.error.recipients == ["oncall@example.com"]
    assert saved.schedule.after is not None
    assert saved.schedule.after.definition == "a"
    assert not saved.schedule.enabled
    assert saved.notifications.webhooks["ops"].signing_secret == secret
    # The API's step, as its model reads it: the references are shown, and saved, as given.
    new_secret = "file:/var/run/secrets/member-export/hooks"
    changed = Notifications.model_validate({"webhooks": {"ops": hooks["ops"] | {"signing_secret": new_secret}}})
    save_definition_step(ADMIN, "b", changed, store=catalog.definitions, checks=checks(), field_name="notifications")
    saved = catalog.definitions.get(ExportDefinition, "b")
    assert saved.notifications.webhooks["ops"].signing_secret == new_secret
    assert not saved.notifications.error.enabled  # the API's step is the whole step


ON_SUCCESS = {"success": {"enabled": True, "recipients": ["ops@example.com"]}}


def test_two_followers_of_one_definition_each_run_once_and_its_email_still_goes_out(
    catalog: CatalogStores, sink: SmtpSink
):
    save(catalog, *BASE, export("a", notifications=ON_SUCCESS), chained("b", after="a"), chained("c", after="a"))
    notifier = notifier_on(catalog, sink)
    run_a = succeeded("a")
    first = run_requests(notifier.handle_all(run_a))
    assert sorted(r.definition for r in first) == ["b", "c"]
    # Redelivered: the same two runs asked for again (still queued), never a third.
    again = run_requests(notifier.handle_all(run_a))
    assert {(r.definition, r.run_id) for r in again} <= {(r.definition, r.run_id) for r in first}
    for name in ("b", "c"):
        assert [r.run_id for r in catalog.runs.list_runs(name)] == [r.run_id for r in first if r.definition == name]
    # The followed run's finish is handled: its email out, once.
    assert [mail.subject for mail in sink.received()] == ["[member export] a: succeeded"]
    assert catalog.runs.finishes_unhandled([run_a[0].run_id]) == set()


def test_a_follower_refused_stops_neither_the_other_nor_the_followed_runs_email(catalog: CatalogStores, sink: SmtpSink):
    needs = SavedQuery(
        name="needs", sql="SELECT id FROM members WHERE tier = :tier", parameters={"tier": {"required": True}}
    )
    save(catalog, *BASE, needs, export("a", notifications=ON_SUCCESS), chained("c", after="a"))
    # b needs a parameter its definition does not give: its run is refused (invalid parameters), c's is not. Its save
    # is refused since session 54 (a scheduled or chained definition gives its required parameters): stored as an
    # older release stored it.
    b = export("b", query="needs", schedule={"enabled": True, "after": {"definition": "a"}})
    catalog.definitions.apply(b)
    notifier = notifier_on(catalog, sink)
    run_a = succeeded("a")
    results = notifier.handle_all(run_a)
    assert [r.definition for r in run_requests(results)] == ["c"]
    assert catalog.runs.list_runs("b") == []
    assert [mail.subject for mail in sink.received()] == ["[member export] a: succeeded"]
    assert catalog.runs.finishes_unhandled([run_a[0].run_id]) == set()


def test_a_follower_requested_under_the_key_of_older_releases_is_not_requested_twice(catalog: CatalogStores):
    """Before one key per follower, the key was ``after:<run id>``: a finish redelivered after the upgrade finds
    the follower's run there and asks for no second one; the other follower (refused then) gets its run."""
    save(catalog, *BASE, export("a"), chained("b", after="a"), chained("c", after="a"))
    finished = RunRecord(run_id=uuid.uuid4(), definition="a", extraction_complete=True, batches_expected=0)
    chain = Actor(name="chain:a", role=Role.OPERATOR)
    before = request_run(
        chain,
        "b",
        store=catalog.definitions,
        runs=catalog.runs,
        publisher=CollectedRequests(),
        idempotency_key=f"after:{finished.run_id}",
        trigger=Trigger.EVENT,
    )
    requests = request_following_runs(finished, store=catalog.definitions, runs=catalog.runs).requests
    assert sorted((r.definition, r.run_id == before.run_id) for r in requests) == [("b", True), ("c", False)]
    assert [r.run_id for r in catalog.runs.list_runs("b")] == [before.run_id]
    assert len(catalog.runs.list_runs("c")) == 1
