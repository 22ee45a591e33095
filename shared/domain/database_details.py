"""What a database's error quotes of the data it refused, masked. Pure.

PostgreSQL's error says which constraint a statement broke in its message, then quotes the data in its DETAIL
(psycopg's ``str(error)``, SQLAlchemy's, a traceback's line all carry it): the refused key of a unique, foreign or
exclusion constraint (``Key (member_key)=(alice@example.com) already exists.``: a member's key, an e-mail
address), the whole row a not-null or check constraint refused (``Failing row contains (...)``), the token a JSON
value broke on. Its CONTEXT may quote the data too (``JSON data, line 1: {"email": ...``; a bound parameter's value,
``portal parameter $1 = '...'``, when the server sets ``log_parameter_max_length_on_error``).
:func:`mask_database_details` masks them wherever such a text goes (failure reasons, log lines, escaped errors,
exportctl's errors: it is part of :func:`shared.domain.credential_patterns.mask_credential_shapes`):

- a DETAIL quoting a key keeps its columns and what happened: ``Key (member_key)=(***) already exists.``;
- one quoting a row keeps its opening: ``Failing row contains (***).``;
- a deadlock's (``Process 12 waits for ShareLock on transaction 34; blocked by process 56.``) and a serialization
  failure's (``Reason code: ...``) are kept: they name processes and locks, no data;
- any other DETAIL is masked whole (``DETAIL:  ***``): what it quotes is not known.

A DETAIL runs to the next line starting a field of the error (``HINT:``, ``CONTEXT:``, SQLAlchemy's ``[SQL: ``...),
an empty line (a traceback's next paragraph) or the end of the text, newlines written as ``\\n`` too (a JSON
string); a value holding one of these ends early and leaves its tail (never seen: keys are rarely multi-line).
The message, the constraint's name and the SQLSTATE's class (``UniqueViolation``) are kept. SQLite quotes no
value (``UNIQUE constraint failed: members.member_key``); a server writing its messages in another language
(``lc_messages``) writes DETAIL as another word: not masked here.
"""

from __future__ import annotations

import re

_DETAIL = "DETAIL:"
#: Where a DETAIL ends: a line break then another field, or an empty line (:data:`_FIELD` after a ``\n``); in a text
#: holding ``\n`` written as two characters (a JSON string), :data:`_END` finds either.
_FIELDS = r"HINT:|CONTEXT:|DETAIL:|STATEMENT:|QUERY:|LINE \d|\[SQL|\[parameters|\(Background on this error"
_FIELD = re.compile(rf"{_FIELDS}|[ \t]*\n")
_END = re.compile(rf"(?:\n|\\n)(?:{_FIELDS}|[ \t]*(?:\n|\\n))")
#: A refused key's columns (an expression index's too: ``lower(email)``), up to its value.
_KEY = re.compile(r"Key \(([^\n]{1,512}?)\)=\(")
#: What follows a refused key's value, naming no data (``conflicts with existing key (...)`` quotes another one).
_KEY_END = re.compile(
    r"\)( already exists| is duplicated| is not present in table \"[^\"\n]{1,200}\""
    r"| is still referenced from table \"[^\"\n]{1,200}\")\.[ \t]*\Z"
)
#: DETAILs naming no data, kept as they are.
_KEPT = ("Process ", "Reason code: ")
#: DETAILs quoting a row: their opening is kept.
_ROWS = ("Failing row contains", "Partition key of the failing row contains")
#: CONTEXT lines quoting the data: JSON input, and a bound parameter's value.
_CONTEXT = re.compile(r"(JSON data, line \d+: )[^\n\\]*(?:\\(?!n)[^\n\\]*)*|(portal parameter \$\d+ = )'(?:[^']|'')*'?")


def mask_database_details(text: str, mask: str) -> str:
    """``text`` with what a PostgreSQL error quotes of the data (see above) replaced by ``mask``."""
    if _DETAIL in text:
        text = _details_masked(text, mask)
    if "CONTEXT:" in text:  # one cheap test for both lines below
        text = _CONTEXT.sub(lambda m: f"{m.group(1)}{mask}" if m.group(1) else f"{m.group(2)}'{mask}'", text)
    return text


def _details_masked(text: str, mask: str) -> str:
    parts: list[str] = []
    at = 0
    escaped = "\\n" in text
    while (found := text.find(_DETAIL, at)) >= 0:
        start = found + len(_DETAIL)
        while start < len(text) and text[start] in " \t":
            start += 1
        end = _end(text, start, escaped)
        parts += [text[at:start], _detail(text[start:end], mask)]
        at = end
    parts.append(text[at:])
    return "".join(parts)


def _end(text: str, start: int, escaped: bool) -> int:
    """Where the DETAIL starting at ``start`` ends (the line break before the next field), or the text's end."""
    if escaped:
        found = _END.search(text, start)
        return found.start() if found else len(text)
    line = start
    while (line := text.find("\n", line)) >= 0:
        if _FIELD.match(text, line + 1):
            return line
        line += 1
    return len(text)


def _detail(detail: str, mask: str) -> str:
    if not detail or detail.startswith(_KEPT):
        return detail
    key = _KEY.match(detail)
    if key is not None:
        ending = _KEY_END.search(detail, key.end())
        return f"Key ({key.group(1)})=({mask}){ending.group(1) + '.' if ending else ''}"
    for opening in _ROWS:
        if detail.startswith(opening):
            return f"{opening} ({mask})."
    return mask
