"""A published checkpoint loaded for a run with a mesh: each converted leaf goes to the
devices with its sharding while the reader streams, values equal to one-device loading.
Runs tests/upstreams_mesh_checks.py in a subprocess with 8 virtual CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
E = 8


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(HERE.parent),
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    proc = subprocess.run(
        [sys.executable, str(HERE / "upstreams_mesh_checks.py"), str(tmp_path_factory.mktemp("c"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_expert_leaves_hold_half_the_experts_per_device(loaded):
    experts = {p: v for p, v in loaded["leaves"].items() if "/Moe/Mlp/" in p}
    assert experts  # the tiny E³ model has MoE layers
    for path, leaf in experts.items():
        assert leaf["shape"][0] == E and leaf["devices"] == 8, path
        # 4×2 mesh: expert axis of size 2, so each device holds E/2 = 4 experts, starting at
        # expert 0 or 4, and each half is held by the 4 devices of one data row.
        starts = [start for _, (start,), shard_shape in leaf["shards"]]
        assert all(shape[0] == E // 2 for _, _, shape in leaf["shards"]), path
        assert sorted(starts) == [0] * 4 + [4] * 4, path


def test_other_leaves_are_replicated(loaded):
    others = {p: v for p, v in loaded["leaves"].items() if "/Moe/Mlp/" not in p}
    assert any("Router" in p for p in others) and any(p.startswith("head") for p in others)
    for path, leaf in others.items():
        assert leaf["devices"] == 8, path
        assert all(shape == leaf["shape"] for _, _, shape in leaf["shards"]), path


def test_values_equal_single_device_loading_bitwise(loaded):
    assert all(leaf["equal"] for leaf in loaded["leaves"].values())
    assert all(leaf["single_devices"] == 1 for leaf in loaded["leaves"].values())


def test_train_state_keeps_the_placement(loaded):
    assert all(leaf["state_same_sharding"] for leaf in loaded["leaves"].values())


def test_leaves_are_put_while_the_shards_are_still_being_read(loaded):
    kinds = [
        "shard" if kind == "read" and ".data-" in path else kind for kind, path in loaded["events"]
    ]
    assert kinds.count("shard") == 3  # shard_count=3: every data shard read once
    first_put, last_read = kinds.index("put"), len(kinds) - 1 - kinds[::-1].index("shard")
    assert first_put < last_read
    puts = [p for kind, p in loaded["events"] if kind == "put"]
    assert sorted(puts) == sorted(loaded["leaves"])  # every target leaf once
