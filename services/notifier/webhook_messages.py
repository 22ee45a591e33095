"""What a webhook channel is sent: the events a run calls for, their ledger kinds, ids and bodies. Pure.

A ``standard`` channel gets a JSON event ``{"type", "timestamp", "data"}`` (the Standard Webhooks payload
shape); a ``slack`` channel gets a Slack incoming-webhook message (``text`` and ``blocks``), its ``mrkdwn`` text
escaped as Slack asks (``&``, ``<``, ``>``): a partner's answer quoted in an error is shown as text, never read
as a mention (``<!channel>``) or a disguised link (``<url|text>``). The
``webhook-id`` is derived from (run, channel, event): every attempt and every resend of one notification
carries the same id, so a receiver can drop a duplicate.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.domain.catalog_objects import ExportDefinition, WebhookChannel, WebhookEvent, WebhookFormat
from shared.domain.runs import RunRecord, RunStatus

#: The ledger kind of a webhook notification is ``webhook:<channel>:<event>``.
PREFIX = "webhook"
#: The event a channel subscribed to ``missed`` gets instead, when many runs were missed at once.
MISSED_DIGEST = "missed_digest"
_NAMESPACE = uuid.UUID("6f6b3c1e-4d0a-4c52-9a57-3f1f0b7a2d10")

_FINAL_EVENTS = {
    RunStatus.SUCCEEDED: WebhookEvent.SUCCEEDED,
    RunStatus.COMPLETED_WITH_ERRORS: WebhookEvent.COMPLETED_WITH_ERRORS,
    RunStatus.FAILED: WebhookEvent.FAILED,
    RunStatus.SKIPPED: WebhookEvent.SKIPPED,
    RunStatus.MISSED: WebhookEvent.MISSED,
}


def final_event(status: RunStatus) -> WebhookEvent | None:
    """The lifecycle event a final status is (none for a cancelled run)."""
    return _FINAL_EVENTS.get(status)


def ledger_kind(channel: str, event: str) -> str:
    """The notifications ledger's kind of this channel's notification of ``event``."""
    return f"{PREFIX}:{channel}:{event}"


def parse_kind(kind: str) -> tuple[str, str] | None:
    """(channel, event) of a webhook ledger kind; None for an email's kind."""
    prefix, _, rest = kind.partition(":")
    channel, _, event = rest.partition(":")
    return (channel, event) if prefix == PREFIX and channel and event else None


def subscribed(definition: ExportDefinition, event: WebhookEvent) -> list[str]:
    """The definition's channels subscribed to ``event``, by name."""
    return [name for name, channel in definition.notifications.webhooks.items() if event in channel.events]


def message_id(run_ids: Sequence[uuid.UUID], channel: str, event: str) -> str:
    """The ``webhook-id``: the same for every attempt of one (run, channel, event) notification."""
    key = ",".join(sorted(str(run_id) for run_id in run_ids)) + f"|{channel}|{event}"
    return f"msg_{uuid.uuid5(_NAMESPACE, key).hex}"


@dataclass(frozen=True)
class WebhookMessage:
    """One notification for one channel: its id and its body."""

    id: str
    body: bytes


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _run_data(record: RunRecord, link_base_url: str | None) -> dict[str, object]:
    return {
        "run_id": str(record.run_id),
        "status": record.status.value,
        "trigger": record.trigger,
        "scheduled_for": _iso(record.scheduled_for),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "extracted": record.extracted,
        "delivered": record.delivered,
        "failed": record.failed,
        "changes": None
        if record.added is None
        else {
            "added": record.added,
            "changed": record.changed,
            "unchanged": record.unchanged,
            "removed": record.removed,
        },
        "retried": record.retried,
        "errors": list(record.error_samples),
        "link": f"{link_base_url.rstrip('/')}/runs/{record.run_id}" if link_base_url else None,
    }


