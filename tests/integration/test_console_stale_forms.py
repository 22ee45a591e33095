"""The console's object forms (profiles, queries, templates) carry the revision they were rendered from (the object's
id and version): a save or a delete from a page older than the object's last change (or than its deletion and
creation again) writes nothing and says so, keeping what was typed; a delete of an object deleted meanwhile says so."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from shared.catalog import CatalogStores
from shared.domain.catalog_objects import ExportDefinition, SavedQuery
from tests.admin_app import InProcessApi, in_process_api, seed
from tests.integration.test_console_fields import Console, signed_in
from tests.integration.test_if_match import _between_read_and_write, _deleted

pytestmark = pytest.mark.integration

GOLD_SQL = "SELECT id, email, tier, updated_at FROM members WHERE tier = :tier"
PARAMETERS = "tier: {type: string, default: gold}"
#: A form's hidden ``version``: the object's revision token (its id, a dot, its version).
REVISION = r"[0-9a-f]{32}\.[0-9]+"


@pytest.fixture
def api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_catalog: Callable[[str], CatalogStores]
) -> Iterator[InProcessApi]:
    monkeypatch.setenv("EXPORT_CONSOLE_SECURE_COOKIES", "false")  # plain http in the test client
    with in_process_api(tmp_path, migrated_catalog=migrated_catalog) as in_process, in_process.client() as client:
        seed(client)
        yield in_process


@pytest.fixture
def console(api: InProcessApi) -> Iterator[Console]:
    with signed_in(api, "admin") as admin:
        yield admin


def _hidden_version(html: str) -> str:
    found = re.search(f'name="version" value="({REVISION})"', html)
    assert found is not None, "the form carries no version"
    return found.group(1)


def _someone_else_saves(api: InProcessApi, description: str) -> None:
    with api.client("editor") as client:
        query = client.get("/api/v1/saved-queries/gold").json()
        assert client.put("/api/v1/saved-queries/gold", json=query | {"description": description}).status_code == 200


def _description(api: InProcessApi) -> str:
    with api.client() as client:
        description: str = client.get("/api/v1/saved-queries/gold").json()["description"]
        return description


def test_a_save_from_a_page_older_than_the_objects_last_change_keeps_the_others_change_and_what_was_typed(
    api: InProcessApi, console: Console
):
    version = _hidden_version(console.page("/queries/gold"))
    _someone_else_saves(api, "Bob's description")
    fields = {"version": version, "sql": GOLD_SQL, "parameters": PARAMETERS, "description": "Alice's description"}
    stale = console.post("/queries/gold", fields)
    assert stale.status_code == 422
    page = unescape(stale.text)
    assert "Someone else changed this query since you" in page
    assert '<a href="/console/queries/gold">Reload it</a>' in page
    assert 'value="Alice\'s description"' in page  # what was typed is still in the form
    assert _description(api) == "Bob's description"
    again = console.post("/queries/gold", fields)  # the page stays stale until reloaded
    assert again.status_code == 422
    assert _description(api) == "Bob's description"
    fresh = _hidden_version(console.page("/queries/gold"))
    saved = console.post("/queries/gold", fields | {"version": fresh})
    assert saved.status_code == 303
    assert _description(api) == "Alice's description"


def test_a_delete_confirmed_from_a_page_older_than_the_objects_last_change_deletes_nothing(
    api: InProcessApi, console: Console
):
    with api.client() as client:
        assert client.delete("/api/v1/export-definitions/nightly").status_code == 204
        assert client.delete("/api/v1/http-templates/upsert").status_code == 204  # gold is then unused
    version = _hidden_version(console.page("/queries/gold/delete"))
    _someone_else_saves(api, "Changed while the delete was being confirmed")
    stale = console.post("/queries/gold/delete", {"version": version})
    assert stale.status_code == 422
    assert "The query 'gold' was changed (by editor, " in unescape(stale.text)
    assert not _offers_a_button(stale.text)  # a Delete from here could only be refused again
    assert _description(api) == "Changed while the delete was being confirmed"
    fresh = _hidden_version(console.page("/queries/gold/delete"))
    assert console.post("/queries/gold/delete", {"version": fresh}).status_code == 303
    with api.client() as client:
        assert client.get("/api/v1/saved-queries/gold").status_code == 404


def _definition(api: InProcessApi) -> dict[str, Any]:
    with api.client() as client:
        definition: dict[str, Any] = client.get("/api/v1/export-definitions/nightly").json()
        return definition


def _someone_else_relabels(api: InProcessApi, label: str) -> None:
    with api.client("editor") as client:
        changed = client.put("/api/v1/export-definitions/nightly", json=_definition(api) | {"label": label})
        assert changed.status_code == 200, changed.text


def test_a_definitions_step_or_general_save_from_a_stale_page_writes_nothing_and_says_so(
    api: InProcessApi, console: Console
):
    with api.client() as client:  # a second template to choose
        assert client.post("/api/v1/http-templates/upsert/copy", json={"name": "other"}).status_code == 201
    page = console.page("/exports/nightly?step=destination")
    versions = set(re.findall(f'name="version" value="({REVISION})"', page))
    assert len(versions) == 1  # every form of the page, the general one and each step's: the same revision
    assert next(iter(versions)).endswith(".1")
    version = _hidden_version(page)
    _someone_else_relabels(api, "Bob's label")
    step = console.post("/exports/nightly/steps/destination", {"version": version, "template": "other"})
    assert step.status_code == 422
    assert "Someone else changed this export definition since you" in unescape(step.text)
    assert '<a href="/console/exports/nightly?step=destination">Reload it</a>' in unescape(step.text)
    general = console.post("/exports/nightly/general", {"version": version, "label": "Alice's label", "step": "filter"})
    assert general.status_code == 422
    assert 'value="Alice\'s label"' in unescape(general.text)
    assert (_definition(api)["label"], _definition(api)["template"]) == ("Bob's label", "upsert")
    fresh = _hidden_version(console.page("/exports/nightly?step=destination"))
    saved = console.post("/exports/nightly/steps/destination", {"version": fresh, "template": "other"})
    assert saved.status_code == 303
    assert _definition(api)["template"] == "other"


def test_a_definitions_delete_confirmed_from_a_stale_page_deletes_nothing(api: InProcessApi, console: Console):
    version = _hidden_version(console.page("/exports/nightly/delete"))
    _someone_else_relabels(api, "Relabelled while the delete was being confirmed")
    stale = console.post("/exports/nightly/delete", {"version": version})
    assert stale.status_code == 422
    assert "The export definition 'nightly' was changed (by editor, " in unescape(stale.text)
    assert not _offers_a_button(stale.text)  # a Delete from here could only be refused again
    assert _definition(api)["label"] == "Relabelled while the delete was being confirmed"
    fresh = _hidden_version(console.page("/exports/nightly/delete"))
    assert console.post("/exports/nightly/delete", {"version": fresh}).status_code == 303


def _a_spare_query(api: InProcessApi) -> None:
    """A saved query nothing uses (it may be deleted)."""
    with api.client() as client:
        assert client.post("/api/v1/saved-queries/gold/copy", json={"name": "spare"}).status_code == 201


def test_a_save_from_a_page_of_an_object_since_deleted_and_created_again_writes_nothing(
    api: InProcessApi, console: Console
):
    """The object created again under the name is at version 1, as the page's was: the page's revision names the
    object too, so the save is refused as stale (before, it overwrote the new object)."""
    _a_spare_query(api)
    version = _hidden_version(console.page("/queries/spare"))
    _recreated_spare(api)
    fields = {"version": version, "sql": GOLD_SQL, "parameters": PARAMETERS, "description": "Alice's description"}
    stale = console.post("/queries/spare", fields)
    assert stale.status_code == 422
    assert "This page shows another query than the one now named 'spare'" in _said(stale.text)
    with api.client() as client:
        assert client.get("/api/v1/saved-queries/spare").json()["description"] == "Bob's new one"


NO_LONGER_EXISTS = "no longer exists (it was deleted or renamed since this page was opened): nothing was deleted"


@pytest.mark.parametrize(
    ("page", "api_path", "said"),
    [
        ("/exports/nightly/delete", "/api/v1/export-definitions/nightly", "The export definition 'nightly'"),
        ("/queries/spare/delete", "/api/v1/saved-queries/spare", "The query 'spare'"),
    ],
)
def test_a_delete_confirmed_from_a_page_of_an_object_deleted_meanwhile_says_so_in_the_page(
    api: InProcessApi, console: Console, page: str, api_path: str, said: str
):
    """Someone else deleted it while the delete was being confirmed: the page says so, without a button (before: a
    bare 404 page for a definition, the confirmation again with "does not exist" for the others)."""
    _a_spare_query(api)
    version = _hidden_version(console.page(page))
    with api.client("editor") as bob:
        assert bob.delete(api_path).status_code == 204
    gone = console.post(page, {"version": version})
    assert gone.status_code == 200, gone.text
    text = unescape(gone.text)
    assert (
        f"{said} no longer exists (it was deleted or renamed since this page was opened): nothing was deleted" in text
    )
    assert "someone else" not in text.lower()  # maybe this very user's earlier submit: nobody is blamed
    assert 'type="submit"' not in text.split("<main", 1)[-1]


@pytest.mark.parametrize(
    ("page", "kind", "name", "said"),
    [
        ("/exports/nightly/delete", ExportDefinition, "nightly", "The export definition 'nightly'"),
        ("/queries/spare/delete", SavedQuery, "spare", "The query 'spare'"),
    ],
)
def test_a_delete_whose_object_goes_between_the_use_cases_check_and_the_write_shows_the_no_longer_exists_page(
    api: InProcessApi, console: Console, monkeypatch: pytest.MonkeyPatch, page: str, kind: Any, name: str, said: str
):
    """Bob deletes it after the delete's check of the page's revision and before its write (the page's revision was
    current at the check): the page says it no longer exists, without a button (before: a bare 404 page for a
    definition, the confirmation again with a Delete button and "was deleted by editor" for the others)."""
    collection = "export-definitions" if kind is ExportDefinition else "saved-queries"
    _a_spare_query(api)
    version = _hidden_version(console.page(page))
    _between_read_and_write(monkeypatch, name, _deleted(kind, name, "editor"))
    gone = console.post(page, {"version": version})
    monkeypatch.undo()
    with api.client() as client:  # Bob's delete was done, in the window
        assert client.get(f"/api/v1/{collection}/{name}").status_code == 404
    assert gone.status_code == 200, gone.text
    text = unescape(gone.text)
    assert f"{said} {NO_LONGER_EXISTS}" in text, text
    assert 'type="submit"' not in text.split("<main", 1)[-1]


#: What a delete's confirmation says of a page of before revisions (its ``version`` names no object).
PAGE_OF_BEFORE_REVISIONS = (
    "This page was opened before the console's pages named the object they show: nothing was deleted."
)
#: What it says of a page of another object than the one now under the name (created again, another's link).
ANOTHER_QUERY = "The page you came from shows another query than the one now named 'spare': nothing was deleted."


#: What a delete's confirmation says of a page older than the definition's last change (the editor's).
CHANGED_NIGHTLY = "The export definition 'nightly' was changed (by editor, "


def _said(html: str) -> str:
    """What a page's main part says, as read: its text without tags (hidden inputs, links), spaces collapsed."""
    main = re.sub(r"<[^>]+>", " ", html.split("<main", 1)[-1])
    return re.sub(r"\s+", " ", unescape(main)).replace(" .", ".").replace(" :", ":")


