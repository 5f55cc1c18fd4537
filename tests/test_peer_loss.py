"""A lost host never holds the rest hostage (e3lib.parallel.watchdog): the watchdog's
verdict on a fake coordination service and clock, then localhost jobs of 2 and 4
processes (CPU, gloo) where one process is SIGKILLed (or stopped: a host gone with its
connections left open) after a checkpoint: every survivor exits with the preempted code 4
within the peer timeout, and the same command again ends bitwise equal to an undisturbed
run, refusing a checkpoint the lost host left half-written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_parallel import TINY_RUN, device_env, free_port

from e3lib.parallel import watchdog
from e3lib.parallel.watchdog import DONE, PREFIX, Watchdog
from e3lib.train.stage import EXIT_PREEMPTED

# -- the verdict, on a fake service and clock ----------------------------------------------


class FakeService:
    """The coordination service's key-value store, shared by the fake processes."""

    def __init__(self):
        self.store: dict[str, str] = {}
        self.down = False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE: failed to connect")
        self.store[key] = value

    def key_value_dir_get(self, prefix):
        if self.down:
            raise RuntimeError("UNAVAILABLE: failed to connect")
        return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def dogs(n: int, timeout: float):
    service, clock = FakeService(), Clock()
    return service, clock, [Watchdog(service, p, n, timeout, clock) for p in range(n)]


def test_preempted_code_is_the_watchdogs_and_the_timeout_is_read_strictly():
    assert watchdog.EXIT_PEER_LOST == EXIT_PREEMPTED == 4
    assert watchdog.timeout_from(None) == watchdog.timeout_from("") == 300.0
    assert watchdog.timeout_from("7.5") == 7.5
    for bad in ("0", "-3", "abc", "inf", "nan"):
        with pytest.raises(SystemExit, match=r"E3_PEER_TIMEOUT or --peer-timeout.*seconds > 0"):
            watchdog.timeout_from(bad)
    # a fifth of the timeout between beats, within [0.2, 10] s
    assert [watchdog.interval_for(t) for t in (0.5, 10, 300)] == [0.2, 2.0, 10.0]


def test_a_peer_whose_counter_stops_is_lost_after_the_timeout_and_not_before():
    _, clock, (d0, d1, d2) = dogs(3, timeout=10)
    for _ in range(5):  # everyone beats every 2 s
        clock.now += 2
        for d in (d2, d1, d0):
            d.beat()
        assert d0.verdict() is None
    stopped_at = clock.now  # process 2's last beat (it is killed now)
    while clock.now < stopped_at + 10:
        clock.now += 2
        d0.beat()
        d1.beat()
        assert d0.verdict() is None and d1.verdict() is None, clock.now - stopped_at
    clock.now += 0.5  # 10.5 s without a change of process 2's counter
    assert d0.verdict() == "process 2 has sent no heartbeat for 10.5 s"
    assert d1.verdict() == "process 2 has sent no heartbeat for 10.5 s"
    assert "exiting with code 4 (preempted)" in d0.message(d0.verdict())


def test_a_peer_that_never_beats_is_lost_and_one_that_ended_normally_is_not():
    service, clock, (d0, d1) = dogs(2, timeout=5)
    clock.now += 5.5
    d0.beat()
    assert d0.verdict() == "process 1 has sent no heartbeat for 5.5 s"
    service.store[f"{PREFIX}1"] = DONE  # process 1 finished (Watchdog.finish) and left
    d0.beat()
    clock.now += 60
    d0.beat()
    assert d0.verdict() is None


def test_an_unreachable_coordination_service_is_a_lost_process_0():
    service, clock, (d0, d1) = dogs(2, timeout=5)
    clock.now += 4
    d1.beat()
    d0.beat()
    service.down = True  # process 0 (where the service runs) is gone
    for _ in range(3):
        clock.now += 2
        with pytest.raises(RuntimeError):
            d1.beat()
    assert d1.verdict() == "the coordination service (process 0) has not answered for 6.0 s"


