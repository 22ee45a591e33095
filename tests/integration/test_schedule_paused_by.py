"""Who paused a definition's schedule is recorded with the change that paused it (``schedule_paused_by``): the
operator whose change disabled it, or the notifier after a run's failures. A finish interrupted after the pause sends
the ``paused`` webhook when it is done again only if THIS run's failures paused the schedule: not for an operator's
pause, and still after an operator resumed a schedule the runs' failures then paused again.

Real SMTP server and HTTP receiver; the catalog is SQLite and PostgreSQL (the ``catalog`` fixture)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.http_receiver import HttpReceiver
from devtools.smtp_sink import SmtpSink
from shared.application.audit import change
from shared.application.schedules import paused_by_run
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition
from shared.events import AnyRunEvent, RunFailed, RunStarted, Trigger
from shared.outages import DependencyUnavailable
from tests.admin_app import in_process_api, seed
from tests.integration.test_notifier_finish_once import paused_webhook_claim_timing_out, with_policy
from tests.integration.test_notifier_webhooks import notifier_on, receiver, signing_secret, sink, verified

pytestmark = pytest.mark.integration

#: The webhooks' tests' fixtures: their signing secret in the environment (autouse), an SMTP sink, an HTTP receiver.
__all__ = ["receiver", "signing_secret", "sink"]


def failed_run() -> list[AnyRunEvent]:
    run_id = uuid.uuid4()
    return [
        RunStarted(run_id=run_id, definition="nightly", trigger=Trigger.SCHEDULE),
        RunFailed(run_id=run_id, definition="nightly", reason="query 'q' failed: boom"),
    ]


def saved_by(catalog: CatalogStores, who: str, *, enabled: bool) -> None:
    """``who`` saves the definition with its schedule enabled or disabled (as the application layer writes it)."""
    current = catalog.definitions.get(ExportDefinition, "nightly")
    wanted = current.model_copy(update={"schedule": current.schedule.model_copy(update={"enabled": enabled})})
    audit = [change(who, "update", catalog.definitions, before=current, after=wanted)]
    assert catalog.definitions.apply(wanted, audit=audit) == "updated"


def webhooks(receiver: HttpReceiver) -> list[tuple[str, str]]:
    payloads = [verified(r) for r in receiver.receipts() if r.status == 200]
    return sorted((p["type"].removeprefix("member_export.run."), p["data"]["run_id"]) for p in payloads)


def test_a_pause_interrupted_after_an_operator_resumed_sends_its_webhook_when_the_event_comes_again(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Pause after 2 failed runs: runs 1 and 2 pause the schedule, an operator resumes it, run 3 (the third failure
    in a row) pauses it again and its ``paused`` webhook's claim times out. Replayed, run 3's finish sends it. Before,
    judged from "failures in a row equal 2" (3 here), it was never sent."""
    catalog.definitions.apply(with_policy(receiver, ["failed", "paused"], pause_after_failed_runs=2))
    notifier = notifier_on(catalog, sink)
    first, second, third = failed_run(), failed_run(), failed_run()
    notifier.handle_all(first)
    notifier.handle_all(second)
    assert catalog.definitions.schedule_paused_by("nightly") == paused_by_run(second[0].run_id)
    saved_by(catalog, "alice", enabled=True)
    assert catalog.definitions.schedule_paused_by("nightly") is None

    with paused_webhook_claim_timing_out(catalog) as timed_out:
        assert notifier.handle_all(third) == [timed_out, timed_out]
    assert catalog.definitions.get(ExportDefinition, "nightly").schedule.enabled is False
    assert catalog.definitions.schedule_paused_by("nightly") == paused_by_run(third[0].run_id)
    notifier.handle_all(third)  # replayed from the dead-letter topic
    notifier.handle_all(third)

    ids = [str(run[0].run_id) for run in (first, second, third)]
    assert webhooks(receiver) == sorted(
        [("failed", ids[0]), ("failed", ids[1]), ("paused", ids[1]), ("failed", ids[2]), ("paused", ids[2])]
    )
    *_, third_mail = sink.received()
    assert "Schedule: paused after 3 consecutive failed runs" in third_mail.text()


