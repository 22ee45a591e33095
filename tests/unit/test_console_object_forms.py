"""The console's object forms keep what they have no fields for: a profile's TLS and proxy settings (secrets
masked, so the application layer keeps the stored ones) and a template's non-JSON body; a refused auth field is
placed beside its field; a profile's circuit breaker round-trips through its fields."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.admin.console.forms import Form, Problems
from services.admin.console.object_forms import (
    AUTH_FIELDS,
    BREAKER_FIELDS,
    auth_paths,
    profile_body,
    profile_values,
    template_body,
)
from shared.application.errors import Refused
from shared.application.masked_secrets import MASK
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, holds_credentials
from shared.domain.circuit_breaker import CircuitBreakerSettings


def _form(**fields: str) -> Form:
    return Form({name: [value] for name, value in fields.items()})


def test_saving_a_profile_in_the_console_keeps_its_tls_and_proxy_with_their_secrets_masked():
    current = ConnectionProfile(
        name="p",
        base_url="https://partner.example",
        tls={"min_version": "TLS1.3", "client_key": "env:PARTNER_KEY", "client_certificate": "env:PARTNER_CERT"},
        proxy={"url": "http://proxy.example:3128", "username": "exporter", "password": "hunter2"},
    )
    body = profile_body(_form(name="p", base_url="https://partner.example", auth_type="none"), current)
    assert body["tls"]["min_version"] == "TLS1.3"
    assert body["tls"]["client_key"] == MASK
    assert (body["proxy"]["url"], body["proxy"]["username"], body["proxy"]["password"]) == (
        "http://proxy.example:3128",
        "exporter",
        MASK,
    )
    assert "hunter2" not in str(body)


def test_saving_a_template_in_the_console_keeps_its_form_body():
    current = HttpTemplate(
        name="t",
        query="q",
        profile="p",
        path="/members",
        batch_size=1,
        content_type="form",
        form={"id": "{{ member.id }}"},
    )
    form = _form(name="t", query="q", profile="p", method="POST", path="/members", batch_size="1", body_kind="none")
    problems = Problems()
    body = template_body(form, problems, current)
    assert not problems
    assert (body["content_type"], body["form"]) == ("form", {"id": "{{ member.id }}"})
    assert HttpTemplate.model_validate({**body, "name": "t"}).content_type == current.content_type


def test_saving_a_profile_in_the_console_keeps_its_circuit_breaker():
    current = ConnectionProfile(
        name="p", base_url="https://partner.example", circuit_breaker={"failure_rate": 0.25, "open_seconds": 60}
    )
    body = profile_body(_form(name="p", base_url="https://partner.example", auth_type="none"), current)
    assert ConnectionProfile.model_validate(body).circuit_breaker == current.circuit_breaker


@pytest.mark.parametrize("kind", [kind for kind, names in AUTH_FIELDS.items() if names])
def test_every_auth_field_the_domain_refuses_is_placed_beside_that_types_field_only(kind: str):
    # Each field of the type given a value the domain refuses (required ones left out, the others malformed): every
    # refusal lands on that type's field, whether pydantic names it (with the union's tag) or a use case (without).
    malformed = {
        "header": "not a header",
        "in": "body",
        "name": "not a parameter",
        "token_url": "https://user@id.example.com/token",
        "scope": ["a list"],
    }
    auth = {"type": kind} | {name: malformed[name] for name in AUTH_FIELDS[kind] if name in malformed}
    with pytest.raises(ValidationError) as refused:
        ConnectionProfile.model_validate({"name": "p", "base_url": "https://partner.example", "auth": auth})
    problems = Problems.of(refused.value)
    for name in AUTH_FIELDS[kind]:
        assert problems.at(*auth_paths(kind, name, kind)), name
        by_use_case = Problems.of(Refused(f"connection profile 'p': field 'auth.{name}': refused"))
        assert by_use_case.at(*auth_paths(kind, name, kind)) == ["refused"]
    # The other types' fields (hidden in the form) get none of them.
    for other, names in AUTH_FIELDS.items():
        for name in names if other != kind else ():
            assert not problems.at(*auth_paths(other, name, kind)), (other, name)
    placed = {message for name in AUTH_FIELDS[kind] for message in problems.at(*auth_paths(kind, name, kind))}
    assert placed == set(problems.at("auth"))


_SETTINGS = st.builds(
    CircuitBreakerSettings,
    failure_rate=st.floats(min_value=0, max_value=1, exclude_min=True),
    minimum_requests=st.integers(min_value=1, max_value=100_000),
    window_seconds=st.floats(min_value=0, max_value=3600, exclude_min=True),
    open_seconds=st.floats(min_value=0, max_value=3600, exclude_min=True),
    half_open_probes=st.integers(min_value=1, max_value=100),
)


def _profile_form(values: dict[str, object]) -> Form:
    """The profile page's fields as a browser posts them back unchanged."""
    return Form({name: [value] for name, value in values.items() if isinstance(value, str)})


