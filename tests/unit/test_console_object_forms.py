"""The console's object forms keep what they have no fields for: a profile's TLS and proxy settings (secrets
masked, so the application layer keeps the stored ones) and a template's non-JSON body."""

from services.admin.console.forms import Form, Problems
from services.admin.console.object_forms import profile_body, template_body
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
