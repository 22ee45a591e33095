"""``If-Match`` as the admin API reads it (RFC 9110, 13.1.1): ``*``, or a list of entity-tags compared strongly
against the ``ETag`` the API sends (an object's version, quoted); anything else is refused with 400."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.admin.preconditions import IF_MATCH_PATTERN, etag, expected_version
from services.admin.problems import ApiProblem
from shared.application.objects import ExpectedVersion

versions = st.integers(min_value=0, max_value=10**18 - 1)
#: Optional whitespace (RFC 9110's OWS) around list elements.
ows = st.sampled_from(["", " ", "\t", "  "])
#: Opaque tags that are no version of ours (still valid entity-tags).
foreign = st.text(alphabet="abcdefXYZ-_.:/,", min_size=0, max_size=12).filter(lambda text: not text.isdigit())


def test_no_header_is_an_unconditional_write_and_a_star_any_version():
    assert expected_version(None) is None
    assert expected_version("*") == ExpectedVersion()
    assert ExpectedVersion().allows(1)
    assert ExpectedVersion().allows(987)


@given(versions)
def test_the_etag_sent_comes_back_as_its_version(version: int):
    expected = expected_version(etag(version))
    assert expected == ExpectedVersion.of(version)
    assert expected is not None
    assert expected.allows(version)
    assert not expected.allows(version + 1)


@given(st.lists(st.tuples(versions, st.booleans()), min_size=1, max_size=6), foreign, ows, ows)
def test_a_list_allows_its_strong_versions_only(tags: list[tuple[int, bool]], other: str, before: str, after: str):
    listed = [f'{"W/" if weak else ""}"{version}"' for version, weak in tags] + [f'"{other}"']
    expected = expected_version(f"{before},{after}".join(listed))
    assert expected == ExpectedVersion(frozenset(version for version, weak in tags if not weak))


@pytest.mark.parametrize("value", ["", " ", ",", "1", '"1', '1"', "W/1", '"1" "2"', '"1";', "**", '* , "1"', "'1'"])
def test_a_value_that_is_no_list_of_entity_tags_is_refused_naming_the_header(value: str):
    with pytest.raises(ApiProblem) as refused:
        expected_version(value)
    assert refused.value.status == 400
    assert "If-Match" in refused.value.detail


@given(st.text(alphabet=' \t,"W/*1a\x7f\xe9', max_size=14))
def test_the_openapi_pattern_of_the_header_admits_exactly_what_is_parsed(value: str):
    """The document says what a client may send (Schemathesis sends what it admits, and what it does not)."""
    try:
        expected_version(value)
    except ApiProblem:
        parsed = False
    else:
        parsed = True
    assert parsed == (re.fullmatch(IF_MATCH_PATTERN, value) is not None)
