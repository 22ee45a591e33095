"""The console's fields for settings the admin API and YAML already had: a definition's sync mode (with change mode's
templates, its bound on removals and Run now's mass-removal override), its retries of refused members and its
webhooks; a profile's TLS, forward proxy and circuit breaker. Each is set, changed and cleared through the console's
forms (the real app, in process, signed in with a token) and read back through the admin API; refusals are shown by
the field they name; a stored secret is kept when its field is left blank and is never in a page.
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any, get_args

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from services.admin.console.definition_form import STEPS
from shared.application.errors import PublishFailed
from shared.domain.catalog_objects import (
    ConnectionProfile,
    ExportDefinition,
    TlsSettings,
    WebhookChannel,
    WebhookEvent,
    WebhookFormat,
)
from shared.domain.circuit_breaker import CircuitBreakerSettings
from tests.admin_app import InProcessApi, in_process_api, seed
from tests.partner_tls import partner_tls_material

with warnings.catch_warnings():
    # As tests.admin_app: Starlette 1.x would rather have httpx2; httpx (installed) works the same.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

PROXY_PASSWORD = "proxy-pass-secret-5521"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[InProcessApi]:
    # Plain http in the test client: cookies without Secure (as `make up` and the browser tests run it).
    monkeypatch_module.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")
    with in_process_api(tmp_path_factory.mktemp("console-fields")) as in_process, in_process.client() as client:
        seed(client)
        # A second template, for change mode's templates per kind.
        answer = client.post(
            "/api/v1/http-templates",
            json={"name": "remove", "query": "gold", "profile": "partner", "method": "DELETE", "path": "/members"},
        )
        assert answer.status_code == 201, answer.text
        yield in_process


@dataclass(frozen=True)
class Pem:
    ca: str
    client_certificate: str
    client_key: str
    other_key: str

    @staticmethod
    def secret_line(key: str) -> str:
        """A line of a private key's body (what must never be in a page)."""
        return key.splitlines()[2]


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Pem:
    material = partner_tls_material(tmp_path_factory.mktemp("pem"))
    return Pem(
        ca=material.ca.read_text().strip(),
        client_certificate=material.client.certificate.read_text().strip(),
        client_key=material.client.key.read_text().strip(),
        other_key=material.server.key.read_text().strip(),
    )


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


class Console:
    """A signed-in console session: pages fetched, forms posted with their CSRF token."""

    def __init__(self, client: TestClient, csrf: str) -> None:
        self.client, self.csrf = client, csrf

    def page(self, path: str) -> str:
        answer = self.client.get(f"/console{path}")
        assert answer.status_code == 200, answer.text
        return answer.text

    def post(self, path: str, fields: dict[str, str]) -> Any:
        return self.client.post(f"/console{path}", data={"csrf_token": self.csrf, **fields}, follow_redirects=False)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


