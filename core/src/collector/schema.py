"""JSON Schema of the whole configuration, installed plugins included.

Each component type becomes a ``patternProperties`` entry (``^http(/.+)?$``)
in its section, so editors complete both ids and fields.  Every component's
``$defs`` are renamed with a ``kind.type.`` prefix, so two plugins that both
call a model ``TlsConfig`` cannot collide.
"""

from __future__ import annotations

import re
from typing import Any

from collector.config import CollectorConfig
from collector.plugins import Registry
from collector.specs import SECTION

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"


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
    return schema
