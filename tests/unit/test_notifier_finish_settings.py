"""The notifier's finish claim settings: the lease and the replica's name, read from the environment and checked."""

from __future__ import annotations

import os
import socket

import pytest
from pydantic import ValidationError

from services.notifier.settings import NotifierSettings


def test_the_finish_lease_and_replica_id_default_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    settings = NotifierSettings()
    assert settings.notifier_finish_lease_seconds == 600.0  # above one email's longest send: 8 x 30 s + 7 x 30 s
    assert settings.notifier_replica_id == f"{socket.gethostname()}-{os.getpid()}"
    monkeypatch.setenv("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", "5")
    monkeypatch.setenv("EXPORT_SMTP_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("EXPORT_SMTP_TIMEOUT_SECONDS", "4")
    monkeypatch.setenv("EXPORT_NOTIFIER_REPLICA_ID", "notifier-0")
    settings = NotifierSettings()
    assert (settings.notifier_finish_lease_seconds, settings.notifier_replica_id) == (5.0, "notifier-0")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", "0"),
        ("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", "0.5"),
        ("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", "-1"),
        ("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", "86401"),
        ("EXPORT_NOTIFIER_REPLICA_ID", ""),
        ("EXPORT_NOTIFIER_REPLICA_ID", "x" * 201),
        # Before, taken: a timer and a socket timeout that large raise OverflowError at each email's attempt.
        ("EXPORT_SMTP_TIMEOUT_SECONDS", "1e10"),
        ("EXPORT_SMTP_TIMEOUT_SECONDS", "3601"),
    ],
)
def test_a_lease_or_smtp_timeout_out_of_range_or_a_replica_id_empty_or_too_long_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("EXPORT_").lower()):
        NotifierSettings()


@pytest.mark.parametrize(
    ("lease", "attempts", "timeout"),
    [("60", "8", "30"), ("450", "8", "30"), ("600", "8", "60"), ("30", "1", "30")],
)
def test_a_lease_not_longer_than_one_emails_longest_send_is_refused_naming_both_settings(
    monkeypatch: pytest.MonkeyPatch, lease: str, attempts: str, timeout: str
):
    """A finish's email may take its attempts x the SMTP timeout, and the backoff between them: a lease that short
    lets another replica take a live finish over and send the email again."""
    monkeypatch.setenv("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", lease)
    monkeypatch.setenv("EXPORT_SMTP_MAX_ATTEMPTS", attempts)
    monkeypatch.setenv("EXPORT_SMTP_TIMEOUT_SECONDS", timeout)
    with pytest.raises(ValidationError) as refused:
        NotifierSettings()
    message = str(refused.value)
    assert "notifier_finish_lease_seconds" in message
    assert "smtp_max_attempts" in message
    assert "smtp_timeout_seconds" in message
    assert "EXPORT_NOTIFIER_FINISH_LEASE_SECONDS" in message


@pytest.mark.parametrize(("lease", "attempts", "timeout"), [("451", "8", "30"), ("32", "1", "30"), ("2", "1", "1")])
def test_a_lease_longer_than_one_emails_longest_send_is_taken(
    monkeypatch: pytest.MonkeyPatch, lease: str, attempts: str, timeout: str
):
    monkeypatch.setenv("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", lease)
    monkeypatch.setenv("EXPORT_SMTP_MAX_ATTEMPTS", attempts)
    monkeypatch.setenv("EXPORT_SMTP_TIMEOUT_SECONDS", timeout)
    assert NotifierSettings().notifier_finish_lease_seconds == float(lease)


def test_an_unset_lease_follows_smtp_settings_whose_longest_send_outlasts_the_default(monkeypatch: pytest.MonkeyPatch):
    """A notifier configured before the lease existed, with a long SMTP timeout, still starts: its lease is one
    email's longest send and a minute more."""
    monkeypatch.delenv("EXPORT_NOTIFIER_FINISH_LEASE_SECONDS", raising=False)
    monkeypatch.setenv("EXPORT_SMTP_MAX_ATTEMPTS", "8")
    monkeypatch.setenv("EXPORT_SMTP_TIMEOUT_SECONDS", "60")
    assert NotifierSettings().notifier_finish_lease_seconds == 8 * 60 + 7 * 30 + 60
    monkeypatch.setenv("EXPORT_SMTP_TIMEOUT_SECONDS", "30")
    assert NotifierSettings().notifier_finish_lease_seconds == 600.0  # the default outlasts 450 s
