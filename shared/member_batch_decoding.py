"""Decode member-batch records to exactly the :class:`~shared.events.MemberBatch` that
``MemberBatch.model_validate_json`` gives, in about 0.8 times its CPU (the dispatcher's largest cost a batch).

The fast path parses the record with :func:`pydantic_core.from_json`: jiter, the JSON parser that
``model_validate_json`` itself runs, in the same pydantic-core build. The two build Python values separately (the
model its own way, in the same crate), so that they read every JSON text the same is what the unit tests check, not
a given: integers beyond 64 bits, ``NaN``, ``Infinity`` and ``1e400``, float rounding, escapes, duplicate keys, the
nesting limit, whitespace, a BOM, trailing data. The members are kept as parsed: a list of objects whose keys are
JSON strings is what ``list[dict[str, Any]]`` accepts, and its values (``Any``) are the parsed values; only the
list and its items' types are checked, never each value. The header (the model's other fields) is validated by the
model itself, as JSON: those fields written back with ``json.dumps`` (which writes each parsed value as a text
jiter reads back to that value, and refuses ``NaN`` and the infinities, which it cannot write as JSON) with
``"members": []``, so every rule of the contract applies to it. Fields the model does not know are dropped first:
the model ignores them (``extra="ignore"``), so a ``NaN`` in one does not send the record to the model, and a large
one costs its parsing alone (a 500-member one beside 500 members: about 1.2 times the model's CPU, which never makes
Python objects of what it ignores, where writing it back and parsing it again cost 2.6 times).
:func:`fast_path_problems` lists what in the model would make this differ from the model's own decoding (a
validator, a constraint on ``members``, a configuration of strings, an alias...): while it finds anything, the
model decodes every record, and a unit test fails.

Anything else falls back to ``MemberBatch.model_validate_json`` on the record: a value that is not JSON, a
record that is not an object, ``members`` missing, not a list or holding something other than objects, a
header the model refuses (a ``NaN`` or an infinity in one of its fields too), or any error of the fast path. An
invalid record is therefore refused by the model with today's error, and its dead letter keeps today's reason. A
record that falls back costs both decodings: about 1.75 times the model's CPU for a 500-member record with a
header the model refuses. The caller can count them (``on_fallback``; the dispatcher's
``member_export_dispatcher_batch_decode_fallbacks_total``).

orjson (session 33's candidate) parses a 500-member record in 0.27 ms against jiter's 0.39 ms, but reads
integers beyond 64 bits as floats and nests to 1,024 levels where jiter stops at 200. Telling whether a
record has either costs a walk over every value (0.14 ms for 500 members of 8 columns), which takes back
all of orjson's lead; jiter needs none.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pydantic_core
from pydantic import TypeAdapter

from shared.events import MemberBatch

#: The only field decoded without the model (every other field goes through it).
_MEMBERS = "members"
#: The model configuration the fast path is written for: unknown fields ignored (so dropping them first changes
#: nothing), no aliases, nothing that rewrites or limits strings (a member's keys are strings the model would check).
_CONFIG = {"extra": "ignore", "frozen": True}
#: Keys of a core schema that hold no validation: what JSON Schema and serialization use.
_NOT_VALIDATION = frozenset({"metadata", "serialization", "ref", "cls"})


def fast_path_problems(model: type[MemberBatch]) -> list[str]:
    """What in ``model`` the fast path would skip or get wrong: nothing for the contract it is written for.

    The fast path trusts ``members``' type alone and validates the header's fields only, with ``"members": []``.
    That gives the model's own batch only while nothing of the model looks at a member (a constraint or validator
    of ``members``, a configuration of strings, which a member's keys are), at ``members`` beside the other fields
    (a validator of the model or of any field, ``model_post_init``, an ``__init__`` of its own), or at the fields
    the fast path drops (unknown ones kept by the configuration, an alias)."""
    problems = []
    schema: dict[str, Any] = dict(model.__pydantic_core_schema__)
    if schema.get("type") != "model" or schema.get("cls") is not model:
        problems.append(f"the core schema is a {schema.get('type')!r} schema, not the model's own")
    if schema.get("custom_init") or schema.get("post_init") or model.__pydantic_post_init__ is not None:
        problems.append("the model has an __init__ or a model_post_init of its own")
    if dict(model.model_config) != _CONFIG:
        problems.append(f"the model's configuration is {dict(model.model_config)}, not {_CONFIG}")
    members = model.model_fields.get(_MEMBERS)
    fields = schema.get("schema", {}).get("fields", {})
    expected = TypeAdapter(list[dict[str, Any]]).core_schema
    if members is None or members.metadata or fields.get(_MEMBERS, {}).get("schema") != expected:
        problems.append(f"{_MEMBERS!r} is validated as more than list[dict[str, Any]]")
    if any(field.alias or field.validation_alias for field in model.model_fields.values()):
        problems.append("a field has an alias")
    decorators = model.__pydantic_decorators__
    if decorators.validators or decorators.field_validators or decorators.root_validators:
        problems.append("a field has a validator")
    if decorators.model_validators:
        problems.append("the model has a validator")
    code = _functions_in(schema)
    if code:
        problems.append(f"validation calls functions: {', '.join(sorted(code))}")
    return problems


def _functions_in(schema: object) -> set[str]:
    """The functions a core schema calls while it validates (validators, default factories, ``_missing_`` of an
    enum): any of them may read ``members`` or the other fields, which the fast path validates apart."""
    if isinstance(schema, dict):
        return {f for key, value in schema.items() if key not in _NOT_VALIDATION for f in _functions_in(value)}
    if isinstance(schema, list | tuple):
        return {f for value in schema for f in _functions_in(value)}
    if callable(schema) and not isinstance(schema, type):
        return {getattr(schema, "__qualname__", repr(schema))}
    return set()


#: The fast path is taken only for the contract it is written for; a contract it does not know is decoded by the
#: model alone (a unit test fails first, and every record counts as a fallback).
_FAST = not fast_path_problems(MemberBatch)
#: The fields the model reads besides ``members``: a record's other fields are ignored by the model
#: (``extra="ignore"``), so the fast path drops them rather than write them back for the model to parse again.
_HEADER_FIELDS = tuple(name for name in MemberBatch.model_fields if name != _MEMBERS)


def decode_member_batch(value: bytes, on_fallback: Callable[[], object] | None = None) -> MemberBatch:
    """The record's :class:`MemberBatch`, exactly as ``MemberBatch.model_validate_json(value)`` gives it (the
    same field values and types, member key order, ``model_fields_set``); raises what that raises.

    ``on_fallback`` is called (without arguments) before the model decodes a record the fast path did not: an
    invalid record, or a valid one that costs both decodings."""
    try:
        batch = _decoded_fast(value) if _FAST else None
    except Exception:  # noqa: BLE001 - the fast path never decides a refusal: the model does, just below
        batch = None
    if batch is not None:
        return batch
    if on_fallback is not None:
        on_fallback()
    return _decoded_by_the_model(value)


def _decoded_by_the_model(value: bytes) -> MemberBatch:
    """The model's own decoding: the fallback, and the reference the fast path equals."""
    return MemberBatch.model_validate_json(value)


def _decoded_fast(value: bytes) -> MemberBatch | None:
    """The record's batch without validating each member value, or ``None`` where the model must decide."""
    # Only keys are cached: a record's members repeat their column names, rarely their values.
    document = pydantic_core.from_json(value, cache_strings="keys")
    if type(document) is not dict:
        return None
    members = document.get(_MEMBERS)
    # A JSON object's keys are strings, so a list of dicts is a valid list[dict[str, Any]] as it stands.
    if type(members) is not list or not set(map(type, members)) <= {dict}:
        return None
    header: dict[str, Any] = {name: document[name] for name in _HEADER_FIELDS if name in document}
    header[_MEMBERS] = []
    # The header goes through the model as JSON, as in the record: JSON's lax rules, not Python's.
    validated = MemberBatch.model_validate_json(json.dumps(header, allow_nan=False))
    return validated.model_copy(update={_MEMBERS: members})
