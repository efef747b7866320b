"""The error every entry point turns into one ``error:`` line (exit status 2): a config that cannot be used."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config file, key, value or override that cannot be used; the message names it and the fix."""
