"""The scheduler process with its clock ``EXPORT_TEST_SCHEDULER_AHEAD_SECONDS`` ahead of real time.

``python -m tests.e2e.scheduler_ahead`` runs the service's own composition root (``services.scheduler.__main__``)
with a :class:`ShiftedClock`: an e2e test that needs a schedule's next instant to come now starts the scheduler
this way (``LocalPipeline.modules``) instead of waiting up to a minute for it. Everything else is the real
service: settings, catalog, lease, producer, metrics and health.
"""

from __future__ import annotations

import os
from datetime import timedelta

MODULE = "tests.e2e.scheduler_ahead"
AHEAD = "EXPORT_TEST_SCHEDULER_AHEAD_SECONDS"

if __name__ == "__main__":
    # Imported here, not at the top: a test imports this module for MODULE and AHEAD, and the service's entry
    # module reserves the stack-dump signal as it is imported (blocked in the importing process: pytest's, then
    # every process it starts).
    from services.scheduler.__main__ import main
    from services.scheduler.clock import ShiftedClock

    main(clock=ShiftedClock(timedelta(seconds=float(os.environ[AHEAD]))))
