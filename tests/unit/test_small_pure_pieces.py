import datetime as dt
import decimal
import ipaddress
import json
import uuid

import pytest

from services.extractor.extraction import page_size_for
from shared.domain.destinations import DestinationPolicy
from shared.json_values import jsonable
from shared.log import REDACTED, redact_secrets
from shared.querystore.paging import keyset_page


def test_keyset_pages_filter_after_the_last_key_and_never_use_offset():
    first = " ".join(str(keyset_page("SELECT * FROM members WHERE tier = 'gold'", "id", first=True)).split())
    later = " ".join(str(keyset_page("SELECT * FROM members WHERE tier = 'gold'", "id", first=False)).split())
    assert (
        first == "SELECT * FROM ( SELECT * FROM members WHERE tier = 'gold' ) AS q ORDER BY q.id LIMIT :_export_limit"
    )
    assert "WHERE q.id > :_export_last_key ORDER BY q.id" in later
    assert "OFFSET" not in later.upper()


def test_database_values_become_json_values():
    values = [
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.date(2026, 1, 2),
        decimal.Decimal("12"),
        decimal.Decimal("1.5"),
        uuid.UUID(int=1),
        b"\x01\x02",
        None,
        True,
        3,
        "x",
    ]
    converted = [jsonable(v) for v in values]
    assert converted == [
        "2026-01-02T03:04:05+00:00",
        "2026-01-02",
        12,
        1.5,
        str(uuid.UUID(int=1)),
        "0102",
        None,
        True,
        3,
        "x",
    ]
    json.dumps(converted)


def test_page_size_is_a_whole_number_of_batches():
    assert page_size_for(500, 5000) == 5000
    assert page_size_for(500, 4999) == 5000
    assert page_size_for(300, 1000) == 1200
    assert page_size_for(5000, 10) == 5000


def test_log_fields_that_name_secrets_are_redacted():
    event = redact_secrets(
        None,
        "info",
        {"event": "x", "password": "p", "api_key": "k", "Authorization": "B", "client_secret": "s", "count": 3},
    )
    assert event == {
        "event": "x",
        "password": REDACTED,
        "api_key": REDACTED,
        "Authorization": REDACTED,
        "client_secret": REDACTED,
        "count": 3,
    }


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.7", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("fd00:ec2::254", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("100.64.0.1", "non-public"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_the_ssrf_guard_refuses_non_public_addresses_by_default(address, kind):
    refusal = DestinationPolicy().refusal("h", ipaddress.ip_address(address))
    assert refusal is not None
    article = "an" if kind[0] in "aeiou" else "a"
    assert f"is {article} {kind} address" in refusal


def test_the_ssrf_guard_allows_public_addresses_and_explicit_exceptions():
    policy = DestinationPolicy.parse(" 127.0.0.1, 10.0.0.0/8 ,partner.internal. ")
    assert DestinationPolicy().refusal("api.partner.com", ipaddress.ip_address("93.184.216.34")) is None
    assert policy.refusal("x", ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal("x", ipaddress.ip_address("10.200.0.1")) is None
    assert policy.refusal("Partner.Internal", ipaddress.ip_address("192.168.0.5")) is None
    assert policy.refusal("x", ipaddress.ip_address("192.168.0.5")) is not None
