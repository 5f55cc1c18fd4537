"""Multi-host start-up, the single writer, and exit codes agreed by every process.

Every host runs the same command. ``start(argv)`` joins them with
``jax.distributed.initialize`` before any JAX computation:

- explicit: ``--coordinator HOST:PORT --num-processes P --process-id I`` (or the
  environment variables ``E3_COORDINATOR``, ``E3_NUM_PROCESSES``, ``E3_PROCESS_ID``);
- auto-detected (no arguments to ``initialize``): a Slurm job step with more than one task
  (``SLURM_NTASKS`` > 1) or a multi-host TPU VM slice (``TPU_WORKER_HOSTNAMES`` lists
  several workers), where JAX finds coordinator and ranks itself;
- otherwise one process, nothing to join.

On CPU the cross-process collectives use gloo (``jax_cpu_collectives_implementation``).

A lost peer (a host gone without a signal) ends every other process within
``--peer-timeout`` seconds (or ``E3_PEER_TIMEOUT``; default 300) with the retryable exit
code 4 (``e3lib.parallel.watchdog``).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence

from e3lib.parallel import watchdog

FLAGS = ("--coordinator", "--num-processes", "--process-id", "--peer-timeout")


def parse(argv: Sequence[str]) -> tuple[dict, list[str]]:
    """Split the start-up flags off ``argv``; returns (settings, remaining argv)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--coordinator", default=os.environ.get("E3_COORDINATOR"))
    p.add_argument("--num-processes", type=int, default=_int_env("E3_NUM_PROCESSES"))
    p.add_argument("--process-id", type=int, default=_int_env("E3_PROCESS_ID"))
    p.add_argument("--peer-timeout", default=os.environ.get(watchdog.ENV))
    known, rest = p.parse_known_args(list(argv))
    return vars(known), rest


def _int_env(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def auto_detected() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if hosts.startswith("WARNING"):  # libtpu's sentence where no TPU is: no hosts
        return False
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def start(argv: Sequence[str]) -> list[str]:
    """Join the job's processes if it has several; returns ``argv`` without the flags."""
    settings, rest = parse(argv)
    explicit = settings["coordinator"] is not None
    if not explicit and not auto_detected():
        return rest
    import jax

    if getattr(start, "_done", False):  # (asking JAX would start its backend too early)
        return rest
    # Only the CPU backend reads this; harmless on GPU and TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    peer_timeout = watchdog.timeout_from(settings["peer_timeout"])
    # JAX's own heartbeat ends a process with SIGABRT: a backstop behind the watchdog's.
    timeouts = {
        "heartbeat_timeout_seconds": math.ceil(2 * peer_timeout),
        "shutdown_timeout_seconds": math.ceil(peer_timeout),
    }
    if explicit:
        missing = [
            f for f, k in zip(FLAGS[1:], ("num_processes", "process_id")) if settings[k] is None
        ]
        if missing:
            raise SystemExit(f"e3: --coordinator needs {' and '.join(missing)}")
        jax.distributed.initialize(
            coordinator_address=settings["coordinator"],
            num_processes=settings["num_processes"],
            process_id=settings["process_id"],
            **timeouts,
        )
    else:
        jax.distributed.initialize(**timeouts)
    watchdog.start_for_job(peer_timeout)
    start._done = True
    return rest


def process_index() -> int:
    import jax

    return jax.process_index()


def is_writer() -> bool:
    """Only process 0 writes results, predictions, diverged/done files."""
    import sys

    if "jax" not in sys.modules:
        return True
    return process_index() == 0


def barrier(name: str) -> None:
    """Wait for every process (nothing to wait for in a single-process job)."""
    import sys

    if "jax" not in sys.modules:
        return
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"e3lib_{name}")


def any_process(flag: bool) -> bool:
    """Logical OR of ``flag`` over all processes (one tiny all-gather when P > 1)."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np_max(multihost_utils.process_allgather(int(bool(flag)))))


def process_count() -> int:
    """P (1 before JAX is imported: nothing has joined)."""
    import sys

    if "jax" not in sys.modules:
        return 1
    import jax

    return jax.process_count()


def gather_objects(obj) -> list:
    """``obj`` of every process, in process order, on every process: each pickles it to
    bytes, and two ``process_allgather`` calls move the lengths, then the bytes padded to
    the longest (P × that many bytes arrive on each process). With one process: [obj]."""
    if process_count() == 1:
        return [obj]
    import pickle

    import numpy as np
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[: len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)  # (P, L)
    return [pickle.loads(rows[i, : sizes[i]].tobytes()) for i in range(len(sizes))]


def agree_exit_code(code: int) -> int:
    """The same exit code on every process: the largest one (preempted 4 > diverged 3 >
    bad input 2 > ok 0), so the workflow sees one outcome per job."""
    import sys

    if "jax" not in sys.modules:
        return code
    import jax

    if jax.process_count() == 1:
        return code
    from jax.experimental import multihost_utils

    return int(np_max(multihost_utils.process_allgather(int(code))))


def np_max(x) -> int:
    import numpy as np

    return int(np.max(np.asarray(x)))