#: Words of the API's 412 sentences that a console user never sees (a time as the API writes it: ISO, +00:00).
API_WORDS = ("ETag", "If-Match", "revision", "at version", "+00:00", "read it again", "nothing was written")


def _alerts(html: str) -> str:
    """What a form page's alerts say (its stale notice, its summary of problems), as :func:`_said` reads them."""
    main = html.split("<main", 1)[-1]
    found = re.findall(r'<(p|div)\b[^>]*role="alert"[^>]*>(.*?)</\1>', main, flags=re.DOTALL)
    assert found, "the page has no alert"
    return _said("<main>" + " ".join(text for _, text in found))


def _no_api_words(said: str) -> None:
    for api_words in API_WORDS:
        assert api_words not in said, (api_words, said)


def _offers_a_button(html: str) -> bool:
    return 'type="submit"' in html.split("<main", 1)[-1]


OUTDATED = (
    "'{name}': the revision sent (an ETag from before revisions named the object) names no object: nothing was"
    " written; read it again for its ETag and redo the change"
)


def test_a_page_of_before_revisions_posting_a_plain_version_is_refused_saying_so_not_that_someone_changed_it(
    api: InProcessApi, console: Console
):
    """A page rendered before forms carried revisions posts ``version=1`` for an object never changed: refused
    (nothing written), saying the page's version names no object (before: "was deleted and created again since it
    was read", and "Someone else changed this query")."""
    fields = {"version": "1", "sql": GOLD_SQL, "parameters": PARAMETERS, "description": "Alice's description"}
    before = _description(api)
    saved = console.post("/queries/gold", fields)
    assert saved.status_code == 422
    text = _said(saved.text)
    assert "created again" not in text
    assert "Someone else changed" not in text
    assert "This page was opened before the console's forms named" in text
    step = console.post("/exports/nightly/steps/destination", {"version": "1", "template": "upsert"})
    assert step.status_code == 422
    assert "This page was opened before the console's forms named" in _said(step.text)
    for page in (saved.text, step.text):  # in the console's words only (before: the API's sentence too)
        assert OUTDATED.split(": ", 1)[1] not in _said(page)
        _no_api_words(_alerts(page))
    deleted = console.post("/exports/nightly/delete", {"version": "1"})
    assert deleted.status_code == 422
    assert PAGE_OF_BEFORE_REVISIONS in unescape(deleted.text)
    assert "ETag" not in deleted.text
    assert not _offers_a_button(deleted.text)
    assert _description(api) == before
    assert _definition(api)["name"] == "nightly"


