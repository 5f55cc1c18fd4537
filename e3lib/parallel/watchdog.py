"""A lost host never holds the rest of its job hostage.

A host of a multi-process job can vanish mid-step with no signal (a spot VM reclaimed, a
kernel panic, a SIGKILL). Its peers would then wait in their next collective (gloo, NCCL,
ICI) until the job's runtime runs out. Every process of a multi-process job therefore runs
a watchdog, two daemon threads started by ``e3lib.parallel.distributed.start``:

- *beat*: every ``interval`` seconds it increments this process's counter in the JAX
  coordination service's key-value store (key ``e3_watchdog/<process>``, the service runs
  in process 0) and reads every process's counter;
- *judge*: a process whose counter has not changed for ``timeout`` seconds, or the
  coordination service unreachable for ``timeout`` seconds (process 0 lost), is a lost
  peer: the judge writes one line naming it to stderr and ends this process at once with
  exit code 4 (``os._exit``: the main thread may be blocked in a collective for good).

Exit code 4 is the retryable "preempted" code (``e3lib.train.stage.EXIT_PREEMPTED``): the
workflow (or the engine) starts the job again and it resumes from the newest checkpoint
that passes its integrity check (``e3lib.checkpoint.TrainCheckpoints.restore_verified``).
So every survivor exits within ``timeout`` + 1.5 × ``interval`` seconds of the loss
(the last change it saw may be one interval old; the judge looks every half interval).

A collective with a lost peer can also fail at once (a reset connection) instead of
blocking. An exception that ends the main thread then waits (``sys.excepthook``) up to
``timeout`` + 2 × ``interval`` for the judge: exit code 4 if a peer was lost, the usual
error otherwise. A process that ends normally marks its counter ``done`` (at exit, before
JAX's shutdown barrier) and is never judged lost.

The timeout: ``--peer-timeout SECONDS`` or ``E3_PEER_TIMEOUT`` (default 300 s). JAX's own
heartbeat (which terminates a process with SIGABRT, exit code 134, not a retryable code)
is set to twice that, as a backstop only.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable

ENV = "E3_PEER_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
EXIT_PEER_LOST = 4  # = e3lib.train.stage.EXIT_PREEMPTED (retryable; pinned by a test)
PREFIX = "e3_watchdog/"
DONE = "done"


def timeout_from(value: str | float | None) -> float:
    """Seconds from a ``--peer-timeout`` / ``E3_PEER_TIMEOUT`` value (None: the default)."""
    if value is None or value == "":
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise SystemExit(
            f"e3: peer timeout {value!r} ({ENV} or --peer-timeout): expected seconds > 0"
        )
    return seconds


def interval_for(timeout: float) -> float:
    """Seconds between beats: a fifth of the timeout, within [0.2, 10]."""
    return min(max(timeout / 5, 0.2), 10.0)


class Watchdog:
    """The beats and the verdict of one process (``client``: the coordination service's
    client, anything with ``key_value_set`` and ``key_value_dir_get``)."""

    def __init__(
        self,
        client,
        process_id: int,
        num_processes: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.timeout, self.interval, self.clock = timeout, interval_for(timeout), clock
        now = clock()
        self.last_ok = now  # last beat that reached the coordination service
        self.seen: dict[int, tuple[str, float]] = {p: ("", now) for p in range(num_processes)}
        self.count = 0
        self.last_error: str | None = None  # of the latest beat that failed
        self.stopped = threading.Event()
        self.lost = threading.Event()  # set just before the process is ended

    def beat(self) -> None:
        """Increment this process's counter and read everyone's (one pair of RPCs)."""
        self.count += 1
        key = f"{PREFIX}{self.process_id}"
        self.client.key_value_set(key, str(self.count), allow_overwrite=True)
        values = dict(self.client.key_value_dir_get(PREFIX))
        now = self.clock()
        self.last_ok = now
        for p, (old, _) in self.seen.items():
            value = values.get(f"{PREFIX}{p}", "")
            if value != old:
                self.seen[p] = (value, now)

    def verdict(self) -> str | None:
        """Why this process must stop (a lost peer), or None while every peer beats."""
        now = self.clock()
        if now - self.last_ok > self.timeout:
            error = "" if self.last_error is None else f" (last error: {self.last_error})"
            return (
                f"the coordination service (process 0) has not answered for "
                f"{now - self.last_ok:.1f} s{error}"
            )
        for p, (value, since) in self.seen.items():
            if p != self.process_id and value != DONE and now - since > self.timeout:
                return f"process {p} has sent no heartbeat for {now - since:.1f} s"
        return None

    def message(self, why: str) -> str:
        return (
            f"e3: process {self.process_id} of {self.num_processes}: peer lost: {why} "
            f"(peer timeout {self.timeout:g} s, {ENV}); exiting with code {EXIT_PEER_LOST} "
            "(preempted): run the job again to resume from its last complete checkpoint"
        )

    # -- threads ------------------------------------------------------------------------
    def start(self, end: Callable[[int], None] = os._exit) -> Watchdog:
        def beat_loop():
            while not self.stopped.wait(self.interval):
                try:
                    self.beat()
                except Exception as e:  # noqa: BLE001 - unreachable service: the judge decides
                    self.last_error = f"{type(e).__name__}: {e}"[:300]

        def judge_loop():
            while not self.stopped.wait(self.interval / 2):
                why = self.verdict()
                if why is not None and not self.stopped.is_set():
                    print(self.message(why), file=sys.stderr, flush=True)
                    self.lost.set()
                    end(EXIT_PEER_LOST)
                    return

        for name, loop in (("beat", beat_loop), ("judge", judge_loop)):
            threading.Thread(target=loop, name=f"e3-watchdog-{name}", daemon=True).start()
        return self

    def finish(self) -> None:
        """Normal end of this process: stop judging and tell the others (best effort)."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        try:
            key = f"{PREFIX}{self.process_id}"
            self.client.key_value_set(key, DONE, allow_overwrite=True)
        except Exception:  # noqa: BLE001 - the service may be gone already
            pass

    def wait_for_verdict(self) -> bool:
        """After an error in the main thread: True once the judge has found a lost peer
        (it then ends the process), False after timeout + 2 × interval without one."""
        return self.lost.wait(self.timeout + 2 * self.interval)


