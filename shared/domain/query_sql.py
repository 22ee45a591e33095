"""What a saved query's SQL may be, read by a real SQL parser (sqlglot), not by string tests.

The extractor runs a saved query as a subquery of its own paging statement (``shared/querystore/paging.py``),
so the text must be one complete query that hides nothing from that wrapper:

- exactly one statement: a ``SELECT``, ``WITH … SELECT``, or ``SELECT``\\ s joined by ``UNION`` /
  ``INTERSECT`` / ``EXCEPT``;
- nothing in it writes or locks: no ``INSERT``/``UPDATE``/``DELETE``/``MERGE`` (also not in a ``WITH``),
  no ``SELECT … INTO``, no ``FOR UPDATE``/``FOR SHARE``;
- no comments at all (``--``, ``/* */``): a comment can hide the wrapper's own text from the database;
- no positional or driver placeholders (``?``, ``$1``, ``%s``, ``%(name)s``, ``@name``, ``$name``,
  ``#name``): such a placeholder takes a value meant for the wrapper (the page's ``LIMIT``); values come
  only through ``:name`` bind parameters, which the query declares;
- a ``:name`` inside quotes is refused: the database driver would still bind it as a parameter.

Pure: no database client. The SQL dialect is the member store's when known (the extractor checks again
with it before every run); when it is not (at save), the text is read as PostgreSQL, else as SQLite.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokenizer_core import Token, TokenType

from shared.domain.query_parameters import bind_names, bind_offset

#: The longest saved query read: parsing is linear, but the longest text costs about a second and a half.
MAX_SQL_CHARACTERS = 50_000

#: How saved queries are read at save time, when the member store's dialect is not known: the first
#: dialect that can read the text decides (PostgreSQL in production, SQLite for the demo and tests).
SAVE_DIALECTS = ("postgres", "sqlite")

_QUOTED = {
    TokenType.STRING,
    TokenType.IDENTIFIER,
    TokenType.BIT_STRING,
    TokenType.BYTE_STRING,
    TokenType.HEX_STRING,
    TokenType.HEREDOC_STRING,
    TokenType.NATIONAL_STRING,
    TokenType.NATIONAL_RAW_STRING,
    TokenType.RAW_STRING,
    TokenType.UNICODE_STRING,
}
_PLACEHOLDER_TOKENS = {TokenType.PLACEHOLDER, TokenType.PARAMETER, TokenType.SESSION_PARAMETER}
#: Characters that start a driver or engine placeholder when a name or number follows them at once
#: (SQLite: ``?1 $a @a #a :a``; PostgreSQL: ``$1``).
_SIGILS = ("$", "@", "#", "?", ":")
_WRITES: dict[type[exp.Expr], str] = {
    exp.DML: "it changes data",
    exp.DDL: "it changes the schema",
    exp.Command: "it is a command",
    exp.Into: "SELECT … INTO creates a table",
    exp.Lock: "it locks rows (FOR UPDATE / FOR SHARE)",
}
#: PostgreSQL's session-level advisory locks: taken by a saved query, one outlives the reader's rolled-back
#: transaction and stays held on the pooled connection (the transaction-level ``pg_advisory_xact_lock`` does not).
_SESSION_LOCKS = frozenset(
    {"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"}
)


class UnsafeSql(ValueError):
    """The text is not one self-contained, read-only SELECT; the message says why and where."""


class _Unreadable(UnsafeSql):
    """The dialect tried cannot read the text at all (another dialect may)."""


@dataclass(frozen=True)
class CheckedSql:
    """A saved query's SQL as it is stored and run, and the ``:name`` parameters it binds (in order of use)."""

    sql: str
    bind_names: tuple[str, ...]


def normalized(sql: str) -> str:
    """The text without surrounding whitespace and trailing semicolons (how it is stored)."""
    return sql.strip().rstrip(";").rstrip()