def test_a_failed_run_handled_again_sends_no_paused_webhook_for_a_schedule_an_operator_paused(
    catalog: CatalogStores, sink: SmtpSink, receiver: HttpReceiver
):
    """Pause after 1 failed run; an operator paused the schedule before the run. The run's finish is interrupted
    (the definition's read fails) and done when the poll is handed back. Before, the redo took the run for the one
    that paused the schedule (1 failure in a row, schedule paused) and sent a ``paused`` webhook it never caused; its
    email said the schedule was paused after 1 failed run. Now: its failed webhook only."""
    catalog.definitions.apply(with_policy(receiver, ["failed", "paused"], pause_after_failed_runs=1))
    saved_by(catalog, "alice", enabled=False)
    notifier = notifier_on(catalog, sink)
    run = failed_run()
    real_find = catalog.definitions.find
    outage = DependencyUnavailable("the catalog did not answer")

    def find(kind: Any, name: str) -> Any:
        raise outage

    catalog.definitions.find = find  # type: ignore[method-assign]
    assert notifier.handle_all(run) == [outage, outage]
    catalog.definitions.find = real_find  # type: ignore[method-assign]
    notifier.handle_all(run)  # handed back
    notifier.handle_all(run)

    assert webhooks(receiver) == [("failed", str(run[0].run_id))]
    assert catalog.definitions.schedule_paused_by("nightly") == "alice"
    [mail] = sink.received()
    assert "Schedule: paused" not in mail.text()


def test_who_paused_is_written_with_the_change_that_disabled_the_schedule_and_kept_until_it_is_enabled(
    catalog: CatalogStores, receiver: HttpReceiver
):
    catalog.definitions.apply(with_policy(receiver, ["failed"]))
    assert catalog.definitions.schedule_paused_by("nightly") is None  # enabled
    saved_by(catalog, "alice", enabled=False)
    assert catalog.definitions.schedule_paused_by("nightly") == "alice"
    current = catalog.definitions.get(ExportDefinition, "nightly")
    relabelled = current.model_copy(update={"label": "Nightly, paused"})
    catalog.definitions.apply(relabelled, audit=[change("bob", "update", catalog.definitions, after=relabelled)])
    assert catalog.definitions.schedule_paused_by("nightly") == "alice"  # still disabled: alice paused it
    saved_by(catalog, "bob", enabled=True)
    assert catalog.definitions.schedule_paused_by("nightly") is None
    assert catalog.definitions.schedule_paused_by("no-such-definition") is None


def test_the_schedule_preview_says_who_paused_the_schedule(tmp_path: Path):
    with in_process_api(tmp_path) as api, api.client() as admin, api.client("editor") as client:
        seed(admin)
        path = "/api/v1/export-definitions/nightly/schedule"
        saved = client.put(path, json={"enabled": True, "timezone": "UTC", "cron": "0 2 * * *"})
        assert saved.status_code == 200, saved.text
        assert client.get(f"{path}/preview").json()["paused_by"] is None
        assert client.put(path, json={"enabled": False, "timezone": "UTC", "cron": "0 2 * * *"}).status_code == 200
        preview = client.get(f"{path}/preview").json()
        assert (preview["enabled"], preview["paused_by"]) == (False, "editor")


def test_a_definition_created_disabled_or_copied_records_who_created_it_as_who_paused_it(tmp_path: Path):
    """Before, a definition created with its schedule disabled (and every copy, which is created disabled) had no
    paused_by: the preview could not say who paused it. A copy's is its copier's, not the original's."""
    with in_process_api(tmp_path) as api, api.client() as admin, api.client("editor") as editor:
        seed(admin)
        path = "/api/v1/export-definitions"
        saved = admin.put(f"{path}/nightly/schedule", json={"enabled": False, "timezone": "UTC", "cron": "0 2 * * *"})
        assert saved.status_code == 200, saved.text
        assert admin.get(f"{path}/nightly/schedule/preview").json()["paused_by"] == "admin"

        copied = editor.post(f"{path}/nightly/copy", json={"name": "nightly-copy"})
        assert copied.status_code == 201, copied.text
        definition = {**copied.json(), "name": "created-paused"}
        created = editor.post(path, json=definition)
        assert created.status_code == 201, created.text

        for name in ("nightly-copy", "created-paused"):
            preview = editor.get(f"{path}/{name}/schedule/preview").json()
            assert (preview["enabled"], preview["paused_by"]) == (False, "editor")


def test_a_manifest_applying_new_definitions_disabled_records_who_applied_each(
    catalog: CatalogStores, receiver: HttpReceiver
):
    """``exportctl apply`` of a manifest writes all its objects in one transaction (``apply_all``): each new
    definition created disabled is recorded as paused by the actor of its own audit entry (before: by no one)."""
    enabled = with_policy(receiver, ["failed"])
    paused = {"schedule": enabled.schedule.model_copy(update={"enabled": False})}
    objects = [
        enabled.model_copy(update={"name": "first", **paused}),
        enabled.model_copy(update={"name": "second"}),
        enabled.model_copy(update={"name": "third", **paused}),
    ]
    audit = [change(who, "create", catalog.definitions, after=obj) for who, obj in zip("abc", objects, strict=True)]

    assert catalog.definitions.apply_all(list(objects), audit=audit) == ["created"] * 3

    assert [catalog.definitions.schedule_paused_by(name) for name in ("first", "second", "third")] == ["a", None, "c"]
