"""Orbax checkpoints of training state, and atomic file writes.

A training checkpoint is one PyTree ``{"params", "opt_state", "step", "rng"}`` saved by an
``orbax.checkpoint.CheckpointManager`` under ``directory/<step>/``. Orbax writes each step
into a temporary directory and renames it when complete, so a process killed mid-save
leaves the previous step as the latest one. Saves are synchronous: when ``save`` returns,
the step is on disk (a SIGKILL right after loses nothing).

Data position is not stored separately: the batch of step t is a function of
(seed, t) (``e3lib.data.batch_indices``), so the step is the data position.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from e3lib import atomic


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic.write_bytes(path, data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic.write_json(path, obj)


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


class TrainCheckpoints:
    """Periodic checkpoints of one training job (keeps the latest ``max_to_keep``)."""

    def __init__(self, directory: str | os.PathLike, every: int, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.every = every
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        """Save ``state`` at ``step`` if it is a multiple of ``every`` (or ``force``)."""
        if not force and step % self.every:
            return False
        if self.manager.latest_step() == step:
            return False
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        return True

    def restore(self, like: Any, step: int | None = None) -> Any:
        """Restore the state at ``step`` (default: latest) with the structure of ``like``."""
        step = self.manager.latest_step() if step is None else step
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.manager.close()
