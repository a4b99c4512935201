"""Plugin discovery and the typed registry facade.

Everything that talks to pluggy lives here.  The rest of the code asks the
:class:`Registry` for component specs by kind and type name; it never calls
``pm.hook.*`` itself.

Loading rules (docs/plugin-authors.md, docs/operations.md):

* each entry point of the ``collector`` group is imported in its own
  ``try/except``; a failure is recorded, not raised, so ``collector plugins``
  can still list it;
* a broken plugin the configuration does not use is a warning naming its
  distribution and version (``--strict-plugins`` makes it an error);
* a component type declared by two plugins is an error naming both
  distributions;
* a hook implementation whose name matches no hook specification (a misspelt
  ``collector_receiver``) fails its plugin, with the hook named: pluggy would
  otherwise ignore it silently and the plugin's components would just be
  missing (docs/plugin-authors.md);
* ``COLLECTOR_DISABLE_PLUGINS=1`` loads no third-party plugin;
  ``COLLECTOR_PLUGINS=a,b`` loads only those (entry-point or distribution names).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import pluggy

from collector import hookspecs
from collector.errors import ConfigError
from collector.specs import KINDS, ComponentKind, ComponentSpec, FunctionSpec, PresetSpec

log = logging.getLogger("collector.plugins")

ENTRY_POINT_GROUP = "collector"
BUILTIN_NAME = "builtin"
BUILTIN_MODULE = "collector.builtin"

PluginStatus = Literal["loaded", "failed", "disabled"]

_HOOK_BY_KIND: dict[str, str] = {
    "receiver": "collector_receivers",
    "processor": "collector_processors",
    "exporter": "collector_exporters",
    "coordinator": "collector_coordinators",
}


@dataclass
class PluginInfo:
    """What ``collector plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    status: PluginStatus
    error: str | None = None
    components: list[str] = field(default_factory=list)  # "receiver/http", ...
    functions: list[str] = field(default_factory=list)
    presets: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "components": self.components,
            "functions": self.functions,
            "presets": self.presets,
        }


