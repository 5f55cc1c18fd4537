"""The fine-tune stage's hook: which checkpoint a run starts from, and loading it.

A run reads the checkpoint named by ``upstream.checkpoint`` directly when no upstream stage
output is given (the workflow schedules no upstream job then), or when the upstream stage
registered a published checkpoint. Published formats go through ``adapt.adapt_published``;
Orbax directories through ``models.convert``. Both convert with the same rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e3lib.errors import ConfigError
from e3lib.upstreams.adapt import AdaptationError, adapt_published
from e3lib.upstreams.catalog import checkpoint_path
from e3lib.upstreams.source import is_published, open_published

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


def upstream_checkpoint(cfg: RunConfig, upstream_dir: str | None) -> str | None:
    """The checkpoint path to load for this run, or None (use the upstream stage's params).

    With an upstream dir: its ``params_path`` when that is a published checkpoint. Without
    one: ``upstream.checkpoint`` (published or Orbax; a catalogue name is its URL), if set.
    """
    if upstream_dir is not None:
        done = Path(upstream_dir) / "done.json"
        if done.is_file():
            path = json.loads(done.read_text()).get("params_path")
            if path and is_published(path):
                return path
        return None
    return checkpoint_path(cfg.upstream.checkpoint) or None


def open_checked(path: str, cfg: RunConfig):
    """The published checkpoint at ``path``, its checksum checked against the config's."""
    try:
        ckpt = open_published(path)
    except (OSError, ValueError) as err:
        raise ConfigError("upstream.checkpoint", path, f"cannot be read: {err}") from None
    want = cfg.upstream.checkpoint_sha256
    if want is not None and want != ckpt.sha256:
        raise ConfigError("upstream.checkpoint_sha256", want, f"{path} has checksum {ckpt.sha256}")
    return ckpt


def load_checkpoint_for_run(
    path: str,
    fresh_params: Mapping,
    cfg: RunConfig,
    place: Callable[[str, Any], Any] | None = None,
    put: Callable[[str, Any], Any] | None = None,
) -> dict:
    """The run's parameters from checkpoint ``path`` (head and other ``upstream.fresh``
    leaves from ``fresh_params``). Raises ``ConfigError`` naming the leaves that do not fit.
    ``place`` is handed each published leaf as it is read, ``put`` each converted leaf
    (path in the run's tree) as soon as it is ready (``adapt_published``)."""
    if not is_published(path):
        from e3lib.models.convert import ConversionError, convert_for_config, restore_params

        if not Path(path).exists():
            raise ConfigError("upstream.checkpoint", path, "path does not exist")
        try:
            return convert_for_config(restore_params(path), fresh_params, cfg, put=put)
        except ConversionError as err:
            raise ConfigError("upstream.checkpoint", path, str(err)) from None
    try:
        return adapt_published(open_checked(path, cfg), fresh_params, cfg, place, put)
    except AdaptationError as err:
        raise ConfigError("upstream.checkpoint", path, str(err)) from None
