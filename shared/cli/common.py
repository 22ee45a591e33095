"""What exportctl's commands share: its settings, failing with a message, following a run."""

from __future__ import annotations

import sys
import time
import uuid
from typing import TYPE_CHECKING

from pydantic import Field

from shared.domain.runs import RunRecord
from shared.settings import CommonSettings

if TYPE_CHECKING:
    from shared.application.ports import RunsReader


class CliSettings(CommonSettings):
    """Settings of exportctl."""

    query_store_url: str = Field(
        default="sqlite:///.local/members.db",
        description="Member store: where `apply` discovers saved queries' columns and `demo-data` writes.",
    )
    api_url: str = Field(
        default="",
        description="The admin API (e.g. http://export-admin:8080): when set, exportctl works through it "
        "(list, search, describe, apply, delete, copy, run, runs, dry-run); else on the catalog directly.",
    )
    api_token: str = Field(default="", description="exportctl's bearer token for the admin API.")
    extractor_max_record_bytes: int = Field(
        default=900_000,
        ge=10_000,
        description="Largest member-batch record of a dead-letter replay, in bytes (the extractor's setting).",
    )


def fail(message: str) -> int:
    """Print ``exportctl: message`` to stderr; return the usage-error exit code."""
    print(f"exportctl: {message}", file=sys.stderr)
    return 2


def summary(record: RunRecord) -> str:
    """A run's outcome in a few lines (status, counts, duration, error samples, replay link)."""
    duration = f"{record.duration_seconds:.1f}s" if record.duration_seconds is not None else "-"
    lines = [
        f"run {record.run_id} of '{record.definition}': {record.status.value}",
        f"  read: {record.extracted}  delivered: {record.delivered}  failed: {record.failed}  duration: {duration}",
    ]
    if record.replay_of is not None:
        lines.append(f"  replay of run {record.replay_of}")
    lines += [f"  error: {error}" for error in record.error_samples]
    return "\n".join(lines)


def run_line(record: RunRecord) -> str:
    """One run on one line, for run lists."""
    started = record.started_at.isoformat(timespec="seconds") if record.started_at else "-"
    return (
        f"{record.run_id}  {record.definition:<30} {record.status.value:<22} {started}  "
        f"read {record.extracted} delivered {record.delivered} failed {record.failed}"
    )


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    """``--param NAME=VALUE`` options as a mapping; ValueError naming a malformed one."""
    parameters = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f"--param '{pair}': expected NAME=VALUE")
        parameters[name] = value
    return parameters


def wait_for_run(runs: RunsReader, run_id: uuid.UUID, timeout: float) -> int:
    """Follow a run until it is final; print its summary; exit 0 only if it succeeded."""
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        record = runs.get_run(run_id)
        if record is not None:
            total = str(record.extracted) if record.extraction_complete else "?"
            line = f"  {record.status.value}: delivered {record.delivered} / {total}, failed {record.failed}"
            if line != shown and sys.stdout.isatty():
                print(line, flush=True)
                shown = line
            if record.status.is_final:
                print(summary(record))
                return 0 if record.status.value == "succeeded" else 1
        time.sleep(0.25)
    return fail(f"run {run_id} did not finish within {timeout:.0f}s")
