"""What a plugin declares: plain data, no behaviour, cheap to import.

Part of the public plugin API (:mod:`collector.api`).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from collector.components import Component, ComponentContext

__all__ = [
    "KINDS",
    "SECTION",
    "ComponentID",
    "ComponentKind",
    "ComponentSpec",
    "Factory",
    "FunctionSpec",
]

ComponentKind = Literal["receiver", "processor", "exporter", "coordinator"]
KINDS: tuple[ComponentKind, ...] = ("receiver", "processor", "exporter", "coordinator")
# The top-level YAML section each kind lives in (``service.coordinator`` picks a coordinator).
SECTION: dict[str, str] = {
    "receiver": "receivers",
    "processor": "processors",
    "exporter": "exporters",
    "coordinator": "coordinators",
}

_TYPE = re.compile(r"^[a-z][a-z0-9_-]*$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, order=True)
class ComponentID:
    """A component's id as written in the configuration: ``type`` or ``type/name``.

    ``ComponentID.parse("openmeter/eu")`` -> ``type="openmeter"``, ``name="eu"``;
    ``str()`` gives the written form back.  Use it instead of splitting strings.
    """

    type: str
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> ComponentID:
        """Parse ``type`` or ``type/name``; ValueError says what a valid id looks like."""
        type_, sep, name = text.partition("/")
        if not _TYPE.match(type_) or (sep and not _NAME.match(name)):
            raise ValueError(
                f"{text!r} is not a component id: write `type` or `type/name` (a lower-case type such as "
                "`openmeter`, then optionally `/` and a name of letters, digits, '_', '.' or '-')"
            )
        return cls(type_, name if sep else None)

    def __str__(self) -> str:
        return self.type if self.name is None else f"{self.type}/{self.name}"


ConfigT = TypeVar("ConfigT", bound=BaseModel)

#: Builds a component from its context and validated config.
Factory = Callable[["ComponentContext", ConfigT], "Component[ConfigT]"]


@dataclass(frozen=True)
class ComponentSpec(Generic[ConfigT]):
    """A component type: its kind, name, config model and factory.

    The factory is called only when a configuration uses the type, so it is
    the place for heavy imports.  ``ComponentSpec[MyConfig]`` ties the model to
    the factory, so a type checker sees that the factory receives ``MyConfig``.
    """

    kind: ComponentKind
    type: str
    config_model: builtins.type[ConfigT]  # builtins: the field `type` above shadows the name
    factory: Callable[[ComponentContext, ConfigT], Component[ConfigT]]
    description: str = ""
    #: True when an instance may run in each of several worker processes at once
    #: (``service.workers`` > 1, docs/operations.md "Worker processes"): a push
    #: receiver whose listening socket the workers share, a processor that keeps
    #: no state another process would need, an exporter whose writes cannot
    #: collide.  A receiver that is not worker-safe (a pull receiver) runs once,
    #: in the primary process; a processor or exporter that is not worker-safe
    #: is refused in a pipeline that a worker-safe receiver feeds.
    worker_safe: bool = False
    #: For a worker-safe type, what in one instance's configuration makes it unsafe after all:
    #: called with the validated config, it returns why that instance must run in one process, or
    #: None.  Such a receiver runs once, in the primary process (as a pull receiver does); such a
    #: processor or exporter is refused where workers run its pipeline.  The otlp receiver uses it:
    #: its cumulative-to-delta state belongs to one process.
    single_process: Callable[[ConfigT], str | None] | None = None

    def single_process_reason(self, config: ConfigT) -> str | None:
        """Why an instance configured with ``config`` must run in one process; None when every worker may run it."""
        if not self.worker_safe:
            return "it keeps state that one process must own"
        return self.single_process(config) if self.single_process is not None else None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown component kind {self.kind!r}; expected one of {KINDS}")
        if not self.type or "/" in self.type or not self.type.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid component type name {self.type!r}: use letters, digits, '_' or '-'")


@dataclass(frozen=True)
class PresetSpec:
    """A named, ready configuration a plugin ships (``collector run --preset NAME``).

    ``text`` is YAML; ``${VAR}`` and ``${VAR:-default}`` are read from the
    environment when it is loaded, like any configuration file.
    """

    name: str
    text: str
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"invalid preset name {self.name!r}: use letters, digits, '-' or '_'")


@dataclass(frozen=True)
class FunctionSpec:
    """A function that mapping expressions may call by ``name``."""

    name: str
    func: Callable[..., Any]
    description: str = ""
    examples: tuple[str, ...] = field(default_factory=tuple)
