"""The ``attributes`` processor: set, rename and delete fields without writing a mapping.

Fields are dotted paths into the record (``subject``, ``data.region``); each
part is an object key (keys that contain dots cannot be addressed).  The
actions run in one fixed order, whatever order the configuration lists them
in: ``rename``, then ``delete``, then ``set``, then ``from_env``.

Records are never changed in place (a receiver feeding two pipelines shares
them): the processor copies a record, and the nested objects it writes into.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collector.builtin.processors.common import Failures, ProcessorConfig, RecordProcessor
from collector.components import Batch, Meta
from collector.errors import ConfigError

FieldPath = tuple[str, ...]


def split_path(path: str) -> FieldPath:
    """``"data.region"`` -> ``("data", "region")``; ValueError for an empty part."""
    parts = tuple(path.split("."))
    if not path or any(not p for p in parts):
        raise ValueError(f"{path!r} is not a field path: write object keys separated by dots, e.g. data.region")
    return parts


class EnvValue(BaseModel):
    """An environment variable, with a default for when it is not set."""

    model_config = ConfigDict(extra="forbid")

    variable: str = Field(min_length=1, description="The environment variable's name.")
    default: str | None = Field(
        None, description="The value when the variable is not set; without it, a missing variable stops the start."
    )


class AttributesConfig(ProcessorConfig):
    """Set, rename and delete fields (dotted paths such as `data.region`).

    Actions run in this fixed order: `rename`, `delete`, `set`, `from_env`.
    Setting a path creates the objects on the way (`data` is created when it is
    missing or null); a path through something that is not an object (say
    `data` is a string) fails that record, and `on_error` applies.
    """

    rename: dict[str, str] = Field(
        default_factory=dict,
        description="From path -> to path. The value moves (replacing what is at the target); "
        "nothing happens when the source is missing.",
    )
    delete: list[str] = Field(default_factory=list, description="Paths to remove; missing ones are ignored.")
    set: dict[str, Any] = Field(
        default_factory=dict, description="Path -> literal value (any YAML value), replacing what is there."
    )
    from_env: dict[str, str | EnvValue] = Field(
        default_factory=dict,
        description="Path -> environment variable: either its name, or {variable: NAME, default: VALUE}. "
        "Read once at start; the value is a string. A variable that is not set and has no default is a "
        "configuration error at start.",
    )

    @field_validator("rename", "set", "from_env")
    @classmethod
    def _paths_as_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            split_path(key)
        return value

    @field_validator("rename")
    @classmethod
    def _rename_targets(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for source, target in value.items():
            split_path(target)
            if target == source:
                raise ValueError(f"renaming {source!r} to itself")
            if target in seen:
                raise ValueError(f"two fields are renamed to {target!r}")
            seen.add(target)
        return value

    @field_validator("delete")
    @classmethod
    def _delete_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            split_path(path)
        return value

    @model_validator(mode="after")
    def _one_value_per_path(self) -> AttributesConfig:
        both = sorted(set(self.set) & set(self.from_env))
        if both:
            raise ValueError(f"{', '.join(both)}: a path is either in set or in from_env, not both")
        if not (self.rename or self.delete or self.set or self.from_env):
            raise ValueError("nothing to do: configure at least one of rename, delete, set, from_env")
        return self


class _NotAnObject(Exception):
    """Writing ``target`` needs an object at ``where``, which holds ``value``."""

    def __init__(self, target: str, where: str, value: Any) -> None:
        super().__init__(target)
        self.target = target
        self.where = where
        self.value = value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


class _Editor:
    """A shallow copy of one record whose nested objects are copied before their first change."""

    __slots__ = ("copied", "root")

    def __init__(self, record: dict[str, Any]) -> None:
        self.root = dict(record)
        self.copied = {id(self.root)}

    def _find(self, parts: FieldPath) -> dict[str, Any] | None:
        """The object holding ``parts[-1]``, without changing anything; None if there is none."""
        node: Any = self.root
        for part in parts[:-1]:
            node = node.get(part)
            if not isinstance(node, dict):
                return None
        return node

    def _writable(self, parts: FieldPath, create: bool) -> dict[str, Any]:
        node = self.root
        for n, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, dict):
                if id(child) not in self.copied:
                    child = dict(child)
                    node[part] = child
                    self.copied.add(id(child))
            elif child is None and create:
                child = {}
                node[part] = child
                self.copied.add(id(child))
            else:
                raise _NotAnObject(".".join(parts), ".".join(parts[: n + 1]), child)
            node = child
        return node

    def pop(self, parts: FieldPath) -> tuple[bool, Any]:
        found = self._find(parts)
        if found is None or parts[-1] not in found:
            return False, None
        return True, self._writable(parts, create=False).pop(parts[-1])

    def put(self, parts: FieldPath, value: Any) -> None:
        self._writable(parts, create=True)[parts[-1]] = value


class AttributesProcessor(RecordProcessor):
    def __init__(self, ctx: Any, config: AttributesConfig) -> None:
        super().__init__(ctx, config)
        self.renames = [(split_path(a), split_path(b)) for a, b in config.rename.items()]
        self.deletes = [split_path(p) for p in config.delete]
        self.sets = [(split_path(p), v) for p, v in config.set.items()]
        self.env: list[tuple[FieldPath, str]] = []

    async def _start(self) -> None:
        # Read once: a variable changed later does not change what records get (restart to pick it up).
        env: list[tuple[FieldPath, str]] = []
        for path, source in self.config.from_env.items():
            name, default = (source, None) if isinstance(source, str) else (source.variable, source.default)
            value = os.environ.get(name, default)
            if value is None:
                raise ConfigError(
                    f"environment variable {name} is not set; set it, or give a default "
                    f"({{variable: {name}, default: ...}})",
                    f"processors.{self.id}.from_env.{path}",
                )
            env.append((split_path(path), value))
        self.env = env

    async def process_batch(self, batch: Batch, meta: Meta) -> Batch:
        out: list[Any] = []
        origins: list[int | None] = []
        failures = Failures()
        for i, record in enumerate(batch.events):
            if not isinstance(record, dict):
                failures.add(i, record, f"attributes {self.id}: the record is {_json_type(record)}, not an object")
                continue
            try:
                out.append(self._apply(record))
            except _NotAnObject as exc:
                failures.add(
                    i, record, f"attributes {self.id}: cannot write {exc.target}: {exc.where} is "
                    f"{_json_type(exc.value)}, not an object", exc.target,
                )  # fmt: skip
                continue
            origins.append(batch.origins[i])
        await self.settle(failures)
        return Batch(out, origins)

    def _apply(self, record: dict[str, Any]) -> dict[str, Any]:
        edit = _Editor(record)
        for source, dest in self.renames:
            found, value = edit.pop(source)
            if found:
                edit.put(dest, value)
        for parts in self.deletes:
            edit.pop(parts)
        for parts, value in self.sets:
            # A literal object or list is copied, so that no two records share it.
            edit.put(parts, copy.deepcopy(value) if isinstance(value, dict | list) else value)
        for parts, text in self.env:
            edit.put(parts, text)
        return edit.root