def start_for_job(timeout: float) -> Watchdog:
    """Watch the peers of the job ``jax.distributed.initialize`` has just joined."""
    from jax._src import distributed as jd  # the coordination service's client

    state = jd.global_state
    dog = Watchdog(state.client, state.process_id, state.num_processes, timeout).start()
    atexit.register(dog.finish)  # runs before JAX's own shutdown (registered earlier)
    previous = sys.excepthook

    def excepthook(kind, value, tb):
        previous(kind, value, tb)
        if not dog.stopped.is_set():
            print(
                f"e3: process {dog.process_id}: waiting up to "
                f"{dog.timeout + 2 * dog.interval:g} s for the peer watchdog's verdict",
                file=sys.stderr,
                flush=True,
            )
            if dog.wait_for_verdict():
                time.sleep(dog.interval)  # the judge ends the process meanwhile

    sys.excepthook = excepthook
    _abort_is_peer_lost(dog)
    return dog


def _abort_is_peer_lost(dog: Watchdog) -> None:
    """JAX's coordination client ends a process with SIGABRT (``abort``) as soon as the
    service reports a failed task or stops answering (process 0 gone). In a job of
    several processes that abort means a lost peer: exit with code 4 instead of 134. (A
    C-level handler: Python's own runs too late, after ``abort`` has ended the process.)"""
    import ctypes
    import signal

    def on_abort(signum):
        print(
            dog.message("JAX's coordination service ended this process (SIGABRT)"),
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_PEER_LOST)

    handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(on_abort)
    _abort_is_peer_lost.handler = handler  # kept alive for the life of the process
    ctypes.CDLL(None).signal(signal.SIGABRT, handler)
