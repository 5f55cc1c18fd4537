"""Stale Snakemake locks (e3lib.locks): a dead holder's locks are cleared, a live one's kept."""

import json
import os
import subprocess
import sys

from e3lib import locks


def _lock_dir(tmp_path, names):
    d = tmp_path / ".snakemake" / "locks"
    d.mkdir(parents=True)
    for n in names:
        (d / n).write_text("results/x/done.json\n")
    return tmp_path / ".snakemake"


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_dead_holder_on_this_host_is_cleared(tmp_path):
    sm = _lock_dir(tmp_path, ["0.input.lock", "0.output.lock"])
    rec = locks.record_driver(sm, ["0.input.lock", "0.output.lock"])
    data = json.loads(rec.read_text())
    data["pid"] = _dead_pid()
    rec.write_text(json.dumps(data))
    msgs = locks.clear_stale(sm, dry_run=True)
    assert len(msgs) == 1 and "would remove a stale Snakemake lock" in msgs[0]
    assert sorted(os.listdir(sm / "locks")) == ["0.input.lock", "0.output.lock"]
    msgs = locks.clear_stale(sm)
    assert "removed a stale Snakemake lock (0.input.lock, 0.output.lock)" in msgs[0]
    assert os.listdir(sm / "locks") == [] and not rec.exists()


def test_live_holder_is_kept(tmp_path):
    sm = _lock_dir(tmp_path, ["0.output.lock"])
    locks.record_driver(sm, ["0.output.lock"])  # this very process: alive
    assert locks.clear_stale(sm) == []
    assert os.listdir(sm / "locks") == ["0.output.lock"]
    locks.release_driver(sm)
    assert os.listdir(sm / locks.DRIVERS) == []


def test_reused_pid_counts_as_gone(tmp_path):
    sm = _lock_dir(tmp_path, ["1.output.lock"])
    rec = locks.record_driver(sm, ["1.output.lock"])
    data = json.loads(rec.read_text())
    data["started"] = "1"  # same pid, another process start
    rec.write_text(json.dumps(data))
    assert "removed a stale" in locks.clear_stale(sm)[0]


def test_unowned_lock_is_explained_not_removed(tmp_path):
    sm = _lock_dir(tmp_path, ["3.output.lock"])
    [msg] = locks.clear_stale(sm)
    assert "no recorded owner (3.output.lock)" in msg and "snakemake --unlock" in msg
    assert os.listdir(sm / "locks") == ["3.output.lock"]
