"""An exception caught by a catch-all, as what leaves the service: a reason and a log line's fields, masked and
bounded as a partner's refusal is (:func:`shared.outbound.failure_reasons.masked_reason`).

A catch-all's exception may quote anything: a URL with its token, a header's value, a profile's secret, a
connection URL with its password (a driver's error), a member's data at length. Its message is masked with the
secrets the caller knows and credentials by their shape, then cut to
:data:`~shared.outbound.failure_reasons.REASON_CHARS`. A log line gets that reason, the exception's type and where
it was raised (:func:`raised_at`), never the rendered traceback: its messages (the causes' too) are not masked.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from types import FrameType

from shared.domain.masking import Masking
from shared.outbound.failure_reasons import REASON_CHARS, masked_reason

#: The project's root (``shared``'s parent): its files are named relative to it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_LIBRARIES = f"{os.sep}site-packages{os.sep}"


def exception_reason(
    exc: BaseException, masking: Callable[[], Masking] = Masking, *, lead: str = "", limit: int = REASON_CHARS
) -> str:
    """``lead``, then ``exc``'s type and message, masked with what ``masking`` builds (called here: on failures
    only; by default credential shapes only) and cut to ``limit`` characters. Never raises."""
    return masked_reason(masking, None, f"{lead}{type(exc).__name__}: {_message(exc)}", limit)


def failure_fields(exc: BaseException, reason: str | None = None) -> dict[str, str]:
    """A log line's fields for ``exc``: ``error`` (``reason``, its masked reason; by default
    :func:`exception_reason` with credential shapes only), ``error_type`` and ``raised_at`` (enough to find the
    bug, nothing the mask did not see)."""
    error = exception_reason(exc) if reason is None else reason
    return {"error": error, "error_type": type(exc).__name__, "raised_at": raised_at(exc)}


def raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised: ``file:line in function`` of its traceback's innermost frame (a project file
    relative to the project's root, a library's from its package) and, when that frame is a library's, the
    innermost of the project's after ``from``; ``""`` for an exception never raised."""
    frames = list(traceback.walk_tb(exc.__traceback__))
    if not frames:
        return ""
    innermost = _where(*frames[-1])
    for frame, line in reversed(frames):
        if _ours(frame):
            ours = _where(frame, line)
            return innermost if ours == innermost else f"{innermost} (from {ours})"
    return innermost


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails: its type still says something
        return "(its message could not be read)"


def _ours(frame: FrameType) -> bool:
    name = frame.f_code.co_filename
    return name.startswith(_ROOT) and _LIBRARIES not in name


def _where(frame: FrameType, line: int) -> str:
    name = frame.f_code.co_filename
    if _LIBRARIES in name:
        name = name.rsplit(_LIBRARIES, 1)[1]
    elif name.startswith(_ROOT):
        name = name[len(_ROOT) :]
    return f"{name}:{line} in {frame.f_code.co_name}"
