"""Which names say that a value is a credential: one rule for log fields, HTTP headers and query parameters.

:func:`shared.log.redact_secrets` redacts log fields by it; :mod:`shared.domain.masking` masks header values,
query-string values and credentials by their shape by it (failure reasons, the attempt inspector). Pure.
"""

from __future__ import annotations

import functools
import re

#: A field, header or query parameter whose name says it holds a credential: ``*auth*`` (``Authorization``,
#: ``Proxy-Authorization``), ``*token*``, ``*secret*``, ``*passw*``/``pwd``, ``*signature*``, ``*api-key*``, a
#: name that is or ends in ``key`` or ``sig`` after ``-``/``_`` (``X-Functions-Key``, ``Ocp-Apim-Subscription-Key``,
#: ``private_key``, ``X-Sig``), ``*session*``, ``*cookie*``, ``*credential*``, ``*jwt*``.
#: ``Idempotency-Key`` is the exception: not a secret, and what a partner's support asks for.
_SECRET_NAME = re.compile(
    r"auth|token|secret|passw|pwd|signature|(^|[-_])(sig|key)$|api[-_]?key|session|cookie|credential|jwt",
    re.IGNORECASE,
)
_NOT_SECRET = re.compile(r"^idempotency[-_]key$", re.IGNORECASE)
#: Query parameters that are credentials by name only there (an OAuth authorisation ``code``).
_SECRET_QUERY_NAMES = frozenset({"code"})


@functools.lru_cache(maxsize=1024)  # the same header and field names, over and over
def secret_name(name: str) -> bool:
    """Whether a log field, HTTP header or query parameter of this name holds a credential, by its name."""
    return _SECRET_NAME.search(name) is not None and _NOT_SECRET.match(name) is None


def secret_query_name(name: str) -> bool:
    """Whether a query-string parameter of this name holds a credential (:func:`secret_name`, or ``code``)."""
    return secret_name(name) or name.lower() in _SECRET_QUERY_NAMES
