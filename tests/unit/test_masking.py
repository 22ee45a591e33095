"""One masking rule (shared.domain.masking, shared.domain.credential_patterns): a secret value, in any case and
any encoding a partner may echo it in, never survives; masking a masked text changes nothing; a text without
secrets is left as it is; credentials nobody told us about are masked by their shape, the partner's message kept.
"""

from __future__ import annotations

import html
import json
import re
import string
import urllib.parse
from collections.abc import Callable

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from shared.domain.case_folding import SPECIAL_FOLDS, folded
from shared.domain.credential_patterns import (
    _spaced_password,
    _userinfo,
    looks_like_credential,
    mask_credential_shapes,
    userinfo_masked,
)
from shared.domain.masking import MASK, MIN_SEARCHED, Masking, _forms, _lowered, _masked_ascii

#: Arbitrary text: any character a partner's body may hold (surrogates aside, which UTF-8 cannot carry).
TEXT = st.text(max_size=120)
SECRET = st.text(min_size=MIN_SEARCHED, max_size=40)
SECRETS = st.lists(SECRET, min_size=1, max_size=4)


def go_json(value: str) -> str:
    """JSON-escaped as Go's encoding/json (and Rails) write it: also '<', '>', '&' as ``\\u00XX``."""
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    return escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def dotnet_json(value: str) -> str:
    """JSON-escaped as .NET's System.Text.Json writes it by default: also '<', '>', '&', quotes, '+' and '`', and
    every character outside ASCII, as ``\\u00XX`` with its hex in upper case."""
    return "".join(
        f"\\u{ord(c):04X}" if c in "<>&'\"+`" else re.sub(r"[0-9a-f]{4}", lambda m: m[0].upper(), json.dumps(c)[1:-1])
        for c in value
    )


#: How a partner may echo a value: as is, percent-encoded (escapes in either case), as a form value, JSON-escaped
#: (as Python, PHP, Go and .NET write it), HTML-escaped (as Python, and as Go or Jinja, write it).
ENCODINGS: list[Callable[[str], str]] = [
    lambda s: s,
    lambda s: urllib.parse.quote(s, safe=""),
    lambda s: urllib.parse.quote(s, safe="").lower(),
    lambda s: urllib.parse.quote(s),
    lambda s: urllib.parse.quote_plus(s, safe=""),
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1].replace("/", "\\/"),
    go_json,
    dotnet_json,
    html.escape,
    lambda s: html.escape(s, quote=False).replace('"', "&#34;").replace("'", "&#39;"),
]


def any_case(draw: st.DrawFn, value: str) -> str:
    """``value`` with each character as is, or in upper, lower, swapped or title case (when that is one
    character: ``ß`` upper-cased is ``SS``, another text)."""
    out = []
    for char in value:
        variants = [v for v in (char, char.upper(), char.lower(), char.swapcase(), char.title()) if len(v) == 1]
        out.append(draw(st.sampled_from(variants)))
    return "".join(out)


@st.composite
def echoed(draw: st.DrawFn) -> tuple[list[str], str]:
    """Secrets, and a text holding each of them somewhere, in some encoding and some case."""
    secrets = draw(SECRETS)
    parts = [draw(TEXT)]
    for secret in draw(st.permutations(secrets)):
        encode = draw(st.sampled_from(ENCODINGS))
        parts += [any_case(draw, encode(secret)), draw(TEXT)]
    return secrets, "".join(parts)


def found(masking: Masking, text: str) -> list[str]:
    """The secret forms still in ``text``, in any case."""
    return [form for form in masking.secrets if re.search(re.escape(form), text, re.IGNORECASE)]


# --- a secret value never survives -------------------------------------------------------------------------


@given(echoed())
@example((["Bearer-x1"], "HTTP 401: invalid token bEARER-X1"))
@example((["abcd", "***e"], "abcde"))  # masking 'abcd' makes '***e', another secret: masked too
@example((["s/ecret!"], "s%2Fecret%21 and s%2fecret%21 and s\\/ecret!"))
@example((["kiss-me"], "\u212a\u0131\u017f\u017f-ME and K\u0130SS-me"))  # Kelvin sign, dotless i, long s, dotted I
def test_a_secret_echoed_anywhere_in_any_case_and_encoding_never_survives(case: tuple[list[str], str]):
    secrets, text = case
    masking = Masking.of(secrets)
    for masked in (masking.text(text), masking.reason(text), masking.reason(text, 50)):
        assert found(masking, masked) == []
        for secret in secrets:
            assert secret.lower() not in masked.lower() or len(secret) < MIN_SEARCHED


