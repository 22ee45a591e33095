"""Credentials recognised by their shape, for masking those no one told us about. Pure.

:class:`shared.domain.masking.Masking` masks the values it knows (a profile's secrets, the credentials a request
carried). A partner's answer may also quote a credential it does not know: another client's token, a proxy's,
one of ours in a form no rule derives. This catches the common shapes:

- an HTTP authentication scheme followed by a credential (``Bearer <token>``, ``Basic <base64>``, ``Token``,
  ``ApiKey``, ``Negotiate``, ``NTLM``; the scheme in any case) when the credential looks like one (see
  :func:`looks_like_credential`: ``Bearer token expired`` stays as it is);
- ``name=value`` whose name says it is a credential (:func:`shared.domain.secret_names.secret_query_name`):
  a query string, a form body, ``client_secret=...`` in a message;
- a quoted member whose name says so: ``"api_key": "..."`` (JSON), ``'password': '...'`` (a Python or JS
  literal), or an unquoted value after it (``"pin_token": 1234``; ``null``, ``true`` and ``false`` are kept);
- a URL's user information: the password of ``scheme://user:password@host`` (a database's connection URL in a
  driver's error, a proxy's URL), or a user part that looks like a credential (``https://<token>@host``); a
  password may hold a space or a quote (``postgresql://app:pa ss@db``, ``postgresql://app:1 pass@db``) unless it
  starts or ends with a space, or reads as a host's port then a message's words and an address
  (``http://h.example:8080 refused, ask ops@example.com`` is kept; after a bare name, ``http://db:8080 ...``, it
  is masked: see :func:`_host_like`; so is one before a service's name, ``postgresql://first.last:1 x@db failed``:
  an address's domain holds a dot);
- a connection string's part libpq quotes when it cannot read it (``unexpected spaces found in "1 x", ...``,
  ``invalid percent-encoded token: "p%zz"``): psycopg given a connection URL whole says so of its password. The
  services connect through SQLAlchemy, which hands libpq the parts (its errors quote no password: measured with
  passwords holding spaces, ``%``, ``:``, ``#``, ``?``; one holding ``@`` is split there, its tail read as the host's
  name, ``failed to resolve host 'b@db'``: masked by value where the process's environment gives the URL).

Each masks the value only (``Bearer ***``, ``api_key=***``, ``"token": "***"``, ``postgresql://app:***@db``): the
reader still sees which credential was refused. Masking a masked text changes nothing.

Member data a database's error quotes (PostgreSQL's ``DETAIL:  Key (member_key)=(***) already exists.``) is masked
here too (:mod:`shared.domain.database_details`): every text masked by shape is masked of it.
"""

from __future__ import annotations

import re
import urllib.parse

from shared.domain.case_folding import folded
from shared.domain.database_details import mask_database_details
from shared.domain.secret_names import secret_name, secret_query_name

