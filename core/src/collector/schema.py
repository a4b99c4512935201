"""JSON Schema of the whole configuration, installed plugins included.

Each component type becomes a ``patternProperties`` entry (``^http(/.+)?$``)
in its section, so editors complete both ids and fields.  Every component's
``$defs`` are renamed with a ``kind.type.`` prefix, so two plugins that both
call a model ``TlsConfig`` cannot collide.

The schema describes the file as written, before ``${VAR}`` substitution
(docs/configuration.md#environment-variables): every number, boolean and
choice also accepts a string holding a ``${...}`` reference, so
``max_events: "${BATCH_SIZE:-100}"`` validates in an editor as it does on load.
Durations and sizes accept their string forms through their own types
(:mod:`collector.durations`).
"""

from __future__ import annotations

import re
from typing import Any

from collector.config import CollectorConfig
from collector.durations import SUBSTITUTION_PATTERN
from collector.plugins import Registry
from collector.specs import SECTION

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"

# Where a JSON Schema keeps subschemas: maps of them, lists of them, single ones.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_ONES = ("items", "additionalProperties", "not", "contains", "if", "then", "else", "propertyNames")
# Annotations stay on the outer node when a node is wrapped, so editors still show them.
_ANNOTATIONS = ("title", "description", "default", "examples", "deprecated")
# pydantic writes a constraint it cannot push into a wrapped type under its Python name.
_LEFTOVER_CONSTRAINTS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
_SUBSTITUTED = {"type": "string", "pattern": SUBSTITUTION_PATTERN}


def allow_substitution(node: Any) -> Any:
    """The schema with every number, boolean and choice also accepting a ``${...}`` string."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: allow_substitution(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [allow_substitution(sub) for sub in out[key]]
    for key in _SCHEMA_ONES:
        if isinstance(out.get(key), dict):
            out[key] = allow_substitution(out[key])
    if "type" in out:
        for python_name, json_name in _LEFTOVER_CONSTRAINTS.items():
            if isinstance(out.get(python_name), int | float):
                out[json_name] = out.pop(python_name)
    scalar = out.get("type") in ("integer", "number", "boolean")
    if not (scalar or isinstance(out.get("enum"), list) or "const" in out):
        return out
    annotations = {key: out.pop(key) for key in _ANNOTATIONS if key in out}
    return {**annotations, "anyOf": [out, _SUBSTITUTED]}


def _component_schema(model: Any, prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=f"#/$defs/{prefix}{{model}}")
    for name, sub in schema.pop("$defs", {}).items():
        defs[prefix + name] = sub
    return schema


def config_schema(registry: Registry) -> dict[str, Any]:
    schema = CollectorConfig.model_json_schema()
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    for kind, section in SECTION.items():
        patterns: dict[str, Any] = {}
        for spec in registry.components(kind):  # type: ignore[arg-type]
            sub = _component_schema(spec.config_model, f"{kind}.{spec.type}.", defs)
            sub["description"] = spec.description or sub.get("description", "")
            patterns[f"^{re.escape(spec.type)}(/[A-Za-z0-9_.-]+)?$"] = {"anyOf": [sub, {"type": "null"}]}
        schema["properties"][section] = {
            "type": "object",
            "description": schema["properties"][section].get("description", ""),
            "patternProperties": patterns,
            "additionalProperties": False,
        }
    schema["$schema"] = SCHEMA_DRAFT
    schema["title"] = "Collector configuration"
    return allow_substitution(schema)