@functools.lru_cache(maxsize=256)
def check_select(sql: str, dialect: str | None = None) -> CheckedSql:
    """``sql`` checked to be one self-contained, read-only SELECT (see the module); :class:`UnsafeSql` if not.

    ``dialect`` is sqlglot's name of the member store's dialect (``postgres``, ``sqlite``, ...); None (at
    save, where the store is not known) reads the text with each of :data:`SAVE_DIALECTS` until one can.
    Cached: catalog objects are validated every time they are loaded.
    """
    if len(sql) > MAX_SQL_CHARACTERS:
        raise UnsafeSql(f"is {len(sql):,} characters long: at most {MAX_SQL_CHARACTERS:,} are read")
    text = normalized(sql)
    if not text:
        raise UnsafeSql("must be a SELECT query, not empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800" in JSON): no database takes it
        raise UnsafeSql(f"is not valid Unicode at character {exc.start + 1} (a lone surrogate)") from None
    first_error: _Unreadable | None = None
    for name in (dialect,) if dialect is not None else SAVE_DIALECTS:
        try:
            return _check(text, name)
        except _Unreadable as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise UnsafeSql(str(first_error))


def _check(text: str, dialect: str) -> CheckedSql:
    reader = Dialect.get_or_raise(dialect)
    try:
        tokens = reader.tokenize(text)
    except TokenError as exc:
        raise _Unreadable(f"is not valid SQL: {_first_line(exc)}") from None
    unknown = next((token for token in tokens if token.token_type is TokenType.UNKNOWN), None)
    if unknown is not None:
        raise _Unreadable(f"is not valid SQL: unexpected '{unknown.text}' {_at(text, unknown.start)}")
    problems = _token_problems(text, tokens)
    if problems:
        raise UnsafeSql("; ".join(problems))
    for colon, word in itertools.pairwise(tokens):
        # ``:from`` is a parameter named "from" to the database driver, which never sends the keyword.
        if colon.token_type is TokenType.COLON and word.start == colon.end + 1 and word.text.isidentifier():
            word.token_type = TokenType.VAR
    try:
        statements = [s for s in reader.parser().parse(tokens, text) if s is not None]
    except ParseError as exc:
        raise _Unreadable(f"is not valid SQL: {_parse_error(exc)}") from None
    except RecursionError:
        raise UnsafeSql("is nested too deeply to be read") from None
    if len(statements) != 1:
        raise UnsafeSql("must be a single statement")
    [tree] = statements
    if not isinstance(tree, exp.Query):
        raise UnsafeSql(
            "must be a SELECT query (or WITH … SELECT, or SELECTs joined by UNION, INTERSECT or EXCEPT), "
            f"not {tree.key.upper()}"
        )
    for node in tree.walk():
        for kind, why in _WRITES.items():
            if isinstance(node, kind):
                raise UnsafeSql(f"must only read members: {why} ({node.key.upper()}{_write_at(text, tokens, node)})")
        if isinstance(node, exp.Anonymous) and node.name.lower() in _SESSION_LOCKS:
            where = f" ({_at(text, node.meta['start'])})" if "start" in node.meta else ""
            raise UnsafeSql(f"must only read members: {node.name}() takes a lock that outlives the query{where}")
    return CheckedSql(text, _named_binds(text, tree))


#: The keyword that starts each kind of write the parser gives no position for, and the keywords before it that
#: make the same word something else (``FOR UPDATE`` is no UPDATE, ``INSERT INTO`` no SELECT … INTO).
_WRITE_KEYWORDS: dict[type[exp.Expr], tuple[TokenType, frozenset[TokenType]]] = {
    exp.Delete: (TokenType.DELETE, frozenset()),
    exp.Insert: (TokenType.INSERT, frozenset()),
    exp.Update: (TokenType.UPDATE, frozenset({TokenType.FOR})),
    exp.Merge: (TokenType.MERGE, frozenset()),
    exp.Into: (TokenType.INTO, frozenset({TokenType.INSERT, TokenType.MERGE})),
}


def _write_at(text: str, tokens: list[Token], node: exp.Expr) -> str:
    """`` at line L, column C``: where the write ``node`` starts (its keyword's first use), or "" if unknown."""
    if isinstance(node, exp.Lock):  # FOR UPDATE, FOR NO KEY UPDATE, FOR SHARE, FOR KEY SHARE
        locks = (
            token
            for token, following in itertools.pairwise(tokens)
            if token.token_type is TokenType.FOR and following.text.upper() in {"UPDATE", "SHARE", "NO", "KEY"}
        )
        first = next(locks, None)
        return "" if first is None else f" {_at(text, first.start)}"
    keyword = next((known for kind, known in _WRITE_KEYWORDS.items() if isinstance(node, kind)), None)
    if keyword is None:
        return ""
    wanted, not_after = keyword
    previous: Token | None = None
    for token in tokens:
        if token.token_type is wanted and (previous is None or previous.token_type not in not_after):
            return f" {_at(text, token.start)}"
        previous = token
    return ""


