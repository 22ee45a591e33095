"""A name derived from a label when every name it may take is taken: a refusal saying so (409 name-conflict), not a
``StopIteration`` escaping to the caller (a 500)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, cast

import pytest

from shared.application.errors import Conflict
from shared.application.objects import unique_name
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import ExportDefinition


class EveryNameTaken:
    """A store where every name is taken (asked by name, or by a listing of them all)."""

    def names_taken(self, kind: type[Any], names: Collection[str]) -> set[str]:
        return set(names)

    def list_objects(self, kind: type[Any]) -> list[Any]:
        spec = {"query": "q", "template": "t"}
        names = ["nightly", *(f"nightly-{n}" for n in range(2, 10_000))]
        return [ExportDefinition.model_validate(spec | {"name": name}) for name in names]


def test_no_free_name_left_is_a_name_conflict() -> None:
    with pytest.raises(Conflict) as refused:
        unique_name(cast(DefinitionsStore, EveryNameTaken()), ExportDefinition, "nightly")
    assert refused.value.slug == "name-conflict"
    assert refused.value.reason == "ExportDefinition 'nightly' and 'nightly-2' to 'nightly-9999' exist already"
