"""An export definition as the Details screen's fields, and those fields back as the API's bodies. Pure.

The fields are flat (``query``, ``param.tier``, ``every``, ``time``, ``cron``, ``error_recipients``…); each
step becomes the body its use case takes (``save_definition_step``), unvalidated: the domain's models
validate it, and their messages are shown by the fields they name.
"""

from __future__ import annotations

from typing import Any

import yaml

from services.admin.console.forms import Form, Problems, parsed_yaml
from shared.domain.catalog_objects import ExportDefinition, SavedQuery, WebhookChannel, WebhookEvent, WebhookFormat
from shared.domain.query_parameters import ParameterType, coerce
from shared.domain.schedule import Every, Repeat
from shared.domain.secret_references import is_reference
from shared.yaml_text import NestedTooDeeply, load

#: The composer's fields each interval shows (the domain's Repeat takes exactly these; a unit test holds it).
COMPOSER_FIELDS: dict[str, tuple[str, ...]] = {
    Every.QUARTER_HOUR.value: (),
    Every.HALF_HOUR.value: (),
    Every.HOUR.value: ("minute",),
    Every.DAY.value: ("time",),
    Every.WEEK.value: ("weekday", "time"),
    Every.MONTH.value: ("day", "time"),
    Every.YEAR.value: ("day", "month", "time"),
}
#: What the webhooks field's hint lists, from the domain (so that it cannot drift from what a channel takes).
WEBHOOK_HINT: dict[str, tuple[str, ...]] = {
    "events": tuple(event.value for event in WebhookEvent),
    "default_events": tuple(
        event.value for event in WebhookChannel.model_fields["events"].get_default(call_default_factory=True)
    ),
    "formats": tuple(kind.value for kind in WebhookFormat),
}
#: The steps, in order, with their tab titles; ``general`` is the name, unit and priority above them.
STEPS = {"filter": "Filter", "destination": "Destination", "schedule": "Schedule", "notifications": "Notifications"}
#: The checkboxes of each part (an unchecked box is absent from the form).
CHECKBOXES = {
    "general": (),
    "filter": ("incremental",),
    "destination": (),
    "schedule": ("enabled", "advanced"),
    "notifications": ("error_enabled", "success_enabled"),
}
#: The fields of each part, to keep what was typed when a save is refused.
FIELDS = {
    "general": ("label", "name", "business_unit", "priority", "max_failure_percent", "pause_after_failed_runs"),
    "filter": ("query", "watermark_column"),
    "destination": (
        "template",
        "sync_mode",
        "sync_added",
        "sync_changed",
        "sync_removed",
        "sync_max_removed",
        "retry_runs",
        "retry_invalid_runs",
    ),
    "schedule": (
        "recurrence",
        "once_date",
        "once_time",
        "every",
        "minute",
        "time",
        "weekday",
        "day",
        "month",
        "cron",
        "from",
        "to",
        "timezone",
        "overlap",
    ),
    "notifications": ("error_recipients", "success_recipients", "webhooks"),
}
#: Change mode's kinds, each sent with a template of its own, the destination's (blank) or not at all.
SYNC_KINDS = ("added", "changed", "removed")
#: The choice "not sent" (``false``) of a kind's template: no name is "-" (a name starts with a letter or digit).
NOT_SENT = "-"
DEFAULTS: dict[str, Any] = {
    "priority": "normal",
    "recurrence": "none",
    "every": "day",
    "minute": "0",
    "time": "02:00",
    "weekday": "mon",
    "day": "1",
    "month": "1",
    "timezone": "UTC",
    "overlap": "skip",
    "sync_mode": "full",
    "retry_runs": "3",
    "retry_invalid_runs": "0",
}


