"""Write-only secrets through the admin API (shared.application.masked_secrets): a read answers every secret as
the mask, and a mask sent back keeps the stored secret; any other value, one holding ``*`` or the mask text
included, replaces it; and a field that is not a secret keeps the value sent, whatever it is. Pure."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from shared.application.errors import Invalid
from shared.application.masked_secrets import MASK, SENT_TO, UNKEPT_MASK, keep_masked_secrets, unkept_masks
from shared.domain.catalog_objects import ConnectionProfile, secret_fields

#: Secrets and values made of what can be confused with a mask: stars, the mask, pydantic's and the masking's.
PIECES = st.one_of(st.text(alphabet="*ab: ", max_size=6), st.sampled_from([MASK, "***", "*", MASK + "*"]))
VALUES = st.lists(PIECES, min_size=1, max_size=4).map("".join)
SECRETS = VALUES.filter(bool)


def profile(password: str, signing: str | None = None, *, username: str = "u", label: str | None = None) -> Any:
    return ConnectionProfile(
        name="p",
        label=label,
        base_url="https://partner.example",
        auth={"type": "basic", "username": username, "password": password},
        signing_secret=signing,
        proxy={"url": "http://proxy.internal:3128", "username": "proxy-user", "password": password},
    )


def answered(obj: ConnectionProfile) -> dict[str, Any]:
    """What a read answers (the admin API's JSON)."""
    return obj.model_dump(mode="json")


def updated(body: dict[str, Any], stored: ConnectionProfile) -> ConnectionProfile:
    """What an update of ``stored`` with ``body`` stores."""
    return ConnectionProfile.model_validate(keep_masked_secrets(body, stored))


def secrets_of(obj: ConnectionProfile) -> tuple[str, str | None, str | None]:
    signing = obj.signing_secret.get_secret_value() if obj.signing_secret else None
    proxy = obj.proxy.password.get_secret_value() if obj.proxy and obj.proxy.password else None
    return obj.auth.password.get_secret_value(), signing, proxy


def test_the_mask_in_a_field_that_is_not_a_secret_is_the_value_sent():
    """Before: any field whose value was sent as ``**********`` took the stored value, a username or a label too."""
    stored = profile("s3cret", label="Partner")
    body = answered(stored)
    body["auth"]["username"] = MASK
    body["label"] = MASK
    kept = updated(body, stored)
    assert kept.auth.username == MASK
    assert kept.label == MASK
    assert secrets_of(kept) == ("s3cret", None, "s3cret")  # the secrets sent masked, kept


def test_a_secret_holding_the_mask_is_answered_masked_and_kept_or_replaced_whole():
    stored = profile(f"a{MASK}b", signing="***")
    body = answered(stored)
    assert body["auth"]["password"] == body["signing_secret"] == body["proxy"]["password"] == MASK
    assert secrets_of(updated(body, stored)) == (f"a{MASK}b", "***", f"a{MASK}b")
    body["auth"]["password"] = f"{MASK}*"  # a new value that starts with the mask
    assert secrets_of(updated(body, stored))[0] == f"{MASK}*"


@given(secret=SECRETS, other=SECRETS)
@example(secret=MASK, other="plain")
@example(secret="*", other=MASK + "*")
def test_a_read_answers_the_same_whatever_the_secret(secret: str, other: str):
    """The answer holds nothing of the secret: the same JSON for any two (non-empty) secrets, so a secret that
    holds stars or the mask is not shown in part either."""
    shown = answered(profile(secret, secret))
    assert shown == answered(profile(other, other))
    assert {shown["auth"]["password"], shown["signing_secret"], shown["proxy"]["password"]} == {MASK}


@given(secret=SECRETS, signing=SECRETS, new=VALUES, username=VALUES)
@example(secret="old", signing="old", new=MASK, username=MASK)
@example(secret=MASK, signing=MASK, new=MASK + "*", username="u")
def test_a_mask_sent_back_keeps_the_secret_and_any_other_value_replaces_it(
    secret: str, signing: str, new: str, username: str
):
    stored = profile(secret, signing)
    # Round trip: what a read answered, sent back as it is, changes no secret.
    assert secrets_of(updated(answered(stored), stored)) == (secret, signing, secret)
    # A new value replaces the stored one, unless it is the mask itself (which a read answers for every secret).
    body = answered(stored)
    body["auth"]["password"] = new
    body["auth"]["username"] = username
    kept = updated(body, stored)
    assert secrets_of(kept) == (secret if new == MASK else new, signing, secret)
    assert kept.auth.username == username  # not a secret: as sent, the mask too


@given(secret=SECRETS)
def test_a_mask_under_a_changed_auth_type_is_not_the_old_types_secret(secret: str):
    assume(secret != MASK)
    stored = profile(secret)
    body = answered(stored)
    body["auth"] = {"type": "bearer", "token": MASK}
    kept = updated(body, stored)
    assert kept.auth.token.get_secret_value() == MASK  # left as sent: the checks refuse it (below)


# --- a mask with no stored secret to keep: refused, naming the field -------------------------------------

KEY = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
ALL_SECRETS = ["auth.password", "signing_secret", "tls.client_key", "proxy.password"]


def full_profile(secret: str, *, name: str = "p") -> dict[str, Any]:
    """A profile's JSON with every kind of secret it has set to ``secret``."""
    return {
        "name": name,
        "base_url": "https://partner.example",
        "auth": {"type": "basic", "username": MASK, "password": secret},
        "signing_secret": secret,
        "tls": {"client_certificate": CERT, "client_key": secret},
        "proxy": {"url": "http://proxy.internal:3128", "username": "proxy-user", "password": secret},
    }


def test_a_new_object_holding_the_mask_has_every_masked_secret_named_and_nothing_else():
    """Before: a profile created (or a manifest applied under a new name) with masked secrets stored the mask."""
    new = ConnectionProfile.model_validate(keep_masked_secrets(full_profile(MASK), None))
    assert unkept_masks(new) == ALL_SECRETS  # the username holding the mask is a username, not a secret


@given(secret=SECRETS)
@example(secret="*")
@example(secret=MASK + "*")
def test_what_a_read_answered_leaves_no_mask_where_the_same_object_is_stored_and_every_one_under_a_new_name(
    secret: str,
):
    # A stored secret that is the mask itself (saved before the refusal) is not kept as a secret: it is refused too.
    assume(secret != MASK)
    spec = full_profile(secret) | {"tls": {"client_certificate": CERT, "client_key": KEY}}
    stored = ConnectionProfile.model_validate(spec)
    read = answered(stored)
    assert unkept_masks(ConnectionProfile.model_validate(keep_masked_secrets(read, stored))) == []
    # The same manifest under a new name: nothing stored there, every masked secret named.
    copied = ConnectionProfile.model_validate(keep_masked_secrets(read | {"name": "other"}, None))
    assert unkept_masks(copied) == ALL_SECRETS


@given(secret=SECRETS)
def test_a_mask_under_a_changed_auth_type_is_named(secret: str):
    assume(secret != MASK)
    stored = profile(secret)
    body = answered(stored) | {"auth": {"type": "bearer", "token": MASK}}
    assert unkept_masks(ConnectionProfile.model_validate(keep_masked_secrets(body, stored))) == ["auth.token"]


def test_the_checks_refuse_each_unkept_mask_by_its_field_without_any_secret():
    from shared.application.checks import mask_problems

    new = ConnectionProfile.model_validate(full_profile(MASK) | {"signing_secret": "whsec_s3cret"})
    problems = mask_problems(new)
    assert problems == [
        f"ConnectionProfile 'p': field '{path}': {UNKEPT_MASK}"
        for path in ["auth.password", "tls.client_key", "proxy.password"]
    ]
    assert "s3cret" not in " ".join(problems)


# --- a mask keeps a secret only while the secret goes where it went ---------------------------------------

OAUTH = {"type": "oauth2_client_credentials", "token_url": "https://auth.example/token", "client_id": "c"}


def every_secret(secret: str, *, base_url: str = "https://partner.example") -> ConnectionProfile:
    """A profile with each of its secret fields set (the OAuth client secret in place of the Basic password)."""
    return ConnectionProfile.model_validate(
        full_profile(secret)
        | {
            "base_url": base_url,
            "auth": OAUTH | {"client_secret": secret},
            "tls": {"client_certificate": CERT, "client_key": KEY},
        }
    )


def moved(body: dict[str, Any], stored: ConnectionProfile) -> list[str]:
    """The problems of updating ``stored`` with ``body``: none when it is kept."""
    try:
        keep_masked_secrets(body, stored)
    except Invalid as refused:
        return refused.problems
    return []


def refusal(*paths: str) -> list[str]:
    return [
        f"ConnectionProfile 'p': field '{path}': give the secret again: the host it is sent to changed"
        for path in paths
    ]


def test_every_secret_of_a_profile_has_where_it_is_sent():
    """A secret field added without a destination would never be kept from a mask: listed, the rule applies."""
    auths = [{"type": "basic", "username": "u", "password": "s"}, {"type": "bearer", "token": "s"}]
    auths += [{"type": "api_key", "key": "s"}, OAUTH | {"client_secret": "s"}]
    paths = {
        tuple(path.split("."))
        for auth in auths
        for path, _ in secret_fields(ConnectionProfile.model_validate(answered(every_secret("s")) | {"auth": auth}))
    }
    assert paths == set(SENT_TO)


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        # Another host, scheme or port of the partner: the partner's credentials, the signing secret, the client key.
        ({"base_url": "https://collector.evil.example"}, ["signing_secret", "tls.client_key"]),
        ({"base_url": "http://partner.example"}, ["signing_secret", "tls.client_key"]),
        ({"base_url": "https://partner.example:8443"}, ["signing_secret", "tls.client_key"]),
        # Another token endpoint: the client secret, and the client key it is presented to.
        ({"auth": OAUTH | {"token_url": "https://evil.example/token"}}, ["auth.client_secret", "tls.client_key"]),
        # Another proxy: its password.
        ({"proxy": {"url": "http://evil.example:3128", "username": "proxy-user"}}, ["proxy.password"]),
    ],
)
def test_a_mask_where_the_secret_would_go_to_another_host_is_refused_naming_each_secret(
    change: dict[str, Any], refused: list[str]
):
    """Before: the stored secret was kept, and sent to the new host at the next delivery (a client that may change
    a profile, but never read its secrets, could have them sent to its own host)."""
    stored = every_secret("s3cret")
    body = answered(stored)
    for key, value in change.items():
        body[key] = value | {k: v for k, v in body[key].items() if k not in value} if isinstance(value, dict) else value
    expected = sorted(refused + (["auth.client_secret"] if "auth" in change else []))
    assert sorted(p.split("'")[3] for p in moved(body, stored)) == sorted(set(expected))
    assert "s3cret" not in " ".join(moved(body, stored))


