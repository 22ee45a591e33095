"""Write-only secrets through the admin API (shared.application.masked_secrets): a read answers every secret as
the mask, and a mask sent back keeps the stored secret; any other value, one holding ``*`` or the mask text
included, replaces it; and a field that is not a secret keeps the value sent, whatever it is. Pure."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, example, given
from hypothesis import strategies as st

from shared.application.masked_secrets import MASK, UNKEPT_MASK, keep_masked_secrets, unkept_masks
from shared.domain.catalog_objects import ConnectionProfile

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