@given(echoed(), st.integers(min_value=1, max_value=400))
def test_a_refusal_quotes_the_answer_bounded_and_without_its_secrets(case: tuple[list[str], str], limit: int):
    secrets, text = case
    masking = Masking.of(secrets)
    reason = masking.refusal(422, text.encode(), limit)
    assert reason.startswith("HTTP 422: ") or MASK in reason[:10]  # (unless a secret spans the status)
    # The cut mark '…', and a value cut through masked whole again.
    assert len(reason) <= len("HTTP 422: ") + limit + 1 + len(MASK)
    assert found(masking, reason) == []


@given(
    st.text(alphabet="abcdef0123456789-", min_size=8, max_size=30),
    st.integers(min_value=0, max_value=120),
    st.integers(min_value=0, max_value=300),
)
def test_a_secret_across_the_reasons_cut_leaves_no_start_behind(secret: str, before: int, after: int):
    limit = 100
    masking = Masking.of([secret])
    reason = masking.refusal(400, ("~" * before + secret + "~" * after).encode(), limit)
    quoted = reason.removeprefix("HTTP 400: ")
    if before < limit:  # the secret starts inside what is quoted: masked whole, wherever it ends
        assert quoted.startswith("~" * before + "*")
    assert not set(quoted) & set(secret)


@given(
    st.text(alphabet="abcdef0123456789", min_size=8, max_size=30),
    st.integers(min_value=0, max_value=80),
    st.integers(min_value=8, max_value=80),
)
def test_a_partial_body_never_shows_the_start_of_a_secret_it_holds_whole_or_in_part(
    secret: str, before: int, other: int
):
    # The start of a longer body (multi-byte, so shorter than the bound) holding a secret whole, or cut by the
    # slice's end. Another value searched for sets how much of the end is dropped: wherever that falls, even
    # through the secret found whole, nothing of the secret shows.
    masking = Masking.of([secret, "z" * other])
    slice_ = "я" * before + secret + "я" * 40
    for end in range(before, len(slice_) + 1):
        shown = masking.cut(slice_[:end], 4096, partial=True)
        assert shown.endswith("… (truncated)")
        assert not set(shown.removesuffix("… (truncated)")) & set(secret), (end, shown)


#: Secrets and texts made of what a mask is made of: stars, the mask itself, and a few characters around them.
STARRY = st.lists(st.one_of(st.text(alphabet="*ab=&/ ,", max_size=5), st.just(MASK)), min_size=1, max_size=5).map(
    "".join
)


@given(
    st.lists(STARRY.filter(lambda s: len(s) >= MIN_SEARCHED), min_size=1, max_size=3),
    st.lists(STARRY, min_size=1, max_size=4),
    st.integers(min_value=0, max_value=40),
)
@example(["****"], ["*"], 3)  # masked, the secret and the star after it read '****' again: masked again
@example(["a***", "***b"], ["a", "b"], 10)  # one mask completes the other secret, on either side
@example(["token=***"], ["?token="], 10)  # a query value masked by its name reads as the secret: masked again
@example(["*, *"], ["a"], 10)  # a header's values masked, then joined, read as the secret: masked again
def test_a_secret_of_stars_or_holding_the_mask_never_survives_however_masks_chain(
    secrets: list[str], around: list[str], limit: int
):
    """A mask joined to what surrounds it (stars, or another mask) may read as a secret again: it is masked again
    until none is left, by every way a text is shown; and showing it again changes nothing."""
    masking = Masking.of(secrets)
    text = around[0] + "".join(secret + more for secret, more in zip(secrets, [*around[1:], *around], strict=False))
    text = text + secrets[0]
    shown = {
        "text": masking.text(text),
        "reason": masking.reason(text),
        "reason cut": masking.reason(text, limit),
        "cut": masking.cut(text, limit),
        "cut, partial": masking.cut(text, limit, partial=True),
        "body": masking.body(text.encode(), limit, shapes=True),
        "refusal": masking.refusal(400, text.encode(), limit),
        "url": masking.url(f"https://p.example/{text}?x={text}&token={text}"),
        "headers": ", ".join(masking.header_pairs([("X-Echo", text), ("X-Echo", text)]).values()),
    }
    for how, masked in shown.items():
        assert found(masking, masked) == [], (how, masked)
    assert masking.text(shown["text"]) == shown["text"]
    assert masking.reason(shown["reason"]) == shown["reason"]