def values_of(definition: ExportDefinition | None) -> dict[str, Any]:
    """The screen's fields for ``definition`` (the defaults of a new one for None)."""
    values: dict[str, Any] = dict(DEFAULTS)
    if definition is None:
        return values
    schedule, policy = definition.schedule, definition.failure_policy
    values.update(
        label=definition.label or "",
        name=definition.name,
        business_unit=definition.business_unit or "",
        priority=definition.priority.value,
        max_failure_percent=_text(policy.max_failure_percent),
        pause_after_failed_runs=_text(policy.pause_after_failed_runs),
        query=definition.query,
        incremental=definition.incremental is not None,
        watermark_column=definition.incremental.watermark_column if definition.incremental else "",
        template=definition.template,
        **_sync_values(definition),
        retry_runs=str(definition.retry_rejected.runs),
        retry_invalid_runs=str(definition.retry_rejected.invalid_runs),
        enabled=schedule.enabled,
        timezone=schedule.timezone,
        overlap=schedule.overlap.value,
        error_enabled=definition.notifications.error.enabled,
        error_recipients=", ".join(definition.notifications.error.recipients),
        success_enabled=definition.notifications.success.enabled,
        success_recipients=", ".join(definition.notifications.success.recipients),
        webhooks=_webhooks_yaml(definition),
        **{"from": _text(schedule.start_date), "to": _text(schedule.end_date)},
    )
    values.update({f"param.{name}": _text(value) for name, value in definition.parameters.items()})
    if schedule.once is not None:
        values.update(recurrence="once", once_date=schedule.once.date.isoformat(), once_time=_hhmm(schedule.once.time))
    elif schedule.repeat is not None:
        values.update(recurrence="repeat", cron=schedule.repeat.expression, advanced=schedule.repeat.cron is not None)
        if schedule.repeat.every is not None:
            values.update(_composer_values(schedule.repeat))
    return values


def _sync_values(definition: ExportDefinition) -> dict[str, str]:
    sync = definition.sync
    values = {"sync_mode": sync.mode.value, "sync_max_removed": _text(sync.max_removed)}
    for kind in SYNC_KINDS:
        chosen = getattr(sync, kind)
        values[f"sync_{kind}"] = NOT_SENT if chosen is False else (chosen or "")
    return values


def _webhooks_yaml(definition: ExportDefinition) -> str:
    """The webhooks as YAML, one mapping per channel by its name (a ``signing_secret`` is a reference, shown)."""
    hooks = {
        name: channel.model_dump(mode="json", exclude_none=True)
        for name, channel in definition.notifications.webhooks.items()
    }
    if not hooks:
        return ""
    return yaml.safe_dump(hooks, sort_keys=False, allow_unicode=True, default_flow_style=False).strip()


def _composer_values(repeat: Repeat) -> dict[str, Any]:
    assert repeat.every is not None
    values: dict[str, Any] = {"every": repeat.every.value}
    for name in COMPOSER_FIELDS[repeat.every.value]:
        value = getattr(repeat, name)
        values[name] = _hhmm(value) if name == "time" else (value.value if name == "weekday" else str(value))
    return values


def submitted(values: dict[str, Any], form: Form, part: str) -> dict[str, Any]:
    """``values`` with one part's fields as the form sent them (to show again what was typed)."""
    merged = dict(values)
    merged.update({name: form.text(name) for name in FIELDS[part] if name in form.fields})
    merged.update({name: form.flag(name) for name in CHECKBOXES[part]})
    if part == "notifications" and "webhooks" in merged:
        merged["webhooks"] = without_literal_secrets(merged["webhooks"])
    if part == "filter":
        merged = {k: v for k, v in merged.items() if not k.startswith("param.")}
        merged.update({name: form.text(name) for name in form.fields if name.startswith("param.")})
    return merged


#: Shown in place of webhooks text that is not a YAML mapping or list and mentions a signing secret (it cannot be
#: redacted reliably, so it is not shown at all).
NOT_SHOWN_AGAIN = "# Not shown again: the text was not a YAML mapping and mentioned a signing secret. Type it again."


