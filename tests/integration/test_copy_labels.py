"""A copy's label: "Copy of <label>" cut to fit, and a label asked for that does not fit refused naming the field,
alike through the application layer (the API's and the console's copy) and exportctl on the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.application.actors import Actor, Role
from shared.application.checks import ObjectChecks
from shared.application.errors import Invalid
from shared.application.objects import copy_object
from shared.catalog import CatalogStores
from shared.cli.__main__ import main as exportctl
from shared.domain.catalog_objects import SavedQuery
from shared.domain.destinations import DestinationPolicy
from tests.exportctl_catalog import nightly_catalog

pytestmark = pytest.mark.integration

ADMIN = Actor(name="alice", role=Role.ADMIN)
#: No member store: the copy's query keeps its columns (its label is what these tests judge).
CHECKS = ObjectChecks(policy=DestinationPolicy.parse(""), resolve_host=lambda _host: ["93.184.215.14"])


def test_a_copy_of_an_object_whose_label_is_at_its_limit_is_made_with_its_label_cut(tmp_path: Path):
    """Before: "Copy of " + 200 characters was refused as an invalid ``label`` the caller never sent (API 422,
    console 500)."""
    stores = CatalogStores.from_url(nightly_catalog(tmp_path), migrate=True)
    try:
        stores.definitions.apply(SavedQuery(name="gold", sql="SELECT id FROM members", label="L" * 200))
        _, copy = copy_object(ADMIN, SavedQuery, "gold", store=stores.definitions, checks=CHECKS)
        assert copy.label == "Copy of " + "L" * 191 + "…"
        assert stores.definitions.get(SavedQuery, copy.name).label == copy.label
        with pytest.raises(Invalid) as refused:
            copy_object(ADMIN, SavedQuery, "gold", store=stores.definitions, checks=CHECKS, label="x" * 300)
        # The field only: before, "SavedQuery 'xxxx…'", a copy that does not exist (the slug of the refused label).
        assert refused.value.problems == ["field 'label': String should have at most 200 characters"]
    finally:
        stores.close()


def test_exportctl_copy_with_a_label_too_long_is_refused_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """Before: exit 1, "unexpected error: ValidationError"."""
    monkeypatch.setenv("EXPORT_CATALOG_URL", nightly_catalog(tmp_path))
    monkeypatch.delenv("EXPORT_API_URL", raising=False)
    monkeypatch.delenv("EXPORTCTL_DEBUG", raising=False)
    code = exportctl(["copy", "query", "gold", "--label", "x" * 300])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "field 'label': String should have at most 200 characters" in err