# --- idempotent, and a text without secrets is left as it is ----------------------------------------------


@given(echoed(), TEXT)
def test_masking_a_masked_text_changes_nothing(case: tuple[list[str], str], more: str):
    secrets, text = case
    masking = Masking.of(secrets)
    for once in (masking.text(text), masking.reason(text + more)):
        assert masking.text(once) == once if once is not None else True
    once = masking.reason(text + more)
    assert masking.reason(once) == once
    refusal = masking.refusal(500, (text + more).encode(), 80)
    assert masking.reason(refusal) == refusal


@given(SECRETS, TEXT)
def test_a_text_without_secrets_is_left_as_it_is(secrets: list[str], text: str):
    masking = Masking.of(secrets)
    assume(not found(masking, text))
    assert masking.text(text) == text


#: Text in which no credential shape can occur: no space, '=', ':' or quote.
PLAIN = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), exclude_characters="=:\"'"),
    max_size=120,
)


@given(SECRETS, PLAIN)
def test_a_reason_without_secrets_or_credential_shapes_is_left_as_it_is(secrets: list[str], text: str):
    masking = Masking.of(secrets)
    assume(not found(masking, text))
    assert masking.reason(text) == text


@pytest.mark.parametrize(
    "message",
    [
        '{"error": "invalid_request", "message": "email is not a valid address", "field": "members[3].email"}',
        "422 Unprocessable Entity: points must be >= 0",
        '{"error": "invalid_token", "error_description": "The access token expired"}',
        'Bearer realm="partner", error="invalid_token"',
        "Basic authentication is required; send a token please",
        '{"token": null, "api_key": "", "authenticated": false}',
        "see https://partner.example/docs?page=2&lang=en",
        "sent as https://exporter@partner.example/v1 to https://partner.example/users/a@b.example",
        # A colon after a host, a port, then words and an address: no password.
        "connect to http://10.0.0.1:8080 failed; mail ops@example.com",
        'see https://partner.example: write to "help@partner.example"',
        "http://[::1]:8080 refused, ask ops@example.com",
        '{"url": "https://partner.example:8443", "contact": "ops@partner.example"}',
        "see https://partner.example and write to help@partner.example",
    ],
)
def test_a_partners_message_without_credentials_is_kept_whole(message: str):
    masking = Masking.of(["some-secret-value"])
    assert masking.reason(message) == message
    assert masking.refusal(400, message.encode(), 300) == f"HTTP 400: {message}"


# --- in any case: why, and what it costs -------------------------------------------------------------------


def test_a_secret_is_masked_in_any_case_because_its_case_changed_is_still_the_secret():
    # A hex key or a password upper-cased by a partner's error page tells as much as the key itself.
    masking = Masking.of(["9f86d081884c7d65", "pa/ss word"])
    echoed = "INVALID API KEY 9F86D081884C7D65 FOR PA%2FSS%20WORD"
    assert masking.reason(echoed) == f"INVALID API KEY {MASK} FOR {MASK}"


def test_a_secret_is_masked_as_go_dotnet_and_html_error_pages_escape_it():
    # A base64 token's '+' is \u002B in a .NET partner's JSON; a password's '&' is \u0026 in Go's, &amp; in HTML.
    masking = Masking.of(["dG9r+ZW4/x==", "p&ss'w<rd"])
    echoed = 'token "dG9r\\u002BZW4/x==", password "p\\u0026ss\\u0027w\\u003Crd" (p&amp;ss&#39;w&lt;rd)'
    assert masking.reason(echoed) == f'token "{MASK}", password "{MASK}" ({MASK})'


def test_over_masking_in_another_case_is_the_price_of_a_short_secret():
    # Values under four characters are never searched for; one of four may mask a word that spells it.
    assert Masking.of(["abc"]).text("ABC abc") == "ABC abc"
    assert Masking.of(["test"]).text("a Test of test") == f"a {MASK} of {MASK}"


