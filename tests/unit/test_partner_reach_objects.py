"""Issue 17: profiles' TLS and proxy settings, and templates' non-JSON bodies, as saved and as rendered."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from defusedxml.ElementTree import fromstring
from pydantic import BaseModel, ValidationError

from devtools.certificates import make_tls_material
from shared.application.checks import ObjectChecks, destination_problems, secret_problems, tls_problems
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate, secret_fields, stored_form
from shared.domain.destinations import DestinationPolicy
from shared.domain.pem import certificates_problem
from shared.domain.rendering import RenderLimits, TemplateRenderError, render_request
from shared.domain.secret_references import SecretReferencePolicy
from shared.events import MemberBatch

KEY = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PROFILE = ConnectionProfile(name="p", base_url="https://partner.example/api")


def profile(**spec: object) -> ConnectionProfile:
    return ConnectionProfile.model_validate({"name": "p", "base_url": "https://partner.example", **spec})


def template(**spec: object) -> HttpTemplate:
    return HttpTemplate.model_validate({"name": "t", "query": "q", "profile": "p", **spec})


def batch(*members: dict[str, Any]) -> MemberBatch:
    return MemberBatch(run_id=uuid.UUID(int=1), definition="d", template="t", batch_index=0, members=list(members))


def refusal(model: type[BaseModel], spec: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(spec)
    return str(raised.value)


# --- Profiles: tls and proxy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({"tls": {"client_certificate": CERT}}, "tls", "client_certificate and client_key go together"),
        ({"tls": {"client_key": KEY}}, "tls", "client_certificate and client_key go together"),
        ({"tls": {"ca_bundle": "not a certificate"}}, "tls.ca_bundle", "must be PEM certificate(s)"),
        ({"tls": {"client_certificate": CERT, "client_key": "hunter2"}}, "tls.client_key", "PEM private key"),
        ({"tls": {"min_version": "TLS1.1"}}, "tls.min_version", "'TLS1.2' or 'TLS1.3'"),
        ({"proxy": {"url": "http://u:hunter2@proxy:3128"}}, "proxy.url", "must not hold credentials"),
        ({"proxy": {"url": "https://proxy:3128"}}, "proxy.url", "should match pattern"),
        ({"proxy": {"url": "http://proxy"}}, "proxy.url", "must be http://host:port"),
        ({"proxy": {"url": "http://proxy:3128", "username": "u"}}, "proxy", "username and password go together"),
    ],
)
def test_tls_and_proxy_settings_are_refused_naming_the_field_without_echoing_values(spec, field, reason):
    message = refusal(ConnectionProfile, {"name": "p", "base_url": "https://partner.example", **spec})
    assert f"\n{field}\n" in message, message
    assert reason in message
    assert "hunter2" not in message


@pytest.mark.parametrize("field", ["ca_bundle", "client_certificate"])
@pytest.mark.parametrize(
    "key",
    [
        "-----BEGIN PRIVATE KEY-----\nMIIBsecretbody\n-----END PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIBsecretbody\n-----END RSA PRIVATE KEY-----\n",
        "-----BEGIN EC PRIVATE KEY-----\nMIIBsecretbody\n-----END EC PRIVATE KEY-----\n",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBsecretbody\n-----END ENCRYPTED PRIVATE KEY-----\n",
    ],
    ids=["pkcs8", "rsa", "ec", "encrypted"],
)
def test_a_private_key_pasted_with_the_certificates_is_refused_naming_the_field_never_quoting_the_key(field, key):
    # A client.pem holds the certificate and its key; ssl would skip the key, and the field is not a secret.
    tls = {"client_certificate": CERT, "client_key": KEY} | {field: CERT + key}
    message = refusal(ConnectionProfile, {"name": "p", "base_url": "https://partner.example", "tls": tls})
    assert f"\ntls.{field}\n" in message, message
    assert "a private key belongs in tls.client_key, not here" in message
    assert "secretbody" not in message
    assert certificates_problem(CERT + key) == "holds a private key: a private key belongs in tls.client_key, not here"


def test_the_client_key_and_the_proxy_password_are_secrets_masked_in_answers_and_kept_when_stored():
    saved = profile(
        tls={"ca_bundle": "file:/var/run/secrets/member-export/ca.pem", "client_certificate": CERT, "client_key": KEY},
        proxy={"url": "http://proxy.internal:3128", "username": "exporter", "password": "pr0xy-pass"},
    )
    answered = saved.model_dump(mode="json")
    assert answered["tls"]["client_key"] == "**********"
    assert answered["proxy"]["password"] == "**********"
    assert answered["tls"]["ca_bundle"] == "file:/var/run/secrets/member-export/ca.pem"
    assert KEY not in str(saved)
    assert "pr0xy-pass" not in repr(saved)
    assert [path for path, _ in secret_fields(saved)] == ["tls.client_key", "proxy.password"]
    stored = stored_form(saved, encrypt=lambda value: f"sealed({len(value)})")
    assert stored["tls"]["client_key"] == {"encrypted": f"sealed({len(KEY)})"}
    assert stored["proxy"]["password"] == {"encrypted": "sealed(10)"}
    assert ConnectionProfile.model_validate(stored_form(saved)) == saved


def checks(allowed_proxies: str = "", directories: str = "/var/run/secrets/member-export") -> ObjectChecks:
    return ObjectChecks(
        policy=DestinationPolicy(),
        resolve_host=lambda host: {"partner.example": ["93.184.215.14"], "proxy.internal": ["10.1.2.3"]}[host],
        secret_references=SecretReferencePolicy.parse(directories=directories),
        allowed_proxies=allowed_proxies,
    )


def test_a_proxy_on_a_private_address_is_refused_at_save_unless_the_operator_allows_proxies_there():
    proxied = profile(proxy={"url": "http://proxy.internal:3128"})
    [problem] = destination_problems(proxied, checks())
    assert problem.startswith("ConnectionProfile 'p': field 'proxy.url': destination proxy.internal (10.1.2.3)")
    assert "EXPORT_ALLOWED_PROXIES" in problem
    assert destination_problems(proxied, checks(allowed_proxies="10.0.0.0/8")) == []
    assert destination_problems(proxied, checks(allowed_proxies="proxy.internal")) == []


def test_tls_references_outside_the_allowed_places_and_unreadable_certificates_are_refused_at_save(tmp_path: Path):
    material = make_tls_material(tmp_path)
    readable = profile(
        tls={
            "ca_bundle": material.ca.read_text(),
            "client_certificate": f"file:{material.client.certificate}",
            "client_key": f"file:{material.client.key}",
        }
    )
    assert tls_problems(readable, checks(directories=str(tmp_path))) == []
    assert secret_problems(readable, checks(directories=str(tmp_path))) == []
    assert tls_problems(readable, checks()) == [
        f"ConnectionProfile 'p': field 'tls.client_certificate': secret reference file:{material.client.certificate} "
        "is not allowed: files must be inside /var/run/secrets/member-export (EXPORT_ALLOWED_SECRET_DIRS)"
    ]
    [key_problem] = secret_problems(readable, checks())
    assert key_problem.startswith("ConnectionProfile 'p': field 'tls.client_key': secret reference file:")
    garbled = profile(tls={"ca_bundle": CERT})
    assert tls_problems(garbled, checks()) == [
        "ConnectionProfile 'p': field 'tls.ca_bundle': not PEM certificate(s) that can be read"
    ]


# --- Templates: content_type ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"content_type": "form"}, "content_type 'form' needs form: at least one field"),
        ({"content_type": "form", "form": {"id": "x"}, "body": "x"}, "takes its fields in form, not body"),
        ({"content_type": "xml"}, "content_type 'xml' needs a body"),
        ({"content_type": "xml", "json_body": {"a": 1}}, "content_type 'xml' takes a text body (body)"),
        ({"content_type": "text", "body": "x", "form": {"a": "b"}}, "content_type 'text' takes a text body"),
        ({"form": {"a": "b"}}, "form is for content_type 'form'"),
        ({"content_type": "yaml", "body": "x"}, "'json', 'form', 'xml' or 'text'"),
    ],
)
def test_a_template_whose_body_fields_do_not_fit_its_content_type_is_refused(spec, reason):
    assert reason in refusal(HttpTemplate, {"name": "t", "query": "q", "profile": "p", **spec})


def test_a_form_body_repeats_each_field_per_member_url_encoded_in_member_order():
    form = template(content_type="form", form={"id": "{{ member.id }}", "name": "{{ member.name }}"}, batch_size=2)
    request = render_request(form, PROFILE, batch({"id": 1, "name": "Zoë & co=1"}, {"id": 2, "name": "+x"}))
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.content == b"id=1&name=Zo%C3%AB+%26+co%3D1&id=2&name=%2Bx"
    assert parse_qs(request.content.decode()) == {"id": ["1", "2"], "name": ["Zoë & co=1", "+x"]}


def test_an_xml_body_escapes_values_for_text_and_attributes_and_is_well_formed():
    xml = template(
        content_type="xml",
        body='<members>{% for m in members %}<member id="{{ m.id }}" note="{{ m.note }}">{{ m.name }}</member>'
        "{% endfor %}</members>",
    )
    hostile = {"id": 1, "name": "</member><admin/>&amp;", "note": '"><x y="'}
    request = render_request(xml, PROFILE, batch(hostile, {"id": 2, "name": "Ann", "note": "it's"}))
    assert request.headers["Content-Type"] == "application/xml; charset=utf-8"
    root = fromstring(request.content)
    assert [(m.get("id"), m.get("note"), m.text) for m in root] == [
        ("1", '"><x y="', "</member><admin/>&amp;"),
        ("2", "it's", "Ann"),
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("<a>{{ member.id }}", "template body renders XML that is not well-formed: no element found at line 1"),
        ("<a>{{ member.id }}</a><b/>", "template body renders XML that is not well-formed: junk after document"),
        ('<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>', "DTDForbidden (DTDs, entity declarations and external"),
        ("<a>{{ member.id | safe }}</a>", "not well-formed"),
    ],
)
def test_an_xml_body_that_does_not_render_one_well_formed_document_is_refused(body, reason):
    with pytest.raises(TemplateRenderError) as raised:
        render_request(template(content_type="xml", body=body), PROFILE, batch({"id": "<"}))
    assert reason in str(raised.value)


def test_a_text_body_is_sent_as_rendered_and_a_templates_content_type_header_wins():
    text = template(content_type="text", body="{{ member.id }};{{ member.name }}\n")
    request = render_request(text, PROFILE, batch({"id": 7, "name": 'A "quoted" <name>'}))
    assert (request.headers["Content-Type"], request.content) == (
        "text/plain; charset=utf-8",
        b'7;A "quoted" <name>\n',
    )
    csv = template(content_type="text", body="{{ member.id }}", headers={"Content-Type": "text/csv"})
    assert render_request(csv, PROFILE, batch({"id": 7})).headers["Content-Type"] == "text/csv"


def test_form_and_xml_bodies_keep_the_render_bounds():
    big = template(content_type="form", form={"v": "{{ member.v }}"}, batch_size=10)
    with pytest.raises(TemplateRenderError, match="EXPORT_RENDER_MAX_BYTES"):
        render_request(big, PROFILE, batch(*({"v": "x" * 60} for _ in range(10))), RenderLimits(max_bytes=500))
    xml = template(content_type="xml", body="<a>{{ member.v }}</a>")
    with pytest.raises(TemplateRenderError, match="EXPORT_RENDER_MAX_BYTES"):
        render_request(xml, PROFILE, batch({"v": "x" * 600}), RenderLimits(max_bytes=500))
