"""Credentials inside a profile's URLs are refused, never echoed (issue 12, finding 12 a): they were shown
unmasked; they belong in the profile's ``auth``, which is stored and answered as a secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.application.manifests import object_problems
from shared.domain.catalog_objects import ConnectionProfile

PASSWORD = "hunter2-in-url-4471"


def _oauth(token_url: str) -> dict[str, object]:
    return {"type": "oauth2_client_credentials", "token_url": token_url, "client_id": "c", "client_secret": "s"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"base_url": f"https://exporter:{PASSWORD}@partner.example/v1"}, "base_url"),
        ({"base_url": f"https://{PASSWORD}@partner.example"}, "base_url"),
        ({"base_url": f"http://exporter:{PASSWORD}@10.0.0.1:8080"}, "base_url"),
        (
            {"base_url": "https://partner.example", "auth": _oauth(f"https://c:{PASSWORD}@partner.example/token")},
            "auth.oauth2_client_credentials.token_url",
        ),
    ],
)
def test_credentials_in_a_url_are_refused_naming_the_field_without_echoing_them(spec, field):
    with pytest.raises(ValidationError) as refused:
        ConnectionProfile.model_validate({"name": "p", **spec})
    [error] = refused.value.errors()
    assert ".".join(map(str, error["loc"])) == field
    assert "give them in the profile's auth" in error["msg"]
    assert PASSWORD not in str(refused.value)  # not in the message, nor as the input pydantic would show


def test_exportctl_names_the_field_and_never_the_password():
    documents = [{"kind": "ConnectionProfile", "name": "p", "spec": {"base_url": f"https://u:{PASSWORD}@h.example"}}]
    objects, [problem] = object_problems(documents, "partners.yaml")
    assert objects == []
    assert problem.startswith(
        "partners.yaml: document 1 (ConnectionProfile 'p'): field 'base_url': Value error, must not"
    )
    assert PASSWORD not in problem


def test_no_secret_of_a_profile_is_echoed_by_any_validation_error():
    spec = {"name": "p", "base_url": "https://h.example", "auth": {"type": "bearr", "token": PASSWORD}}  # a typo
    with pytest.raises(ValidationError) as refused:
        ConnectionProfile.model_validate(spec)
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    ["https://partner.example/v1/members@2x", "https://partner.example/?owner=a@b.example", "http://10.0.0.1:8080"],
)
def test_an_at_sign_outside_the_host_part_is_fine(url):
    assert ConnectionProfile(name="p", base_url=url).base_url == url