def _delete_link(html: str, path: str) -> str:
    """The href of the page's Delete link to ``path`` (``/console/…/delete``, with the page's ``?version=``)."""
    found = re.search(f'href="({re.escape(path)}[^"]*)"', html)
    assert found is not None, f"no link to {path}"
    return unescape(found.group(1))


@pytest.mark.parametrize(
    ("page", "link", "change", "said"),
    [
        ("/queries/spare", "/console/queries/spare/delete", "recreate", ANOTHER_QUERY),
        ("/queries", "/console/queries/spare/delete", "recreate", ANOTHER_QUERY),
        ("/exports/nightly", "/console/exports/nightly/delete", "relabel", CHANGED_NIGHTLY),
        ("/exports", "/console/exports/nightly/delete", "relabel", CHANGED_NIGHTLY),
    ],
)
def test_a_delete_link_of_a_page_older_than_the_object_opens_a_confirmation_that_says_so_without_a_button(
    api: InProcessApi, console: Console, page: str, link: str, change: str, said: str
):
    """A page's Delete link carries the page's revision: opened after the object changed (or was deleted and another
    created under its name), the confirmation says so and offers no Delete (before: it read the fresh revision, so
    the user deleted an object the page never showed, without a word)."""
    _a_spare_query(api)
    href = _delete_link(console.page(page), link)
    assert re.search(f"\\?version={REVISION}$", href), href
    fresh = console.client.get(href)
    assert fresh.status_code == 200
    assert 'type="submit"' in fresh.text.split("<main", 1)[-1]  # the page is current: Delete offered
    if change == "recreate":
        with api.client("editor") as bob:
            spare = bob.get("/api/v1/saved-queries/spare").json()
            assert bob.delete("/api/v1/saved-queries/spare").status_code == 204
            assert bob.post("/api/v1/saved-queries", json=spare | {"description": "Bob's"}).status_code == 201
    else:
        _someone_else_relabels(api, "Bob's label")
    stale = console.client.get(href)
    assert stale.status_code == 422
    text = unescape(stale.text)
    assert said in text, text
    assert 'type="submit"' not in text.split("<main", 1)[-1]
    with api.client() as client:
        assert client.get("/api/v1/saved-queries/spare").status_code == 200
        assert client.get("/api/v1/export-definitions/nightly").status_code == 200


