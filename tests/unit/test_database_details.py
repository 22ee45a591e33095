"""What a database's error quotes of the data, masked wherever credentials are masked by shape
(:mod:`shared.domain.database_details`): the texts are PostgreSQL 15's and psycopg's, as SQLAlchemy words them."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shared.domain.credential_patterns import mask_credential_shapes
from shared.domain.database_details import mask_database_details
from shared.domain.masking import MASK, Masking

SQL = "\n[SQL: INSERT INTO m (member_key) VALUES (%(k)s)]\n[SQL parameters hidden due to hide_parameters=True]"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "m_pkey"\n'
            f"DETAIL:  Key (member_key)=(alice@example.com) already exists.{SQL}",
            '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "m_pkey"\n'
            f"DETAIL:  Key (member_key)=({MASK}) already exists.{SQL}",
        ),
        (  # an expression index's columns, two columns
            "DETAIL:  Key (lower(email::text))=(bob@x.org) already exists.",
            f"DETAIL:  Key (lower(email::text))=({MASK}) already exists.",
        ),
        (
            'DETAIL:  Key (run_id, member_key)=(7, alice) is not present in table "runs".\nHINT:  x',
            f'DETAIL:  Key (run_id, member_key)=({MASK}) is not present in table "runs".\nHINT:  x',
        ),
        (  # a value holding a line break and the words that end one
            "DETAIL:  Key (member_key)=(multi\nline) already exists.\nsecret) already exists.",
            f"DETAIL:  Key (member_key)=({MASK}) already exists.",
        ),
        (  # an exclusion constraint quotes the other key too
            "DETAIL:  Key (span)=([1,5)) conflicts with existing key (span)=([2,3)).",
            f"DETAIL:  Key (span)=({MASK}).",
        ),
        (
            'null value in column "email" of relation "m" violates not-null constraint\n'
            "DETAIL:  Failing row contains (k3, alice@example.com, null).\n\nThe above exception was the direct cause",
            'null value in column "email" of relation "m" violates not-null constraint\n'
            f"DETAIL:  Failing row contains ({MASK}).\n\nThe above exception was the direct cause",
        ),
        (
            'invalid input syntax for type json\nDETAIL:  Token "alice" is invalid.\n'
            "CONTEXT:  JSON data, line 1: {\"email\": alice...\nunnamed portal parameter $1 = 'alice@example.com'",
            f"invalid input syntax for type json\nDETAIL:  {MASK}\nCONTEXT:  JSON data, line 1: {MASK}\n"
            f"unnamed portal parameter $1 = '{MASK}'",
        ),
        (  # JSON-escaped (a partner's answer, a JSON log line quoted again)
            '{"error": "duplicate key\\nDETAIL:  Key (k)=(alice) already exists.\\n[SQL: INSERT"}',
            f'{{"error": "duplicate key\\nDETAIL:  Key (k)=({MASK}) already exists.\\n[SQL: INSERT"}}',
        ),
    ],
)
def test_what_a_postgresql_error_quotes_of_the_data_is_masked_its_message_and_columns_kept(text: str, masked: str):
    assert mask_database_details(text, MASK) == masked
    assert mask_credential_shapes(text, MASK) == masked
    assert mask_database_details(masked, MASK) == masked


@pytest.mark.parametrize(
    "text",
    [
        "deadlock detected\nDETAIL:  Process 12 waits for ShareLock on transaction 34; blocked by process 56.\n"
        "Process 56 waits for ShareLock on transaction 35; blocked by process 12.\nHINT:  See server log.",
        "could not serialize access due to read/write dependencies among transactions\n"
        "DETAIL:  Reason code: Canceled on identification as a pivot, during commit attempt.",
        "(sqlite3.IntegrityError) UNIQUE constraint failed: members.member_key",
        "the partner said: DETAILS follow",
    ],
)
def test_a_database_error_quoting_no_data_is_kept_whole(text: str):
    assert mask_database_details(text, MASK) == text


#: A member's key: any character but a line break (which would end PostgreSQL's DETAIL line early).
KEYS = st.text(st.characters(exclude_characters="\n\r\\", exclude_categories=["Cs"]), min_size=1, max_size=80)


@given(KEYS, st.sampled_from(["member_key", "lower(email)", "run_id, member_key"]))
@example("a) already exists.", "member_key")
@example("DETAIL:  Key (x)=(y)", "member_key")
def test_a_refused_keys_value_never_shows_whatever_it_holds(key: str, columns: str):
    text = f'IntegrityError: duplicate key value violates unique constraint "m_key"\nDETAIL:  Key ({columns})=({key}) '
    masked = mask_credential_shapes(f"{text}already exists.{SQL}", MASK)
    assert masked == (
        'IntegrityError: duplicate key value violates unique constraint "m_key"\n'
        f"DETAIL:  Key ({columns})=({MASK}) already exists.{SQL}"
    )


@given(KEYS, st.integers(min_value=0, max_value=200))
def test_a_reason_cut_inside_a_refused_key_shows_none_of_it(key: str, limit: int):
    # A failure's reason is cut to its bound after masking: the part of a key before the cut is masked too.
    key = f"member-{key}"
    text = f'UniqueViolation: duplicate key value violates unique constraint "m_key"\nDETAIL:  Key (k)=({key}) already'
    reason = Masking().reason(text + " exists.", limit)
    assert key not in reason
    assert f"=({key[:8]}" not in reason


#: What a member's value may hold that reads as the lines PostgreSQL, SQLAlchemy and a traceback add after a DETAIL.
_LINES = st.lists(
    st.sampled_from(
        [
            "secret-4711",
            "\n",
            "\\n",
            "HINT:  ",
            "CONTEXT:  ",
            "[SQL: ",
            "(Background on this error",
            ") already exists.",
            ").",
            ", ",
            " ",
            '"',
            "\n\nThe above exception was the direct cause of the following exception:\n\n",
        ]
    ),
    max_size=12,
).map("".join)


@given(_LINES, st.sampled_from(["", "\nHINT:  Check the key.", SQL, "\\n[SQL: INSERT"]))
@example("a\nHINT:  secret-4711", "")
@example("a) already exists.\nHINT:  secret-4711", SQL)
@example("a\n\nsecret-4711", "\nHINT:  Check the key.")
def test_a_quoted_value_holding_the_lines_that_follow_a_detail_is_masked_whole(value: str, after: str):
    # Before, a value holding a line starting HINT: (or CONTEXT:, [SQL:, an empty line) ended the DETAIL there and
    # what followed it was shown as the server's own words: PostgreSQL quotes the value as it is, line breaks too.
    message = 'duplicate key value violates unique constraint "m_key"'
    key = f"{message}\nDETAIL:  Key (member_key)=(a{value}) already exists.{after}"
    row = f"{message}\nDETAIL:  Failing row contains (7, a{value}, null).{after}"
    assert mask_credential_shapes(key, MASK) == f"{message}\nDETAIL:  Key (member_key)=({MASK}) already exists.{after}"
    assert mask_credential_shapes(row, MASK) == f"{message}\nDETAIL:  Failing row contains ({MASK}).{after}"


def test_an_error_quoted_twice_masks_each_value_and_keeps_what_stands_between():
    # A traceback: psycopg's error, then SQLAlchemy's quoting it again (an error has one DETAIL: the next starts
    # another quote). Each value holds a HINT line; the statement and the traceback's words between are kept.
    value = "alice\nHINT:  secret-4711"
    error = (
        f'duplicate key value violates unique constraint "m_key"\nDETAIL:  Key (member_key)=({value}) already exists.'
    )
    between = f"{SQL}\n\nThe above exception was the direct cause of the following exception:\n\nIntegrityError: "
    masked = error.replace(value, MASK)
    assert mask_credential_shapes(f"{error}{between}{error}", MASK) == f"{masked}{between}{masked}"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # A value never closed (a reason cut inside it): masked to the text's end.
        ("DETAIL:  Key (k)=(alice\nHINT:  secret-4711", f"DETAIL:  Key (k)=({MASK}"),
        ("DETAIL:  Failing row contains (7, alice\nHINT:  secret-4711, nu", f"DETAIL:  Failing row contains ({MASK}"),
        # JSON-escaped, a value holding an escaped line break and a HINT.
        (
            '{"error": "DETAIL:  Key (k)=(a\\nHINT:  secret-4711) is not present in table \\"m\\".\\n[SQL: x"}',
            f'{{"error": "DETAIL:  Key (k)=({MASK}) is not present in table \\"m\\".\\n[SQL: x"}}',
        ),
    ],
)
def test_a_quoted_value_cut_or_escaped_holding_a_hint_line_is_masked(text: str, masked: str):
    assert mask_credential_shapes(text, MASK) == masked
    assert mask_credential_shapes(masked, MASK) == masked
