"""A partner that quotes our credentials in its refusals (real Kafka, a real HTTP receiver and SMTP server): the
outcome event, its refused members, the dead letters, the dispatcher's log lines, the run's record and the error
email say which status and what the partner said, never the bearer token or the API key."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest
import structlog

from devtools.http_receiver import HttpReceiver
from devtools.smtp_sink import SmtpSink
from services.dispatcher.delivery import RetryBudget
from services.notifier.breaker_notices import decode
from services.notifier.mailer import SmtpMailer
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate
from shared.domain.masking import MASK
from shared.events import (
    RUN_EVENT_ADAPTER,
    BatchOutcome,
    DeadLetter,
    ExtractionCompleted,
    MemberBatch,
    RunStarted,
    Trigger,
)
from shared.kafka import ConsumerLoop, ensure_topics, make_consumer, make_producer, value_decoder
from shared.settings import CommonSettings
from tests.dispatcher_helpers import blocking_dispatcher, dispatch_catalog, http_on_loop
from tests.integration.test_notifier import notifier_on
from tests.kafka_helpers import produce, read_to_end

pytestmark = pytest.mark.integration

TOKEN = "bearer-4f9c2a-partner-token"
API_KEY = "partner-id-7d31e8-key"
SECRETS = (TOKEN, API_KEY)
QUICK = RetryBudget(max_attempts=2, max_seconds=5, initial_backoff=0.01, max_backoff=0.02)
#: Member ids and what the partner answers a request holding them (member 4 is accepted).
STATUSES = {1: 400, 2: 422, 3: 500}


def _objects(url: str) -> list[object]:
    notify = {"error": {"enabled": True, "recipients": ["oncall@example.com"]}}
    return [
        ConnectionProfile.model_validate(
            {"name": "bearer-p", "base_url": url, "auth": {"type": "bearer", "token": "env:PARTNER_MASK_TOKEN"}}
        ),
        # A header no name rule knows: only the profile says it holds a secret.
        ConnectionProfile.model_validate(
            {"name": "key-p", "base_url": url, "auth": {"type": "api_key", "header": "X-Partner-Id", "key": API_KEY}}
        ),
        HttpTemplate(name="bearer-t", query="q", profile="bearer-p", path="/members", batch_size=1),
        HttpTemplate(name="key-t", query="q", profile="key-p", path="/members", batch_size=1),
        ExportDefinition.model_validate(
            {"name": "bearer-d", "query": "q", "template": "bearer-t", "notifications": notify}
        ),
        ExportDefinition.model_validate({"name": "key-d", "query": "q", "template": "key-t", "notifications": notify}),
    ]


def _loop(settings: CommonSettings, group: str, topics: list[str], **handling: Any) -> ConsumerLoop[Any]:
    return ConsumerLoop(
        service=group,
        consumer=make_consumer(settings, settings.topic_prefix + group, topics),
        producer=make_producer(settings, group),
        dead_letter_topic=settings.topics.dead_letters,
        **handling,
    )


def _email_text(message: EmailMessage) -> str:
    return "\n".join(str(part.get_content()) for part in message.walk() if not part.is_multipart())


def test_a_partner_quoting_our_credentials_leaves_them_nowhere(
    settings: CommonSettings,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    migrated_catalog: Callable[[str], CatalogStores],
):
    monkeypatch.setenv("PARTNER_MASK_TOKEN", TOKEN)
    topics = settings.topics
    ensure_topics(settings)
    runs = {"bearer-d": uuid.uuid4(), "key-d": uuid.uuid4()}
    members = [{"id": n, "email": f"m{n}@example.com"} for n in (1, 2, 3, 4)]
    with (
        HttpReceiver(quote_headers=("Authorization", "X-Partner-Id"), echo_headers=True) as receiver,
        SmtpSink() as sink,
        http_on_loop() as http,
        dispatch_catalog(migrated_catalog, tmp_path, *_objects(receiver.url)) as catalog,  # type: ignore[arg-type]
    ):
        receiver.state.member_statuses = dict(STATUSES)
        batches = [
            MemberBatch(
                run_id=run_id,
                definition=name,
                template=name.replace("-d", "-t"),
                batch_index=0,
                members=members,
                key_column="id",
            )
            for name, run_id in runs.items()
        ]
        produce(settings.kafka_bootstrap_servers, topics.member_batches, [(b.identity, b.to_bytes()) for b in batches])
        started = [
            event
            for name, run_id in runs.items()
            for event in (
                RunStarted(run_id=run_id, definition=name, trigger=Trigger.MANUAL),
                ExtractionCompleted(run_id=run_id, definition=name, members=len(members), batches=1),
            )
        ]
        produce(settings.kafka_bootstrap_servers, topics.run_events, [(str(e.run_id), e.to_bytes()) for e in started])

        dispatcher = blocking_dispatcher(catalog, http, QUICK, topics)
        notifier = notifier_on(catalog, SmtpMailer("127.0.0.1", sink.port, max_attempts=2, max_wait=0.1))
        dispatching = _loop(
            settings,
            "dispatcher",
            topics.member_batch_topics(),
            decode=value_decoder(MemberBatch.model_validate_json),
            handler=dispatcher.handle,
        )
        notifying = _loop(
            settings, "notifier", [topics.run_events], decode=value_decoder(decode), handler=notifier.handle
        )
        try:
            with structlog.testing.capture_logs() as logs:
                deadline = time.monotonic() + 90
                while len(sink.received()) < len(runs):  # one error email per run, once both batches are folded
                    assert time.monotonic() < deadline, "the runs' error emails did not come"
                    dispatching.poll_once()
                    notifying.poll_once()
        finally:
            for loop in (dispatching, notifying):
                loop.consumer.close()
                loop.producer.close()
        records = {name: catalog.runs.get_run(run_id) for name, run_id in runs.items()}

    # The partner did receive, and quote, both credentials: without masking they would be everywhere below.
    sent = " ".join(f"{r.headers.get('Authorization')} {r.headers.get('X-Partner-Id')}" for r in receiver.receipts())
    assert TOKEN in sent
    assert API_KEY in sent

    events = [
        RUN_EVENT_ADAPTER.validate_json(value)
        for value in read_to_end(settings.kafka_bootstrap_servers, topics.run_events)
    ]
    outcomes = [e for e in events if isinstance(e, BatchOutcome)]
    letters = [
        DeadLetter.model_validate_json(v) for v in read_to_end(settings.kafka_bootstrap_servers, topics.dead_letters)
    ]
    assert len(outcomes) == 2
    assert len(letters) == 2 * len(STATUSES)
    for outcome in outcomes:
        assert (outcome.delivered, outcome.failed) == (1, 3)
        # Each refused member with its status and the partner's message, the quoted credential masked.
        header = "Authorization" if outcome.definition == "bearer-d" else "X-Partner-Id"
        reasons = {int(m.key): m.reason for m in outcome.refused}
        for key, status in STATUSES.items():
            assert reasons[key].startswith(f'HTTP {status}: {{"error": "{header} {MASK} is not accepted"')
            assert f'"{header}": "{MASK}"' in reasons[key]  # and in the headers the partner echoed

    texts = {
        "outcome events": [o.model_dump_json() for o in outcomes],
        "dead letters": [letter.model_dump_json() for letter in letters],
        "log lines": [repr(logs)],
        "run records": [error for record in records.values() if record for error in record.error_samples],
        "emails": [_email_text(mail.message) for mail in sink.received()],  # type: ignore[arg-type]
    }
    for where, found in texts.items():
        assert found, where
        for text in found:
            for secret in SECRETS:
                assert secret not in text, f"{secret} in the {where}"
    assert all(MASK in error for error in texts["run records"])
    assert all("is not accepted" in mail for mail in texts["emails"])
    assert any(line.get("event") == "members refused" for line in logs)
