"""The extractor process with its clock ``EXPORT_TEST_SCHEDULER_AHEAD_SECONDS`` ahead of real time: the clock by
which it holds a scheduled run published ahead until its instant, the same as the scheduler's started by
:mod:`tests.e2e.scheduler_ahead` with the same value. Everything else is the real service."""

from __future__ import annotations

import os
from datetime import timedelta

if __name__ == "__main__":
    # Imported here, not at the top: the service's entry module takes signals over as it is imported.
    from services.extractor.__main__ import main
    from services.scheduler.clock import ShiftedClock
    from tests.e2e.scheduler_ahead import AHEAD

    main(now=ShiftedClock(timedelta(seconds=float(os.environ[AHEAD]))).now)
