"""``make demo``: one real export end to end on this machine, then everything is stopped.

Starts Kafka (from Maven Central, unless ``EXPORT_KAFKA_BOOTSTRAP_SERVERS`` names a cluster), an HTTP
receiver and an SMTP sink on 127.0.0.1, creates 10,000 demo members in SQLite, applies the demo
manifest, starts the four services, runs the export, and prints what happened.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

from devtools.http_receiver import HttpReceiver
from devtools.kafka_broker import REPO_ROOT, LocalKafka
from devtools.pipeline import LocalPipeline
from devtools.processes import wait_until
from devtools.smtp_sink import SmtpSink
from shared.catalog import CatalogStores, make_engine
from shared.querystore.demo_data import create_demo_members

DEFINITION = "demo-all-members"
MANIFEST = REPO_ROOT / "deploy" / "local" / "demo" / "demo-export.yaml"


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def run_demo(members: int, work_dir: Path) -> int:
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    with ExitStack() as stack:
        bootstrap = os.environ.get("EXPORT_KAFKA_BOOTSTRAP_SERVERS")
        own_kafka = None  # an existing cluster is neither started nor stopped
        if bootstrap:
            _say(f"using the Kafka cluster at {bootstrap}")
        else:
            _say("starting Kafka (KRaft, single node; jars from Maven Central, cached after the first run)")
            own_kafka = stack.enter_context(LocalKafka(work_dir / "kafka"))
            bootstrap = own_kafka.bootstrap_servers
            _say(f"Kafka ready on {bootstrap}")
        receiver = stack.enter_context(HttpReceiver())
        mail_dir = work_dir / "mail"
        sink = stack.enter_context(SmtpSink(directory=mail_dir))
        _say(f"HTTP receiver on {receiver.url}, SMTP sink on 127.0.0.1:{sink.port}")

        catalog_url = f"sqlite:///{work_dir / 'catalog.db'}"
        store_url = f"sqlite:///{work_dir / 'members.db'}"
        create_demo_members(make_engine(store_url), members)
        _say(f"{members} demo members created in {work_dir / 'members.db'}")

        env = {
            "EXPORT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "EXPORT_CATALOG_URL": catalog_url,
            "EXPORT_QUERY_STORE_URL": store_url,
            "EXPORT_SMTP_HOST": "127.0.0.1",
            "EXPORT_SMTP_PORT": str(sink.port),
            "EXPORT_METRICS_PORT": "0",
            # The receivers listen on loopback, which the SSRF guard refuses unless allowed.
            "EXPORT_ALLOWED_DESTINATIONS": "127.0.0.1",
            "EXPORT_TOPIC_PREFIX": f"demo{int(time.time())}.",
            "PARTNER_DEMO_RECEIVER_TOKEN": "demo-token-not-a-real-secret",  # env: references need PARTNER_
        }
        exportctl = [sys.executable, "-m", "shared.cli"]
        child_env = {**os.environ, **env}
        # What an operator does first, and after every release: bring the catalog's schema up to date.
        subprocess.run([*exportctl, "db", "upgrade"], env=child_env, check=True)
        # As an operator would apply the shipped manifest: its variable given on the command line.
        apply = [*exportctl, "apply", "-f", str(MANIFEST), "--var", f"RECEIVER_URL={receiver.url}"]
        subprocess.run(apply, env=child_env, check=True)

        pipeline = stack.enter_context(LocalPipeline(env, work_dir / "logs"))
        _say(f"services started: {', '.join(pipeline.services)} (logs in {work_dir / 'logs'})")
        started = time.monotonic()
        run = subprocess.run([*exportctl, "run", DEFINITION, "--wait", "--timeout", "300"], env=child_env)
        elapsed = time.monotonic() - started

        catalog = CatalogStores.from_url(catalog_url)
        record = catalog.runs.list_runs(DEFINITION, limit=1)[0]
        with suppress(TimeoutError):
            wait_until(lambda: bool(sink.received()), timeout=60, what="the notification email")
        received = receiver.accepted_member_ids()
        print()
        print("Summary")
        print(f"  run id:             {record.run_id}")
        print(f"  status:             {record.status.value}")
        print(f"  members read:       {record.extracted}")
        print(f"  delivered:          {record.delivered}")
        print(f"  failed:             {record.failed}")
        print(f"  duration:           {record.duration_seconds or 0:.1f}s (wall clock from request: {elapsed:.1f}s)")
        print(f"  receiver got:       {len(received)} distinct members in {len(receiver.receipts())} requests")
        for mail in sink.received():
            print(
                f"  email:              '{mail.subject}' to {', '.join(mail.recipients)} "
                f"via SMTP 127.0.0.1:{sink.port} (saved in {mail_dir})"
            )
        if not sink.received():
            print("  email:              none arrived")
        ok = (
            run.returncode == 0
            and record.status.value == "succeeded"
            and len(received) == members
            and bool(sink.received())
        )
        _say(f"stopping services, receiver, SMTP sink{'' if own_kafka is None else ' and Kafka'}")
    _say("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".local" / "demo")
    args = parser.parse_args()
    return run_demo(args.members, args.dir)


if __name__ == "__main__":
    sys.exit(main())