def test_the_judge_thread_ends_the_process_with_code_4_within_timeout_plus_interval():
    service = FakeService()
    ended: list[tuple[int, float]] = []
    done = threading.Event()

    def end(code):
        ended.append((code, time.monotonic()))
        done.set()

    peer = Watchdog(service, 1, 2, timeout=1.0).start(end=lambda code: None)
    dog = Watchdog(service, 0, 2, timeout=1.0).start(end=end)
    time.sleep(1.5)
    assert not ended  # both beat: nothing to judge
    peer.stopped.set()  # process 1 stops beating (killed)
    t_lost = time.monotonic()
    assert done.wait(5)
    code, at = ended[0]
    # No change seen for > timeout (1 s), counted from when process 0 last saw process 1's
    # counter change: between two beat intervals (0.2 s each) before the loss and the
    # loss itself; then up to one judge round (0.1 s) and scheduling slack on a busy machine.
    assert code == 4 and 1.0 - 2 * 0.2 <= at - t_lost <= 1.0 + 0.1 + 1.0
    assert dog.lost.is_set()
    dog.stopped.set()


# -- localhost jobs: SIGKILL of one process, survivors exit 4, the rerun is bitwise --------

PEER_TIMEOUT = 20.0  # seconds, for these tests (a real fleet: the default 300)
MARGIN = 15.0  # beat interval, process start-up of the log line, a loaded test machine
STEPS = 8
RUN = dict(
    TINY_RUN,
    finetune=dict(TINY_RUN["finetune"], steps=STEPS, checkpoint_every=2),
    mesh={"data": -1, "expert": 2},
)
DEVICES = 4  # in all: 2 processes × 2 devices or 4 × 1, one 2 × 2 mesh


def launch(n: int, cfg: Path, root: Path, tag: str) -> list[subprocess.Popen]:
    """``e3 run`` as n processes of one job on localhost; logs in root/logs/<tag>.<p>.
    Each job has its own compile cache: JAX writes the cache from process 0 only, so in a
    shared one process 0 would skip compiling while the others compile, and on a busy
    machine they would reach their first collective further apart than gloo waits (30 s)."""
    port, logs = free_port(), root / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(
        device_env(DEVICES // n, root / f"jax_cache_{tag}"), E3_PEER_TIMEOUT=str(PEER_TIMEOUT)
    )
    procs = []
    for p in range(n):
        cmd = [sys.executable, "-m", "e3lib.cli", "run", "--config", str(cfg)]
        cmd += ["--out", str(root / "out"), "--checkpoints", str(root / "ck")]
        cmd += ["--log-mode", "plain", "--coordinator", f"127.0.0.1:{port}"]
        cmd += ["--num-processes", str(n), "--process-id", str(p)]
        with open(logs / f"{tag}.{p}", "w") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs, timeout: float = 900) -> list[int]:
    return [p.wait(timeout=timeout) for p in procs]


def log_tail(root: Path, tag: str) -> str:
    return "\n".join(
        f"--- {f.name}\n" + f.read_text()[-1500:] for f in sorted((root / "logs").glob(f"{tag}.*"))
    )


def outputs(out: Path) -> dict:
    """What the run ends with: metric records, predictions and loss curves."""
    res = json.loads((out / "results.json").read_text())
    with np.load(out / "predictions.npz") as z:
        preds = {k: z[k] for k in z.files}
    return {
        "records": res["records"],
        "preds": preds,
        "curves": json.loads((out / "curves.json").read_text()),
        "train": res["train"],
    }


