"""Errors shared by every stage. A leaf module: it imports nothing from e3lib."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An invalid run configuration. ``field`` is the dotted path of the offending value."""

    def __init__(self, field: str, value: Any, rule: str, source: str | None = None):
        self.field, self.value, self.rule, self.source = field, value, rule, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}={value!r}: {rule}")