def _token_problems(text: str, tokens: list[Token]) -> list[str]:
    comments: list[str] = []
    placeholders: list[str] = []
    statements = False
    position = 0
    for index, token in enumerate(tokens):
        # Whatever lies between two tokens must be blank: a comment, or text the parser skipped, could
        # hide the wrapper's SQL from the database.
        gap = text[position : token.start]
        if gap.strip():
            comments.append(_at(text, position + _first_non_blank(gap)))
        position = token.end + 1
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        adjacent = following is not None and following.start == token.end + 1
        if token.token_type is TokenType.SEMICOLON:
            statements = True
        elif token.token_type in _QUOTED:
            continue
        elif token.token_type in _PLACEHOLDER_TOKENS or (
            token.token_type is TokenType.VAR and token.text.startswith(_SIGILS)
        ):
            placeholders.append(_placeholder(text, token, following if adjacent else None))
        elif adjacent and following is not None and _driver_placeholder(token, following):
            placeholders.append(_placeholder(text, token, following))
    if text[position:].strip():
        comments.append(_at(text, position + _first_non_blank(text[position:])))
    if not comments:  # the parser saw a comment where no text is left over: refuse it all the same
        comments += [_at(text, token.start) for token in tokens if token.comments]
    problems = []
    if statements:
        problems.append("must be a single statement (no ';' inside)")
    if comments:
        problems.append(
            f"must not contain comments ({', '.join(comments)}): a comment can hide SQL from the export's "
            "paging wrapper; describe the query in 'description' instead"
        )
    if placeholders:
        problems.append(
            f"must not use positional or driver placeholders ({', '.join(placeholders)}): use :name "
            "parameters declared under 'parameters'"
        )
    return problems


def _named_binds(text: str, tree: exp.Expr) -> tuple[str, ...]:
    """The ``:name`` parameters, as the parser reads them and as the database driver will bind them.

    The driver (SQLAlchemy's ``text()``) binds every ``:name`` outside ``::`` casts, also inside quotes;
    a mismatch would send a value where the query's author did not mean one.
    """
    parsed = {str(node.name) for node in tree.find_all(exp.Placeholder) if node.name}
    driver = bind_names(text)
    quoted = [name for name in driver if name not in parsed]
    if quoted:
        raise UnsafeSql(
            "has "
            + ", ".join(f"':{name}' ({_at(text, bind_offset(text, name))})" for name in quoted)
            + " inside quotes (or elsewhere the SQL parser reads no parameter), which the database driver "
            "would still bind as a parameter; write '\\:' for a literal colon"
        )
    for name in sorted(parsed - set(driver)):
        if f":{name}::" in text:
            raise UnsafeSql(
                f"the database driver does not bind ':{name}' followed by a '::' cast "
                f"({_at(text, text.index(f':{name}::'))}): write CAST(:{name} AS type) instead of :{name}::type"
            )
        where = _at(text, match.start()) if (match := re.search(rf":{re.escape(name)}\b", text)) else "in the text"
        raise UnsafeSql(f"has :{name} ({where}), which the database driver would not bind: put a space before the ':'")
    return tuple(driver)


def _driver_placeholder(token: Token, following: Token) -> bool:
    """``#name`` (a SQLite variable), ``%s`` or ``%(name)s`` (psycopg's), written without a space."""
    if token.token_type is TokenType.HASH:
        return True
    return token.token_type is TokenType.MOD and (following.token_type is TokenType.L_PAREN or following.text == "s")


def _placeholder(text: str, token: Token, following: Token | None) -> str:
    end = following.end if following is not None and following.token_type not in _QUOTED else token.end
    return f"'{text[token.start : end + 1]}' {_at(text, token.start)}"


def _first_non_blank(text: str) -> int:
    return len(text) - len(text.lstrip())


def _at(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"at line {line}, column {column}"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _parse_error(exc: ParseError) -> str:
    if not exc.errors:
        return _first_line(exc)
    error = exc.errors[0]
    near = error.get("highlight")
    where = f" at line {error.get('line')}, column {error.get('col')}" if error.get("line") else ""
    return f"{error.get('description') or 'syntax error'}{where}" + (f" (near '{near}')" if near else "")
