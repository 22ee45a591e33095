import pytest

from shared.cli.manifests import ManifestError, parse_documents
from shared.domain.catalog_objects import ConnectionProfile, ExportDefinition

GOOD = """
kind: ExportDefinition
name: nightly-gold
spec:
  query: gold
  template: partner-upsert
---
kind: ConnectionProfile
spec:
  name: partner
  base_url: https://partner.example.com
"""


def test_documents_become_catalog_objects():
    objects = parse_documents(GOOD, "exports.yaml")
    assert isinstance(objects[0], ExportDefinition)
    assert isinstance(objects[1], ConnectionProfile)
    assert objects[0].name == "nightly-gold"


def test_a_bad_field_names_the_file_the_object_and_the_field():
    text = GOOD + "---\nkind: ExportDefinition\nname: broken\nspec:\n  query: q\n  template: t\n  priority: urgent\n"
    with pytest.raises(ManifestError) as error:
        parse_documents(text, "exports.yaml")
    assert error.value.problems == [
        "exports.yaml: document 3 (ExportDefinition 'broken'): field 'priority': "
        "Input should be 'high', 'normal' or 'low'"
    ]


def test_every_problem_is_reported_not_only_the_first():
    text = "kind: Nope\nname: a\n---\nkind: SavedQuery\nname: q\nspec: {sql: 'delete from x', colour: red}\n"
    with pytest.raises(ManifestError) as error:
        parse_documents(text, "m.yaml")
    problems = error.value.problems
    assert problems[0].startswith("m.yaml: document 1 (Nope 'a'): kind must be one of")
    assert any("field 'sql'" in p for p in problems)
    assert any("field 'colour': Extra inputs are not permitted" in p for p in problems)


def test_yaml_syntax_errors_name_the_file():
    with pytest.raises(ManifestError, match=r"^broken.yaml: not valid YAML"):
        parse_documents("kind: [unclosed", "broken.yaml")


def test_nested_fields_are_named_by_their_path():
    text = (
        "kind: ExportDefinition\nname: d\nspec:\n  query: q\n  template: t\n"
        "  notifications:\n    error:\n      enabled: true\n"
    )
    with pytest.raises(ManifestError, match=r"field 'notifications.error': .*at least one recipient"):
        parse_documents(text, "m.yaml")


@pytest.mark.parametrize("spec", ["[a, b]", "5", "'text'"])
def test_a_spec_that_is_no_mapping_is_refused_naming_the_document(spec: str):
    """Before: exportctl apply crashed (exit 1, ValueError or TypeError) on ``spec: [a, b]`` or ``spec: 5``."""
    with pytest.raises(ManifestError) as error:
        parse_documents(f"kind: SavedQuery\nname: q\nspec: {spec}\n", "m.yaml")
    assert error.value.problems == ["m.yaml: document 1: 'spec' must be a mapping of the object's fields"]
