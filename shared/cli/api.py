"""exportctl's client of the admin API: JSON calls, and a refusal as one line with its exit code.

Built on the standard library's ``urllib`` rather than httpx: a command through the API must start in
well under 0.3 s, and importing httpx alone takes about 0.1 s (README, exportctl).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from shared.cli.exits import UNREACHABLE, USAGE, CliError, code_of_status

#: The API's path prefix; a URL given with it (the README's ``$API``) is taken as the server's.
API_PREFIX = "/api/v1"


#: What exportctl says of a write sent but not answered: the server may have recorded it.
_UNKNOWN_OUTCOME = (
    "its outcome is unknown (the server may have recorded it): check before trying again (a run or a replay: "
    "`exportctl runs`, or retry with the same --idempotency-key)"
)


def normalise_url(url: str) -> str:
    """The server's base URL: no trailing slash, no ``/api/v1`` suffix (``http://h:8080/api/v1/`` → ``http://h:8080``)."""
    url = url.strip().rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    return url


class ApiError(CliError):
    """A call the API refused (``status`` and its problem's detail), or one that could not be made (no status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(
            f"{status}: {message}" if status else message, code_of_status(status) if status else UNREACHABLE
        )
        self.status = status
        self.detail = message


def _query(params: dict[str, Any] | None) -> str:
    pairs: list[tuple[str, str]] = []
    for name, value in (params or {}).items():
        if value is None:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            pairs.append((name, str(item).lower() if isinstance(item, bool) else str(item)))
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


def _problem_detail(body: bytes) -> str:
    """The ``detail`` (else ``title``) of a problem+json body; the start of the body if it is not one."""
    try:
        problem = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")[:300].strip() or "(no detail)"
    if isinstance(problem, dict):
        return str(problem.get("detail") or problem.get("title") or problem)
    return str(problem)[:300]


class AdminApi:
    """The admin API at ``url`` (with or without ``/api/v1``), called with the bearer ``token``."""

    def __init__(self, url: str, token: str = "", timeout: float = 30.0, anonymous_because: str = "") -> None:
        self.url = normalise_url(url)
        if not self.url.startswith(("http://", "https://")):
            raise CliError(f"the admin API URL '{url}' must start with http:// or https://", USAGE)
        self.base = self.url + API_PREFIX
        self.token = token
        self.timeout = timeout
        #: Why no token is sent (:attr:`shared.cli.config.Connection.anonymous_because`): added to a 401's message.
        self.anonymous_because = anonymous_because

    def close(self) -> None:
        """Nothing to release (one connection per call); kept for symmetry with other clients."""

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The JSON answer of a call (None when empty); :class:`ApiError` when it is refused or fails. ``timeout``:
        this call's, when not the client's (a call the server may take longer to answer)."""
        # S310: the scheme is http(s), checked in __init__.
        request = urllib.request.Request(self.base + path + _query(params), method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, data=data, timeout=timeout or self.timeout) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = _problem_detail(exc.read())
            if exc.code == 401 and self.anonymous_because and not self.token:
                detail += f" ({self.anonymous_because})"
            raise ApiError(detail, exc.code) from None
        except TimeoutError:
            # Sent (a connection that failed is a URLError), not answered in time: a write may be recorded all the same.
            seconds = timeout or self.timeout
            raise self._unanswered(
                method, f"did not answer {method} {path} within {seconds:g} s", "timed out"
            ) from None
        except urllib.error.URLError as exc:
            # urllib wraps what fails while connecting or sending: the server has not got the request.
            raise ApiError(f"the admin API at {self.url} is unreachable ({exc.reason or exc})") from None
        except OSError as exc:
            # Not wrapped, so raised after the request was sent (getresponse: RemoteDisconnected, a reset
            # connection): as with a timeout, a write may be recorded all the same.
            raise self._unanswered(
                method, f"dropped the connection after {method} {path} was sent ({exc})", str(exc)
            ) from None
        return json.loads(body) if body else None

    def _unanswered(self, method: str, what: str, reason: str) -> ApiError:
        """A call sent but not answered (``what`` befell it): a write's outcome is unknown, a read unreachable."""
        if method != "GET":
            return ApiError(f"the admin API at {self.url} {what}: {_UNKNOWN_OUTCOME}")
        return ApiError(f"the admin API at {self.url} is unreachable ({reason})")

    def find(self, collection: str, name: str) -> dict[str, Any] | None:
        """An object, or None when it does not exist."""
        try:
            found: dict[str, Any] = self.call("GET", f"/{collection}/{urllib.parse.quote(name, safe='')}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found