def test_a_delete_link_without_a_revision_confirms_as_before_and_a_plain_version_names_no_object(
    api: InProcessApi, console: Console
):
    """A link without ``?version`` (a bookmark) confirms as before, conditional on the revision it reads; a plain
    version (a page of before revisions) says it names no object, with no button."""
    plain = console.client.get("/console/exports/nightly/delete")
    assert plain.status_code == 200
    assert _hidden_version(plain.text).endswith(".1")
    old = console.client.get("/console/exports/nightly/delete?version=1")
    assert old.status_code == 422
    assert PAGE_OF_BEFORE_REVISIONS in unescape(old.text)
    assert "ETag" not in old.text
    assert 'type="submit"' not in old.text.split("<main", 1)[-1]


# --- review 3: the console's words for an old or foreign revision, no button after a refused delete, the list -----


def _gold_token(api: InProcessApi) -> str:
    with api.client() as client:
        return str(client.get("/api/v1/saved-queries/gold").headers["ETag"]).strip('"')


def test_a_delete_link_whose_version_names_no_object_or_another_object_says_so_in_the_consoles_words(
    api: InProcessApi, console: Console
):
    """A ``?version=`` that is no revision (a page of before revisions, a link mangled) or another object's revision:
    the confirmation speaks of the page, not of ETags (before: "… (an ETag from before revisions named the object)
    … read it again for its ETag …"), and another object's page is not said to be "deleted and created again"
    (nobody deleted anything); no button. A delete posted with another object's revision: the same, no button."""
    gold = _gold_token(api)
    with api.client() as client:
        profile = str(client.get("/api/v1/connection-profiles/partner").headers["ETag"]).strip('"')
    no_revision = ["garbage", "1", gold.upper(), gold.replace(".1", ".01"), "x" * 80]
    for version in no_revision:
        answer = console.client.get(f"/console/queries/gold/delete?version={version}")
        assert answer.status_code == 422, version
        text = unescape(answer.text)
        assert PAGE_OF_BEFORE_REVISIONS in text, (version, text)
        assert "ETag" not in text, version
        assert not _offers_a_button(answer.text), version
    definition = console.client.get("/console/exports/nightly/delete?version=garbage")
    assert definition.status_code == 422
    assert PAGE_OF_BEFORE_REVISIONS in unescape(definition.text)
    foreign = console.client.get(f"/console/queries/gold/delete?version={profile}")
    posted = console.post("/queries/gold/delete", {"version": profile})
    for answer in (foreign, posted):
        assert answer.status_code == 422
        text = unescape(answer.text)
        assert "The page you came from shows another query than the one now named 'gold'" in text, text
        assert "created again" not in text
        assert not _offers_a_button(answer.text)
    assert _gold_token(api) == gold  # nothing deleted