def without_literal_secrets(webhooks: str) -> str:
    """The webhooks as typed, to show again after a refusal, less any ``signing_secret`` that is not an ``env:`` or
    ``file:`` reference: the domain refuses it because it may be the secret itself, which is never put in a page.

    Such a value is blanked wherever it is (a pasted manifest's ``webhooks:`` block nests the channels one level
    deeper; ``signing-secret`` is caught too) and the YAML written anew (its comments and layout are lost); text
    without one is shown as typed. Text that is not a YAML mapping or list cannot be redacted reliably: when it
    mentions ``signing`` it is not shown again at all (a comment says why).
    """
    try:
        hooks = load(webhooks)
    except (yaml.YAMLError, NestedTooDeeply):  # not readable (a date that does not exist too): not a mapping to redact
        hooks = None
    if not isinstance(hooks, dict | list):
        return NOT_SHOWN_AGAIN if "signing" in webhooks.lower() else webhooks
    if not _blank_literal_secrets(hooks):
        return webhooks
    return yaml.safe_dump(hooks, sort_keys=False, allow_unicode=True, default_flow_style=False).strip()


def _blank_literal_secrets(node: Any) -> bool:
    """Blank, at any depth of ``node``, each value under a key naming a signing secret that is not a reference, and
    each other text mentioning one (``"signing_secret: whsec_…"`` quoted whole); whether any was."""
    blanked = False
    items: Any = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        named = isinstance(key, str) and "signing" in key.lower()
        if isinstance(value, dict | list) and not named:
            blanked = _blank_literal_secrets(value) or blanked
        elif value in (None, "") or (isinstance(value, str) and is_reference(value)):
            continue
        elif named or (isinstance(value, str) and "signing" in value.lower()):
            node[key] = ""
            blanked = True
    return blanked


def as_form(values: dict[str, Any]) -> Form:
    """``values`` as the form that would send them (a checked box sends "on", an unchecked one nothing)."""
    fields = {name: [value] for name, value in values.items() if isinstance(value, str)}
    return Form(fields | {name: ["on"] for name, value in values.items() if value is True})


# --- the fields back as bodies ------------------------------------------------------------------------


def general_body(form: Form) -> dict[str, Any]:
    """Label, name, business unit, priority and failure policy (validated by ExportDefinition)."""
    body: dict[str, Any] = {
        "label": form.optional("label"),
        "business_unit": form.optional("business_unit"),
        "priority": form.text("priority", "normal"),
        "failure_policy": {
            "max_failure_percent": form.optional("max_failure_percent"),
            "pause_after_failed_runs": form.optional("pause_after_failed_runs"),
        },
    }
    if form.optional("name"):
        body["name"] = form.text("name")
    return body


def filter_body(form: Form, query: SavedQuery | None, problems: Problems) -> dict[str, Any]:
    """Step 1: the query, its parameters typed as it declares them (a value that is not of its type is a
    problem named ``parameters.<name>``), full or incremental."""
    parameters: dict[str, Any] = {}
    for name, declared in (query.parameters if query else {}).items():
        text = form.text(f"param.{name}")
        if not text:
            continue  # the query's default, or the run request's value
        try:
            value = coerce(declared.type, text)
        except ValueError as exc:
            problems.add(f"parameters.{name}", str(exc))
            continue
        keep_text = declared.type in {ParameterType.STRING, ParameterType.DATE, ParameterType.DATETIME}
        parameters[name] = text if keep_text else value
    incremental = {"watermark_column": form.text("watermark_column")} if form.flag("incremental") else None
    return {"query": form.text("query"), "parameters": parameters, "incremental": incremental}


