"""Orbax checkpoints of training state, and atomic file writes.

A training checkpoint is one PyTree ``{"params", "opt_state", "step", "rng"}`` saved by an
``orbax.checkpoint.CheckpointManager`` under ``directory/<step>/``. Orbax writes each step
into a temporary directory and renames it when complete, so a process killed mid-save
leaves the previous step as the latest one. Saves are synchronous: when ``save`` returns,
the step is on disk (a SIGKILL right after loses nothing).

Data position: for in-memory data the batch of step t is a function of (seed, t)
(``e3lib.data.batch_indices``), so the step is the data position. A streamed run passes
its input iterator state (``extra``, JSON) to ``save``: it is written as
``directory/<step>/input_state.json`` before the integrity manifest, so the manifest covers
it, and ``input_state(step)`` reads it back on resume. The loss history so far
(``history``, JSON, e3lib.curves) is written the same way as ``directory/<step>/history.json``
and read back by ``history(step)``.

Integrity: after each save, the SHA-256 of every file of the step is written to
``directory/integrity/<step>.json``. ``restore_verified`` checks the latest step against its
manifest before restoring it; a step whose files differ, are missing, or fail to restore is
moved to ``directory/damaged/`` and the previous good step is used instead (``fallbacks``
says which steps were refused and why). A step with no manifest (killed between the save and
the manifest) is refused the same way.

Several processes (a multi-host job, e3lib.parallel): every process saves and restores its
own shards through Orbax; the manifest, the input state and setting a step aside are done
by process 0 alone, and the others wait for it (a barrier), so each file has one writer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from e3lib import atomic
from e3lib.integrity import compare_digests, file_digests

INPUT_STATE = "input_state.json"
HISTORY = "history.json"


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
        self.fallbacks: list[dict] = []  # steps refused by restore_verified, newest first
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    # -- integrity ---------------------------------------------------------------------------
    def _manifest_path(self, step: int) -> Path:
        return self.directory / "integrity" / f"{step}.json"

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _write_manifest(self, step: int) -> None:
        atomic.write_json(
            self._manifest_path(step), {"step": step, "files": file_digests(self._step_dir(step))}
        )
        kept = {str(s) for s in self.manager.all_steps()}
        for old in (self.directory / "integrity").glob("*.json"):
            if old.stem not in kept:
                old.unlink(missing_ok=True)

    def verify(self, step: int) -> str | None:
        """None if ``step``'s files match its manifest, else what is wrong."""
        try:
            manifest = json.loads(self._manifest_path(step).read_text())
        except FileNotFoundError:
            return "no integrity manifest (the save did not complete)"
        except (OSError, ValueError) as e:
            return f"unreadable integrity manifest: {e}"
        return compare_digests(manifest.get("files", {}), file_digests(self._step_dir(step)))

    def _set_aside(self, step: int, reason: str) -> None:
        """Move a refused step out of Orbax's sight (kept for inspection under damaged/)."""
        dest = self.directory / "damaged" / f"{step}-{int(time.time())}"
        if _primary():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if self._step_dir(step).exists():
                shutil.move(str(self._step_dir(step)), dest)
            self._manifest_path(step).unlink(missing_ok=True)
        _barrier(f"set_aside_{step}")
        self.fallbacks.append({"step": step, "reason": reason, "moved_to": dest.name})
        self.manager.reload()

    def restore_verified(self, like: Any) -> tuple[Any, int | None]:
        """The newest step that passes its integrity check and restores: (state, step).

        Refused steps are set aside (see ``fallbacks``); ``(None, None)`` if none is good.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = self.verify(step)
            if problem is None:
                try:
                    return self.restore(like, step=step), step
                except Exception as e:  # noqa: BLE001 - any failed restore means a bad step
                    problem = f"restore failed: {type(e).__name__}: {e}"[:500]
            self._set_aside(step, problem)
        return None, None

    def save(
        self, step: int, state: Any, force: bool = False, extra: Any = None, history: Any = None
    ) -> bool:
        """Save ``state`` at ``step`` if it is a multiple of ``every`` (or ``force``), with
        ``extra`` (JSON-able, e.g. the input iterator state) and ``history`` (the loss
        history so far) beside it when given."""
        if not force and step % self.every:
            return False
        if self.manager.latest_step() == step:
            return False
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        if _primary():
            if extra is not None:
                atomic.write_json(self._step_dir(step) / INPUT_STATE, extra)
            if history is not None:
                atomic.write_json(self._step_dir(step) / HISTORY, history)
            self._write_manifest(step)
        _barrier(f"manifest_{step}")
        return True

    def input_state(self, step: int) -> Any:
        """The ``extra`` saved with ``step`` (None if there is none)."""
        path = self._step_dir(step) / INPUT_STATE
        return json.loads(path.read_text()) if path.is_file() else None

    def history(self, step: int) -> Any:
        """The ``history`` saved with ``step`` (None if there is none)."""
        path = self._step_dir(step) / HISTORY
        return json.loads(path.read_text()) if path.is_file() else None

    def restore(self, like: Any, step: int | None = None) -> Any:
        """Restore the state at ``step`` (default: latest) with the structure of ``like``."""
        step = self.manager.latest_step() if step is None else step
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.manager.close()


def _primary() -> bool:
    """Process 0 of the job writes the files beside Orbax's (one writer per file)."""
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    """Wait for every process of a multi-process job (nothing to wait for with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"e3lib_checkpoint_{name}")