def assert_bitwise(got: dict, want: dict) -> None:
    assert got["records"] == want["records"]  # every value exactly
    assert got["preds"].keys() == want["preds"].keys()
    for k in want["preds"]:
        np.testing.assert_array_equal(got["preds"][k], want["preds"][k], err_msg=k)
    assert got["curves"] == want["curves"]
    assert got["train"]["final"] == want["train"]["final"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The run config (a shared compile cache beside it) and ``reference(n)``: the outputs
    of the undisturbed job of n processes, run once per n."""
    root = tmp_path_factory.mktemp("peer_loss")
    cfg = root / "run.json"
    cfg.write_text(json.dumps(RUN))
    refs: dict[int, dict] = {}

    def reference(n: int) -> dict:
        if n not in refs:
            ref = root / f"ref{n}"
            ref.mkdir()
            codes = wait_all(launch(n, cfg, ref, "ref"))
            assert codes == [0] * n, log_tail(ref, "ref")
            refs[n] = outputs(ref / "out")
        return refs[n]

    return cfg, reference


def kill_after_checkpoint(procs, root: Path, victim: int, sig: int, step: int) -> float:
    """Send ``sig`` to process ``victim`` once checkpoint ``step`` is complete (its
    integrity manifest written); returns the time it was sent."""
    manifest = root / "ck" / "integrity" / f"{step}.json"
    deadline = time.monotonic() + 900
    while not manifest.exists():
        assert all(p.poll() is None for p in procs), "a process ended before the checkpoint"
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.01)
    procs[victim].send_signal(sig)
    return time.monotonic()


def survivors_exit_preempted(procs, victim: int, t_kill: float, root: Path, tag: str):
    """Every other process exits 4 within the peer timeout (+ margin); returns seconds."""
    took = []
    for p, proc in enumerate(procs):
        if p == victim:
            continue
        code = proc.wait(timeout=PEER_TIMEOUT + MARGIN + 60)
        took.append(time.monotonic() - t_kill)
        assert code == 4, log_tail(root, tag)
    assert max(took) < PEER_TIMEOUT + MARGIN, (took, log_tail(root, tag))
    logs = [(root / "logs" / f"{tag}.{p}").read_text() for p in range(len(procs)) if p != victim]
    assert all("peer lost" in text and "exiting with code 4" in text for text in logs)
    return took


@pytest.mark.slow
@pytest.mark.parametrize(
    "n, victim, sig",
    [(2, 1, signal.SIGKILL), (4, 0, signal.SIGKILL), (4, 2, signal.SIGSTOP)],
    ids=["2proc-kill-rank1", "4proc-kill-rank0", "4proc-stop-rank2"],
)
def test_lost_process_survivors_exit_4_in_bounded_time_and_rerun_is_bitwise(
    job, tmp_path, n, victim, sig
):
    cfg, reference = job
    want = reference(n)
    procs = launch(n, cfg, tmp_path, "lost")
    try:
        t_kill = kill_after_checkpoint(procs, tmp_path, victim, sig, step=4)
        took = survivors_exit_preempted(procs, victim, t_kill, tmp_path, "lost")
    finally:
        for proc in procs:  # the victim (a stopped one too), and any survivor left hanging
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"{n} processes, process {victim} lost: survivors exited 4 after {took} s")
    assert not (tmp_path / "out" / "results.json").exists()
    ck = tmp_path / "ck"
    steps = sorted(int(d.name) for d in ck.iterdir() if d.name.isdigit())
    assert steps[-1] >= 4 and len(steps) == 2, steps  # the latest two are kept
    # The lost host leaves its newest checkpoint half-written: Orbax's files but no
    # integrity manifest (lost between the save and the manifest). It is refused.
    (ck / "integrity" / f"{steps[-1]}.json").unlink()
    codes = wait_all(launch(n, cfg, tmp_path, "rerun"))
    assert codes == [0] * n, log_tail(tmp_path, "rerun")
    got = outputs(tmp_path / "out")
    assert got["train"]["resumed_from_step"] == steps[-2]
    assert [f["step"] for f in got["train"]["checkpoint_fallbacks"]] == [steps[-1]]
    assert_bitwise(got, want)
