import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from shared.domain.catalog_objects import (
    ConnectionProfile,
    ExportDefinition,
    HttpTemplate,
    Notification,
    SavedQuery,
    missing_references,
    names_object,
    references,
    stored_form,
)
from shared.domain.names import slugify
from shared.domain.schedule import Schedule
from shared.domain.secret_references import UnresolvableSecret, resolve_secret


@pytest.mark.parametrize(
    ("label", "slug"),
    [
        ("Gold members, active 90 days", "gold-members-active-90-days"),
        ("Élite  Clients!", "elite-clients"),
        ("---", "unnamed"),
    ],
)
def test_internal_names_derive_from_labels(label, slug):
    assert slugify(label) == slug


def test_names_must_be_slugs():
    with pytest.raises(ValidationError, match="name"):
        SavedQuery(name="Not A Slug", sql="select 1")


@pytest.mark.parametrize("sql", ["delete from members", "select 1; drop table members", "update x set y=1"])
def test_saved_queries_must_be_one_select(sql):
    with pytest.raises(ValidationError, match="sql"):
        SavedQuery(name="q", sql=sql)


def test_a_saved_query_keeps_a_trailing_semicolon_out():
    assert SavedQuery(name="q", sql="SELECT * FROM members;").sql == "SELECT * FROM members"


def test_key_column_must_be_a_plain_identifier():
    with pytest.raises(ValidationError, match="key_column"):
        SavedQuery(name="q", sql="select 1", key_column="id; drop")


def test_schedule_validates_cron_and_zone():
    with pytest.raises(ValidationError, match="not a valid CRON"):
        Schedule.model_validate({"cron": "61 * * * *"})
    with pytest.raises(ValidationError, match="IANA"):
        Schedule.model_validate({"cron": "0 2 * * *", "timezone": "Mars/Olympus"})
    with pytest.raises(ValidationError, match="needs 'once' or 'repeat'"):
        Schedule(enabled=True)


def test_an_enabled_notification_needs_recipients_with_valid_addresses():
    with pytest.raises(ValidationError, match="at least one recipient"):
        Notification(enabled=True)
    with pytest.raises(ValidationError, match="recipients"):
        Notification(enabled=True, recipients=["not-an-address"])


def test_template_path_must_be_relative_to_the_profile():
    with pytest.raises(ValidationError, match="path"):
        HttpTemplate(name="t", query="q", profile="p", path="https://elsewhere.example.com/")


def test_stored_form_keeps_secrets_but_repr_hides_them():
    profile = ConnectionProfile(
        name="p", base_url="https://api.example.com", auth={"type": "bearer", "token": "s3cr3t-value"}
    )
    assert "s3cr3t-value" not in repr(profile)
    assert stored_form(profile)["auth"]["token"] == "s3cr3t-value"
    assert ConnectionProfile.model_validate(stored_form(profile)) == profile


def test_references_name_the_objects_a_definition_needs():
    definition = ExportDefinition(name="d", query="q", template="t")
    assert [(kind.__name__, name) for kind, name, _ in references(definition)] == [
        ("SavedQuery", "q"),
        ("HttpTemplate", "t"),
    ]


def test_secret_references_resolve_from_env_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("PARTNER_TOKEN", "from-env")
    monkeypatch.setenv("EXPORT_ALLOWED_SECRET_DIRS", str(tmp_path))  # files only from allowed directories
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file\n")
    assert resolve_secret(SecretStr("env:PARTNER_TOKEN")) == "from-env"
    assert resolve_secret(SecretStr(f"file:{secret_file}")) == "from-file"
    assert resolve_secret(SecretStr("literal")) == "literal"


def test_an_unresolvable_reference_names_the_reference_not_a_value(monkeypatch):
    monkeypatch.delenv("MISSING_TOKEN", raising=False)
    with pytest.raises(UnresolvableSecret, match="env:MISSING_TOKEN"):
        resolve_secret(SecretStr("env:MISSING_TOKEN"))


NAMES = st.sampled_from(["a", "b", "c"])


@given(query=NAMES, template=NAMES, existing=st.sets(st.tuples(st.sampled_from(["SavedQuery", "HttpTemplate"]), NAMES)))
def test_a_definition_is_refused_for_each_object_it_names_that_does_not_exist_and_names_exactly_those(
    query: str, template: str, existing: set[tuple[str, str]]
):
    """One rule for the check before a write and the store's in its transaction: a line per missing reference,
    in the order of the definition's fields; and ``names_object`` is true of exactly what ``references`` lists."""
    definition = ExportDefinition(name="d", query=query, template=template)

    lines = missing_references(definition, lambda kind, name: (kind.__name__, name) in existing)

    expected = [
        f"ExportDefinition 'd': field '{field}': {kind} '{name}' does not exist"
        for kind, name, field in [("SavedQuery", query, "query"), ("HttpTemplate", template, "template")]
        if (kind, name) not in existing
    ]
    assert lines == expected
    for kind in ("SavedQuery", "HttpTemplate", "ConnectionProfile", "ExportDefinition"):
        for name in ("a", "b", "c"):
            named = (kind, name) in {("SavedQuery", query), ("HttpTemplate", template)}
            assert names_object(definition, kind, name) is named