def test_a_secret_containing_another_is_masked_whole():
    masking = Masking.of(["token", "token-and-more"])
    assert masking.text("x token-and-more y token z") == f"x {MASK} y {MASK} z"


def test_the_forms_searched_for_are_few_and_case_free():
    # Escapes in lower case are matched by the case-insensitive search, not listed.
    assert _forms("a/b c") == {"a/b c", "a\\/b c", "a%2Fb%20c", "a/b%20c", "a%2Fb+c"}


# --- credentials by their shape ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", f"Authorization: Bearer {MASK}"),
        ("got 'basic dXNlcjpwYXNzd29yZA==' from you", f"got 'basic {MASK}' from you"),
        ("invalid token abc123", f"invalid token {MASK}"),
        ("BEARER AbCdEfGh is revoked", f"BEARER {MASK} is revoked"),
        ("ApiKey 0123456789abcdef0123", f"ApiKey {MASK}"),
        ("?id=7&api_key=k1&page=2", f"?id=7&api_key={MASK}&page=2"),
        (
            "refused: client_secret=s3 grant_type=client_credentials",
            f"refused: client_secret={MASK} grant_type=client_credentials",
        ),
        ('{"api_key": "k-1", "error": "bad key"}', f'{{"api_key": "{MASK}", "error": "bad key"}}'),
        ("{'Authorization': 'Bearer x', 'Accept': '*/*'}", f"{{'Authorization': '{MASK}', 'Accept': '*/*'}}"),
        ('{"headers": {"X-Api-Key": "k\\"q"}}', f'{{"headers": {{"X-Api-Key": "{MASK}"}}}}'),
        ('{"pin_token": 123456, "n": 1}', f'{{"pin_token": {MASK}, "n": 1}}'),
        ('cut here: {"password": "hunter2', f'cut here: {{"password": "{MASK}'),
        # A URL's user information: the password (up to the authority's last '@'), or a token as the user.
        ("to postgresql://app:pa@ss:w0rd@db:5432/m failed", f"to postgresql://app:{MASK}@db:5432/m failed"),
        ("'redis://:hunter2@cache:6379/0'", f"'redis://:{MASK}@cache:6379/0'"),
        ("clone https://ghp_16C7e42F292c6912E7710c8@github.com/o/r", f"clone https://{MASK}@github.com/o/r"),
        # A password holding a space or a quote (raw, or JSON-escaped), up to the first '@' after it.
        ("to postgresql://u:pa ss@h/db failed", f"to postgresql://u:{MASK}@h/db failed"),
        ('proxy https://u:p"w@h refused', f"proxy https://u:{MASK}@h refused"),
        ("'redis://:it's 42@cache:6379/0'", f"'redis://:{MASK}@cache:6379/0'"),
        ('{"dsn": "postgresql://app:p\\"w d@db/m"}', f'{{"dsn": "postgresql://app:{MASK}@db/m"}}'),
        (
            "postgresql://u:pa ss@db failed, mail ops@example.com",
            f"postgresql://u:{MASK}@db failed, mail ops@example.com",
        ),
    ],
)
def test_credentials_are_masked_by_their_shape_the_message_kept(text: str, masked: str):
    assert mask_credential_shapes(text, MASK) == masked
    assert Masking().reason(text) == masked
    assert Masking().reason(masked) == masked


@pytest.mark.parametrize(
    ("token", "credential"),
    [
        ("token", False),
        ("expired", False),
        ("authentication", False),
        ("abc123", True),
        ("AbCdEf", True),
        ("dXNlcjpwYXNz", True),
        ("a_b_c_d", True),
        ("internationalisations", True),  # 20 letters: long enough to be a key
    ],
)
def test_a_token_after_a_scheme_is_a_credential_when_it_looks_like_one(token: str, credential: bool):
    assert looks_like_credential(token) is credential


#: A password's characters in a URL's user information, spaces and quotes among them ('/', '?', '#', '@' would be
#: percent-encoded).
_PASSWORD_CHARS = string.ascii_letters + string.digits + " \t'\"!$%&()*+,;=:-._~\\"


#: A password holding a space or a quote, neither at its ends (built so: filtering random text for one is too slow
#: for Hypothesis's health check).
_SPACED_PASSWORDS = st.builds(
    lambda first, before, special, after, last: first + before + special + after + last,
    st.sampled_from(string.ascii_letters + string.digits),
    st.text(alphabet=_PASSWORD_CHARS, max_size=18),
    st.sampled_from([" ", "\t", "'", '"']),
    st.text(alphabet=_PASSWORD_CHARS, max_size=18),
    st.sampled_from(string.ascii_letters + string.digits),
)