#: Schemes whose credential is one token (RFC 9110's token68, or an opaque key). Not an auth-param
#: (``Bearer realm="x"``, ``error_uri=...``): a token followed by ``=`` and a value is a name, not a credential.
_SCHEME = re.compile(
    # The lookahead first: a character class the engine skips along quickly (twice as fast as without).
    r"(?=[BbTtAaNn])\b((?i:bearer|basic|token|apikey|api-key|negotiate|ntlm)[ \t]+[\"']?)"
    r"([A-Za-z0-9\-._~+/]++(?:==?(?![=A-Za-z0-9\-._~+/\"]))?)(?!=)"
)
#: ``name=value`` after the start, a space, ``;``, ``,`` or ``(`` (a message, a form body); the query string's
#: own form (after ``?`` or ``&``) keeps every character up to the next field.
_QUERY_FIELD = re.compile(r"([?&])([^=&\s]+)=([^&\s#>\"]*)")
_TEXT_FIELD = re.compile(r"(^|[\s;,(])([A-Za-z_][A-Za-z0-9_.\-]*)=([^\s&#>\"';,)]+)")
#: A quoted member name, its colon, then a quoted value (closed, or cut by the end of the text) or a bare one.
_MEMBER = re.compile(
    r"""(["'])([A-Za-z0-9_.\-]{1,64})\1(\s*:\s*)(?:(["'])((?:\\.|(?!\4)[^\\\n])*)(\4|$)|([^\s,}\]"']+))"""
)
#: The longest password holding a space or a quote that is masked (a longer run is a message, not a password).
MAX_SPACED_PASSWORD = 128
#: A URL's user information, in one pass (each ``://`` tried once: a text of many is searched half as often as by two
#: expressions, and no run of characters is given back one by one where none can be an ``@``):
#:
#: - up to the authority's last ``@`` (a password may hold one): ``user:password`` or a user alone (a token);
#: - else a password holding a space or a quote (``postgresql://app:pa ss@db``, ``https://u:p"w@h``), which the first
#:   stops at: a user without either, ``:``, then up to :data:`MAX_SPACED_PASSWORD` characters on one line up to the
#:   first ``@`` (not the last: the text after a space is a message's, and may hold an address).
#:
#: Where the first matches, the second would find no space nor quote in the password: the same as the two in turn.
_USERINFO = re.compile(
    r"(://)(?:([^\s/?#\"'<>]*)@"  # this class holds '@': given back up to the last one
    rf"|([^\s/?#\"'<>:@\[\]]*+):([^/?#<>@\r\n]{{1,{MAX_SPACED_PASSWORD}}}+)@)"
)
#: How a colon may begin when no password follows it but a message's text: a quote closing a string (after a port,
#: or not) then a separator (``{"url": "https://h:8443", "to": "a@b"}``, ``'https://h:' and 'a@b'``)...
_CLOSING_QUOTE = re.compile(r"[0-9]{0,5}[\"'\\]+[\s,;:)\]}]")
#: ... or a port then a space (or a quote) when what stands before the colon is a host's name (see :func:`_host_like`):
#: ``http://10.0.0.1:8080 refused, ask ops@example.com``; after a user, ``app:1 pass@db`` is a password.
_PORT = re.compile(r"([0-9]{1,5})[\s\"'\\]")
#: What follows the ``@`` of a URL's authority, not an address's in a message: a host then its port or its path, query
#: or fragment (``@db:5432``, ``@db/members``): a password before it, whatever it starts with.
_AUTHORITY_TAIL = re.compile(r"[A-Za-z0-9.\-_~%]+(?::[0-9]|[/?#])")
#: ... or a name without a dot then a space, a quote, a separator or the text's end: a service's host (``@db``,
#: ``@postgres``), not an e-mail address's domain, which holds one (``ops@example.com``; ``root@localhost`` is masked).
_BARE_HOST = re.compile(r"[A-Za-z0-9\-_]+(?=[\s\"',;)\]}]|\.?\Z|\.\s)")
#: libpq's words when a connection string's part cannot be read (psycopg given a URL or ``key=value`` text whole): the
#: part quoted, a password as well as any other (``unexpected spaces found in "1 x", use percent-encoded spaces``).
_LIBPQ_QUOTED = re.compile(
    r'(unexpected spaces found in "|missing "=" after ")[^\n]*?(", use percent-encoded spaces|" in connection info)'
    r'|(invalid percent-encoded token: "|forbidden value %00 in percent-encoded value: "|URI query parameter: ")'
    r'[^\n]*?("(?:\n|\\n|\Z))'
)
_LITERALS = frozenset({"null", "true", "false"})
#: The schemes, in lower case, and a word every name :func:`secret_query_name` accepts holds (a cheap test).
_SCHEMES = ("bearer", "basic", "token", "apikey", "api-key", "negotiate", "ntlm")
_NAME_WORDS = (
    "auth",
    "token",
    "secret",
    "passw",
    "pwd",
    "sig",
    "key",
    "session",
    "cookie",
    "credential",
    "jwt",
    "code",
)
#: Characters a word rarely holds but a credential usually does.
_CREDENTIAL_MARKS = frozenset("0123456789+/=_~")
#: A token no shorter than this is a credential when it holds a digit, one of ``+/=_~`` or mixed case ...
MIN_CREDENTIAL = 6
#: ... and one this long is, whatever it holds (a word is rarely longer).
LONG_CREDENTIAL = 20


def looks_like_credential(token: str) -> bool:
    """Whether a token after an authentication scheme is a credential rather than a word: at least
    :data:`MIN_CREDENTIAL` characters with a digit, one of ``+/=_~`` or an upper-case letter after the first, or
    at least :data:`LONG_CREDENTIAL` characters."""
    if len(token) >= LONG_CREDENTIAL:
        return True
    if len(token) < MIN_CREDENTIAL:
        return False
    return any(c in _CREDENTIAL_MARKS for c in token) or any(c.isupper() for c in token[1:])


