"""The scheduler process with its clock ``EXPORT_TEST_SCHEDULER_AHEAD_SECONDS`` ahead of real time.

``python -m tests.e2e.scheduler_ahead`` runs the service's own composition root (``services.scheduler.__main__``)
with a :class:`ShiftedClock`: an e2e test that needs a schedule's next instant to come now starts the scheduler
this way (``LocalPipeline.modules``) instead of waiting up to a minute for it. Everything else is the real
service: settings, catalog, lease, producer, metrics and health.

``python -m tests.e2e.extractor_ahead`` does the same for the extractor, whose clock says when a scheduled run
may start (it holds a run published ahead until its instant). :func:`restart_on_a_shifted_clock` restarts both
on the same shifted clock, a few seconds before a schedule's next instant: the scheduler publishes the run ahead
and the extractor holds it until that instant, as with the real clock at the real turn of the minute; the shift
is the only difference.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.catalog import CatalogStores
    from tests.e2e.conftest import Pipeline

MODULE = "tests.e2e.scheduler_ahead"
EXTRACTOR_MODULE = "tests.e2e.extractor_ahead"
AHEAD = "EXPORT_TEST_SCHEDULER_AHEAD_SECONDS"


def ahead_of_the_next_turn(catalog: CatalogStores, definition: str, past: float) -> dict[str, str]:
    """The environment of a service whose clock starts ``past`` seconds after ``definition``'s next instant
    (negative: before it), read from the catalog while no scheduler runs. The clock never goes back behind what
    the previous scheduler handled: each instant read is the next one."""
    [due] = [
        d.next_due_at
        for d in catalog.scheduling.due_schedules(datetime.now(UTC) + timedelta(days=1))
        if d.definition.name == definition
    ]
    return {AHEAD: f"{max(0.0, due.timestamp() + past - time.time()):.3f}"}


def restart_on_a_shifted_clock(pipeline: Pipeline, definition: str, before: float = 3.0) -> None:
    """Stop the scheduler and the extractor, then start both on the same clock, ``before`` seconds before
    ``definition``'s next instant (its schedule must be synced: seen by a scheduler since its last edit).

    A run the stopped scheduler had already published ahead (stopped within its lookahead of a turn) is long
    due by the new clock: the restarted extractor starts it at once, and the next instant's run is held as said."""
    pipeline.stop_services("scheduler", "extractor")
    pipeline.services.modules.update(scheduler=MODULE, extractor=EXTRACTOR_MODULE)
    ahead = ahead_of_the_next_turn(pipeline.catalog, definition, -before)
    pipeline.start_services({"scheduler": ahead, "extractor": ahead})


if __name__ == "__main__":
    # Imported here, not at the top: a test imports this module for MODULE and AHEAD, and the service's entry
    # module takes signals over as it is imported (the stack-dump signal blocked in the importing process: pytest's,
    # then every process it starts; SIGTERM and SIGINT ending it with status 0).
    from services.scheduler.__main__ import main
    from services.scheduler.clock import ShiftedClock

    main(clock=ShiftedClock(timedelta(seconds=float(os.environ[AHEAD]))))
