"""Loading any config: schema <- YAML file <- values given in Python <- ``key=value`` overrides.

Also the pieces every loader shares: ``imports:``, presets, the method settings, value choices. Every error is a
:class:`ConfigError` that names the key or the file and the fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdm_lightning.bounds import check_sizes
from hdm_lightning.config.methods import CONFIG_CHECKS, METHOD_CONFIGS, check_finite, method_config
from hdm_lightning.errors import ConfigError

__all__ = ["choice", "find_preset", "load_layers", "method_settings", "parse_overrides", "run_imports"]


def _config_error(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", None) or getattr(e, "key", None)
    msg = str(e).splitlines()[0]
    if key:
        return ConfigError(f"{where}: bad config key {key!r}: {msg}")
    return ConfigError(f"{where}: {msg}")


def parse_overrides(overrides: list[str]) -> DictConfig:
    """``["a.b=1", "c=[x,y]"]`` -> a DictConfig; a malformed item is a :class:`ConfigError` that shows the form."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or not key or key != key.strip() or " " in key:
            raise ConfigError(
                f"malformed override {item!r}: write key=value with a dotted key, e.g. batch_size=2 or "
                "data.root=/path/to/CUB_200_2011"
            )
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"malformed override in {list(overrides)}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # the YAML value parser
        raise ConfigError(f"malformed override value in {list(overrides)}: {e}") from None


def run_imports(modules: list[str]) -> None:
    """Import the config's ``imports:`` (user plugins registering schedules). This runs their code."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"cannot import {name!r} listed in imports: {e}. Put the module on PYTHONPATH (or install it) and "
                "check the spelling"
            ) from None


def find_preset(preset: str, folder: Path) -> Path:
    """A ``preset:`` path: absolute, or relative to the config file's ``folder``, else to the working directory.

    Raises:
        ConfigError: no such file (the message lists where it looked).
    """
    path = Path(preset)
    candidates = [path] if path.is_absolute() else [folder / path, Path.cwd() / path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(f"preset {preset!r} not found (looked in {[str(p) for p in candidates]})")
    return found


def load_layers(schema: type, path: str | Path | None, overrides: list[str] | None, values=None) -> DictConfig:
    """Schema <- YAML file <- ``values`` (a mapping) <- ``key=value`` overrides; errors name the file or the key."""
    cfg = OmegaConf.structured(schema)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found: pass --config configs/<name>.yaml")
        try:
            layer = OmegaConf.load(path)
        except Exception as e:
            raise ConfigError(f"cannot parse config file {str(path)!r}: {e}") from None
        if not isinstance(layer, DictConfig):
            raise ConfigError(
                f"config file {str(path)!r} must hold a mapping of settings (key: value lines), not a list: remove "
                "the leading '- ' of its top-level items (see configs/tiny.yaml)"
            )
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise _config_error(e, str(path)) from None
    try:
        cfg = OmegaConf.merge(cfg, values or {})
    except OmegaConfBaseException as e:
        raise _config_error(e, "the settings given") from None
    try:
        cfg = OmegaConf.merge(cfg, parse_overrides(list(overrides or [])))
    except OmegaConfBaseException as e:
        raise _config_error(e, "command-line override") from None
    try:
        check_finite(cfg)
        check_sizes(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def choice(value: str, valid: tuple[str, ...], key: str) -> None:
    """Refuse a ``key`` whose ``value`` is not one of ``valid`` (a ConfigError naming them)."""
    if value not in valid:
        raise ConfigError(f"{key} must be one of {list(valid)}, got {value!r}")


def method_settings(
    method: str, preset: str | None, overrides, folder: Path, first: Callable[[DictConfig], None] | None = None
) -> tuple[DictConfig, str | None]:
    """A method's settings as a run or a training config gives them: schema <- ``preset`` <- ``overrides``, checked.

    Args:
        method: a registered method with a structured config (``hdm``, ``dm``, ``mdm``).
        preset: a method preset YAML (``configs/methods/``) relative to ``folder`` (or the working directory);
            ``None``: the method's defaults.
        overrides: the config's ``explainer:`` section (a mapping of overrides).
        folder: the folder of the config file that names the preset.
        first: a check of the merged settings run before the method's own (what a caller needs of them).

    Returns:
        ``(settings, preset)``: the merged, checked settings and the preset's absolute path (``None`` without one).

    Raises:
        ConfigError: an unknown method, a missing or bad preset, an unknown key, or a bad value (the method's
            registered check: schedule, threshold, tau, ...), before any data or model is loaded.
    """
    if method not in METHOD_CONFIGS:
        raise ConfigError(f"unknown method {method!r}: use one of {sorted(METHOD_CONFIGS)}")
    settings, found = method_config(method), None
    if preset is not None:
        found = find_preset(preset, folder).resolve()
        try:
            settings = method_config(method, found)
        except ValueError as e:
            raise ConfigError(f"preset {str(found)!r}: {e}") from None
    overrides = OmegaConf.to_container(overrides) if isinstance(overrides, DictConfig) else dict(overrides or {})
    try:
        schema = OmegaConf.structured(METHOD_CONFIGS[method])
        settings = OmegaConf.merge(schema, OmegaConf.to_container(settings), overrides)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"bad config key 'explainer.{key}': {str(e).splitlines()[0]}") from None
    try:  # schedule name and parameters, thresholds, ...: checked now, before any data or model is loaded
        if first is not None:
            first(settings)
        CONFIG_CHECKS[method](settings)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"explainer settings: {e.args[0] if isinstance(e, KeyError) else e}") from None
    return settings, None if found is None else str(found)