@pytest.mark.parametrize(
    ("page", "what", "change"),
    [
        ("/exports/nightly", "export definition 'nightly'", lambda api: _someone_else_relabels(api, "Bob's label")),
        ("/queries/gold", "query 'gold'", lambda api: _someone_else_saves(api, "Bob's description")),
    ],
)
def test_a_delete_from_a_page_older_than_the_objects_last_change_says_so_in_the_consoles_words_with_a_link(
    api: InProcessApi, console: Console, page: str, what: str, change: Any
):
    """The confirmation of a delete from a page the object changed since (and the refused post) says what changed,
    by whom and when, and links to the object's page to open it again, in the console's words (before: the API's
    sentence, "ExportDefinition 'nightly' was changed since it was read (it is now at version 2, last changed by
    editor at 2026-…+00:00): nothing was written; read it again and redo the change.", words of ETags and
    versions that a console user never sees)."""
    version = _hidden_version(console.page(f"{page}/delete"))
    change(api)
    opened = console.client.get(f"/console{page}/delete?version={version}")
    posted = console.post(f"{page}/delete", {"version": version})
    for answer in (opened, posted):
        assert answer.status_code == 422, answer.text
        main = answer.text.split("<main", 1)[-1]
        said = re.search(
            f"The {re.escape(what)} was changed \\(by editor, (?P<when>[0-9-]{{10}} [0-9:]{{5}} UTC)\\) since the page"
            " you came from was opened: nothing was deleted. "
            f'<a href="/console{re.escape(page)}">Open it again</a> to see what it is now, and delete it from there'
            " if you still mean to.",
            unescape(main),
        )
        assert said is not None, unescape(main)
        for api_words in ("read it again and redo", "nothing was written", "version", "ETag", "If-Match", "+00:00"):
            assert api_words not in unescape(main), api_words
        assert not _offers_a_button(answer.text)


