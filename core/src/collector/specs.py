"""What a plugin declares: plain data, no behaviour, cheap to import."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from collector.components import Component, ComponentContext

ComponentKind = Literal["receiver", "processor", "exporter", "coordinator"]
KINDS: tuple[ComponentKind, ...] = ("receiver", "processor", "exporter", "coordinator")
# The top-level YAML section each kind lives in (``service.coordinator`` picks a coordinator).
SECTION: dict[str, str] = {
    "receiver": "receivers",
    "processor": "processors",
    "exporter": "exporters",
    "coordinator": "coordinators",
}

Factory = Callable[["ComponentContext", Any], "Component[Any]"]
# An alias, because inside ComponentSpec the field named ``type`` shadows the builtin.
ModelType = type[BaseModel]


@dataclass(frozen=True)
class ComponentSpec:
    """A component type: its kind, name, config model and factory.

    The factory is called only when a configuration uses the type, so it is
    the place for heavy imports.
    """

    kind: ComponentKind
    type: str
    config_model: ModelType
    factory: Factory
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown component kind {self.kind!r}; expected one of {KINDS}")
        if not self.type or "/" in self.type or not self.type.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid component type name {self.type!r}: use letters, digits, '_' or '-'")


@dataclass(frozen=True)
class FunctionSpec:
    """A function that mapping expressions may call by ``name``."""

    name: str
    func: Callable[..., Any]
    description: str = ""
    examples: tuple[str, ...] = field(default_factory=tuple)