def destination_body(form: Form) -> dict[str, Any]:
    """Step 2: the HTTP operation (template), the sync mode with change mode's templates per kind and its bound on
    removals, and how many later runs send refused members again. A form without the sync or the retry fields
    (an older page) leaves the stored settings as they are."""
    body: dict[str, Any] = {"template": form.text("template")}
    if "sync_mode" in form.fields:
        sync: dict[str, Any] = {"mode": form.text("sync_mode") or "full"}
        for kind in SYNC_KINDS:
            chosen = form.text(f"sync_{kind}")
            if chosen:
                sync[kind] = False if chosen == NOT_SENT else chosen
        limit = form.optional("sync_max_removed")
        if limit is not None:
            # A bare count is a number (the domain refuses the string "500": members or percent?).
            sync["max_removed"] = int(limit) if limit.isascii() and limit.isdigit() else limit
        body["sync"] = sync
    if "retry_runs" in form.fields or "retry_invalid_runs" in form.fields:
        retry = {"runs": form.optional("retry_runs"), "invalid_runs": form.optional("retry_invalid_runs")}
        # Blank: the default (3 and 0).
        body["retry_rejected"] = {name: value for name, value in retry.items() if value is not None}
    return body


def schedule_body(form: Form) -> dict[str, Any]:
    """Step 3: as the Schedule model reads it (``once``, the composer's ``repeat``, or Advanced mode's ``cron``)."""
    schedule: dict[str, Any] = {
        "enabled": form.flag("enabled"),
        "timezone": form.text("timezone") or "UTC",
        "overlap": form.text("overlap") or "skip",
    }
    for bound in ("from", "to"):
        if form.optional(bound):
            schedule[bound] = form.text(bound)
    recurrence = form.text("recurrence")
    if recurrence == "once":
        schedule["once"] = {"date": form.text("once_date"), "time": form.text("once_time")}
    elif recurrence == "repeat":
        if form.flag("advanced"):
            schedule["repeat"] = {"cron": form.text("cron")}
        else:
            every = form.text("every")
            schedule["repeat"] = {"every": every} | {name: form.text(name) for name in COMPOSER_FIELDS.get(every, ())}
    return schedule


def notifications_body(form: Form, problems: Problems) -> dict[str, Any]:
    """Step 4: each toggle with its recipients (one a line, or comma-separated), and the webhooks as YAML (blank:
    none; a form without the field keeps the stored ones)."""
    body: dict[str, Any] = {
        kind: {"enabled": form.flag(f"{kind}_enabled"), "recipients": form.lines(f"{kind}_recipients")}
        for kind in ("error", "success")
    }
    if "webhooks" in form.fields:
        body["webhooks"] = _webhooks(form.fields["webhooks"][-1], problems)
    return body


def _webhooks(text: str, problems: Problems) -> Any:
    """The webhooks field's YAML (or JSON) as written; the domain validates the channels."""
    if not text.strip():
        return {}
    read, value = parsed_yaml(text, problems, "notifications.webhooks")
    if not read:
        return {}
    if not isinstance(value, dict):
        problems.add("notifications.webhooks", "must be a mapping: each webhook's name, then its url, events…")
        return {}
    return value


def definition_body(form: Form, query: SavedQuery | None, problems: Problems) -> dict[str, Any]:
    """A whole new definition: the general fields and the four steps."""
    return (
        general_body(form)
        | filter_body(form, query, problems)
        | destination_body(form)
        | {"schedule": schedule_body(form), "notifications": notifications_body(form, problems)}
    )


def step_of(problems: Problems) -> str:
    """The first step a problem is in (to open its tab), ``general`` when none is."""
    owners = {
        "query": "filter", "parameters": "filter", "incremental": "filter", "template": "destination",
        "sync": "destination", "retry_rejected": "destination",
        "schedule": "schedule", "notifications": "notifications",
    }  # fmt: skip
    for path in problems.by_field:
        if (owner := owners.get(path.split(".")[0])) is not None:
            return owner
    return "general"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _hhmm(value: Any) -> str:
    return value.strftime("%H:%M") if value is not None else ""
