"""The console's fields for sync, retry_rejected, webhooks, TLS and proxy, as the bodies they send (pure): what a
blank means, what a form without the fields leaves alone, and which stored secret a blank keeps."""

from __future__ import annotations

import pytest

from services.admin.console.definition_form import (
    NOT_SHOWN_AGAIN,
    destination_body,
    notifications_body,
    values_of,
    without_literal_secrets,
)
from services.admin.console.forms import Form, Problems
from services.admin.console.object_forms import profile_body, profile_values
from shared.application.masked_secrets import MASK, keep_masked_secrets
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition

KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"


def _form(**fields: str) -> Form:
    return Form({name: [value] for name, value in fields.items()})


def test_a_destination_form_without_the_sync_or_retry_fields_sends_neither():
    assert destination_body(_form(template="t")) == {"template": "t"}


def test_the_sync_fields_as_the_domain_reads_them():
    body = destination_body(
        _form(
            template="t",
            sync_mode="changes",
            sync_added="",
            sync_changed="-",
            sync_removed="rm",
            sync_max_removed="500",
        )
    )
    assert body["sync"] == {"mode": "changes", "changed": False, "removed": "rm", "max_removed": 500}
    assert destination_body(_form(template="t", sync_mode="changes", sync_max_removed="10%"))["sync"][
        "max_removed"
    ] == ("10%")
    # Blank retries: the domain's defaults.
    assert destination_body(_form(template="t", retry_runs="", retry_invalid_runs="2"))["retry_rejected"] == {
        "invalid_runs": "2"
    }


def test_a_definitions_fields_round_trip_through_the_form():
    definition = ExportDefinition.model_validate(
        {
            "name": "d",
            "query": "q",
            "template": "t",
            "sync": {"mode": "changes", "changed": False, "removed": "rm", "max_removed": "10%"},
            "retry_rejected": {"runs": 5, "invalid_runs": 1},
            "notifications": {"webhooks": {"ops": {"url": "https://hooks.example.com/x", "signing_secret": "env:X"}}},
        }
    )
    values = values_of(definition)
    form = Form({name: [value] for name, value in values.items() if isinstance(value, str)})
    problems = Problems()
    body = {"name": "d", "query": "q"} | destination_body(form) | {"notifications": notifications_body(form, problems)}
    # The form shows a webhook URL masked, which the use case's merge turns back into the stored one.
    assert body["notifications"]["webhooks"]["ops"]["url"] == "https://hooks.example.com/**********"
    rebuilt = ExportDefinition.model_validate(keep_masked_secrets(body, definition))
    assert not problems
    assert (rebuilt.sync, rebuilt.retry_rejected, rebuilt.notifications) == (
        definition.sync,
        definition.retry_rejected,
        definition.notifications,
    )


def test_webhooks_blank_remove_them_absent_keep_them_and_a_non_mapping_is_a_problem():
    problems = Problems()
    assert notifications_body(_form(webhooks=""), problems)["webhooks"] == {}
    assert "webhooks" not in notifications_body(_form(), problems)
    assert not problems
    notifications_body(_form(webhooks="- a list"), problems)
    assert problems.at("notifications.webhooks")


def test_a_literal_webhook_secret_is_not_shown_again_a_reference_is():
    typed = "ops:\n  url: https://h.example.com\n  signing_secret: whsec_abc\n"
    assert "whsec_abc" not in without_literal_secrets(typed)
    assert "https://h.example.com" in without_literal_secrets(typed)
    referenced = "ops:\n  url: https://h.example.com\n  signing_secret: env:PARTNER_X  # ours\n"
    assert without_literal_secrets(referenced) == referenced