def run_message(
    *,
    definition: ExportDefinition,
    channel_name: str,
    channel: WebhookChannel,
    event: str,
    record: RunRecord,
    now: datetime,
    link_base_url: str | None = None,
) -> WebhookMessage:
    """The notification of one run's ``event`` for ``channel``."""
    data: dict[str, object] = {"definition": definition.name, "event": event, **_run_data(record, link_base_url)}
    headline = f"{definition.name}: {event.replace('_', ' ')}"
    facts = [f"Run {record.run_id}"]
    if record.status.is_final and record.status not in {RunStatus.SKIPPED, RunStatus.MISSED}:
        facts.append(f"delivered {record.delivered}, failed {record.failed} of {record.extracted}")
    if record.scheduled_for is not None and record.status in {RunStatus.SKIPPED, RunStatus.MISSED}:
        facts.append(f"scheduled for {record.scheduled_for.isoformat()}")
    facts += [f"error: {error}" for error in record.error_samples[:3]]
    return _message(channel, message_id([record.run_id], channel_name, event), event, data, headline, facts, now)


def digest_message(
    *,
    definition: ExportDefinition,
    channel_name: str,
    channel: WebhookChannel,
    records: Sequence[RunRecord],
    now: datetime,
) -> WebhookMessage:
    """One ``missed_digest`` notification listing ``records`` (runs missed at once, e.g. during an outage)."""
    missed = [{"run_id": str(r.run_id), "scheduled_for": _iso(r.scheduled_for)} for r in records]
    data: dict[str, object] = {
        "definition": definition.name,
        "event": MISSED_DIGEST,
        "count": len(records),
        "missed": missed,
    }
    times = sorted(r.scheduled_for for r in records if r.scheduled_for is not None)
    span = f"from {times[0].isoformat()} to {times[-1].isoformat()}" if times else ""
    headline = f"{definition.name}: {len(records)} scheduled runs missed"
    run_ids = [r.run_id for r in records]
    return _message(
        channel, message_id(run_ids, channel_name, MISSED_DIGEST), MISSED_DIGEST, data, headline, [span], now
    )


#: Slack's control characters in ``mrkdwn`` text (and a message's top-level ``text``), as its formatting
#: reference says to escape them: ``&`` first, so that an escape is not escaped twice.
_SLACK_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"))
#: The most characters a section block's text may have (Slack refuses the message beyond).
_SECTION_MAX = 3000


def slack_text(text: str) -> str:
    """``text`` as Slack shows it literally in ``mrkdwn``: ``&``, ``<`` and ``>`` as ``&amp;``, ``&lt;``, ``&gt;``."""
    for character, entity in _SLACK_ESCAPES:
        text = text.replace(character, entity)
    return text


def _cut_escaped(text: str, limit: int) -> str:
    """``text`` (escaped) cut to ``limit`` characters without leaving half an entity (``&am``) at its end."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    amp = cut.rfind("&", max(0, limit - 4))
    return cut[:amp] if amp != -1 and ";" not in cut[amp:] else cut


def _message(
    channel: WebhookChannel,
    id_: str,
    event: str,
    data: dict[str, object],
    headline: str,
    facts: list[str],
    now: datetime,
) -> WebhookMessage:
    if channel.format is WebhookFormat.SLACK:
        # Every fact may quote a partner or a user (an error sample, a failure reason): escaped, all of them.
        details = _cut_escaped("\n".join(slack_text(fact) for fact in facts if fact), _SECTION_MAX)
        body: dict[str, object] = {
            "text": slack_text(f"[member export] {headline}"),
            "blocks": [
                # plain_text, never formatted; and a headline is a definition's name (a slug) and an event's.
                {"type": "header", "text": {"type": "plain_text", "text": f"[member export] {headline}"[:150]}},
                {"type": "section", "text": {"type": "mrkdwn", "text": details or slack_text(headline)}},
            ],
        }
    else:
        body = {"type": f"member_export.run.{event}", "timestamp": now.isoformat(), "data": data}
    return WebhookMessage(id_, json.dumps(body, separators=(",", ":")).encode())