@pytest.mark.parametrize(
    ("who", "why"),
    [
        ("emea-admin", "SavedQuery 'gold' is used by 1 definition(s) outside this token's scope"),
        ("emea-viewer", "role 'viewer' may not write"),  # its role first, as the delete itself (the API's 403)
    ],
)
def test_a_delete_link_of_a_shared_query_the_token_could_never_delete_says_so_naming_no_writer(
    api: InProcessApi, who: str, why: str
):
    """An apac definition uses ``gold``; the editor changes it: the emea tokens may not read that change in the audit
    log (a stale Delete link once said "last changed by editor at …"), and could never delete ``gold`` anyway: the
    confirmation says that, as the API's 403 does, with no button, whatever revision the link carries (before: a
    fresh link offered a Delete that was refused on the click)."""
    with api.client() as admin:
        copy = admin.post("/api/v1/export-definitions/nightly/copy", json={"name": "apac-nightly"})
        assert copy.status_code == 201, copy.text
        moved = admin.put("/api/v1/export-definitions/apac-nightly", json=copy.json() | {"business_unit": "apac"})
        assert moved.status_code == 200, moved.text
    old = _gold_token(api)
    _someone_else_saves(api, "The editor's")
    with signed_in(api, who) as emea:
        stale = emea.client.get(f"/console/queries/gold/delete?version={old}")
        fresh = emea.client.get("/console/queries/gold/delete")
    for page in (stale, fresh):
        assert page.status_code == 403, page.text
        text = unescape(page.text)
        assert f"You may not delete this query: {why}." in text
        assert "editor" not in text
        assert not _offers_a_button(page.text)


def _a_viewer_is_told_no_with_no_button(
    api: InProcessApi, path: str, action: str, what: str, fields: dict[str, str]
) -> None:
    """The viewer opens the confirmation at ``path`` (of ``action``), then posts ``fields`` to it anyway: both times
    403, the use case's own refusal, no button, and a Back link to the object."""
    with signed_in(api, "viewer") as viewer:
        opened = viewer.client.get(f"/console{path}")
        posted = viewer.post(path, fields)
    the_object = f"/console{path.removesuffix('/' + action)}"
    for answer in (opened, posted):
        assert answer.status_code == 403, answer.text
        assert f"You may not {action} this {what}: role 'viewer' may not write." in unescape(answer.text)
        assert not _offers_a_button(answer.text)
        assert f'<a class="button" href="{the_object}">Back</a>' in answer.text


@pytest.mark.parametrize(
    ("path", "what"),
    [  # connection profiles are not here: their pages are the admins' only (the others are refused them all)
        ("/queries/gold/delete", "query"),
        ("/templates/upsert/delete", "HTTP operation"),
        ("/exports/nightly/delete", "export definition"),
    ],
)
def test_a_delete_confirmation_opened_by_a_viewer_says_it_may_not_delete_with_no_button(
    api: InProcessApi, console: Console, path: str, what: str
):
    """A viewer who opens a delete's confirmation (a bookmark, a link passed on: the pages show them no Delete link)
    is told they may not delete it, in the words of the delete's own refusal, with no button (before: a Delete
    button, refused on the click). Posted anyway: the same page, its Back link to the object too (before: to the
    list), nothing deleted. An admin still gets the button."""
    _a_viewer_is_told_no_with_no_button(api, path, "delete", what, {"version": _hidden_version(console.page(path))})
    assert _offers_a_button(console.page(path))  # the admin's confirmation (the object still there): Delete offered