def mask_credential_shapes(text: str, mask: str) -> str:
    """``text`` with the values of the credential shapes above, and the data a database's error quotes, replaced by
    ``mask``."""
    if not text:
        return text
    text = mask_database_details(text, mask)
    # Cheap tests first (most reasons hold no credential): a scheme, or a word every credential name holds, in
    # the text folded as the expressions' case-free matching folds it.
    seen = folded(text)
    if any(scheme in seen for scheme in _SCHEMES):
        text = _SCHEME.sub(lambda m: f"{m.group(1)}{mask}" if looks_like_credential(m.group(2)) else m.group(0), text)
    if "://" in text and "@" in text:
        text = userinfo_masked(text, mask)
    if '"' in text and ("percent-encoded" in text or "connection info" in text or "URI query" in text):
        text = _LIBPQ_QUOTED.sub(lambda m: f"{m.group(1) or m.group(3)}{mask}{m.group(2) or m.group(4)}", text)
    if "%" not in seen and not any(word in seen for word in _NAME_WORDS):
        return text  # no name says it holds a credential (a name percent-encoded is decoded before it is judged)
    if "=" in text:
        text = _QUERY_FIELD.sub(lambda m: _field(m, mask), text)
        text = _TEXT_FIELD.sub(lambda m: _field(m, mask), text)
    if ":" in text:
        text = _MEMBER.sub(lambda m: _member(m, mask), text)
    return text


def _field(match: re.Match[str], mask: str) -> str:
    lead, name, value = match.groups()
    if value and value != mask and secret_query_name(urllib.parse.unquote_plus(name)):
        return f"{lead}{name}={mask}"
    return match.group(0)


def userinfo_masked(text: str, mask: str) -> str:
    """``text`` with the passwords (and credential-like users) in its URLs' user information masked
    (:data:`_USERINFO`).

    Neither form holds a ``/`` after its ``://`` and both end at an ``@``: only a ``://`` whose text up to the next
    ``/`` holds an ``@`` can start one, so the expression is tried there only, once each (found from the ``@``s, in
    C): a text of many ``://`` and few ``@`` (a log of URLs) is not tried at every ``://``."""
    kept: list[str] = []
    at = searched = 0
    while (found := text.find("@", searched)) >= 0:
        slash = text.rfind("/", at, found)
        if slash - 2 >= at and text.startswith("://", slash - 2):
            match = _USERINFO.match(text, slash - 2)
            if match is not None:
                kept += [text[at : match.start()], _authority(match, mask)]
                at = match.end()
        searched = text.find("/", found)  # every '@' up to the next '/' follows the same '://'
        if searched < 0:
            break
    return "".join(kept) + text[at:] if kept else text


def _authority(match: re.Match[str], mask: str) -> str:
    return _userinfo(match, mask) if match.group(2) is not None else _spaced_password(match, mask)


def _userinfo(match: re.Match[str], mask: str) -> str:
    lead, info = match.group(1, 2)
    user, colon, password = info.partition(":")
    if colon and password and password != mask:
        return f"{lead}{user}:{mask}@"
    if not colon and info != mask and looks_like_credential(info):
        return f"{lead}{mask}@"
    return match.group(0)


def _spaced_password(match: re.Match[str], mask: str) -> str:
    lead, user, password = match.group(1, 3, 4)
    spaced = any(c.isspace() or c in "\"'" for c in password)
    if not spaced or password[0].isspace() or password[-1].isspace():
        return match.group(0)  # no space nor quote: the first form's (see _USERINFO)
    if _no_password(user, password, match.string, match.end()):
        return match.group(0)  # a colon and a port, or a closing quote, then a message's words
    return f"{lead}{user}:{mask}@"


def _no_password(user: str, password: str, text: str, at: int) -> bool:
    """Whether what follows ``user`` and its colon reads as a message's text rather than a password: a closing
    quote then a separator (:data:`_CLOSING_QUOTE`), or a port after a host's name (:data:`_PORT`) when the ``@``
    (at ``at`` in ``text``) is not followed by a name without a dot then a space or the end (:data:`_BARE_HOST`:
    ``postgresql://first.last:1 x@db failed`` is a password's). Never when a host's port or path follows the ``@``
    (:data:`_AUTHORITY_TAIL`)."""
    if _AUTHORITY_TAIL.match(text, at):
        return False
    if _CLOSING_QUOTE.match(password):
        return True
    port = _PORT.match(password)
    return port is not None and int(port.group(1)) <= 65535 and _host_like(user) and not _BARE_HOST.match(text, at)


def _host_like(user: str) -> bool:
    """Whether the part before a colon may be a host rather than a user: a name with a dot (``partner.example``,
    ``10.0.0.1``) or ``localhost``. A bare name (``db``, ``app``) is read as a user, so a port after it, then a
    message's words and an address, is masked (``http://db:***@example.com``): a password ``1 pass`` is never shown."""
    return "." in user or user.lower() == "localhost"


def _member(match: re.Match[str], mask: str) -> str:
    quote, name, colon, value_quote, quoted, closing, bare = match.groups()
    if not secret_name(name):
        return match.group(0)
    head = f"{quote}{name}{quote}{colon}"
    if bare is not None:
        return match.group(0) if bare in _LITERALS else f"{head}{mask}"
    if not quoted:
        return match.group(0)  # an empty string: nothing to mask, and "no value" is worth reading
    return f"{head}{value_quote}{mask}{closing}"