@given(
    st.sampled_from(["postgresql", "postgresql+psycopg", "https", "redis", "amqp"]),
    st.text(alphabet=string.ascii_lowercase + string.digits + "_.-", max_size=12),
    _SPACED_PASSWORDS,
)
@example("postgresql", "app", "pa ss")
@example("https", "u", 'p"w')
@example("postgresql", "app.reader", "1 pass")
def test_a_url_password_holding_a_space_or_a_quote_is_masked_whole(scheme: str, user: str, password: str):
    # Whatever it starts with (a number then a space too): a host's port and path follow the '@'.
    text = f"connecting to {scheme}://{user}:{password}@db.example:5432/members failed: timeout"
    assert mask_credential_shapes(text, MASK) == (
        f"connecting to {scheme}://{user}:{MASK}@db.example:5432/members failed: timeout"
    )


#: A user's name without a dot (a host's name holds one, or is localhost: see the next test).
_BARE_USERS = st.text(alphabet=string.ascii_lowercase + string.digits + "_-", max_size=12).filter(
    lambda user: user != "localhost"
)


@given(
    st.sampled_from(["postgresql", "https", "redis"]),
    _BARE_USERS,
    st.integers(min_value=0, max_value=999_999),
    st.sampled_from([" ", "\t", "'", '"', "\\"]),
    st.text(alphabet=_PASSWORD_CHARS, max_size=18),
    st.sampled_from(string.ascii_letters + string.digits),
    st.sampled_from(["", " failed", " refused, ask ops@example.com", '"', "' and 'x'", "/members", ":5432"]),
)
@example("postgresql", "app", 1, " ", "", "x", " failed")
def test_a_url_password_starting_with_a_number_then_a_space_or_a_quote_is_masked_whole(
    scheme: str, user: str, number: int, after: str, rest: str, last: str, tail: str
):
    # A number then a space reads as a port only after a host's name: after a user's, it starts a password.
    password = f"{number}{after}{rest}{last}"
    assume(not re.match(r"[0-9]*[\"'\\]+[\s,;:)\]}]", password))  # a closing quote and a separator: see below
    text = f"connecting to {scheme}://{user}:{password}@db{tail}"
    assert mask_credential_shapes(text, MASK) == f"connecting to {scheme}://{user}:{MASK}@db{tail}"


_WORDS = st.sampled_from(["failed", "refused;", "ask", "mail", "to", "it", "says:", "and", "'see'", '"it"', "42", ","])


@given(
    st.sampled_from(["http", "https", "postgresql"]),
    st.sampled_from(["partner.example", "10.0.0.1", "[::1]", "localhost", "db.internal", "db"]),
    st.sampled_from(["", ":8080", ":443", ":5432", ":", ":1"]),
    st.lists(_WORDS, max_size=6),
    st.sampled_from(["", "'", '"']),
)
def test_a_url_without_a_password_then_words_and_an_address_is_kept(
    scheme: str, host: str, port: str, words: list[str], quote: str
):
    # A bare name, a port then a space (unquoted): a user and a password starting with a number (see above).
    assume(not (host == "db" and port[1:] and not quote))
    text = f"{quote}{scheme}://{host}{port}{quote} {' '.join(words)} {quote}ops@partner.example{quote}"
    assert mask_credential_shapes(text, MASK) == text


def test_a_bare_name_a_port_then_a_message_and_an_address_is_masked_as_a_password_would_be():
    # The price of masking app:1 pass@db: the words between are masked too (a host's name with a dot is not).
    text = "http://db:8080 refused, ask ops@example.com"
    assert mask_credential_shapes(text, MASK) == f"http://db:{MASK}@example.com"


