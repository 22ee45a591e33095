"""`make chaos`: every fault of the chaos suite on one pipeline, 200,000 members a run by default; prints the
table and writes it to docs/chaos.md.

    python -m tests.chaos [--members N] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from tests.chaos.harness import ChaosPipeline, Outcome
from tests.chaos.scenarios import SCENARIOS, run_scenario, table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "chaos.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--only", default="", help="run only the faults whose name contains this")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if args.only.lower() in s.name.lower()]
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="chaos-") as work, ChaosPipeline(Path(work), args.members) as pipeline:
        for scenario in chosen:
            print(f"-- {scenario.name}", flush=True)
            try:
                outcomes.append(run_scenario(pipeline, scenario))
            except Exception as exc:  # noqa: BLE001 - a scenario that broke the pipeline is a row, not the end
                print(f"   failed: {type(exc).__name__}: {exc}", flush=True)
                outcomes.append(Outcome(scenario=scenario.name, members=args.members, status=f"error: {exc}"))
            print("\n".join(table(outcomes[-1:])[2:]), flush=True)
    lines = table(outcomes)
    print("\n".join(lines))
    cores = len(__import__("os").sched_getaffinity(0))
    header = (
        f"# Chaos suite\n\n`make chaos` on {datetime.now(UTC):%Y-%m-%d}, {args.members:,} members a run, "
        f"{platform.machine()}, {cores} cores, Python {platform.python_version()}.\n\n"
    )
    if not args.only:
        DOCS.write_text(header + "\n".join(lines) + "\n")
    return 0 if all(o.held for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
