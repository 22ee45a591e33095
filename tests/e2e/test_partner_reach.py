"""Issue 17 on the real stack: the four services as processes deliver over mutual TLS with a partner's own CA,
through an authenticating forward proxy, with XML and form bodies the partner parses."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from devtools.forward_proxy import ForwardProxy
from devtools.http_receiver import HttpReceiver
from tests.e2e.conftest import Pipeline
from tests.partner_tls import TlsMaterial, client_common_name, mutual_tls_server_context, partner_tls_material

pytestmark = pytest.mark.e2e
PROXY_USER, PROXY_PASSWORD = "exporter", "e2e-pr0xy-s3cret"


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return partner_tls_material(tmp_path_factory.mktemp("partner-tls"))


@pytest.fixture(scope="module")
def partner(material: TlsMaterial) -> Iterator[HttpReceiver]:
    with HttpReceiver(ssl_context=mutual_tls_server_context(material)) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def applied(pipeline: Pipeline, material: TlsMaterial, partner: HttpReceiver, proxy: ForwardProxy) -> Pipeline:
    """A profile with the partner's CA, a client certificate and the proxy; XML and form templates; definitions."""
    profile = {
        "base_url": partner.url,
        "tls": {
            "ca_bundle": material.ca.read_text(),
            "client_certificate": material.client.certificate.read_text(),
            "client_key": material.client.key.read_text(),
            "min_version": "TLS1.2",
        },
        "proxy": {"url": proxy.url, "username": PROXY_USER, "password": PROXY_PASSWORD},
    }
    xml = (
        '<members run="{{ run.id }}">{% for m in members %}<member id="{{ m.id }}"><email>{{ m.email }}</email>'
        "</member>{% endfor %}</members>"
    )
    documents = [
        {"kind": "ConnectionProfile", "name": "mtls-partner", "spec": profile},
        {
            "kind": "HttpTemplate",
            "name": "mtls-xml",
            "spec": {
                "query": "first-hundred",
                "profile": "mtls-partner",
                "path": "/v1/members.xml",
                "batch_size": 50,
                "content_type": "xml",
                "body": xml,
            },
        },
        {
            "kind": "HttpTemplate",
            "name": "mtls-form",
            "spec": {
                "query": "first-hundred",
                "profile": "mtls-partner",
                "path": "/v1/members.form",
                "batch_size": 25,
                "content_type": "form",
                "form": {"id": "{{ member.id }}", "email": "{{ member.email }}"},
            },
        },
        {
            "kind": "ExportDefinition",
            "name": "xml-over-mtls",
            "spec": {"query": "first-hundred", "template": "mtls-xml"},
        },
        {
            "kind": "ExportDefinition",
            "name": "form-over-mtls",
            "spec": {"query": "first-hundred", "template": "mtls-form"},
        },
    ]
    manifest = Path(pipeline.work_dir) / "partner-reach.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    result = pipeline.exportctl("apply", "-f", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr
    return pipeline


def _run(pipeline: Pipeline, definition: str) -> uuid.UUID:
    result = pipeline.exportctl("run", definition, "--wait", "--timeout", "180")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "read: 100  delivered: 100  failed: 0" in result.stdout
    return uuid.UUID(result.stdout.splitlines()[0].split()[1])


def test_xml_batches_reach_a_mutual_tls_partner_through_the_proxy(
    applied: Pipeline, partner: HttpReceiver, proxy: ForwardProxy
):
    run_id = _run(applied, "xml-over-mtls")
    receipts = [r for r in partner.receipts() if r.headers["Idempotency-Key"].startswith(f"{run_id}")]
    assert len(receipts) == 2
    ids: Counter[int] = Counter()
    for receipt in receipts:
        assert receipt.path == "/v1/members.xml"
        assert receipt.headers["Content-Type"] == "application/xml; charset=utf-8"
        assert client_common_name(receipt.client_certificate) == "exporter"
        root = receipt.xml()
        assert root.get("run") == str(run_id)
        ids.update(int(member.get("id") or 0) for member in root.iter("member"))
        assert all(re.fullmatch(r"[^@\s]+@[^@\s]+", member.findtext("email") or "") for member in root)
    assert ids == Counter(range(1, 101))
    assert proxy.passed
    assert set(proxy.passed) == {("CONNECT", f"127.0.0.1:{partner.port}")}
    assert proxy.refused == []


def test_form_bodies_reach_the_partner_one_field_set_per_member(applied: Pipeline, partner: HttpReceiver):
    run_id = _run(applied, "form-over-mtls")
    receipts = [r for r in partner.receipts() if r.headers["Idempotency-Key"].startswith(f"{run_id}")]
    assert len(receipts) == 4
    forms = [receipt.form() for receipt in receipts]
    assert all(receipt.headers["Content-Type"] == "application/x-www-form-urlencoded" for receipt in receipts)
    assert sorted(int(i) for form in forms for i in form["id"]) == list(range(1, 101))
    assert all(len(form["id"]) == len(form["email"]) == 25 for form in forms)


def test_the_client_key_and_proxy_password_never_reach_logs_metrics_or_the_api_answer(
    applied: Pipeline, material: TlsMaterial
):
    key_body = material.client.key.read_text().splitlines()[1]  # a line of the key's base64, not its header
    for name in applied.services.services:
        log = applied.services.log(name)
        assert PROXY_PASSWORD not in log
        assert key_body not in log
    metrics = httpx.get(f"http://127.0.0.1:{applied.dispatcher_metrics_port}/metrics").text
    assert PROXY_PASSWORD not in metrics
    shown = applied.exportctl("get", "ConnectionProfile", "mtls-partner", "-o", "yaml")
    assert shown.returncode == 0, shown.stderr
    assert PROXY_PASSWORD not in shown.stdout
    assert key_body not in shown.stdout
    assert shown.stdout.count("**********") == 2, "the client key and the proxy password, masked"
