"""The first statement of every service's entry module (``services/<name>/__main__.py``), before its imports.

A service's imports take a second and more on a busy node (SQLAlchemy, pydantic, kafka-python, FastAPI...). Two
things must hold from before them:

- SIGUSR1 (stack dumps) is blocked on the main thread before any import starts a thread (numpy's OpenBLAS pool
  does), so every thread inherits the block (:mod:`shared.stack_dumps`);
- SIGTERM and SIGINT end the process at once with status 0 (:mod:`shared.shutdown`). Kubernetes sends SIGTERM to
  pods still starting; one that came during the imports, before start-up's own steps, ended the process with status
  143 (-15 in a test), read as a crash (a CI run saw the extractor so, stopped seconds after it was started).
"""

from __future__ import annotations

from shared.shutdown import stop_on_signals
from shared.stack_dumps import reserve_stack_dump_signal


def begin_service_process() -> None:
    """Reserve the stack-dump signal and have SIGTERM and SIGINT end the process with status 0 until the service
    serves (its loop, or uvicorn, then takes them over to stop gracefully). Call it on the main thread, first thing
    in a service's entry module: every import after it is covered."""
    reserve_stack_dump_signal()
    stop_on_signals()
