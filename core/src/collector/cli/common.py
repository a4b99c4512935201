"""Steps every ``collector`` command shares: plugins, settings, configuration, errors.

Each command module (``main``, ``map``, ``dlq``, ``backfill``) imports these
from here, so no command reaches into another's module.  Heavy imports stay
inside the functions, so that ``collector --help`` loads no plugin
(docs/operations.md, exit codes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector.config import LoadedConfig
    from collector.plugins import Registry

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def err(msg: str) -> None:
    print(msg, file=sys.stderr)


def strict_plugins(args: argparse.Namespace) -> bool:
    """--strict-plugins, or COLLECTOR_STRICT_PLUGINS=1/true/yes/on."""
    from collector.plugins import PluginSelection

    return PluginSelection.from_env(strict=bool(getattr(args, "strict_plugins", False))).strict


def registry_from_args(args: argparse.Namespace) -> Registry:
    """The installed plugins, as the environment and --strict-plugins select them."""
    from collector.plugins import PluginSelection, load_registry

    return load_registry(PluginSelection.from_env(strict=strict_plugins(args)))


def config_text(args: argparse.Namespace, env: Any = None, registry: Registry | None = None) -> tuple[str, str]:
    """(yaml text, description of where it came from).

    The one order every command follows (docs/configuration.md#environment-settings):
    ``-c`` or ``--preset``, else ``COLLECTOR_CONFIG``, else ``COLLECTOR_PRESET``
    (both read through :class:`~collector.config.Settings`, ``env``), else the
    ``default`` preset.
    """
    from collector import presets

    env = settings() if env is None else env
    config: Path | None = getattr(args, "config", None)
    preset: str | None = getattr(args, "preset", None)
    where = "--preset"
    if config is None and preset is None:
        config, preset, where = env.config, env.preset, "COLLECTOR_PRESET"
    if config is not None:
        try:
            return config.read_text(encoding="utf-8"), str(config)
        except OSError as exc:
            from collector.errors import ConfigError

            raise ConfigError(f"cannot read configuration: {exc.strerror}", str(config)) from None
    name = preset or "default"
    plugin_presets = registry.presets() if registry is not None else {}
    try:
        text = presets.load(name, plugin_presets=plugin_presets)
    except KeyError as exc:
        from collector.errors import ConfigError

        raise ConfigError(str(exc.args[0]), where) from None
    if name in plugin_presets and name not in presets.names():
        return text, f"preset {name} (from a plugin)"
    return text, f"preset {name} ({presets.preset_file(name)})"


def settings() -> Any:
    """Top-level settings from COLLECTOR_* variables; a bad value is a ConfigError naming the variable."""
    from pydantic import ValidationError

    from collector.config import ConfigErrors, Settings
    from collector.errors import ConfigError

    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigErrors(
            [
                # No location: a check across variables, whose message names them.
                ConfigError(err["msg"], "COLLECTOR_" + str(err["loc"][0]).upper() if err["loc"] else None)
                for err in exc.errors(include_url=False, include_input=False)
            ]
        ) from None


def load(args: argparse.Namespace, registry: Registry) -> LoadedConfig:
    """The configuration the arguments name, checked against the plugins (raises ConfigError)."""
    from collector.config import load_config

    env = settings()
    text, source = config_text(args, env, registry)
    loaded = load_config(text, registry, source=source, settings=env)
    problems = registry.check(strict=strict_plugins(args))
    if problems:
        from collector.config import ConfigErrors
        from collector.errors import ConfigError

        raise ConfigErrors([ConfigError(p, "plugins") for p in problems])
    return loaded


def load_or_report(args: argparse.Namespace) -> tuple[Registry, LoadedConfig] | None:
    """Plugins and configuration, or None after printing why not (the caller exits 2)."""
    from collector.errors import ConfigError

    registry = registry_from_args(args)
    try:
        return registry, load(args, registry)
    except ConfigError as exc:
        print_config_error(exc)
        return None


def print_config_error(exc: Exception) -> None:
    from collector.config import ConfigErrors

    lines = exc.lines() if isinstance(exc, ConfigErrors) else [str(exc)]
    for line in lines:
        err(f"error: {line}")
