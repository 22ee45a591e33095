"""exportctl shows text from elsewhere (a partner's answer in a run's errors, a dead letter's reason or a member's
last delivery; a label; a member's key) as data: its control characters escaped in what people read, so that an
escape sequence cannot hide lines, set the terminal's title or its clipboard, and a line break cannot forge a row.
YAML and JSON keep the values exactly."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from shared.cli.dead_letter_views import print_dead_letters
from shared.cli.delivery_commands import print_delivery
from shared.cli.exits import fail
from shared.cli.object_views import print_names
from shared.cli.run_views import print_run

#: OSC 0 (the title), erase the line and go up one (hiding the line above), OSC 52 (the clipboard), an 8-bit CSI,
#: a carriage return, then a line break and a forged table row.
PARTNER = "HTTP 400: \x1b]0;pwned\x07\x1b[2K\x1b[1Aall good\x1b]52;c;Y3VybA==\x07 \x9b2J\rok\nforged  row"
SHOWN = "HTTP 400: \\x1b]0;pwned\\x07\\x1b[2K\\x1b[1Aall good\\x1b]52;c;Y3VybA==\\x07 \\x9b2J\\rok\\nforged  row"
RUN_ID = str(uuid.UUID(int=7))


def _no_control(text: str) -> None:
    assert not [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F]


def test_a_runs_summary_shows_its_reason_and_errors_as_data(capsys: pytest.CaptureFixture[str]) -> None:
    view = {
        "run_id": RUN_ID,
        "definition": "nightly",
        "status": "failed",
        "extracted": 1,
        "delivered": 0,
        "failed": 1,
        "failure_reason": PARTNER,
        "error_samples": [PARTNER],
        "notifications": [
            {"kind": "error", "recipients": ["ops@example.com"], "status": "failed", "last_error": PARTNER}
        ],
    }
    print_run(view, [], "table")
    shown = capsys.readouterr().out
    _no_control(shown)
    assert f"  reason: {SHOWN}\n" in shown
    assert f"  error: {SHOWN}\n" in shown
    assert f"  notification error to ops@example.com: failed: {SHOWN}\n" in shown
    print_run(view, [], "json")
    assert json.loads(capsys.readouterr().out)["error_samples"] == [PARTNER]


def test_a_dead_letters_reason_stays_in_its_row(capsys: pytest.CaptureFixture[str]) -> None:
    group = {"run_id": RUN_ID, "service": "dispatcher", "definition": "nightly", "members": 3, "reason": PARTNER}
    print_dead_letters([group | {"retry": None}], 3, "table")
    shown = capsys.readouterr().out
    _no_control(shown)
    assert shown.splitlines()[1].startswith(RUN_ID)
    assert shown.splitlines()[1].endswith(f"  {SHOWN}  -")
    assert len(shown.splitlines()) == 3  # the header, one row, the count
    print_dead_letters([group | {"retry": None}], 3, "yaml")
    assert yaml.safe_load(capsys.readouterr().out)["reason"] == PARTNER


def test_a_members_last_delivery_shows_the_partners_reason_and_the_key_as_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    last = {
        "outcome": "failed",
        "status": 400,
        "reason": PARTNER,
        "run_id": RUN_ID,
        "batch_index": 0,
        "retry": False,
        "at": "2026-12-07T10:00:00+00:00",
        "attempts": 1,
    }
    print_delivery({"key": "k\x1b[8m", "definition": "nightly", "last": last, "retry": None}, "table")
    shown = capsys.readouterr().out
    _no_control(shown)
    assert shown.splitlines()[:2] == ["member k\\x1b[8m of nightly", f"  last delivery: failed (400: {SHOWN})"]


def test_labels_in_a_listing_and_an_error_message_are_shown_as_data(capsys: pytest.CaptureFixture[str]) -> None:
    print_names([{"name": "gold", "label": "Gold\x1b[8m members", "query": "q"}])
    fail("a label 'Gold\x1b[8m' is taken")
    captured = capsys.readouterr()
    _no_control(captured.out + captured.err)
    assert "Gold\\x1b[8m members" in captured.out
    assert captured.err == "exportctl: a label 'Gold\\x1b[8m' is taken\n"
