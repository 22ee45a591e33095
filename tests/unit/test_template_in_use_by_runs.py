"""The refusal of a delete or rename of a template that unfinished runs use (``refuse_used_by_runs``): the runs the
actor may see named (at most five), the others counted, the advice in the singular or the plural."""

from __future__ import annotations

from typing import Any, cast

import pytest

from shared.application.actors import Actor, Role
from shared.application.errors import Conflict
from shared.application.objects import refuse_used_by_runs
from shared.application.ports import DefinitionsStore
from shared.domain.catalog_objects import HttpTemplate

TEMPLATE = HttpTemplate(name="t-add", query="q", profile="p")
EMEA = Actor(name="emea-bot", role=Role.ADMIN, business_units=frozenset({"emea"}))


class _Runs:
    def __init__(self, runs: list[tuple[str, str, str | None]]) -> None:
        self.runs = runs
        self.asked: list[tuple[str, str]] = []

    def runs_using(self, kind: str, name: str) -> tuple[tuple[str, str, str | None], ...]:
        self.asked.append((kind, name))
        return tuple(self.runs)


def _refusal(runs: list[tuple[str, str, str | None]], actor: Actor) -> str:
    store = _Runs(runs)
    with pytest.raises(Conflict) as refused:
        refuse_used_by_runs(cast(DefinitionsStore, store), TEMPLATE, actor)
    assert store.asked == [("HttpTemplate", "t-add")]
    assert refused.value.slug == "in-use"
    return str(refused.value)


def test_runs_are_named_as_the_actor_may_see_them():
    runs: list[Any] = [(f"r{i}", "c", "emea") for i in range(7)] + [("r9", "secret", "apac")]
    assert _refusal(runs, EMEA) == (
        "'t-add' is used by "
        + ", ".join(f"unfinished run r{i} (ExportDefinition 'c')" for i in range(5))
        + ", 2 more, 1 run(s) outside this token's scope: a run keeps the templates it started with; wait until "
        "they have finished or cancel them"
    )
    assert _refusal([("r9", "secret", "apac")], EMEA) == (
        "'t-add' is used by 1 run(s) outside this token's scope: a run keeps the templates it started with; wait "
        "until it has finished or cancel it"
    )


def test_no_run_no_refusal():
    refuse_used_by_runs(cast(DefinitionsStore, _Runs([])), TEMPLATE, Actor(name="a", role=Role.ADMIN))
