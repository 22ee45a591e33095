"""The dispatcher says at start-up when its batches are decoded without the fast path (``MemberBatch`` changed in a
way the fast path does not know): one warning naming why, rather than a fallback counter that only climbs."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from services.dispatcher import dispatching


def test_a_contract_the_fast_path_does_not_know_is_one_warning_naming_why(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = ["a field has a validator", "'members' is validated as more than list[dict[str, Any]]"]
    monkeypatch.setattr(dispatching, "fast_path_problems", lambda model: problems)
    with capture_logs() as logs:
        dispatching.warn_of_slow_batch_decoding()
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "member batches decoded without the fast path"
    assert warnings[0]["problems"] == problems


def test_the_contract_the_fast_path_is_written_for_is_no_warning() -> None:
    with capture_logs() as logs:
        assert dispatching.warn_of_slow_batch_decoding() == []
    assert logs == []
