"""Which hosts the reqwest partner client sends itself: only those reqwest keeps exactly as written, so that the
name it looks its pinned address up by is the name the SSRF guard judged (anything else goes through aiohttp)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyreqwest.http import Url

from shared.outbound.reqwest_partner_http import host_form

#: Hosts of any form, and many that are names or dotted numbers (the forms reqwest could read otherwise).
HOSTS = st.one_of(
    st.text(st.sampled_from("abcXYZ019-._é[]:ß"), min_size=1, max_size=20),
    st.text(st.sampled_from("ax09-."), min_size=1, max_size=20),
    st.from_regex(r"\[[0-9a-fA-F:.]{2,30}\]", fullmatch=True),
)


@settings(max_examples=500)
@given(HOSTS)
@example("[0:0::1]")
@example("0x7f.1")
def test_a_host_sent_on_reqwest_is_the_host_it_parses_from_the_url_and_a_name_is_kept_as_written(host):
    form = host_form(host)
    text = f"http://{host}:8080/members"
    try:
        url = Url(text)
    except ValueError:
        return  # reqwest could not send it at all: the client hands such a URL to aiohttp
    if form == "name":
        assert str(url) == text
    if form is not None and str(url) == text:  # what the client sends on reqwest
        assert url.host_str == host


@pytest.mark.parametrize(
    ("host", "form"),
    [
        ("partner.example", "name"),
        ("api-2.partner.example", "name"),
        ("localhost", "name"),
        ("127.0.0.1", "literal"),
        ("[::1]", "literal"),
        ("[::ffff:127.0.0.1]", "literal"),
        ("Partner.example", None),  # reqwest lowercases it
        ("partner.example.", None),  # a trailing dot
        ("xn--bcher-kva.example", None),  # IDNA
        ("bücher.example", None),
        ("-partner.example", None),
        ("partner_1.example", None),
        ("1.2.3", None),  # reqwest reads it as the IPv4 address 1.2.0.3
        ("0x7f.1", None),  # 127.0.0.1
        ("partner.0x1", None),  # a last label URL parsers read as a number
        ("partner.1a", "name"),
        ("", None),
    ],
)
def test_host_forms(host, form):
    assert host_form(host) == form