@pytest.mark.parametrize(
    ("path", "what", "api_path"),
    [  # connection profiles are not here: their pages are the admins' only (the others are refused them all)
        ("/queries/gold/copy", "query", "/api/v1/saved-queries"),
        ("/templates/upsert/copy", "HTTP operation", "/api/v1/http-templates"),
        ("/exports/nightly/copy", "export definition", "/api/v1/export-definitions"),
    ],
)
def test_a_copy_confirmation_opened_by_a_viewer_says_it_may_not_copy_with_no_button(
    api: InProcessApi, console: Console, path: str, what: str, api_path: str
):
    """A viewer who opens a copy's confirmation (a bookmark, a link passed on: the pages show them no Copy link) is
    told they may not copy it, in the words of the copy's own refusal, with no button (before: a Copy button, refused
    on the click). Posted anyway: the same page, its Back link to the object, nothing copied. An admin still gets
    the button, and the copy."""

    def names() -> list[str]:
        with api.client() as client:
            listed = client.get(api_path).json()
            return sorted(obj["name"] for obj in (listed["items"] if isinstance(listed, dict) else listed))

    before = names()
    _a_viewer_is_told_no_with_no_button(api, path, "copy", what, {})
    assert names() == before  # nothing copied
    assert _offers_a_button(console.page(path))  # the admin's confirmation: Copy offered
    assert console.post(path, {}).status_code == 303
    assert len(names()) == len(before) + 1


def _recreated_spare(api: InProcessApi) -> None:
    """The editor deletes ``spare`` and creates another query under its name."""
    with api.client("editor") as bob:
        spare = bob.get("/api/v1/saved-queries/spare").json()
        assert bob.delete("/api/v1/saved-queries/spare").status_code == 204
        assert bob.post("/api/v1/saved-queries", json=spare | {"description": "Bob's new one"}).status_code == 201


def _recreated_nightly(api: InProcessApi) -> None:
    """The editor deletes ``nightly`` and creates another definition under its name."""
    with api.client("editor") as bob:
        nightly = bob.get("/api/v1/export-definitions/nightly").json()
        assert bob.delete("/api/v1/export-definitions/nightly").status_code == 204
        assert bob.post("/api/v1/export-definitions", json=nightly | {"label": "Bob's new one"}).status_code == 201


@pytest.mark.parametrize(
    ("form", "post", "what", "name", "fields", "change"),
    [  # the object deleted and another created under its name; another object's form posted under this name
        ("/queries/spare", "/queries/spare", "query", "spare", {"sql": GOLD_SQL, "parameters": PARAMETERS}, "recreate"),
        ("/queries/gold", "/queries/spare", "query", "spare", {"sql": GOLD_SQL, "parameters": PARAMETERS}, "none"),
        ("/exports/nightly", "/exports/nightly/steps/destination", "export definition", "nightly", {}, "recreate"),
        (
            "/exports/nightly",
            "/exports/nightly/general",
            "export definition",
            "nightly",
            {"step": "filter"},
            "recreate",
        ),
    ],
)
def test_a_save_from_a_form_of_another_object_than_the_one_now_under_its_name_says_so_in_the_consoles_words(
    api: InProcessApi, console: Console, form: str, post: str, what: str, name: str, fields: dict[str, str], change: str
):
    """A save whose form is of another object than the one now under the name (deleted and another created under it
    since the form was opened, or another object's form) writes nothing and says what happened in the console's
    words: the one now under the name, last changed by whom and when (the admin may read that change in the audit
    log), and a link to open it again (before: "Someone else changed this query since you opened it" over the API's
    sentence, "SavedQuery 'spare' is not the object of the revision sent: that revision may be another object's, or
    one of an object of this name since deleted (this one is at version 1, last changed by editor at 2026-…+00:00):
    nothing was written; read it again and redo the change")."""
    _a_spare_query(api)
    version = _hidden_version(console.page(form))
    if change == "recreate":
        (_recreated_spare if name == "spare" else _recreated_nightly)(api)
    else:  # the new object, made by the editor: its last change is the editor's
        _recreated_spare(api)
    posted = console.post(post, fields | {"version": version, "description": "Alice's", "label": "Alice's"})
    assert posted.status_code == 422, posted.text
    said = _said(posted.text)
    assert re.search(
        f"This page shows another {what} than the one now named '{name}' \\(last changed by editor, "
        "[0-9-]{10} [0-9:]{5} UTC\\): it was deleted and another created under that name since you opened it, or the "
        f"form was another {what}'s. Nothing was saved, and what you typed is still below. Open it again to see the "
        f"{what} now named '{name}'",
        said,
    ), said
    href = f"/console/exports/{name}?step=" if what == "export definition" else f"/console/queries/{name}"
    assert f'<a href="{href}' in posted.text.split('id="stale"', 1)[1].split("</p>", 1)[0]
    assert "Someone else changed" not in said  # perhaps nobody did: the form may be another object's
    _no_api_words(_alerts(posted.text))
    with api.client() as client:  # nothing saved
        path = "export-definitions" if what == "export definition" else "saved-queries"
        now = client.get(f"/api/v1/{path}/{name}").json()
        assert "Alice's" not in (now.get("description"), now.get("label"))