@given(st.none() | _SETTINGS)
def test_a_circuit_breaker_round_trips_through_the_profile_form(breaker: CircuitBreakerSettings | None):
    profile = ConnectionProfile(name="p", base_url="https://partner.example", circuit_breaker=breaker)
    body = profile_body(_profile_form(profile_values(profile)), profile)
    assert ConnectionProfile.model_validate(body).circuit_breaker == breaker


def test_the_breaker_fields_are_the_domains_with_its_defaults_and_bounds():
    assert [field.name for field in BREAKER_FIELDS] == list(CircuitBreakerSettings.model_fields)
    shown = {field.name: (field.default, field.bounds, field.step) for field in BREAKER_FIELDS}
    assert shown == {
        "failure_rate": ("0.5", "above 0, up to 1", "any"),
        "minimum_requests": ("20", "1 to 100,000", "1"),
        "window_seconds": ("30", "above 0, up to 3,600", "any"),
        "open_seconds": ("30", "above 0, up to 3,600", "any"),
        "half_open_probes": ("3", "1 to 100", "1"),
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"circuit_breaker": "on"}, {}),  # every setting blank: the defaults
        ({"circuit_breaker": "on", "circuit_breaker_failure_rate": "0.2"}, {"failure_rate": "0.2"}),
        ({"circuit_breaker": "off", "circuit_breaker_failure_rate": "0.2"}, None),
        ({"circuit_breaker_open_seconds": "60"}, {"open_seconds": "60"}),  # a script without the choice: a setting
        ({"circuit_breaker_open_seconds": ""}, None),
    ],
)
def test_the_breaker_choice_and_its_settings_make_the_body(fields: dict[str, str], expected: object):
    current = ConnectionProfile(name="p", base_url="https://partner.example", circuit_breaker={"open_seconds": 5})
    body = profile_body(_form(name="p", base_url="https://partner.example", auth_type="none", **fields), current)
    assert body["circuit_breaker"] == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://partner.example/api",
        "https://u:hunter2@partner.example/api",
        "https://token@partner.example",
        "https://partner.example/a@b",
        "https://partner.example/?to=a@b",
        "https://[::1/api",
    ],
)
def test_a_url_the_console_does_not_show_again_is_one_the_domain_refuses_for_its_credentials(url: str):
    try:
        ConnectionProfile(name="p", base_url=url)
    except ValidationError as refused:
        refused_for_credentials = "must not hold credentials" in str(refused)
    else:
        refused_for_credentials = False
    assert holds_credentials(url) is refused_for_credentials
    assert not holds_credentials("not a url: a@b")
    assert not holds_credentials("")


def test_an_api_key_sent_in_the_query_round_trips_through_the_profile_form():
    # Its parameter's name is shown as the auth field's, not as the profile's; saved unchanged, the key kept (mask).
    auth = {"type": "api_key", "in": "query", "name": "appid", "key": "env:PARTNER_KEY"}
    profile = ConnectionProfile.model_validate({"name": "p", "base_url": "https://partner.example", "auth": auth})
    values = profile_values(profile)
    assert (values["name"], values["auth_name"], values["auth_in"]) == ("p", "appid", "query")
    body = profile_body(_profile_form(values), profile)
    # No header (it is refused beside in: query): the form sends none.
    assert body["auth"] == {"type": "api_key", "in": "query", "name": "appid", "key": MASK}
    assert ConnectionProfile.model_validate(body | {"name": "p"}).auth.header is None
