"""Review of s32-cas: a create (the admin API's POST, exportctl create, a copy) whose name another user takes
between the name check and the write is refused as a name conflict (409), on SQLite and PostgreSQL: it neither
overwrites the other user's new object (the store's ``apply`` is create-or-update) nor fails with the
database's unique-key error (a 500)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.application import objects
from shared.application.actors import Actor, Role
from shared.application.checks import ObjectChecks
from shared.application.errors import Conflict
from shared.application.objects import copy_object, create_object, replace_object
from shared.catalog import CatalogStores
from shared.domain.catalog_objects import SavedQuery
from shared.domain.destinations import DestinationPolicy
from shared.domain.secret_references import SecretReferencePolicy

pytestmark = pytest.mark.integration

ALICE = Actor(name="alice", role=Role.ADMIN)
CHECKS = ObjectChecks(
    policy=DestinationPolicy.parse(""),
    resolve_host=lambda _host: ["93.184.215.14"],
    secret_references=SecretReferencePolicy.parse("PARTNER_", "/var/run/secrets/member-export"),
)
BOBS = SavedQuery(name="q2", sql="SELECT id, email FROM members WHERE id > 1")


def test_a_name_taken_while_a_create_is_checked_is_a_name_conflict_and_the_other_object_stays(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    real_checked = objects.checked

    def checked(*args: Any, **kwargs: Any) -> Any:
        catalog.definitions.apply(BOBS)  # Bob creates q2 while Alice's new q2 is being checked
        return real_checked(*args, **kwargs)

    monkeypatch.setattr(objects, "checked", checked)
    body = {"name": "q2", "sql": "SELECT id, email FROM members"}
    with pytest.raises(Conflict) as refused:
        create_object(ALICE, SavedQuery, body, store=catalog.definitions, checks=CHECKS)

    assert (refused.value.status, refused.value.slug) == (409, "name-conflict")
    assert catalog.definitions.get(SavedQuery, "q2") == BOBS
    assert [e.actor for e in catalog.audit.entries(name="q2")] == []  # Bob's apply had no audit entry


def test_a_copy_whose_name_is_taken_meanwhile_is_a_name_conflict(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, email FROM members"))
    real_visible = objects.visible

    def visible(*args: Any, **kwargs: Any) -> Any:
        found = real_visible(*args, **kwargs)
        catalog.definitions.apply(BOBS)  # Bob creates q2 after Alice's copy checked the name
        return found

    monkeypatch.setattr(objects, "visible", visible)
    monkeypatch.setattr(objects, "refuse_taken", lambda *_a, **_k: None)  # the check ran before Bob's create
    with pytest.raises(Conflict) as refused:
        copy_object(ALICE, SavedQuery, "q", store=catalog.definitions, checks=CHECKS, new_name="q2")

    assert (refused.value.status, refused.value.slug) == (409, "name-conflict")
    assert catalog.definitions.get(SavedQuery, "q2") == BOBS


def test_a_rename_to_a_name_taken_meanwhile_is_a_name_conflict_and_both_objects_stay(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    alices = SavedQuery(name="q", sql="SELECT id, email FROM members")
    catalog.definitions.apply(alices)
    real_referrers = objects.referrers

    def referrers(*args: Any, **kwargs: Any) -> Any:
        catalog.definitions.apply(BOBS)  # Bob creates q2 after Alice's rename of q to q2 checked the name
        return real_referrers(*args, **kwargs)

    monkeypatch.setattr(objects, "referrers", referrers)
    body = {"name": "q2", "sql": "SELECT id, email FROM members"}
    with pytest.raises(Conflict) as refused:
        replace_object(ALICE, SavedQuery, "q", body, store=catalog.definitions, checks=CHECKS)

    assert (refused.value.status, refused.value.slug) == (409, "name-conflict")
    assert catalog.definitions.get(SavedQuery, "q2") == BOBS
    assert catalog.definitions.get(SavedQuery, "q") == alices
