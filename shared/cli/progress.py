"""Following a run to its end with a progress bar (``run --wait``, ``dead-letters replay --wait``), both modes.

The bar counts members processed (delivered or failed) out of those read, and beside it says how many
were delivered and how many failed: a run that delivered nothing must not look like a full bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.cli.collector import resume
from shared.cli.exits import OK, RUN_FAILED, fail
from shared.cli.run_views import ACTIVE, View, summary


def follow(fetch: Callable[[], View | None], run_id: str, timeout: float, poll_seconds: float) -> int:
    """Poll ``fetch`` until the run is final or ``timeout`` passes; print its summary.

    Exit 0 if it succeeded, 1 if it did not or did not finish in time (it goes on: said how to follow it).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]delivered {task.fields[delivered]}[/] [red]failed {task.fields[failed]}[/]"),
        TimeElapsedColumn(),
    )
    resume()  # a wait of minutes or hours: the garbage collector back on (off while exportctl started)
    deadline = time.monotonic() + timeout
    view: View | None = None
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("queued", total=None, delivered=0, failed=0)
        while True:
            view = fetch()
            if view is not None:
                total = view["extracted"] if view["extraction_complete"] else None
                progress.update(
                    task,
                    description=view["status"],
                    completed=view["delivered"] + view["failed"],
                    total=total,
                    delivered=view["delivered"],
                    failed=view["failed"],
                )
                if view["status"] not in ACTIVE:
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(poll_seconds, remaining))  # polling at a human pace, never past the deadline
    if view is None or view["status"] in ACTIVE:
        return fail(
            f"run {run_id} did not finish within {timeout:g}s; it goes on (exportctl runs --id {run_id})", RUN_FAILED
        )
    print(summary(view))
    return OK if view["status"] == "succeeded" else RUN_FAILED