#: The two expressions a URL's user information was masked by before they were one (in turn, each ``://`` tried twice):
#: up to the last '@', then a password holding a space or a quote up to the first one (group 2 never takes part).
_USERINFO_BEFORE = re.compile(r"(://)([^\s/?#\"'<>]*)@")
_SPACED_PASSWORD_BEFORE = re.compile(r"(://)(){0}([^\s/?#\"'<>:@\[\]]*):([^/?#<>@\r\n]{1,128})@")
_URL_PIECES = st.lists(
    st.sampled_from(
        [
            "://",
            "http://",
            ":",
            "@",
            " ",
            "\t",
            "'",
            '"',
            "u",
            "db.example",
            "1",
            "8080 ",
            "/",
            "\n",
            MASK,
            "?",
            "#",
            "[",
        ]
    ),
    max_size=30,
).map("".join)


@given(_URL_PIECES)
@example("postgresql://u:pa ss@db:5432/m and https://u:p@w@h and http://db:8080 ask ops@x")
def test_one_pass_over_the_user_information_masks_as_the_two_in_turn_did(text: str):
    before = _USERINFO_BEFORE.sub(lambda m: _userinfo(m, MASK), text)
    before = _SPACED_PASSWORD_BEFORE.sub(lambda m: _spaced_password(m, MASK), before)
    assert userinfo_masked(text, MASK) == before


@given(TEXT)
def test_shapes_masked_once_stay_masked(text: str):
    once = mask_credential_shapes(text, MASK)
    assert Masking().reason(once) == Masking().reason(text)


# --- the inspector's bodies: the same rule ------------------------------------------------------------------


def test_an_answer_body_is_masked_by_shape_a_request_body_only_by_value():
    masking = Masking.of(["s3cr3t-v"])
    body = b'{"member_key": "M-1", "token": "unknown-T0KEN", "note": "S3CR3T-V"}'
    assert masking.body(body, 4096) == '{"member_key": "M-1", "token": "unknown-T0KEN", "note": "***"}'
    assert masking.body(body, 4096, shapes=True) == '{"member_key": "***", "token": "***", "note": "***"}'


# --- linear in the text: the same result as the algorithm before, which rebuilt the text per occurrence ---------


def masked_ascii_before(value: str, lowered: tuple[str, ...]) -> str:
    """The oracle: ``_masked_ascii`` as it was, one rebuild of the whole text per occurrence (quadratic in a body
    quoting a value many times). Also the baseline of ``tests.benchmarks.bench_masking_repeats``."""
    seen = folded(value)
    while any(form in seen for form in lowered):
        for form in lowered:
            at = seen.find(form)
            while at != -1:
                end = at + len(form)
                value, seen = value[:at] + MASK + value[end:], seen[:at] + MASK + seen[end:]
                at = seen.find(form, at + len(MASK))
    return value


#: Few characters, so that secrets overlap, contain one another and hold the mask's '*': the hard cases.
_TIGHT = st.text(alphabet="abAB*-\u212a\u0131k", min_size=MIN_SEARCHED, max_size=8)


