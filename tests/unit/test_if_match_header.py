"""``If-Match`` as the admin API reads it (RFC 9110, 13.1.1): ``*``, or a list of entity-tags compared strongly
against the ``ETag`` the API sends (an object's revision, its id and version, quoted); anything else is refused with
400."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.admin.preconditions import IF_MATCH_PATTERN, etag, expected_version
from services.admin.problems import ApiProblem
from shared.application.objects import ExpectedVersion
from shared.domain.revisions import NO_OBJECT, Revision

versions = st.integers(min_value=0, max_value=10**18 - 1)
revisions = st.builds(Revision, st.uuids(), versions)
#: Optional whitespace (RFC 9110's OWS) around list elements.
ows = st.sampled_from(["", " ", "\t", "  "])
#: Opaque tags that are no ETag this API ever sent (still valid entity-tags): refused with 400.
foreign = st.text(alphabet="abcdefXYZ-_.:/,", min_size=0, max_size=12).filter(lambda text: not text.isdigit())


@given(revisions)
def test_no_header_is_an_unconditional_write_and_a_star_any_version(revision: Revision):
    assert expected_version(None) is None
    assert expected_version("*") == ExpectedVersion()
    assert ExpectedVersion().allows(revision)


@given(revisions, st.uuids())
def test_the_etag_sent_comes_back_as_its_revision_and_allows_that_object_at_that_version_only(
    revision: Revision, other_object: uuid.UUID
):
    expected = expected_version(etag(revision))
    assert expected == ExpectedVersion.of(revision)
    assert expected is not None
    assert expected.allows(revision)
    assert not expected.allows(Revision(revision.object_id, revision.version + 1))
    # Another object under the name (deleted and created again), even at the very version read: not allowed.
    if other_object != revision.object_id:
        assert not expected.allows(Revision(other_object, revision.version))


@given(st.lists(st.tuples(revisions, st.booleans()), min_size=1, max_size=6), versions, ows, ows)
def test_a_list_allows_its_strong_revisions_only(
    tags: list[tuple[Revision, bool]], plain: int, before: str, after: str
):
    listed = [f"{'W/' if weak else ''}{etag(revision)}" for revision, weak in tags] + [f'"{plain}"']
    expected = expected_version(f"{before},{after}".join(listed))
    assert expected == ExpectedVersion(frozenset(revision for revision, weak in tags if not weak))


@given(st.lists(revisions, max_size=3), foreign, st.booleans())
def test_a_tag_this_api_never_sends_is_refused_naming_the_header_and_its_form(
    ours: list[Revision], other: str, weak: bool
):
    """``"abc.-1"``, ``W/"xxxx"``, ``",,,,"``: valid entity-tags, but no ETag read from this API (before: a 412
    ``unknown-revision`` saying it was an ETag from before revisions)."""
    with pytest.raises(ApiProblem) as refused:
        expected_version(", ".join([etag(revision) for revision in ours] + [f'{"W/" if weak else ""}"{other}"']))
    assert refused.value.status == 400
    assert refused.value.detail.startswith("header 'If-Match': ")
    assert 'is no ETag of this API: give the ETag read, as sent (quoted: "<id>.<version>"' in refused.value.detail


@given(versions, revisions)
def test_an_etag_of_before_revisions_a_plain_version_allows_no_object(version: int, revision: Revision):
    """``"3"`` (the API's ETag before it named the object): a valid entity-tag, so no 400, but it names no object."""
    expected = expected_version(f'"{version}"')
    assert expected == ExpectedVersion(frozenset())
    assert expected is not None
    assert not expected.allows(revision)
    assert not expected.allows(Revision(revision.object_id, version))


@given(revisions)
def test_a_revision_token_reads_back_as_itself(revision: Revision):
    assert Revision.parse(revision.token()) == revision


@pytest.mark.parametrize(
    "token",
    [
        *("", "3", "0" * 32, "0" * 32 + ".", "0" * 31 + ".1", "A" * 32 + ".1", "0" * 32 + ".-1", "0" * 32 + ".1 "),
        *("0" * 32 + ".03", "0" * 32 + ".00", "1" * 32 + ".0" + "9" * 17),
    ],
)
def test_a_token_that_is_no_revision_names_none(token: str):
    assert Revision.parse(token) is None


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


@given(revisions, st.integers(min_value=1, max_value=17))
def test_a_version_with_leading_zeros_is_no_revision_and_allows_nothing(revision: Revision, zeros: int):
    """A strong comparison is character by character: ``<id>.03`` is not the ETag ``<id>.3`` (before, both parsed
    to one revision and matched)."""
    padded = f"{revision.object_id.hex}.{'0' * zeros}{revision.version}"
    assert Revision.parse(padded) is None
    expected = expected_version(f'"{padded}"')
    assert expected is not None
    assert not expected.allows(revision)
    assert expected.names_no_object


@given(st.lists(revisions, max_size=3), st.booleans(), versions)
def test_a_validator_names_no_object_exactly_when_no_revision_of_ours_is_in_it(
    ours: list[Revision], old_page: bool, plain: int
):
    """What the use cases refuse with "the revision sent … names no object": a plain version (an API ``ETag``, or
    a console page posting ``version=3``, read as :data:`NO_OBJECT`), a weak tag; never a list holding one of ours,
    never ``*``."""
    sent = set(ours) | ({NO_OBJECT} if old_page else set())
    assert ExpectedVersion(frozenset(sent)).names_no_object == (not ours)
    header = ", ".join([f'"{plain}"'] + [etag(revision) for revision in ours])
    parsed = expected_version(header)
    assert parsed is not None
    assert parsed.names_no_object == (not ours)
    assert not ExpectedVersion().names_no_object
    assert Revision.parse(NO_OBJECT.token()) == NO_OBJECT