@contextmanager
def signed_in(api: InProcessApi, who: str) -> Iterator[Console]:
    with TestClient(api.app, raise_server_exceptions=True) as client:
        sign_in = client.get("/console/sign-in")
        answer = client.post(
            "/console/sign-in",
            data={"csrf_token": _csrf(sign_in.text), "token": api.tokens[who]},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        yield Console(client, _csrf(client.get("/console/exports").text))


@pytest.fixture
def console(api: InProcessApi) -> Iterator[Console]:
    with signed_in(api, "admin") as admin:
        yield admin


def _read(api: InProcessApi, collection: str, name: str) -> dict[str, Any]:
    with api.client() as client:
        answer = client.get(f"/api/v1/{collection}/{name}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


def _set(answered: dict[str, Any]) -> dict[str, Any]:
    """An API answer's fields that are set (it answers unset ones as null)."""
    return {key: value for key, value in answered.items() if value is not None}


def _field_error(html: str, field: str) -> str:
    """The message shown beside ``field`` (its ``<id>-error`` paragraph)."""
    found = re.search(rf'<p class="field-error" id="{re.escape(field)}-error">([^<]*)</p>', html)
    assert found is not None, f"no message beside {field}"
    return unescape(found.group(1))


# --- export definitions ---------------------------------------------------------------------------------


DESTINATION = {"step": "destination", "template": "upsert"}


def test_sync_mode_with_templates_per_kind_and_removal_bound_is_set_changed_and_cleared(console: Console, api):
    answer = console.post(
        "/exports/nightly/steps/destination",
        DESTINATION
        | {
            "sync_mode": "changes",
            "sync_added": "",
            "sync_changed": "-",
            "sync_removed": "remove",
            "sync_max_removed": "10%",
            "retry_runs": "",
            "retry_invalid_runs": "",
        },
    )
    assert answer.status_code == 303, answer.text
    sync = _read(api, "export-definitions", "nightly")["sync"]
    assert (sync["mode"], sync.get("added"), sync["changed"], sync["removed"], sync["max_removed"]) == (
        "changes",
        None,
        False,
        "remove",
        "10%",
    )
    page = console.page("/exports/nightly?step=destination")
    assert '<option value="remove" selected>' in page
    assert '<option value="-" selected>' in page
    assert 'value="10%"' in page

    # Changed: a count, removals back to not sent (the default).
    answer = console.post(
        "/exports/nightly/steps/destination",
        DESTINATION | {"sync_mode": "changes", "sync_changed": "upsert", "sync_removed": "", "sync_max_removed": "500"},
    )
    assert answer.status_code == 303, answer.text
    sync = _read(api, "export-definitions", "nightly")["sync"]
    assert (sync["changed"], sync.get("removed"), sync["max_removed"]) == ("upsert", None, 500)

    # Cleared: full mode, nothing of change mode left.
    answer = console.post("/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "full"})
    assert answer.status_code == 303, answer.text
    sync = _read(api, "export-definitions", "nightly")["sync"]
    assert sync["mode"] == "full"
    assert not {key: value for key, value in sync.items() if key != "mode" and value is not None}


def test_a_refused_sync_setting_is_shown_beside_its_field_and_nothing_is_saved(console: Console, api):
    before = _read(api, "export-definitions", "nightly")
    answer = console.post(
        "/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "changes", "sync_max_removed": "500 members"}
    )
    assert answer.status_code == 422
    assert "expected a share" in _field_error(answer.text, "sync_max_removed")
    assert 'value="500 members"' in answer.text  # shown again as typed
    # Templates per kind in full mode: the application layer's refusal, by its field.
    answer = console.post(
        "/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "full", "sync_removed": "remove"}
    )
    assert answer.status_code == 422
    assert "sync mode 'changes' only" in _field_error(answer.text, "sync_removed")
    assert _read(api, "export-definitions", "nightly") == before


def test_retry_rejected_is_set_changed_and_cleared_and_a_bad_value_is_shown_by_its_field(console: Console, api):
    answer = console.post(
        "/exports/nightly/steps/destination", DESTINATION | {"retry_runs": "5", "retry_invalid_runs": "2"}
    )
    assert answer.status_code == 303, answer.text
    assert _read(api, "export-definitions", "nightly")["retry_rejected"] == {"runs": 5, "invalid_runs": 2}
    assert 'id="retry_runs" name="retry_runs" type="number" min="0" max="100" value="5"' in console.page(
        "/exports/nightly?step=destination"
    )
    answer = console.post("/exports/nightly/steps/destination", DESTINATION | {"retry_runs": "101"})
    assert answer.status_code == 422
    assert "less than or equal to 100" in _field_error(answer.text, "retry_runs")
    # Blank: the defaults.
    answer = console.post(
        "/exports/nightly/steps/destination", DESTINATION | {"retry_runs": "", "retry_invalid_runs": ""}
    )
    assert answer.status_code == 303, answer.text
    assert _read(api, "export-definitions", "nightly")["retry_rejected"] == {"runs": 3, "invalid_runs": 0}


def test_a_destination_form_without_the_new_fields_keeps_the_stored_settings(console: Console, api):
    console.post(
        "/exports/nightly/steps/destination",
        DESTINATION | {"sync_mode": "changes", "sync_max_removed": "7", "retry_runs": "4"},
    )
    answer = console.post("/exports/nightly/steps/destination", DESTINATION)
    assert answer.status_code == 303, answer.text
    stored = _read(api, "export-definitions", "nightly")
    assert (stored["sync"]["mode"], stored["sync"]["max_removed"], stored["retry_rejected"]["runs"]) == (
        "changes",
        7,
        4,
    )
    console.post("/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "full", "retry_runs": ""})


NOTIFICATIONS = {"step": "notifications", "error_enabled": "on", "error_recipients": "ops@example.com"}


def _stored_webhook_urls(api: InProcessApi) -> dict[str, str]:
    """The definition ``nightly``'s webhook URLs as stored (as the notifier reads them; reads show them masked)."""
    definition = api.app.state.context.definitions.get(ExportDefinition, "nightly")
    return {name: channel.url for name, channel in definition.notifications.webhooks.items()}


def test_webhooks_are_set_changed_and_cleared_and_a_refusal_is_shown_beside_them(console: Console, api):
    hooks = (
        "ops-chat:\n  url: https://hooks.example.com/T1\n  format: slack\n  events: [failed, recovered]\n"
        "audit:\n  url: https://audit.example.com/events\n  signing_secret: env:PARTNER_AUDIT_WHSEC\n"
    )
    answer = console.post("/exports/nightly/steps/notifications", NOTIFICATIONS | {"webhooks": hooks})
    assert answer.status_code == 303, answer.text
    webhooks = _read(api, "export-definitions", "nightly")["notifications"]["webhooks"]
    assert set(webhooks) == {"ops-chat", "audit"}
    assert (webhooks["ops-chat"]["format"], webhooks["ops-chat"]["events"]) == ("slack", ["failed", "recovered"])
    assert webhooks["audit"]["signing_secret"] == "env:PARTNER_AUDIT_WHSEC"
    page = console.page("/exports/nightly?step=notifications")
    assert "https://hooks.example.com/**********" in page  # the path and query of a webhook's URL are its secret
    assert "hooks.example.com/T1" not in page
    assert "env:PARTNER_AUDIT_WHSEC" in page

    # The text area saved back as shown keeps the stored URLs.
    shown = re.search(r'<textarea id="webhooks" name="webhooks"[^>]*>(.*?)</textarea>', page, re.S)
    assert shown is not None
    answer = console.post("/exports/nightly/steps/notifications", NOTIFICATIONS | {"webhooks": unescape(shown[1])})
    assert answer.status_code == 303, answer.text
    assert _stored_webhook_urls(api) == {
        "ops-chat": "https://hooks.example.com/T1",
        "audit": "https://audit.example.com/events",
    }

    # Saving the step without the field (an older page) keeps them; a refused channel is shown by the field.
    answer = console.post("/exports/nightly/steps/notifications", NOTIFICATIONS)
    assert answer.status_code == 303, answer.text
    assert set(_read(api, "export-definitions", "nightly")["notifications"]["webhooks"]) == {"ops-chat", "audit"}
    answer = console.post(
        "/exports/nightly/steps/notifications",
        NOTIFICATIONS | {"webhooks": "audit:\n  url: https://audit.example.com/e\n  signing_secret: whsec_literal\n"},
    )
    assert answer.status_code == 422
    assert _field_error(answer.text, "webhooks").startswith("audit.signing_secret: give an env:NAME or file:PATH")
    # What was typed is shown again, less the literal secret (it may be the very secret that does not belong here).
    assert "https://audit.example.com/e" in answer.text
    assert "whsec_literal" not in answer.text
    answer = console.post("/exports/nightly/steps/notifications", NOTIFICATIONS | {"webhooks": "[not a mapping"})
    assert answer.status_code == 422
    assert "not valid YAML or JSON" in _field_error(answer.text, "webhooks")

    # Changed, then cleared.
    answer = console.post(
        "/exports/nightly/steps/notifications",
        NOTIFICATIONS | {"webhooks": '{"audit": {"url": "https://audit.example.com/v2"}}'},
    )
    assert answer.status_code == 303, answer.text
    assert list(_read(api, "export-definitions", "nightly")["notifications"]["webhooks"]) == ["audit"]
    assert _stored_webhook_urls(api) == {"audit": "https://audit.example.com/v2"}
    answer = console.post("/exports/nightly/steps/notifications", NOTIFICATIONS | {"webhooks": ""})
    assert answer.status_code == 303, answer.text
    assert _read(api, "export-definitions", "nightly")["notifications"]["webhooks"] == {}


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        # A manifest's webhooks: block pasted whole: the secret one level deeper than the field takes.
        (
            "webhooks:\n  ops:\n    url: https://hooks.example.com/x\n    signing_secret: whsec_LEAKED3\n",
            "webhooks.url: Field required",
        ),
        (
            "ops:\n  url: https://hooks.example.com/x\n  signing_secret: whsec_LEAKED3\n  events: [failed\n",
            "not valid YAML or JSON",
        ),
    ],
    ids=["manifest-block", "not-yaml"],
)
def test_a_refused_webhooks_text_never_shows_a_literal_signing_secret_again(
    console: Console, api: InProcessApi, typed: str, message: str
):
    before = _read(api, "export-definitions", "nightly")["notifications"]
    answer = console.post("/exports/nightly/steps/notifications", NOTIFICATIONS | {"webhooks": typed})
    assert answer.status_code == 422
    assert message in _field_error(answer.text, "webhooks")
    assert "whsec_LEAKED3" not in answer.text
    assert _read(api, "export-definitions", "nightly")["notifications"] == before


def test_a_viewer_sees_the_new_settings_read_only(console: Console, api: InProcessApi):
    console.post(
        "/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "changes", "sync_max_removed": "25%"}
    )
    console.post(
        "/exports/nightly/steps/notifications",
        NOTIFICATIONS | {"webhooks": "ops:\n  url: https://hooks.example.com/viewer\n"},
    )
    try:
        with signed_in(api, "viewer") as viewer:
            page = viewer.page("/exports/nightly?step=destination")
            assert '<option value="changes" selected>' in page
            assert 'value="25%"' in page
            assert "https://hooks.example.com/**********" in page
            assert "hooks.example.com/viewer" not in page
            assert page.count('<fieldset disabled class="step">') == len(STEPS)
            refused = viewer.post("/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "full"})
            assert refused.status_code == 422
            assert "may not write" in refused.text
        assert _read(api, "export-definitions", "nightly")["sync"]["mode"] == "changes"
    finally:
        console.post("/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "full"})
        console.post("/exports/nightly/steps/notifications", NOTIFICATIONS | {"webhooks": ""})


def test_run_now_offers_the_mass_removal_override_in_change_mode_and_the_run_carries_it(console: Console, api):
    assert 'name="allow_mass_removal"' not in console.page("/exports/nightly/run")  # full mode: nothing to allow
    assert 'type="checkbox"' not in console.page("/profiles/partner/delete")
    console.post("/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "changes"})
    try:
        page = console.page("/exports/nightly/run")
        assert 'name="allow_mass_removal"' in page
        assert "(50%)" in page
        for allowed in (True, False):
            fields = {"idempotency_key": f"console-test-{allowed}"} | ({"allow_mass_removal": "on"} if allowed else {})
            answer = console.post("/exports/nightly/run", fields)
            assert answer.status_code == 303, answer.text
            run_id = answer.headers["location"].rsplit("/", 1)[-1]
            assert _read(api, "runs", run_id)["mass_removal_allowed"] is allowed
            assert api.publisher.run_requests[-1].allow_mass_removal is allowed
            # The other confirmations (the same page) offer no checkbox.
            assert 'type="checkbox"' not in console.page(f"/runs/{run_id}/cancel")
    finally:
        console.post("/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "full"})


class _Unacknowledged:
    """A publisher whose broker does not acknowledge a run's request (as a frozen one), until ``back``."""

    def __init__(self, recording: Any) -> None:
        self.recording, self.back = recording, False

    def publish_run_request(self, request: Any) -> None:
        if not self.back:
            raise PublishFailed("the run request on run-requests", "KafkaTimeoutError: no acknowledgement in 15 s")
        self.recording.publish_run_request(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.recording, name)


def test_run_now_kafka_did_not_acknowledge_shows_the_form_again_with_the_submitted_key_and_the_retry_is_the_run(
    console: Console, api
):
    """The 503 says to retry with the same Idempotency-Key: the page's form carries the one submitted (and the
    override as ticked), so submitting it again publishes the queued run's request, not a second run (before: the
    error page, and a new form made a new key)."""
    context = api.app.state.context
    publisher = context.publisher
    context.publisher = unacknowledged = _Unacknowledged(publisher)
    console.post("/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "changes"})
    try:
        key = f"console-{uuid.uuid4()}"
        failed = console.post("/exports/nightly/run", {"idempotency_key": key, "allow_mass_removal": "on"})
        assert failed.status_code == 503, failed.text
        page = unescape(failed.text)
        alert = page.split('role="alert">', 1)[1].split("</p>", 1)[0]
        assert alert.startswith("run "), alert
        assert "was recorded queued" in alert, alert
        run_id = alert.split()[1]
        assert f'name="idempotency_key" value="{key}"' in page
        assert 'name="allow_mass_removal" checked' in page
        assert 'action="/console/exports/nightly/run"' in page
        unacknowledged.back = True
        fields = {"idempotency_key": _hidden(page, "idempotency_key"), "allow_mass_removal": "on"}
        again = console.post("/exports/nightly/run", fields)
        assert again.status_code == 303, again.text
        assert again.headers["location"].rsplit("/", 1)[-1] == run_id
        assert str(api.publisher.run_requests[-1].run_id) == run_id
    finally:
        context.publisher = publisher
        console.post("/exports/nightly/steps/destination", DESTINATION | {"sync_mode": "full"})


def _hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found is not None, name
    return found.group(1)


def test_a_new_definition_takes_the_new_fields(console: Console, api):
    answer = console.post(
        "/exports/new",
        {
            "label": "Changes only",
            "name": "changes-only",
            "query": "gold",
            "template": "upsert",
            "sync_mode": "changes",
            "sync_removed": "remove",
            "retry_runs": "1",
            "webhooks": "ops:\n  url: https://hooks.example.com/ops\n",
            "step": "destination",
        },
    )
    assert answer.status_code == 303, answer.text
    stored = _read(api, "export-definitions", "changes-only")
    assert (stored["sync"]["mode"], stored["sync"]["removed"], stored["retry_rejected"]["runs"]) == (
        "changes",
        "remove",
        1,
    )
    assert list(stored["notifications"]["webhooks"]) == ["ops"]


# --- connection profiles --------------------------------------------------------------------------------


PROFILE = {"base_url": "https://partner.example.com/v2", "auth_type": "basic", "auth_username": "exporter"}


def test_tls_is_set_changed_and_cleared_and_the_client_key_is_kept_when_left_blank_never_shown(
    console: Console, api: InProcessApi, pem: Pem
):
    answer = console.post(
        "/profiles/partner",
        PROFILE
        | {
            "tls_ca_bundle": pem.ca.replace("\n", "\r\n"),
            "tls_client_certificate": pem.client_certificate,
            "tls_client_key": pem.client_key,
            "tls_min_version": "TLS1.3",
        },
    )
    assert answer.status_code == 303, answer.text
    tls = _read(api, "connection-profiles", "partner")["tls"]
    assert (tls["ca_bundle"], tls["client_certificate"], tls["min_version"]) == (
        pem.ca,
        pem.client_certificate,
        "TLS1.3",
    )
    assert tls["client_key"] == "**********"
    stored = api_profile(api)
    assert stored.tls is not None
    assert stored.tls.client_key is not None
    assert stored.tls.client_key.get_secret_value() == pem.client_key
    page = console.page("/profiles/partner")
    assert pem.secret_line(pem.client_key) not in page
    assert "stored (hidden): leave blank to keep it" in page
    assert pem.ca.splitlines()[1] in page  # the pem.ca bundle is public: shown

    # Changed, the key left blank: kept; then a new key.
    answer = console.post(
        "/profiles/partner",
        PROFILE
        | {
            "tls_ca_bundle": "",
            "tls_client_certificate": pem.client_certificate,
            "tls_client_key": "",
            "tls_min_version": "TLS1.2",
        },
    )
    assert answer.status_code == 303, answer.text
    stored = api_profile(api)
    assert stored.tls is not None
    assert stored.tls.ca_bundle is None
    assert stored.tls.min_version == "TLS1.2"
    assert stored.tls.client_key is not None
    assert stored.tls.client_key.get_secret_value() == pem.client_key
    answer = console.post(
        "/profiles/partner",
        PROFILE
        | {
            "tls_client_certificate": pem.client_certificate,
            "tls_client_key": pem.other_key,
            "tls_min_version": "TLS1.2",
        },
    )
    assert answer.status_code == 303, answer.text
    stored = api_profile(api)
    assert stored.tls is not None
    assert stored.tls.client_key is not None
    assert stored.tls.client_key.get_secret_value() == pem.other_key

    # A key that is not one: refused by its field, the typed key not put back in the page.
    answer = console.post(
        "/profiles/partner",
        PROFILE
        | {
            "tls_client_certificate": pem.client_certificate,
            "tls_client_key": "not-a-key-secret-8812",
            "tls_min_version": "TLS1.2",
        },
    )
    assert answer.status_code == 422
    assert "PEM private key" in _field_error(answer.text, "tls_client_key")
    assert "not-a-key-secret-8812" not in answer.text
    # A profile page without the TLS fields keeps them.
    answer = console.post("/profiles/partner", PROFILE)
    assert answer.status_code == 303, answer.text
    assert api_profile(api).tls == stored.tls

    # Cleared: every field blank and the default version.
    answer = console.post(
        "/profiles/partner",
        PROFILE
        | {"tls_ca_bundle": "", "tls_client_certificate": "", "tls_client_key": "", "tls_min_version": "TLS1.2"},
    )
    assert answer.status_code == 303, answer.text
    assert _read(api, "connection-profiles", "partner").get("tls") is None


@pytest.mark.parametrize("field", ["tls_ca_bundle", "tls_client_certificate"])
def test_a_private_key_pasted_into_a_certificate_field_is_refused_by_the_field_and_never_shown_or_stored(
    console: Console, api: InProcessApi, pem: Pem, field: str
):
    # A client.pem (certificate and key, as many partners send it) pasted whole: the key would be stored in a field
    # that is not a secret (unencrypted, answered unmasked, put back in the text area).
    before = _read(api, "connection-profiles", "partner")
    bundle = f"{pem.client_certificate}\n{pem.client_key}"
    typed = {"tls_client_certificate": pem.client_certificate, "tls_client_key": pem.client_key} | {field: bundle}
    answer = console.post("/profiles/partner", PROFILE | typed | {"tls_min_version": "TLS1.2"})
    assert answer.status_code == 422
    assert _field_error(answer.text, field) == "holds a private key: a private key belongs in tls.client_key, not here"
    assert pem.secret_line(pem.client_key) not in answer.text
    assert _read(api, "connection-profiles", "partner") == before

    # The admin API (and so YAML applied through it) refuses it too, by the field, the key not quoted.
    spec = {
        "name": "partner",
        "base_url": "https://partner.example.com/v2",
        "tls": {"client_certificate": pem.client_certificate, "client_key": pem.client_key}
        | {field.removeprefix("tls_"): bundle},
    }
    with api.client() as client:
        refused = client.put("/api/v1/connection-profiles/partner", json=spec)
    assert refused.status_code == 422
    assert f"tls.{field.removeprefix('tls_')}" in refused.text
    assert "a private key belongs in tls.client_key" in refused.text
    assert pem.secret_line(pem.client_key) not in refused.text
    with api.client("viewer") as client:
        assert pem.secret_line(pem.client_key) not in client.get("/api/v1/connection-profiles/partner").text


def test_proxy_is_set_changed_and_cleared_and_its_password_is_kept_when_left_blank_never_shown(console: Console, api):
    proxy = {"proxy_url": "http://proxy.internal:3128", "proxy_username": "exporter"}
    answer = console.post("/profiles/partner", PROFILE | proxy | {"proxy_password": PROXY_PASSWORD})
    assert answer.status_code == 303, answer.text
    read = _set(_read(api, "connection-profiles", "partner")["proxy"])
    assert read == {"url": "http://proxy.internal:3128", "username": "exporter", "password": "**********"}
    page = console.page("/profiles/partner")
    assert PROXY_PASSWORD not in page
    assert 'value="http://proxy.internal:3128"' in page

    # Left blank, the same proxy written with a slash: kept.
    answer = console.post(
        "/profiles/partner", PROFILE | proxy | {"proxy_url": "http://proxy.internal:3128/", "proxy_password": ""}
    )
    assert answer.status_code == 303, answer.text
    stored = api_profile(api).proxy
    assert stored is not None
    assert stored.password is not None
    assert stored.password.get_secret_value() == PROXY_PASSWORD

    # Another proxy, the password left blank: refused beside it (kept, it would go to the new proxy); given: changed.
    moved = PROFILE | proxy | {"proxy_url": "http://proxy2.internal:8080", "proxy_password": ""}
    answer = console.post("/profiles/partner", moved)
    assert answer.status_code == 422, answer.text
    assert _field_error(answer.text, "proxy_password") == "give the secret again: the host it is sent to changed"
    assert api_profile(api).proxy == stored
    answer = console.post("/profiles/partner", moved | {"proxy_password": "proxy2-pass"})
    assert answer.status_code == 303, answer.text
    stored = api_profile(api).proxy
    assert stored is not None
    assert stored.url == "http://proxy2.internal:8080"
    assert stored.password is not None
    assert stored.password.get_secret_value() == "proxy2-pass"

    # Refused by its field: no port.
    answer = console.post("/profiles/partner", PROFILE | proxy | {"proxy_url": "http://proxy.internal"})
    assert answer.status_code == 422
    assert "host and port" in _field_error(answer.text, "proxy_url")
    assert PROXY_PASSWORD not in answer.text

    # Username blanked: no proxy authentication; then no proxy.
    answer = console.post("/profiles/partner", PROFILE | proxy | {"proxy_username": ""})
    assert answer.status_code == 303, answer.text
    assert _set(_read(api, "connection-profiles", "partner")["proxy"]) == {"url": "http://proxy.internal:3128"}
    answer = console.post("/profiles/partner", PROFILE | {"proxy_url": ""})
    assert answer.status_code == 303, answer.text
    assert _read(api, "connection-profiles", "partner").get("proxy") is None


def test_proxy_credentials_typed_without_a_url_are_refused_beside_the_url_not_dropped(console: Console, api):
    typed = {"proxy_url": "", "proxy_username": "exporter", "proxy_password": "pw-typed-without-url"}
    answer = console.post("/profiles/partner", PROFILE | typed)
    assert answer.status_code == 422, answer.text
    assert "pw-typed-without-url" not in answer.text
    assert _field_error(answer.text, "proxy_url")
    assert _read(api, "connection-profiles", "partner").get("proxy") is None


def test_a_profile_post_without_the_rate_limit_fields_keeps_the_limit_and_blank_fields_remove_it(
    console: Console, api: InProcessApi
):
    limit = {"requests_per_second": "5", "burst": "2", "max_in_flight": ""}
    answer = console.post("/profiles/partner", PROFILE | limit)
    assert answer.status_code == 303, answer.text
    assert _set(_read(api, "connection-profiles", "partner")["rate_limit"]) == {"requests_per_second": 5, "burst": 2}
    # A post without the fields at all (a script, an older page): kept.
    answer = console.post("/profiles/partner", PROFILE)
    assert answer.status_code == 303, answer.text
    assert _set(_read(api, "connection-profiles", "partner")["rate_limit"]) == {"requests_per_second": 5, "burst": 2}
    # The fields as the page shows them, blanked: removed.
    answer = console.post("/profiles/partner", PROFILE | {"requests_per_second": "", "burst": "2", "max_in_flight": ""})
    assert answer.status_code == 303, answer.text
    assert _read(api, "connection-profiles", "partner").get("rate_limit") is None


def test_the_pages_offer_the_domains_tls_versions_and_webhook_events_and_formats(console: Console):
    # The lists come from the domain (the TLS version Literal, WebhookEvent, WebhookFormat, the channel's default
    # events): the templates hold none of them, so that they cannot drift.
    templates = Path(__file__).parents[2] / "services/admin/console/templates"
    assert "TLS1.3" not in (templates / "profile.html").read_text()
    assert "completed_with_errors" not in (templates / "step_notifications.html").read_text()
    versions = get_args(TlsSettings.model_fields["min_version"].annotation)
    offered = re.findall(r'<option value="(TLS[^"]*)"', console.page("/profiles/partner"))
    assert tuple(offered) == versions
    hint = re.search(r'<p class="hint" id="webhooks-hint">(.*?)</p>', console.page("/exports/nightly"), re.S)
    assert hint is not None
    events = ", ".join(event.value for event in WebhookEvent)
    defaults = WebhookChannel.model_fields["events"].get_default(call_default_factory=True)
    formats = " or ".join(kind.value for kind in WebhookFormat)
    text = " ".join(unescape(hint.group(1)).split())
    assert f"({events}; default: {', '.join(event.value for event in defaults)})" in text
    assert f"<code>format</code> ({formats})" in text


def test_a_new_profile_takes_tls_and_proxy(console: Console, api: InProcessApi, pem: Pem):
    answer = console.post(
        "/profiles/new",
        {
            "name": "tunnelled",
            "base_url": "https://tunnelled.example.com",
            "auth_type": "none",
            "tls_ca_bundle": pem.ca,
            "tls_min_version": "TLS1.2",
            "proxy_url": "http://proxy.internal:3128",
            "proxy_username": "exporter",
            "proxy_password": PROXY_PASSWORD,
        },
    )
    assert answer.status_code == 303, answer.text
    read = _read(api, "connection-profiles", "tunnelled")
    assert (read["tls"]["ca_bundle"], read["proxy"]["password"]) == (pem.ca, "**********")
    assert PROXY_PASSWORD not in console.page("/profiles/tunnelled")


def test_a_blank_secret_where_none_is_stored_is_never_saved_as_the_mask(console: Console, api: InProcessApi, pem: Pem):
    """The forms send the mask only for a stored secret; where none is stored a blank secret field is refused by
    its field, and the mask typed as a secret is refused beside it: the mask is never stored as a credential."""
    cleared = {"tls_ca_bundle": "", "tls_client_certificate": "", "tls_client_key": "", "tls_min_version": "TLS1.2"}
    answer = console.post("/profiles/partner", PROFILE | cleared | {"proxy_url": ""})
    assert answer.status_code == 303, answer.text
    before = api_profile(api)
    assert (before.tls, before.proxy) == (None, None)

    # A client certificate for the first time, the key left blank: no key is stored to keep.
    answer = console.post("/profiles/partner", PROFILE | cleared | {"tls_client_certificate": pem.client_certificate})
    assert answer.status_code == 422
    assert "go together" in _field_error(answer.text, "tls")
    # A proxy username with the password left blank, none stored.
    proxy = {"proxy_url": "http://proxy.internal:3128", "proxy_username": "exporter", "proxy_password": ""}
    answer = console.post("/profiles/partner", PROFILE | proxy)
    assert answer.status_code == 422
    assert "go together" in _field_error(answer.text, "proxy")
    # Another auth type, its secret left blank: the old type's secret is not it.
    answer = console.post("/profiles/partner", PROFILE | {"auth_type": "bearer", "auth_token": ""})
    assert answer.status_code == 422
    assert "auth.bearer.token: Field required" in unescape(answer.text)  # in the summary, as pydantic names it
    assert _field_error(answer.text, "auth_bearer_token") == "Field required"  # and beside the field
    assert api_profile(api) == before

    # The mask typed as the secret: it stands for a stored secret, and none is stored there.
    refusal = "stands for a stored secret, and none is stored here"
    answer = console.post("/profiles/partner", PROFILE | proxy | {"proxy_password": "**********"})
    assert answer.status_code == 422
    assert refusal in _field_error(answer.text, "proxy_password")
    new = {"name": "masked", "base_url": "https://masked.example.com", "auth_type": "basic", "auth_username": "u"}
    answer = console.post("/profiles/new", new | {"auth_password": "**********"})
    assert answer.status_code == 422
    assert refusal in _field_error(answer.text, "auth_basic_password")
    assert api_profile(api) == before
    assert api.app.state.context.definitions.find(ConnectionProfile, "masked") is None


#: Per auth type: a form switching a profile to it that the domain refuses, and the message beside each field.
SWITCHES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "bearer": ({"auth_token": ""}, {"token": "Field required"}),
    "basic": ({"auth_username": "", "auth_password": ""}, {"username": "Field required", "password": "Field required"}),
    "api_key": (
        {"auth_header": "X Partner Key", "auth_key": ""},
        {"header": "String should match pattern", "key": "Field required"},
    ),
    "oauth2_client_credentials": (
        {"auth_token_url": "https://exporter@id.example.com/token", "auth_client_id": "", "auth_client_secret": ""},
        {"token_url": "must not hold credentials", "client_id": "Field required", "client_secret": "Field required"},
    ),
}


@pytest.mark.parametrize("kind", list(SWITCHES))
def test_a_refused_auth_type_change_is_shown_beside_each_field_of_the_new_type(
    console: Console, api: InProcessApi, kind: str
):
    name = f"switch-{kind.replace('_', '-')}"
    with api.client() as client:
        answer = client.post(
            "/api/v1/connection-profiles", json={"name": name, "base_url": "https://switch.example.com"}
        )
        assert answer.status_code == 201, answer.text
    before = _read(api, "connection-profiles", name)
    typed, expected = SWITCHES[kind]
    page = {"base_url": "https://switch.example.com", "auth_type": kind}
    answer = console.post(f"/profiles/{name}", page | typed)
    assert answer.status_code == 422, answer.text
    for field, message in expected.items():
        assert message in _field_error(answer.text, f"auth_{kind}_{field}")
    # Only the refused fields are marked invalid (not every type's secret), and what was typed is shown again.
    marked = set(re.findall(r'id="(auth_[a-z0-9_]+)"[^>]*aria-invalid="true"', answer.text))
    assert marked == {f"auth_{kind}_{field}" for field in expected}
    if kind == "api_key":
        assert 'value="X Partner Key"' in answer.text

    # The mask typed as the new type's secret: no secret of that type is stored to keep, refused beside it.
    secret = {"bearer": "token", "basic": "password", "api_key": "key"}.get(kind, "client_secret")
    filled = {f"auth_{field}": "filled" for field in expected} | {
        "auth_header": "X-Partner-Key",
        "auth_token_url": "https://id.example.com/token",
    }
    answer = console.post(f"/profiles/{name}", page | filled | {f"auth_{secret}": "**********"})
    assert answer.status_code == 422, answer.text
    assert "stands for a stored secret" in _field_error(answer.text, f"auth_{kind}_{secret}")
    assert _read(api, "connection-profiles", name) == before


@pytest.mark.parametrize(
    ("field", "typed"),
    [
        ("base_url", {"base_url": "https://exporter:pw-in-url-7731@partner.example.com/v2"}),
        ("proxy_url", {"proxy_url": "http://exporter:pw-in-url-7731@proxy.internal:3128"}),
        (
            "auth_oauth2_client_credentials_token_url",
            {
                "auth_type": "oauth2_client_credentials",
                "auth_token_url": "https://exporter:pw-in-url-7731@id.example.com/token",
                "auth_client_id": "exporter",
                "auth_client_secret": "env:PARTNER_SECRET",
            },
        ),
    ],
)
def test_a_url_with_a_password_is_refused_beside_its_field_and_not_shown_again(
    console: Console, api: InProcessApi, field: str, typed: dict[str, str]
):
    before = _read(api, "connection-profiles", "partner")
    answer = console.post("/profiles/partner", PROFILE | typed)
    assert answer.status_code == 422, answer.text
    assert "must not hold credentials" in _field_error(answer.text, field)
    assert "pw-in-url-7731" not in answer.text
    assert _input_value(answer.text, field) == ""
    assert _read(api, "connection-profiles", "partner") == before


def _input_value(html: str, field: str) -> str:
    """The value an input of the page holds."""
    found = re.search(rf'<input id="{re.escape(field)}"[^>]*? value="([^"]*)"', html)
    assert found is not None, f"no input {field}"
    return unescape(found.group(1))


BREAKER_DEFAULTS = CircuitBreakerSettings().model_dump()
#: The breaker's fields as the page shows them, blank.
BREAKER_BLANK = {f"circuit_breaker_{name}": "" for name in BREAKER_DEFAULTS}


def test_the_circuit_breaker_is_set_changed_and_cleared_its_defaults_and_refusals_the_domains(
    console: Console, api: InProcessApi
):
    assert _read(api, "connection-profiles", "partner").get("circuit_breaker") is None
    page = console.page("/profiles/partner")
    assert '<option value="off" selected>' in page
    # Off, the fields show what "on" would take: the domain's defaults (the template holds none of them).
    for name, default in BREAKER_DEFAULTS.items():
        assert float(_input_value(page, f"circuit_breaker_{name}")) == default
    template = Path(__file__).parents[2] / "services/admin/console/templates/profile.html"
    assert "half_open_probes" not in template.read_text()

    # Set: two settings given, the others left blank take the defaults.
    typed = {"circuit_breaker_failure_rate": "0.25", "circuit_breaker_open_seconds": "90"}
    answer = console.post("/profiles/partner", PROFILE | BREAKER_BLANK | typed | {"circuit_breaker": "on"})
    assert answer.status_code == 303, answer.text
    breaker = BREAKER_DEFAULTS | {"failure_rate": 0.25, "open_seconds": 90}
    assert _read(api, "connection-profiles", "partner")["circuit_breaker"] == breaker
    page = console.page("/profiles/partner")
    assert '<option value="on" selected>' in page
    assert (_input_value(page, "circuit_breaker_failure_rate"), _input_value(page, "circuit_breaker_open_seconds")) == (
        "0.25",
        "90",
    )

    # Changed, as the page posts it (every field filled in).
    shown = {name: _input_value(page, name) for name in BREAKER_BLANK} | {"circuit_breaker": "on"}
    answer = console.post(
        "/profiles/partner",
        PROFILE | shown | {"circuit_breaker_minimum_requests": "5", "circuit_breaker_failure_rate": ""},
    )
    assert answer.status_code == 303, answer.text
    breaker |= {"minimum_requests": 5, "failure_rate": BREAKER_DEFAULTS["failure_rate"]}
    assert _read(api, "connection-profiles", "partner")["circuit_breaker"] == breaker

    # Refused by the domain, beside each field; nothing saved, what was typed shown again.
    refused = {"circuit_breaker_failure_rate": "1.5", "circuit_breaker_half_open_probes": "0"}
    answer = console.post("/profiles/partner", PROFILE | shown | refused)
    assert answer.status_code == 422
    assert "less than or equal to 1" in _field_error(answer.text, "circuit_breaker_failure_rate")
    assert "greater than or equal to 1" in _field_error(answer.text, "circuit_breaker_half_open_probes")
    assert _input_value(answer.text, "circuit_breaker_failure_rate") == "1.5"
    assert _read(api, "connection-profiles", "partner")["circuit_breaker"] == breaker

    # A post without the breaker's fields (a script, an older page) keeps it.
    answer = console.post("/profiles/partner", PROFILE)
    assert answer.status_code == 303, answer.text
    assert _read(api, "connection-profiles", "partner")["circuit_breaker"] == breaker

    # Cleared: off, the fields as the page shows them.
    answer = console.post("/profiles/partner", PROFILE | shown | {"circuit_breaker": "off"})
    assert answer.status_code == 303, answer.text
    assert _read(api, "connection-profiles", "partner").get("circuit_breaker") is None
    assert '<option value="off" selected>' in console.page("/profiles/partner")


def test_a_new_profile_takes_a_circuit_breaker_of_defaults(console: Console, api: InProcessApi):
    page = console.page("/profiles/new")
    shown = {name: _input_value(page, name) for name in BREAKER_BLANK}
    new = {"name": "guarded", "base_url": "https://guarded.example.com", "auth_type": "none"}
    answer = console.post("/profiles/new", new | shown | {"circuit_breaker": "on"})
    assert answer.status_code == 303, answer.text
    assert _read(api, "connection-profiles", "guarded")["circuit_breaker"] == BREAKER_DEFAULTS


def api_profile(api: InProcessApi) -> ConnectionProfile:
    """The partner profile as stored (secrets readable): what the dispatcher gets."""
    found = api.app.state.context.definitions.find(ConnectionProfile, "partner")
    assert found is not None
    return found