def test_the_partners_credentials_are_refused_when_moved_and_kept_elsewhere_on_its_host():
    stored = profile("s3cret", "whsec_s3cret")
    body = answered(stored)
    assert moved(body | {"base_url": "https://collector.evil.example"}, stored) == refusal(
        "auth.password", "signing_secret"
    )
    # The same scheme, host and port (another path, the port written, the host's case): kept.
    for same in ("https://partner.example/v3/", "https://partner.example:443", "https://PARTNER.example"):
        assert secrets_of(updated(body | {"base_url": same}, stored)) == ("s3cret", "whsec_s3cret", "s3cret")
    # Given again: the new host has it.
    body |= {"base_url": "https://collector.example", "signing_secret": "whsec_new"}
    body["auth"] = body["auth"] | {"password": "new"}
    assert secrets_of(updated(body, stored)) == ("new", "whsec_new", "s3cret")


def test_a_plain_http_partners_credentials_are_refused_when_a_proxy_that_reads_them_is_set_or_changed():
    """A plain ``http`` request goes through the proxy readable (an ``https`` one in a tunnel): a new proxy reads
    the credentials."""
    stored = ConnectionProfile.model_validate(
        {"name": "p", "base_url": "http://partner.example", "auth": {"type": "bearer", "token": "s3cret"}}
    )
    body = answered(stored) | {"proxy": {"url": "http://evil.example:3128"}}
    assert moved(body, stored) == refusal("auth.token")
    # Over https the proxy only tunnels: kept.
    https = stored.model_copy(update={"base_url": "https://partner.example"})
    kept = keep_masked_secrets(answered(https) | {"proxy": {"url": "http://evil.example:3128"}}, https)
    assert kept["auth"]["token"] == "s3cret"
    # A proxy removed reads nothing more: kept.
    proxied = ConnectionProfile.model_validate(
        answered(stored)
        | {"auth": {"type": "bearer", "token": "s3cret"}}
        | {"proxy": {"url": "http://proxy.internal:3128"}}
    )
    assert keep_masked_secrets(answered(proxied) | {"proxy": None}, proxied)["auth"]["token"] == "s3cret"
