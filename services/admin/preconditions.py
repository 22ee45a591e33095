"""Conditional writes over HTTP (RFC 9110, section 13): ``ETag`` (a strong validator: the stored object's
revision, its id and version, quoted: ``"<id>.<version>"``) on the answers that carry one object, and ``If-Match``
parsed into the application layer's :class:`~shared.application.objects.ExpectedVersion` (the comparison and the
write are the use case's)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Header, Response

from services.admin.problems import ApiProblem, problem_responses
from shared.application.objects import ExpectedVersion
from shared.domain.revisions import Revision
from shared.events import cut_text

#: One element of an ``If-Match`` list: an entity-tag (``W/`` weak, or strong), or nothing (an empty element); the
#: tags in visible ASCII (RFC 9110's obsolete ``obs-text`` is refused: the tags this API sends are hex digits, a
#: dot and digits).
_ELEMENT = re.compile(r'[ \t]*(?P<tag>(?P<weak>W/)?"(?P<opaque>[!#-~]*)")?[ \t]*(?P<end>,|\Z)')
#: An entity-tag's opaque part as this API ever sent it: a revision (``<id>.<version>``, the id in 32 lowercase hex
#: digits; a version written otherwise, ``.03``, is compared and matches nothing) or, before revisions, a plain
#: version (``3``). Any other tag is refused (400), not compared: it is no ETag read from this API.
_OURS = r"(?:[0-9a-f]{32}\.)?[0-9]+"
#: The whole ``If-Match`` as :func:`expected_version` takes it (in the OpenAPI document: what a client may send).
IF_MATCH_PATTERN = rf'^[ \t]*(\*|(,[ \t]*)*(W/)?"{_OURS}"([ \t]*,([ \t]*(W/)?"{_OURS}")?)*)[ \t]*$'
#: What the header must hold, as a 400 says.
_IF_MATCH_FORM = (
    'give the ETag read, as sent (quoted: "<id>.<version>", the id in 32 lowercase hex digits), a comma-separated'
    " list of them, or *"
)
#: The most of a refused tag a 400 quotes, in characters.
_TAG_SHOWN_CHARS = 80


def _documented(schema: dict[str, Any]) -> None:
    """The header in the OpenAPI document: a string that :data:`IF_MATCH_PATTERN` admits (absent when not sent; a
    header is never JSON null, which the optional parameter's type would otherwise also allow)."""
    schema.pop("anyOf", None)
    schema.update(type="string", minLength=1, pattern=IF_MATCH_PATTERN)


IfMatch = Annotated[
    str | None,
    Header(
        description="Only if the object is still the one read, at the version read: its `ETag` as read"
        ' (`"<id>.<version>"`), a list of them, or `*` (any version). Otherwise nothing is written and the answer is'
        " 412.",
        json_schema_extra=lambda schema: _documented(schema),
    ),
]


def etag(revision: Revision) -> str:
    """The ``ETag`` of an object at ``revision``: its token, quoted."""
    return f'"{revision.token()}"'


def tag_answer(response: Response, revision: Revision) -> None:
    """Give ``response`` the ``ETag`` of ``revision`` (the object it answers, as stored)."""
    response.headers["ETag"] = etag(revision)


def expected_version(if_match: str | None) -> ExpectedVersion | None:
    """The ``If-Match`` header as the use cases take it (None: no header, an unconditional write).

    ``*`` allows any version; a list allows each strong tag of ours in it (weak tags never match a strong
    comparison; an ``ETag`` of before revisions, a plain version such as ``"3"``, matches no revision: it no longer
    says which object it was of); a value that is no entity-tag list, or holds a tag this API never sends, is
    refused (400)."""
    if if_match is None:
        return None
    value = if_match.strip(" \t")
    if value == "*":
        return ExpectedVersion()
    versions: set[Revision] = set()
    tags, position = 0, 0
    while True:
        element = _ELEMENT.match(value, position)
        if element is None:
            raise ApiProblem(400, f"header 'If-Match': {_IF_MATCH_FORM}", slug="invalid-header")
        if element["tag"] is not None:
            if not re.fullmatch(_OURS, element["opaque"]):
                shown = cut_text(element["tag"], _TAG_SHOWN_CHARS)
                raise ApiProblem(
                    400, f"header 'If-Match': {shown} is no ETag of this API: {_IF_MATCH_FORM}", slug="invalid-header"
                )
            tags += 1
            if element["weak"] is None and (revision := Revision.parse(element["opaque"])) is not None:
                versions.add(revision)
        if element["end"] == "":
            break
        position = element.end()
    if not tags:
        raise ApiProblem(400, "header 'If-Match': no entity-tag in it", slug="invalid-header")
    return ExpectedVersion(frozenset(versions))


def conditional_errors(*statuses: int, body: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of an operation that takes ``If-Match``: ``statuses`` as problem details, with 412 and a
    400 that says the header can be its cause (and, if the operation takes a ``body``, a body that cannot be
    decoded: a DELETE has none)."""
    responses = problem_responses(400, *statuses, 412)
    responses[400]["description"] = "Bad request: an `If-Match` that is no entity-tag list (`detail` names the header)"
    responses[412]["description"] = (
        "Precondition failed, nothing written: the object was changed since the `If-Match` revision was read, or"
        " that revision is not one of this object (another object's, or one of an object of this name since"
        " deleted) (type `changed-since-read`), or the `If-Match` names no revision at all (an `ETag` from before"
        " revisions: type `unknown-revision`)"
    )
    if body:
        responses[400]["description"] += ", or a body that cannot be decoded"
    return responses


def with_etag(status: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses``: the ``status`` answer carries the object's ``ETag``."""
    return {
        status: {
            "headers": {
                "ETag": {
                    "description": 'The object\'s revision, quoted (`"<id>.<version>"`): send it back in `If-Match`',
                    "schema": {"type": "string"},
                }
            }
        }
    }
