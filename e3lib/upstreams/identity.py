"""A run config's checkpoint made concrete: catalogue name -> path, content checksum pinned.

``pinned_config`` is applied to every run at sweep expansion. For a published checkpoint
on local disk the checksum (sha256 of its ``.index``, or of its ``.npz`` zip directory) is
computed and written into ``upstream.checkpoint_sha256``, or checked against the value the
config pins; a remote URL keeps the pinned value (checked when the checkpoint is read). The
checksum thereby enters the run id and the upstream id: runs from different contents never
share an id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from e3lib.errors import ConfigError
from e3lib.upstreams.catalog import checkpoint_path
from e3lib.upstreams.source import checkpoint_identity, detect_format

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


def pinned_config(cfg: RunConfig, overrides: Mapping[str, str] | None = None) -> RunConfig:
    """``cfg`` with ``upstream.checkpoint`` a path and its checksum pinned (see above)."""
    up = cfg.upstream
    path = checkpoint_path(up.checkpoint, overrides)
    if not path:
        return cfg
    sha = up.checkpoint_sha256
    if "://" not in path and detect_format(path) is not None:
        try:
            found = checkpoint_identity(path)["sha256"]
        except (OSError, ValueError) as err:
            raise ConfigError("upstream.checkpoint", path, f"cannot be read: {err}") from None
        if sha is not None and sha != found:
            raise ConfigError("upstream.checkpoint_sha256", sha, f"{path} has checksum {found}")
        sha = found
    if path == up.checkpoint and sha == up.checkpoint_sha256:
        return cfg
    # Both fields were validated by resolve; a path and a 64-digit checksum keep them valid.
    return replace(cfg, upstream=replace(up, checkpoint=path, checkpoint_sha256=sha))
