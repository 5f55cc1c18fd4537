"""Multi-host streaming evaluation: two processes joined by jax.distributed on this host
(CPU collectives, 2 virtual devices each), each reading only its block of every batch and
merging the accumulators, give the records of one process (4 devices) to 1e-6, with no
mesh and on a 2 × 2 mesh; only process 0 writes (tests/multihost_eval_checks.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_evaluate_stream import assert_same_records
from tests.test_parallel import HERE, device_env, free_port

SCRIPT = str(HERE / "multihost_eval_checks.py")


def launch(out, devices, cache, flags=()):
    return subprocess.Popen(
        [sys.executable, SCRIPT, *flags, str(out)],
        env=device_env(devices, cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_evaluate_like_one(tmp_path):
    cache = tmp_path / "jax_cache"
    one = launch(tmp_path / "one", 4, cache)
    _, err = one.communicate(timeout=900)
    assert one.returncode == 0, err[-3000:]
    port = free_port()
    procs = [
        launch(
            tmp_path / "two",
            2,
            cache,
            ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        )
        for i in range(2)
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    want = json.loads((tmp_path / "one" / "records.json").read_text())
    got = json.loads((tmp_path / "two" / "records.json").read_text())
    assert (want["processes"], want["devices"]) == (1, 4)
    assert (got["processes"], got["devices"]) == (2, 4)
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["records.json"]  # one writer
    # the sets read, and their sizes
    assert got["sizes"] == want["sizes"] and want["sizes"]["test"] == 214
    splits = {r["split"] for r in want["local"]}
    assert {"clean", "val", "ood_near", "ood_far", "fewshot"} <= splits
    for kind in ("local", "mesh"):
        assert_same_records(got[kind], want[kind])
