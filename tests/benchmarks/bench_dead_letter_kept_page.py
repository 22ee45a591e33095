"""``GET /api/v1/dead-letters`` answered from a kept listing whose dead letters name many definitions (an outage
across hundreds of exports): how long a kept page takes and how many statements it runs on the catalog.

The admin API in this process (the tests' in-process app and listing helpers: its catalog SQLite, or
``--catalog-url``), over the broker at ``--bootstrap``: ``--definitions`` export definitions made in the catalog, a
dead letter each written on a topic of its own, one page read to keep the listing, then ``--pages`` pages of
``--limit`` groups, each timed: the listing's second page, or its first again when the first holds every group
(exportctl's pages of 1,000). The tree measured is the one on ``PYTHONPATH``: take turns with the code before,
extracted with ``git archive``.

    python -m tests.benchmarks.bench_dead_letter_kept_page --bootstrap 127.0.0.1:9092 --definitions 300 --limit 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shared.domain.catalog_objects import ExportDefinition
from tests.integration.test_admin_dead_letter_listings import _listing, _refused


def measure(bootstrap: str, catalog_url: str | None, definitions: int, limit: int, pages: int) -> dict[str, Any]:
    names = [f"export-{i:04}" for i in range(definitions)]
    run = uuid.uuid4()
    with tempfile.TemporaryDirectory() as directory, _listing(Path(directory), bootstrap, catalog_url) as listing:
        context = listing.api.app.state.context
        context.definitions.apply_all([ExportDefinition(name=name, query="gold", template="upsert") for name in names])
        listing.add([_refused(run, "HTTP 503 after 5 attempts", i, definition=name) for i, name in enumerate(names)])
        statements = [0]

        def count(*args: Any) -> None:
            statements[0] += 1

        engine = context.definitions.database.engine
        seconds: list[float] = []
        offset = limit if limit < definitions else 0
        assert listing.get(limit=limit)["total_groups"] == definitions  # read, kept
        sa.event.listen(engine, "before_cursor_execute", count)
        for _ in range(pages):
            started = time.perf_counter()
            listing.get(offset=offset, limit=limit)
            seconds.append(time.perf_counter() - started)
        sa.event.remove(engine, "before_cursor_execute", count)
    return {
        "definitions": definitions,
        "limit": limit,
        "pages": pages,
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "min_ms": round(min(seconds) * 1000, 1),
        "statements_per_page": statements[0] / pages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--catalog-url", default=None, help="the catalog (default: SQLite in a temporary directory)")
    parser.add_argument("--definitions", type=int, default=300)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--pages", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(measure(args.bootstrap, args.catalog_url, args.definitions, args.limit, args.pages)))


if __name__ == "__main__":
    main()