@pytest.mark.parametrize(
    "typed",
    [
        # A manifest's webhooks: block pasted whole (one level deeper than the field takes).
        "webhooks:\n  ops:\n    url: https://h.example.com\n    signing_secret: whsec_LEAKED\n",
        "ops:\n  url: https://h.example.com\n  signing-secret: whsec_LEAKED\n",
        "- ops: {signing_secret: whsec_LEAKED, url: https://h.example.com}\n",
        "ops:\n  url: https://h.example.com\n  signing_secret: {value: whsec_LEAKED}\n",
        "ops:\n  url: https://h.example.com\n  headers: ['signing_secret: whsec_LEAKED']\n",
    ],
    ids=["manifest-block", "hyphenated", "list", "nested-value", "quoted-whole"],
)
def test_a_literal_webhook_secret_is_not_shown_again_at_any_depth(typed: str):
    shown = without_literal_secrets(typed)
    assert "whsec_LEAKED" not in shown
    assert "https://h.example.com" in shown


@pytest.mark.parametrize(
    "typed",
    [
        "ops:\n  url: https://h.example.com\n  signing_secret: whsec_LEAKED\n  events: [failed\n",
        "ops: {url: https://h.example.com, signing_secret: whsec_LEAKED",
        "signing_secret whsec_LEAKED",
    ],
    ids=["unclosed-list", "unclosed-mapping", "not-a-mapping"],
)
def test_webhooks_text_that_is_not_a_yaml_mapping_and_mentions_a_signing_secret_is_not_shown_again(typed: str):
    assert without_literal_secrets(typed) == NOT_SHOWN_AGAIN
    # Without a signing secret it is shown as typed, to be corrected.
    assert without_literal_secrets("ops: {url: https://h.example.com") == "ops: {url: https://h.example.com"


def _profile(**settings: object) -> ConnectionProfile:
    return ConnectionProfile.model_validate({"name": "p", "base_url": "https://partner.example"} | settings)


BASE = {"base_url": "https://partner.example", "auth_type": "none"}


def test_a_blank_client_key_keeps_the_stored_one_while_a_certificate_is_given():
    current = _profile(tls={"client_certificate": "env:PARTNER_CERT", "client_key": KEY})
    body = profile_body(_form(**BASE, tls_client_certificate="env:PARTNER_CERT", tls_min_version="TLS1.2"), current)
    assert body["tls"] == {"client_certificate": "env:PARTNER_CERT", "client_key": MASK, "min_version": "TLS1.2"}
    # The certificate blanked: mutual TLS ends, the key with it; nothing else set: no TLS settings at all.
    assert profile_body(_form(**BASE, tls_client_certificate="", tls_min_version="TLS1.2"), current)["tls"] is None
    assert "tls_client_key" in profile_values(current)["stored_secrets"]
    assert KEY not in str(profile_values(current))


def test_a_profile_post_without_the_rate_limit_fields_keeps_the_limit_blank_fields_remove_it():
    current = _profile(rate_limit={"requests_per_second": 5, "burst": 2})
    assert profile_body(_form(**BASE), current)["rate_limit"] == {"requests_per_second": 5.0, "burst": 2}
    blank = _form(**BASE, requests_per_second="", burst="1", max_in_flight="")
    assert "rate_limit" not in profile_body(blank, current)
    changed = profile_body(_form(**BASE, requests_per_second="", burst="1", max_in_flight="3"), current)
    assert changed["rate_limit"] == {"requests_per_second": None, "burst": "1", "max_in_flight": "3"}
    assert "rate_limit" not in profile_body(_form(**BASE), _profile())


def test_a_pasted_pem_has_lf_line_ends():
    body = profile_body(
        _form(**BASE, tls_ca_bundle="-----BEGIN CERTIFICATE-----\r\nx\r\n", tls_min_version="TLS1.2"), None
    )
    assert "\r" not in body["tls"]["ca_bundle"]


def test_a_blank_proxy_password_keeps_the_stored_one_while_a_username_is_given():
    current = _profile(proxy={"url": "http://proxy.example:3128", "username": "u", "password": "hunter2"})
    proxy = {"proxy_url": "http://proxy.example:3128", "proxy_username": "u"}
    assert profile_body(_form(**BASE, **proxy), current)["proxy"]["password"] == MASK
    assert profile_body(_form(**BASE, **proxy | {"proxy_username": ""}), current)["proxy"] == {
        "url": "http://proxy.example:3128"
    }
    assert profile_body(_form(**BASE, proxy_url=""), current)["proxy"] is None
    assert "hunter2" not in str(profile_values(current))
