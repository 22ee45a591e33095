"""The console's object forms keep what they have no fields for: a profile's TLS and proxy settings (secrets
masked, so the application layer keeps the stored ones) and a template's non-JSON body."""

import pytest
from pydantic import ValidationError

from services.admin.console.forms import Form, Problems
from services.admin.console.object_forms import AUTH_FIELDS, auth_paths, profile_body, template_body
from shared.application.errors import Refused
from shared.application.masked_secrets import MASK
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate


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
    malformed = {"header": "not a header", "token_url": "https://user@id.example.com/token", "scope": ["a list"]}
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
