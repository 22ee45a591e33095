"""Benchmark: the notifier's sweep of unsent notifications (``--notifications``, default 1,000: failed runs' error
emails and ``failed`` webhooks, and missed runs' emails and ``missed`` webhooks sent as digests), their finishes
done, on SQLite and on a throwaway PostgreSQL: the time of one sweep that sends them all.

The senders are null (``--senders null``: an email or a webhook is delivered at once, so the figure is the
notifier's and the catalog's own cost, the claims' included) or real (``--senders real``: an aiosmtpd SMTP server and
an HTTP receiver on 127.0.0.1).

``--finishes N`` times instead the finishing polls: the notifier handling polls of 50 ``run.failed`` events, each
finishing its run (failure policy, error email, ``failed`` webhook, the finish recorded), N runs in all.

``--outbox breaker`` times the circuit breaker emails' sweep instead (``BreakerMails.retry_unsent``: the outbox's
unsent emails of a profile's breaker opening, one per definition using the profile, at most 100 a sweep).

To compare two trees (the code before a change and after), in turns, each turn on a fresh catalog::

    python tests/benchmarks/bench_notifier_sweep.py --compare BEFORE_DIR AFTER_DIR --turns 5

runs this file with ``PYTHONPATH`` set to each tree in turn (it imports only what both trees have). Not a test:
figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def unsent_ledger(runs: Any, failed: list[uuid.UUID], missed: list[uuid.UUID]) -> None:
    """Failed and missed runs of ``nightly`` (``runs``: the catalog's runs store), folded a minute ago, their finishes
    done and their notifications claimed and unsent (their first attempt failed, or a crash came between claim and
    send): the sweep's to send. Failed runs: an error email and an ``ops`` channel ``failed`` webhook each; missed
    runs: an error email and a ``missed`` webhook each (sent as digests above the threshold)."""
    from shared.events import RunFailed, RunMissed

    at = datetime.now(UTC) - timedelta(minutes=1)
    runs.fold_run_events(
        [RunFailed(run_id=run_id, definition="nightly", reason="boom", at=at) for run_id in failed]
        + [RunMissed(run_id=run_id, definition="nightly", scheduled_for=at, at=at, reason="down") for run_id in missed]
    )
    for run_id in failed:
        runs.claim_notification(run_id, "error", ["oncall@example.com"])
        runs.claim_notification(run_id, "webhook:ops:failed", ["ops"])
    for run_id in missed:
        runs.claim_notification(run_id, "error", ["oncall@example.com"])
        runs.claim_notification(run_id, "webhook:ops:missed", ["ops"])
    runs.mark_finishes_handled(failed + missed)


def sweep_seconds(url: str, notifications: int, senders: str) -> dict[str, float]:
    """Fill a fresh catalog at ``url`` with ``notifications`` unsent notifications, then time one sweep."""
    from devtools.http_receiver import HttpReceiver
    from devtools.smtp_sink import SmtpSink
    from services.notifier.webhook_sender import SendResult
    from shared.catalog import CatalogStores
    from tests.integration.test_notifier_webhooks import SECRET, SECRET_VARIABLE, definition, notifier_on

    os.environ[SECRET_VARIABLE] = SECRET
    with SmtpSink() as sink, HttpReceiver() as receiver:
        stores = CatalogStores.from_url(url, migrate=True)
        stores.definitions.apply(definition(receiver, events=["failed", "missed"]))
        runs = notifications // 2
        unsent_ledger(
            stores.runs, [uuid.uuid4() for _ in range(runs - runs // 10)], [uuid.uuid4() for _ in range(runs // 10)]
        )

        notifier = notifier_on(stores, sink)  # the webhooks' tests' notifier: real SMTP server and HTTP receiver
        assert notifier.webhooks is not None
        if senders == "null":
            notifier.webhooks.sender.send = lambda *args, **kwargs: SendResult(delivered=True)  # type: ignore[method-assign]
            notifier.mailer.send = lambda *args, **kwargs: {}  # type: ignore[method-assign]
        started = time.perf_counter()
        notifier.sweep()
        seconds = time.perf_counter() - started
        left = len(stores.runs.unsent_notifications(limit=10 * notifications))
        stores.close()
        assert left == 0, f"{left} notifications left unsent"
    return {"seconds": seconds}


def finish_seconds(url: str, finishes: int, senders: str) -> dict[str, float]:
    """On a fresh catalog at ``url``, time the notifier handling polls of 50 ``run.failed`` events of new runs: each
    event finishes its run (an error email and a ``failed`` webhook sent). Per poll and per finish, in seconds."""
    from devtools.http_receiver import HttpReceiver
    from devtools.smtp_sink import SmtpSink
    from services.notifier.webhook_sender import SendResult
    from shared.catalog import CatalogStores
    from shared.events import RunFailed
    from tests.integration.test_notifier_webhooks import SECRET, SECRET_VARIABLE, definition, notifier_on

    os.environ[SECRET_VARIABLE] = SECRET
    poll = 50
    with SmtpSink() as sink, HttpReceiver() as receiver:
        stores = CatalogStores.from_url(url, migrate=True)
        stores.definitions.apply(definition(receiver, events=["failed", "missed"]))
        notifier = notifier_on(stores, sink)
        assert notifier.webhooks is not None
        if senders == "null":
            notifier.webhooks.sender.send = lambda *args, **kwargs: SendResult(delivered=True)  # type: ignore[method-assign]
            notifier.mailer.send = lambda *args, **kwargs: {}  # type: ignore[method-assign]
        polls = [
            [RunFailed(run_id=uuid.uuid4(), definition="nightly", reason="boom") for _ in range(poll)]
            for _ in range(finishes // poll)
        ]
        notifier.handle_all([RunFailed(run_id=uuid.uuid4(), definition="nightly", reason="warm-up")])
        started = time.perf_counter()
        for events in polls:
            notifier.handle_all(list(events))
        seconds = time.perf_counter() - started
        left = len(stores.runs.unsent_notifications(limit=10 * finishes))
        stores.close()
        assert left == 0, f"{left} notifications left unsent"
    return {"seconds": seconds, "per_poll": seconds / len(polls), "per_finish": seconds / (len(polls) * poll)}


def breaker_sweep_seconds(url: str, emails: int, senders: str) -> dict[str, float]:
    """Fill a fresh catalog at ``url`` with ``emails`` unsent breaker emails (one per definition: the first attempt
    of each failed), then time one sweep of the outbox that sends them all."""
    from devtools.smtp_sink import SmtpSink
    from services.notifier.breaker_notices import BreakerMails
    from services.notifier.mailer import SmtpMailer
    from shared.catalog import CatalogStores
    from shared.catalog.breaker_mail_store import SqlBreakerMailStore
    from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition, HttpTemplate
    from shared.domain.fleet import BreakerChange

    with SmtpSink() as sink:
        stores = CatalogStores.from_url(url, migrate=True)
        stores.definitions.apply(ConnectionProfile(name="crm", base_url="http://127.0.0.1:9"))
        stores.definitions.apply(HttpTemplate(name="t", query="q", profile="crm", path="/m"))
        outbox = SqlBreakerMailStore(stores.database)
        change = BreakerChange("crm", "open", 1, datetime.now(UTC))
        for index in range(emails):
            error = {"enabled": True, "recipients": [f"oncall-{index}@example.com"]}
            spec = {"name": f"d{index}", "query": "q", "template": "t", "notifications": {"error": error}}
            stores.definitions.apply(ExportDefinition.model_validate(spec))
            assert outbox.claim(change, f"d{index}")
            outbox.mark(change, f"d{index}", error="SMTP away")
        mailer = SmtpMailer("127.0.0.1", sink.port, max_attempts=1)
        if senders == "null":
            mailer.send = lambda *args, **kwargs: {}  # type: ignore[method-assign]
        mails = BreakerMails(stores.definitions, outbox, mailer, "x@example.com")
        started = time.perf_counter()
        mails.retry_unsent()
        seconds = time.perf_counter() - started
        left = len(outbox.unsent(limit=10 * emails))
        stores.close()
        assert left == 0, f"{left} breaker emails left unsent"
    return {"seconds": seconds}


def compare(
    trees: list[str], turns: int, notifications: int, senders: str, finishes: int = 0, outbox: str = "notifications"
) -> None:
    from tests.benchmarks.common import postgres_databases

    if finishes:
        what = f"notifier finishing polls ({finishes} runs, 50 a poll)"
    else:
        kind = "breaker emails" if outbox == "breaker" else "notifications"
        what = f"notifier sweep of {notifications} unsent {kind} (one sweep)"
    print(
        f"{what}, fresh catalog each, senders {senders}, "
        f"{turns} turns alternating; load average before: {Path('/proc/loadavg').read_text().strip()}"
    )
    with tempfile.TemporaryDirectory() as work, ExitStack() as stack:
        create_database = postgres_databases(stack)
        for backend in ("sqlite", "postgresql"):
            times: dict[str, list[float]] = {tree: [] for tree in trees}
            for _ in range(turns):
                for tree in trees:
                    url = (
                        f"sqlite:///{Path(work) / uuid.uuid4().hex}.db"
                        if backend == "sqlite"
                        else create_database(f"b{uuid.uuid4().hex[:8]}")
                    )
                    command = [sys.executable, __file__, "--url", url, "--notifications", str(notifications)]
                    command += ["--finishes", str(finishes), "--outbox", outbox]
                    result = subprocess.run(
                        [*command, "--senders", senders],
                        env=os.environ | {"PYTHONPATH": tree},
                        cwd=tree,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    times[tree].append(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])
            base = statistics.median(times[trees[0]])
            for tree in trees:
                median = statistics.median(times[tree])
                runs = " ".join(f"{t * 1000:.0f}" for t in times[tree])
                print(
                    f"  {backend:<11} {tree:<28} median {median * 1000:7.1f} ms ({median / base:4.2f}x the first)  "
                    f"turns (ms): {runs}"
                )
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=1_000)
    parser.add_argument("--senders", choices=["null", "real"], default="null")
    parser.add_argument("--finishes", type=int, default=0, help="time finishing polls of this many runs instead")
    parser.add_argument("--url", help="one sweep on this (empty) catalog; prints its time as JSON")
    parser.add_argument("--compare", nargs="+", metavar="TREE", help="source trees to compare, in turns")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument(
        "--outbox", choices=["notifications", "breaker"], default="notifications", help="which sweep to time"
    )
    args = parser.parse_args()
    if args.url:
        if args.finishes:
            figures: dict[str, Any] = finish_seconds(args.url, args.finishes, args.senders)
        elif args.outbox == "breaker":
            figures = breaker_sweep_seconds(args.url, args.notifications, args.senders)
        else:
            figures = sweep_seconds(args.url, args.notifications, args.senders)
        print(json.dumps(figures))
    else:
        here = str(Path(__file__).resolve().parents[2])
        compare(args.compare or [here], args.turns, args.notifications, args.senders, args.finishes, args.outbox)


if __name__ == "__main__":
    main()
