"""Stale Snakemake locks: detect them, explain them, and clear the ones whose holder is gone.

Snakemake locks a working directory by writing ``.snakemake/locks/<n>.{input,output}.lock``
and removes them when it exits. A driver that is SIGKILLed (a login node dying, a laptop
closed) leaves them behind, and every rerun is refused with "Directory cannot be locked".

The workflow records, once it holds its locks (``onstart``), who holds them:
``.snakemake/e3-drivers/<host>-<pid>.json`` with the host, the pid, the process start time
and the lock files. At the next start (``clear_stale``, before Snakemake locks), a record
whose host is this one and whose process is no longer running (or whose pid now belongs to
a different process) is stale: its lock files and the record are removed, with a message.
Locks of a live driver, or of another host, are never touched; locks with no record
(written by a driver started outside this workflow) are explained with the exact command.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from e3lib import atomic

DRIVERS = "e3-drivers"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (field 22 of /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return started is None or now is None or now == started


def record_driver(snakemake_dir: str | os.PathLike, lock_files: Iterable[str]) -> Path:
    """Record this process as the holder of ``lock_files`` (call once the locks are held)."""
    host, pid = socket.gethostname(), os.getpid()
    path = Path(snakemake_dir) / DRIVERS / f"{host}-{pid}.json"
    atomic.write_json(
        path,
        {
            "host": host,
            "pid": pid,
            "started": _start_time(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "locks": sorted(os.path.basename(f) for f in lock_files),
        },
    )
    return path


def release_driver(snakemake_dir: str | os.PathLike) -> None:
    """Forget this process's record (Snakemake removes the lock files itself)."""
    path = Path(snakemake_dir) / DRIVERS / f"{socket.gethostname()}-{os.getpid()}.json"
    path.unlink(missing_ok=True)


def clear_stale(snakemake_dir: str | os.PathLike, dry_run: bool = False) -> list[str]:
    """Remove locks whose recorded holder is gone; return messages for the user.

    With ``dry_run`` nothing is removed: the messages say what a real run would do.
    """
    root = Path(snakemake_dir)
    lockdir = root / "locks"
    locks = {p.name for p in lockdir.glob("*.lock")} if lockdir.is_dir() else set()
    messages: list[str] = []
    owned: set[str] = set()
    here = socket.gethostname()
    for rec_path in sorted((root / DRIVERS).glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            continue
        mine = set(rec.get("locks", [])) & locks
        owned |= mine
        if rec.get("host") != here or _alive(int(rec.get("pid", -1)), rec.get("started")):
            continue
        if not mine:
            if not dry_run:
                rec_path.unlink(missing_ok=True)
            continue
        verb = "would remove" if dry_run else "removed"
        messages.append(
            f"e3: {verb} a stale Snakemake lock ({', '.join(sorted(mine))}) left by process "
            f"{rec['pid']} on {here}, started {rec.get('since', '?')}, which is no longer "
            "running (killed or crashed); jobs it left half-done are rerun "
            "(rerun-incomplete) and resume from their checkpoints"
        )
        if not dry_run:
            for name in mine:
                (lockdir / name).unlink(missing_ok=True)
            rec_path.unlink(missing_ok=True)
    unknown = sorted(locks - owned)
    if unknown:
        messages.append(
            f"e3: {lockdir} holds lock files with no recorded owner ({', '.join(unknown)}). "
            "If no other Snakemake is running in this directory (on any host), clear them "
            "with `snakemake --unlock` and run the same command again."
        )
    return messages