@dataclass(frozen=True)
class PluginSelection:
    """Which third-party plugins to load, from the environment or the CLI."""

    disabled: bool = False
    allow: frozenset[str] | None = None
    strict: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, *, strict: bool = False) -> PluginSelection:
        env = os.environ if environ is None else environ
        disabled = env.get("COLLECTOR_DISABLE_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}
        raw = env.get("COLLECTOR_PLUGINS", "").strip()
        allow = frozenset(p.strip() for p in raw.split(",") if p.strip()) if raw else None
        strict = strict or env.get("COLLECTOR_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}
        return cls(disabled=disabled, allow=allow, strict=strict)

    def permits(self, entry_point: str, distribution: str) -> bool:
        if self.disabled:
            return False
        return self.allow is None or entry_point in self.allow or distribution in self.allow


class Registry:
    """The typed facade over the plugin manager.

    Build one with :func:`load_registry`.  Lookups are plain dictionaries, so
    using the registry costs nothing after start-up.
    """

    def __init__(self, pm: pluggy.PluginManager, plugins: list[PluginInfo]) -> None:
        self._pm = pm
        self.plugins = plugins
        self._components: dict[tuple[str, str], tuple[ComponentSpec, PluginInfo]] = {}
        self._functions: dict[str, tuple[FunctionSpec, PluginInfo]] = {}
        self._presets: dict[str, tuple[PresetSpec, PluginInfo]] = {}
        self.conflicts: list[str] = []

    # -- collection (called once by load_registry) ---------------------------

    def _collect(self) -> None:
        # Only plugins registered with pluggy have hook implementations; an entry
        # point that was disabled (or failed) may share its name with an
        # in-process plugin, so it must not be looked up by that name.
        by_name = {p.name: p for p in self.plugins if p.status == "loaded"}
        for kind in KINDS:
            hook = getattr(self._pm.hook, _HOOK_BY_KIND[kind])
            for impl in hook.get_hookimpls():  # registration order
                info = by_name[impl.plugin_name]
                specs = self._call(info, impl.function)
                for spec in specs:
                    if not isinstance(spec, ComponentSpec) or spec.kind != kind:
                        self._fail(info, f"{_HOOK_BY_KIND[kind]} returned {spec!r}, not a {kind} ComponentSpec")
                        continue
                    self._add_component(spec, info)
        for impl in self._pm.hook.collector_functions.get_hookimpls():
            info = by_name[impl.plugin_name]
            for fspec in self._call(info, impl.function):
                if not isinstance(fspec, FunctionSpec):
                    self._fail(info, f"collector_functions returned {fspec!r}, not a FunctionSpec")
                    continue
                if fspec.name in self._functions:
                    other = self._functions[fspec.name][1]
                    self.conflicts.append(
                        f"mapping function {fspec.name!r} is declared by both {other.label} "
                        f"and {info.label}; uninstall one of them"
                    )
                    continue
                self._functions[fspec.name] = (fspec, info)
                info.functions.append(fspec.name)
        for impl in self._pm.hook.collector_presets.get_hookimpls():
            info = by_name[impl.plugin_name]
            for pspec in self._call(info, impl.function):
                if not isinstance(pspec, PresetSpec):
                    self._fail(info, f"collector_presets returned {pspec!r}, not a PresetSpec")
                    continue
                if pspec.name in self._presets:
                    other = self._presets[pspec.name][1]
                    self.conflicts.append(
                        f"preset {pspec.name!r} is declared by both {other.label} and {info.label}; "
                        "uninstall one of them"
                    )
                    continue
                self._presets[pspec.name] = (pspec, info)
                info.presets.append(pspec.name)

    def _call(self, info: PluginInfo, function: Any) -> list[Any]:
        try:
            result = function()
        except Exception as exc:  # a plugin's bug must not stop discovery
            self._fail(info, f"hook {function.__name__} raised {type(exc).__name__}: {exc}")
            return []
        if result is None:
            return []
        try:
            return list(result)
        except TypeError:
            self._fail(info, f"hook {function.__name__} returned {result!r}, not a list")
            return []

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.status = "failed"
        info.error = message if info.error is None else f"{info.error}; {message}"

    def _add_component(self, spec: ComponentSpec, info: PluginInfo) -> None:
        key = (spec.kind, spec.type)
        if key in self._components:
            other = self._components[key][1]
            self.conflicts.append(
                f"{spec.kind} type {spec.type!r} is declared by both {other.label} "
                f"and {info.label}; uninstall one of them or disable one with COLLECTOR_PLUGINS"
            )
            return
        self._components[key] = (spec, info)
        info.components.append(f"{spec.kind}/{spec.type}")

    # -- queries --------------------------------------------------------------

    def component(self, kind: ComponentKind, type_name: str, *, path: str | None = None) -> ComponentSpec:
        """The spec for ``kind``/``type_name`` or a ConfigError listing what exists."""
        found = self._components.get((kind, type_name))
        if found is not None:
            return found[0]
        installed = ", ".join(sorted(t for k, t in self._components if k == kind)) or "none"
        message = f"unknown {kind} type {type_name!r}; installed {kind} types: {installed}"
        broken = [p.label for p in self.plugins if p.status == "failed"]
        if broken:
            message += f" (plugins that failed to load: {', '.join(broken)}; see `collector plugins`)"
        raise ConfigError(message, path)

    def provider(self, kind: ComponentKind, type_name: str) -> PluginInfo | None:
        found = self._components.get((kind, type_name))
        return found[1] if found else None

    def components(self, kind: ComponentKind | None = None) -> Iterator[ComponentSpec]:
        for (k, _), (spec, _) in sorted(self._components.items()):
            if kind is None or k == kind:
                yield spec

    def functions(self) -> dict[str, FunctionSpec]:
        return {name: spec for name, (spec, _) in sorted(self._functions.items())}

    def presets(self) -> dict[str, PresetSpec]:
        """Presets that plugins declare, by name."""
        return {name: spec for name, (spec, _) in sorted(self._presets.items())}

    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    def check(self, *, strict: bool = False) -> list[str]:
        """Errors that stop start-up: type conflicts, and broken plugins in strict mode."""
        errors = list(self.conflicts)
        if strict:
            errors += [
                f"plugin {p.name!r} ({p.label}) failed to load: {p.error} (--strict-plugins)" for p in self.failed()
            ]
        return errors

    def warn_broken(self) -> None:
        for p in self.failed():
            log.warning(
                "plugin %s (%s) failed to load and is ignored: %s",
                p.name,
                p.label,
                p.error,
                extra={"plugin": p.name, "distribution": p.distribution, "version": p.version},
            )


def _core_version() -> str:
    from collector import __version__

    return __version__


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


def _register(pm: pluggy.PluginManager, info: PluginInfo, plugin: object) -> None:
    """Register one plugin, or mark it failed (and leave it out) if its hooks are wrong.

    Checked one plugin at a time, so that the error names the plugin and the
    other plugins still load.
    """
    try:
        pm.register(plugin, name=info.name)
    except pluggy.PluginValidationError as exc:  # a hook whose arguments do not match its spec
        info.status = "failed"
        info.error = f"invalid hook implementation: {exc}"
        return
    except ValueError as exc:  # the same name or object registered twice
        info.status = "failed"
        info.error = str(exc)
        return
    try:
        # Every plugin registered before this one passed, so what is pending is this one's.
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        unknown = _unknown_hooks(pm, plugin)
        pm.unregister(plugin)
        info.status = "failed"
        info.error = "; ".join(unknown) or str(exc)


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """One message per hook implementation of ``plugin`` that matches no specification."""
    specs = sorted(name for name in vars(pm.hook) if not name.startswith("_") and getattr(pm.hook, name).has_spec())
    out = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.has_spec() or all(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin):
            continue
        message = f"hook {caller.name!r} matches no hook specification"
        close = difflib.get_close_matches(caller.name, specs, n=1)
        out.append(message + (f" (did you mean {close[0]!r}?)" if close else f" (hooks: {', '.join(specs)})"))
    return out


def load_registry(
    selection: PluginSelection | None = None,
    *,
    extra_plugins: Iterable[tuple[str, object]] = (),
) -> Registry:
    """Build the plugin manager, load plugins in isolation and collect their specs.

    ``extra_plugins`` registers in-process plugins (name, module-or-object); the
    testing kit uses it to add its in-memory components.
    """
    selection = selection or PluginSelection.from_env()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins: list[PluginInfo] = []

    # The built-in components are a plugin like any other, found by name the way
    # an entry point names its module: the registry sits below them (they use
    # the runtime; the runtime uses the registry), so it must not import them.
    builtin = importlib.import_module(BUILTIN_MODULE)  # light: declarations only

    core = PluginInfo(BUILTIN_NAME, "collector-core", _core_version(), "loaded")
    plugins.append(core)
    _register(pm, core, builtin)

    for name, obj in extra_plugins:
        info = PluginInfo(name, name, "in-process", "loaded")
        plugins.append(info)
        _register(pm, info, obj)

    seen: set[str] = set()
    for ep in _entry_points():
        if ep.name in seen or ep.name == BUILTIN_NAME:
            continue  # the same distribution can be visible twice on odd sys.paths
        seen.add(ep.name)
        dist = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "unknown"
        info = PluginInfo(ep.name, dist, version, "loaded")
        plugins.append(info)
        if not selection.permits(ep.name, dist):
            info.status = "disabled"
            info.error = (
                "COLLECTOR_DISABLE_PLUGINS is set" if selection.disabled else "not in COLLECTOR_PLUGINS allow-list"
            )
            continue
        try:
            module = ep.load()
        except Exception as exc:  # isolation: one plugin's import error is its own
            info.status = "failed"
            info.error = f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}"
        except SystemExit as exc:  # a plugin calling sys.exit at import must not end us
            info.status = "failed"
            info.error = f"import of {ep.value!r} called sys.exit({exc.code})"
        else:
            _register(pm, info, module)

    registry = Registry(pm, plugins)
    registry._collect()
    return registry
