"""exportctl's ``dead-letters list`` through the admin API reads page by page: it stops on a short page, gives up
(exit 5) on a server whose pages never end, and lists each group once, with a warning, when the dead letters change
between pages."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from shared.cli import dead_letter_views
from shared.cli.exits import UNREACHABLE, CliError

ARGS = argparse.Namespace(run=None, definition=None, output="json")


def group(i: int) -> dict[str, Any]:
    return {
        "run_id": f"00000000-0000-0000-0000-00000000000{i}",
        "service": None,
        "definition": "weekly",
        "reason": "rejected",
        "members": 1,
        "retry": None,
    }


class FakeApi:
    """An admin API answering ``page(offset, limit)``; a test failure, not an endless loop, past 50 calls."""

    def __init__(self) -> None:
        self.calls = 0

    def call(self, method: str, path: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.calls += 1
        if self.calls > 50:
            raise AssertionError("still paging")
        return self.page(params["offset"], params["limit"])

    def page(self, offset: int, limit: int) -> dict[str, Any]:
        raise NotImplementedError


class Growing(FakeApi):
    """A dead letter whose group sorts first arrives between the first page and the second."""

    def __init__(self) -> None:
        super().__init__()
        self.groups = [group(2), group(3), group(4)]

    def page(self, offset: int, limit: int) -> dict[str, Any]:
        if self.calls == 2:
            self.groups.insert(0, group(1))
        total = len(self.groups)
        return {"letters": total, "total_groups": total, "groups": self.groups[offset : offset + limit]}


class Endless(FakeApi):
    """Full pages of new groups, the total always one page ahead."""

    def page(self, offset: int, limit: int) -> dict[str, Any]:
        groups = [dict(group(1), run_id=str(offset + i)) for i in range(limit)]
        return {"letters": 1, "total_groups": offset + limit + 1, "groups": groups}


class ShortPage(FakeApi):
    """A total that claims more than there is: the short page is the last."""

    def page(self, offset: int, limit: int) -> dict[str, Any]:
        return {"letters": 1, "total_groups": offset + limit + 1, "groups": [group(1)]}


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dead_letter_views, "PAGE_GROUPS", 2)


def test_a_short_page_is_the_last(capsys: pytest.CaptureFixture[str]) -> None:
    api = ShortPage()
    dead_letter_views.api_list(api, ARGS)  # type: ignore[arg-type]
    assert api.calls == 1
    assert [g["run"] for g in json.loads(capsys.readouterr().out)] == [group(1)["run_id"]]


def test_pages_that_never_end_stop_at_the_cap_with_exit_5() -> None:
    api = Endless()
    with pytest.raises(CliError) as failed:
        dead_letter_views.api_list(api, ARGS)  # type: ignore[arg-type]
    assert failed.value.code == UNREACHABLE
    assert "stopped after 3 page(s)" in failed.value.message  # ceil(3 / 2) + 1
    assert api.calls == 3


def test_groups_that_change_between_pages_are_listed_once_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    dead_letter_views.api_list(Growing(), ARGS)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    runs = [g["run"] for g in json.loads(out)]
    assert runs == [group(2)["run_id"], group(3)["run_id"], group(4)["run_id"]]
    assert err.count("the dead letters changed while they were read") == 1


def test_a_settled_listing_has_no_warning(capsys: pytest.CaptureFixture[str]) -> None:
    api = Growing()
    api.calls = 2  # the new group already there
    api.groups.insert(0, group(1))
    dead_letter_views.api_list(api, ARGS)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 4
    assert err == ""
