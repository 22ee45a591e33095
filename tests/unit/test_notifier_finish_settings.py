"""The notifier's finish claim settings: the lease and the replica's name, read from the environment and checked."""

from __future__ import annotations

import os
import socket

import pytest
from pydantic import ValidationError

from services.notifier.settings import NotifierSettings


def test_the_finish_lease_and_replica_id_default_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    settings = NotifierSettings()
    assert settings.notifier_finish_lease_seconds == 60.0
    assert settings.notifier_replica_id == f"{socket.gethostname()}-{os.getpid()}"
    monkeypatch.setenv("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", "5")
    monkeypatch.setenv("EXPORT_NOTIFIER_REPLICA_ID", "notifier-0")
    settings = NotifierSettings()
    assert (settings.notifier_finish_lease_seconds, settings.notifier_replica_id) == (5.0, "notifier-0")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", "0"),
        ("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", "-1"),
        ("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", "86401"),
        ("EXPORT_NOTIFIER_REPLICA_ID", ""),
        ("EXPORT_NOTIFIER_REPLICA_ID", "x" * 201),
    ],
)
def test_a_lease_out_of_range_or_a_replica_id_empty_or_too_long_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("EXPORT_").lower()):
        NotifierSettings()
