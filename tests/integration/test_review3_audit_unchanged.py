"""Review of s32-cas: Alice's edit loses the race to Bob's identical edit; her write is
tried again, finds the object already as she wants it ("unchanged", nothing written, version kept) and still
commits her audit entry "update" (before: the object as she read it first). The audit log then records a change
by Alice that she did not make; now her write commits nothing, audit entry included. PostgreSQL only: on SQLite
her audit entry takes the write lock before her read, so Bob's edit is either before her read or after her
write (see ``test_concurrent_catalog_writes``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.application.actors import Actor, Role
from shared.application.checks import ObjectChecks
from shared.application.objects import apply_objects, replace_object
from shared.catalog import CatalogStores
from shared.catalog.definitions_store import SqlDefinitionsStore
from shared.domain.catalog_objects import SavedQuery
from shared.domain.destinations import DestinationPolicy
from shared.domain.secret_references import SecretReferencePolicy

pytestmark = pytest.mark.integration

ALICE, BOB = Actor(name="alice", role=Role.ADMIN), Actor(name="bob", role=Role.ADMIN)
CHECKS = ObjectChecks(
    policy=DestinationPolicy.parse(""),
    resolve_host=lambda _host: ["93.184.215.14"],
    secret_references=SecretReferencePolicy.parse("PARTNER_", "/var/run/secrets/member-export"),
)
SAME = "SELECT id, email FROM members WHERE id > 7"


@pytest.fixture
def catalog(
    postgres_database_factory: Callable[[], str], migrated_catalog: Callable[[str], CatalogStores]
) -> Iterator[CatalogStores]:
    """A PostgreSQL catalog only: on SQLite the race cannot happen (see the module's docstring)."""
    stores = migrated_catalog(postgres_database_factory())
    yield stores
    stores.close()


def test_an_edit_that_a_retry_finds_already_made_by_another_is_not_audited_as_a_change(
    catalog: CatalogStores, monkeypatch: pytest.MonkeyPatch
):
    catalog.definitions.apply(SavedQuery(name="q", sql="SELECT id, email FROM members"))
    real_write = SqlDefinitionsStore._write
    tries: list[str] = []

    def write(self: SqlDefinitionsStore, session: Any, obj: Any, **how: Any) -> Any:
        result = real_write(self, session, obj, **how)
        if threading.current_thread().name != "bob" and not tries:
            tries.append(obj.name)
            bob = threading.Thread(
                target=apply_objects,
                args=(BOB, [SavedQuery(name="q", sql=SAME)]),
                kwargs={"store": catalog.definitions, "checks": CHECKS},
                name="bob",
            )
            bob.start()
            bob.join(10.0)
            assert not bob.is_alive()
        return result

    monkeypatch.setattr(SqlDefinitionsStore, "_write", write)
    replace_object(ALICE, SavedQuery, "q", {"sql": SAME}, store=catalog.definitions, checks=CHECKS)

    assert catalog.definitions.get_versioned(SavedQuery, "q")[1] == 2  # Bob's edit only: Alice's found it made
    assert [e.actor for e in catalog.audit.entries(name="q") if e.action == "update"] == ["bob"]
