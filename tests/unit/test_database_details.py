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
            f"DETAIL:  Key (span)=({MASK})",
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
