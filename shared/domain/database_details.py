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

A quoted key or row is masked to where the server closes it, whatever the value holds (a line starting ``HINT:``, an
empty line, the words that close it): to the last ``) already exists.`` (or the constraint's other ending) or
``).`` that ends a line before the next line starting ``DETAIL:`` (an error has one: the next is another error's,
or the same one quoted again by SQLAlchemy or a traceback) or the end of the text; never closed (a text cut short),
to there. A value holding ``) already exists.`` then a line starting ``DETAIL:`` can still end early (its tail shown
between the two: never seen; psycopg's ``diag.message_detail`` would bound it exactly, but what is masked here is
text, a traceback's among them, not the exception). Any other DETAIL runs to the next line starting a
field of the error (``HINT:``, ``CONTEXT:``, SQLAlchemy's ``[SQL: ``...), an empty line (a traceback's next
paragraph) or the end of the text, newlines written as ``\\n`` too (a JSON string).
The message, the constraint's name and the SQLSTATE's class (``UniqueViolation``) are kept. SQLite quotes no
value (``UNIQUE constraint failed: members.member_key``). The word ``DETAIL:`` is libpq's (the client's), in English
while the process does not set its ``LC_MESSAGES`` (Python does not); a server writing its messages in another
language (``lc_messages``) words the DETAIL's text otherwise (``Schlüssel »(k)=(v)« existiert bereits.``): not a key
nor a row here, so masked whole, to the next field.
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
#: Where a quoted key's value may close: an ending naming no data (a table's name JSON-escaped too) ending a line
#: (``conflicts with existing key (...)`` quotes another key: not one); where a quoted row's, or another key's, may:
#: ``).`` ending a line.
_KEY_CLOSED = re.compile(
    r"\)( already exists| is duplicated| is not present in table \\?\"[^\"\n]{1,200}\""
    r"| is still referenced from table \\?\"[^\"\n]{1,200}\")\.(?=\n|\\n|\Z)"
)
_CLOSED = re.compile(r"\)\.(?=\n|\\n|\Z)")
#: A line starting a DETAIL: the next error's (an error has one), where a quoted value's closing is searched up to.
_NEXT_DETAIL = re.compile(r"(?:\n|\\n)DETAIL:")
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
        quoted = _quoted(text, start, mask)
        if quoted is not None:
            shown, end = quoted
        else:
            end = _end(text, start, escaped)
            shown = _detail(text[start:end], mask)
        parts += [text[at:start], shown]
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


def _quoted(text: str, start: int, mask: str) -> tuple[str, int] | None:
    """A DETAIL quoting a key or a row at ``start``, masked to where the server closes the value (see above), and where
    that is (a value never closed, in a text cut short, to the bound); None when it quotes neither."""
    key = _KEY.match(text, start)
    if key is not None:
        opening, value = f"Key ({key.group(1)})=", key.end()
    else:
        row = next((row for row in _ROWS if text.startswith(f"{row} (", start)), None)
        if row is None:
            return None
        opening, value = f"{row} ", start + len(row) + 2
    bound = _NEXT_DETAIL.search(text, value)
    limit = bound.start() if bound is not None else len(text)
    if key is not None and (ending := _last(_KEY_CLOSED, text, value, limit)) is not None:
        return f"{opening}({mask}){ending.group(1)}.", ending.end()
    closed = _last(_CLOSED, text, value, limit)
    if closed is None:  # never closed (a text cut short): masked to its end
        return f"{opening}({mask}", limit
    # A key closed otherwise (an exclusion constraint's, quoting the other key too) keeps its columns only.
    return f"{opening}({mask}).", closed.end()


def _last(pattern: re.Pattern[str], text: str, start: int, end: int) -> re.Match[str] | None:
    found = None
    for found in pattern.finditer(text, start, end):  # noqa: B007 - the last one is wanted
        pass
    return found


def _detail(detail: str, mask: str) -> str:
    """A DETAIL quoting neither a key nor a row: kept when it names no data (:data:`_KEPT`), else masked whole."""
    return detail if not detail or detail.startswith(_KEPT) else mask