@st.composite
def repeated(draw: st.DrawFn) -> tuple[list[str], str]:
    """ASCII secrets (some holding '*'), and a text of their pieces and copies in any case, repeated."""
    secrets = draw(st.lists(st.text(alphabet="abAB*-", min_size=MIN_SEARCHED, max_size=8), min_size=1, max_size=4))
    pieces = [*secrets, *(s[: len(s) // 2] for s in secrets), *(s[len(s) // 2 :] for s in secrets), MASK]
    chosen = draw(st.lists(st.sampled_from(pieces) | _TIGHT, max_size=12))
    return secrets, "".join(any_case(draw, piece) for piece in chosen) * draw(st.integers(1, 3))


@given(repeated())
@example((["abcd", "***e"], "abcde" * 3))  # masking 'abcd' makes '***e': masked in the next round
@example((["xabc", "abcdef"], "xabcdef"))  # overlapping values: the longer masked first, as before
@example((["x***", "abcd"], "xxxxabcd"))  # a chain: one 'x' a round
def test_masking_repeated_values_gives_what_the_algorithm_before_gave(case: tuple[list[str], str]):
    secrets, text = case
    masking = Masking.of(secrets)
    lowered = _lowered(masking.secrets)
    assert lowered is not None
    assert _masked_ascii(text, lowered) == masked_ascii_before(text, lowered)
    assert masking.text(text) == masked_ascii_before(text, lowered)


@given(echoed())
def test_masking_any_echoed_ascii_secret_gives_what_the_algorithm_before_gave(case: tuple[list[str], str]):
    secrets, text = case
    # Its ASCII forms (the ASCII path's input): arbitrary text around them, values encoded and in any case.
    lowered = tuple(form.lower() for form in Masking.of(secrets).secrets if form.isascii())
    assert _masked_ascii(text, lowered) == masked_ascii_before(text, lowered)


def test_a_body_quoting_a_token_thousands_of_times_is_masked_whole():
    token = "tok-0123456789abcdef"
    body = f'{{"sent": "{token.upper()}"}}, ' * 2000
    assert Masking.of([token]).text(body) == f'{{"sent": "{MASK}"}}, ' * 2000


# --- case folding: str.find on a folded copy finds what re.IGNORECASE finds ----------------------------------


def test_the_special_folds_are_every_character_outside_ascii_that_matches_an_ascii_letter_in_any_case():
    found = {}
    for code in range(0x80, 0x110000):
        char = chr(code)
        if not any(c in string.ascii_letters for c in char.lower() + char.upper()):
            continue  # the cheap test first: re.IGNORECASE folds by these mappings
        for letter in string.ascii_lowercase:
            if re.fullmatch(re.escape(letter), char, re.IGNORECASE):
                found[char] = letter
    assert found == SPECIAL_FOLDS
    assert [chr(c) for c in range(0x80, 0x110000) if len(chr(c).lower()) != 1] == ["\u0130"]


@given(st.text(max_size=60), st.text(alphabet=string.printable, min_size=1, max_size=6))
@example("xx\u0130\u212aSY", "iks")
def test_a_folded_text_keeps_every_place_and_holds_an_ascii_word_where_the_case_free_search_finds_it(
    text: str, word: str
):
    seen = folded(text)
    assert len(seen) == len(text)
    places = {m.start() for m in re.finditer(f"(?=({re.escape(word)}))", text, re.IGNORECASE)}
    assert places == {m.start() for m in re.finditer(f"(?=({re.escape(word.lower())}))", seen)}


# --- a database's connection texts (session 55) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # A dotted user, a password starting with a number then a space, then a service's name (no dot): the
        # authority of a connection URL, not a host's port then a message and an e-mail address (whose domain has a
        # dot). Before, read as the latter: the password shown.
        (
            "connecting to postgresql://first.last:1 x@db failed",
            f"connecting to postgresql://first.last:{MASK}@db failed",
        ),
        ("postgresql://first.last:1 x@db", f"postgresql://first.last:{MASK}@db"),
        (
            "dsn 'postgresql://app.reader:42 it is@postgres' refused",
            f"dsn 'postgresql://app.reader:{MASK}@postgres' refused",
        ),
        # libpq's words when a connection URL's part cannot be read (psycopg given the URL whole, as
        # psycopg.connect("postgresql://first.last:1 x@db/m") says): the part, a password too, quoted.
        (
            'unexpected spaces found in "1 x", use percent-encoded spaces (%20) instead\n',
            f'unexpected spaces found in "{MASK}", use percent-encoded spaces (%20) instead\n',
        ),
        ('invalid percent-encoded token: "p%zz"\n', f'invalid percent-encoded token: "{MASK}"\n'),
        (
            'missing "=" after "x" in connection info string\n',
            f'missing "=" after "{MASK}" in connection info string\n',
        ),
        (
            '(psycopg.ProgrammingError) invalid percent-encoded token: "p%zz"\n(Background on this error at: x)',
            f'(psycopg.ProgrammingError) invalid percent-encoded token: "{MASK}"\n(Background on this error at: x)',
        ),
    ],
)
def test_a_database_connection_texts_password_is_masked(text: str, masked: str):
    assert mask_credential_shapes(text, MASK) == masked
    assert mask_credential_shapes(masked, MASK) == masked


@pytest.mark.parametrize(
    "text",
    [
        # What SQLAlchemy and psycopg say of a connection that failed (passwords with spaces given): no password.
        'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?",
        "failed to resolve host 'db.invalid': [Errno -2] Name or service not known",
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  role "first.last" does not exist',
        # A host's port then words and an address (a dotted domain, the sentence's end too): no password.
        "http://10.0.0.1:8080 refused, ask ops@example.com",
        "http://partner.example:8080 down, mail ops@partner.example.",
        "see http://db.internal:5432 or ops@db.internal",
    ],
)
def test_a_connection_text_without_a_password_is_kept(text: str):
    assert mask_credential_shapes(text, MASK) == text
