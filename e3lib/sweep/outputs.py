"""Output directories of the workflow (``results``, ``reports``, ``logs``): usable or refused.

``check_output_dirs`` runs when the Snakefile is parsed, before any job, and writes nothing
(a dry run creates no directory). A directory is refused, naming the config key, the value
and the reason, when it is the filesystem root or a system directory (or inside one), when
it exists but is not a directory, or when it (or, if it does not exist yet, its nearest
existing parent, where it would be created) is not a writable directory, or when it would
be created directly at the root (``/configs``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from e3lib.errors import ConfigError

OUTPUT_KEYS = ("results", "reports", "logs")
# Top-level directories of the filesystem that never hold workflow outputs.
SYSTEM_DIRS = (
    "bin",
    "boot",
    "dev",
    "etc",
    "lib",
    "lib32",
    "lib64",
    "libx32",
    "proc",
    "run",
    "sbin",
    "sys",
    "usr",
    "var",
)


def unusable_reason(path: str) -> str | None:
    """Why ``path`` cannot be an output directory, or None when it can."""
    if not isinstance(path, str) or not path.strip():
        return "must be a non-empty directory path"
    full = os.path.realpath(os.path.abspath(os.path.expanduser(path)))
    parts = [p for p in full.split(os.sep) if p]
    if not parts:
        return "is the filesystem root: the workflow would write /configs, /runs, /sweeps ..."
    if parts[0] in SYSTEM_DIRS:
        return f"is a system directory (/{parts[0]}); choose a directory of your own"
    if os.path.exists(full):
        if not os.path.isdir(full):
            return "exists and is not a directory"
        if not os.access(full, os.W_OK | os.X_OK):
            return "is a directory this user cannot write to"
        return None
    parent = os.path.dirname(full)
    if parent == os.sep:
        return "would be created at the filesystem root; choose a directory of your own"
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable by this user"
    return None


def check_output_dirs(
    config: Mapping[str, Any], keys: tuple[str, ...] = OUTPUT_KEYS, source: str = "--config"
) -> None:
    """A ConfigError naming the first unusable output directory of the workflow config."""
    for key in keys:
        if key not in config:
            continue
        reason = unusable_reason(config[key])
        if reason:
            raise ConfigError(
                key,
                config[key],
                f"{reason} (allowed: a writable directory path, created if missing)",
                source,
            )