def test_a_save_from_a_page_older_than_the_objects_last_change_says_who_and_when_only_as_the_audit_log_would(
    api: InProcessApi,
):
    """The editor moves ``nightly`` to apac and back: the emea admin may not read that change in the audit log, so its
    stale save says the definition changed, naming no one; the editor's next change (emea only) is named, with when,
    in the console's words (before: the API's sentence, with versions and an ISO time, under the notice)."""
    with signed_in(api, "emea-admin") as emea:
        version = _hidden_version(emea.page("/exports/nightly"))
        with api.client("editor") as bob:
            body = bob.get("/api/v1/export-definitions/nightly").json()
            assert bob.put("/api/v1/export-definitions/nightly", json=body | {"business_unit": "apac"}).is_success
            assert bob.put("/api/v1/export-definitions/nightly", json=body | {"business_unit": "emea"}).is_success
        hidden = emea.post("/exports/nightly/general", {"version": version, "label": "Emea's", "step": "filter"})
        _someone_else_relabels(api, "Bob's label")
        named = emea.post("/exports/nightly/general", {"version": version, "label": "Emea's", "step": "filter"})
    for answer in (hidden, named):
        assert answer.status_code == 422, answer.text
        _no_api_words(_alerts(answer.text))
    assert "Someone else changed this export definition since you opened it: nothing was saved" in _said(hidden.text)
    assert "editor" not in _said(hidden.text)
    assert re.search(
        "Someone else changed this export definition since you opened it \\(by editor, [0-9-]{10} [0-9:]{5} UTC\\): "
        "nothing was saved, and what you typed is still below. Reload it to see their version",
        _said(named.text),
    ), _said(named.text)
    assert _definition(api)["label"] == "Bob's label"


def test_the_exports_list_shows_a_definition_deleted_between_its_search_and_its_rows_without_failing(
    api: InProcessApi, console: Console, monkeypatch: pytest.MonkeyPatch
):
    """Bob deletes a definition right after the list's search read it: the list is still shown, that row with the
    revision the search read (before: each row read its definition again, and the one gone was a 500)."""
    from shared.catalog.definitions_store import SqlDefinitionsStore

    with api.client() as client:
        assert client.post("/api/v1/export-definitions/nightly/copy", json={"name": "later"}).status_code == 201
    real_list = SqlDefinitionsStore.list_versioned
    done: list[str] = []

    def list_then_bob_deletes(self: SqlDefinitionsStore, kind: Any) -> Any:
        found = real_list(self, kind)
        if kind is ExportDefinition and not done:
            done.append("later")
            _deleted(ExportDefinition, "later", "editor")(self)
        return found

    monkeypatch.setattr(SqlDefinitionsStore, "list_versioned", list_then_bob_deletes)
    listed = console.client.get("/console/exports")
    monkeypatch.undo()
    assert done == ["later"]
    assert listed.status_code == 200, listed.text
    assert _delete_link(listed.text, "/console/exports/nightly/delete").startswith(
        "/console/exports/nightly/delete?version="
    )
    gone = console.client.get(_delete_link(listed.text, "/console/exports/later/delete"))
    assert gone.status_code == 404
