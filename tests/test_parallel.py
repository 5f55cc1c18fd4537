"""One job on many devices (e3lib.parallel), on 8 virtual CPU devices in subprocesses
(XLA_FLAGS is set there, never for the suite): a step and an evaluation on meshes 8×1,
4×2 and 2×4 (4×2 only for Tiling, Partitioning, Multi-pred, BatchEnsemble, MC-Dropout and
MIMO) equal the single-device ones; experts and their optimizer state are sharded;
with ``fsdp`` the dense state is split over ``data`` too, with the same results; a fresh
state is created in its shardings, bitwise equal to one device's; the compiled V-MoE and
E³ steps move tokens by all-to-all and all-gather nothing; a checkpoint saved on 8 devices
restores on 1 and 4; two processes × 4 devices run
``e3 run`` end to end, write results once, agree on exit codes and resume after SIGTERM."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from e3lib.errors import ConfigError
from e3lib.parallel import distributed
from e3lib.parallel.mesh import check_divisibility, mesh_shape, validate_field

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# Faster XLA:CPU compiles (the checks compare numbers, not speed).
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def device_env(devices: int, cache: Path) -> dict:
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        E3_JAX_CACHE=str(cache),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_XLA}",
    )


@pytest.fixture(scope="module")
def mesh_rows(tmp_path_factory):
    """Every 8-device check, in one JAX process (tests/mesh_checks.py)."""
    cache = tmp_path_factory.mktemp("jax_cache")
    proc = subprocess.run(
        [sys.executable, str(HERE / "mesh_checks.py")],
        env=device_env(8, cache),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


# -- mesh shapes and divisibility (no devices) --------------------------------------------


def test_mesh_shape_from_the_field():
    assert mesh_shape(None, 8, 8) == (1, 1)
    assert mesh_shape({"data": -1, "expert": 2}, 8, 8) == (4, 2)
    assert mesh_shape({"data": 2, "expert": -1}, 8, 8) == (2, 4)
    assert mesh_shape("auto", 32, 32) == (1, 32)
    assert mesh_shape("auto", 32, 8) == (4, 8)  # expert axis: largest divisor of D and E
    assert mesh_shape("auto", 8, None) == (8, 1) or mesh_shape("auto", 8, None) == (1, 8)
    with pytest.raises(ConfigError, match=r"mesh.expert=3: must divide the 8 devices"):
        mesh_shape({"data": -1, "expert": 3}, 8, 8)
    with pytest.raises(ConfigError, match="data × expert = 4"):
        mesh_shape({"data": 2, "expert": 2}, 8, 8)
    with pytest.raises(ConfigError, match="allowed axes"):
        validate_field({"model": 2})


def test_mesh_is_not_part_of_the_run_id_and_is_type_checked_by_resolve():
    from e3lib.config import resolve, run_id, stale_fields

    plain = resolve({"method": "e3", "model": {"ensemble_size": 2}})
    meshed = resolve(
        {"method": "e3", "model": {"ensemble_size": 2}, "mesh": {"data": -1, "expert": 2}}
    )
    assert meshed.mesh == {"data": -1, "expert": 2}
    assert (
        run_id(meshed)
        == run_id(plain)
        == run_id(resolve({"method": "e3", "model": {"ensemble_size": 2}, "mesh": "auto"}))
    )
    assert stale_fields(plain.to_dict(), meshed.to_dict()) == []  # as results store them
    for bad, field, words in (
        ({"data": 0}, "mesh.data", "positive integer or -1"),
        ({"data": -1, "expert": -1}, "mesh", "at most one axis"),
        ({"model": 2}, "mesh.model", "allowed axes"),
        ("all", "mesh", "null, 'auto' or"),
    ):
        with pytest.raises(ConfigError) as info:
            resolve({"mesh": bad})
        assert info.value.field == field and words in str(info.value), str(info.value)


def test_divisibility_errors_name_field_value_and_what_divides():
    from e3lib.config import override, resolve

    cfg = resolve(
        {
            "method": "e3",
            "model": {"ensemble_size": 2, "num_experts": 8, "group_images": 1},
            "finetune": {"batch_size": 12},
        }
    )
    with pytest.raises(
        ConfigError,
        match=r"finetune.batch_size=12: must be a multiple of "
        r"the 8 devices .* e.g. 16",
    ):
        check_divisibility(cfg, (4, 2))
    cfg = override(cfg, {"finetune": {"batch_size": 16}, "model": {"group_images": 8}})
    # 16 images -> 2 groups, not a multiple of 8
    with pytest.raises(ConfigError, match=r"model.group_images=8: .* gives 2 routing groups"):
        check_divisibility(cfg, (4, 2))
    cfg = override(cfg, {"model": {"group_images": 2}})
    check_divisibility(cfg, (4, 2))  # 8 groups on 8 devices
    with pytest.raises(ConfigError, match=r"mesh.expert=16: must divide model.num_experts = 8"):
        check_divisibility(override(cfg, {"finetune": {"batch_size": 32}}), (1, 16))
    cfg6 = resolve(
        {
            "method": "e3",
            "model": {"ensemble_size": 2, "num_experts": 12, "group_images": 1},
            "finetune": {"batch_size": 12},
        }
    )
    # 6 experts per member, 4 per device on an expert axis of 3: a shard straddles members
    with pytest.raises(
        ConfigError,
        match=r"mesh.expert=3: splits the 6 experts of each "
        r"of M=2 members unevenly; expert axis sizes that do not: "
        r"\[1, 2, 4, 6, 12\]",
    ):
        check_divisibility(cfg6, (2, 3))
    check_divisibility(cfg6, (3, 4))  # 3 experts per device, 2 devices per member


def test_start_up_flags_are_split_off_and_single_process_needs_no_join(monkeypatch):
    for var in (
        "E3_COORDINATOR",
        "E3_PEER_TIMEOUT",
        "SLURM_NTASKS",
        "SLURM_JOB_ID",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(var, raising=False)
    settings, rest = distributed.parse(
        ["--config", "c.json", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"]
    )
    assert rest == ["--config", "c.json"]
    assert settings == {
        "coordinator": "h:1",
        "num_processes": 2,
        "process_id": 1,
        "peer_timeout": None,
    }
    assert distributed.start(["--out", "x"]) == ["--out", "x"]
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert distributed.auto_detected()
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    assert distributed.auto_detected()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    assert not distributed.auto_detected()


# -- 8 virtual devices ----------------------------------------------------------------------


def test_one_step_and_evaluation_on_meshes_equal_one_device(mesh_rows):
    rows = [r for r in mesh_rows if r["check"] == "equivalence"]
    others = ("tiling", "partitioning", "multipred", "batchensemble", "mc_dropout", "mimo")
    assert {(r["method"], tuple(r["mesh"])) for r in rows} == {
        (m, s) for m in ("vit", "vmoe", "e3", "e3_overlap") for s in ((8, 1), (4, 2), (2, 4))
    } | {(m, (4, 2)) for m in others}
    for r in rows:
        what = f"{r['method']} on {r['mesh']}"
        assert abs(r["loss"][0] - r["loss"][1]) <= 1e-5 * abs(r["loss"][0]), what
        assert r["metric_diff"] < 1e-4, what
        assert r["params_diff"] < 1e-5 and r["opt_diff"] < 1e-5, what
        assert r["probs_diff"] < 1e-5, what
        assert r["head_sharding"] == "P()", what  # head replicated
        if r["method"] not in ("vit", "batchensemble"):  # BatchEnsemble: a ViT, no experts
            # E = 8 experts, E / expert-axis of them on each device (params and momentum)
            assert r["expert_shard_sizes"] == [8 // r["mesh"][1]], what
        else:
            assert r["expert_shard_sizes"] == [], what


def test_checkpoint_saved_on_8_devices_restores_on_1_and_4_and_continues_bitwise(mesh_rows):
    rows = [r for r in mesh_rows if r["check"] == "checkpoint"]
    assert [r["devices"] for r in rows] == [1, 4]
    for r in rows:
        assert r["restored_equal"] and r["continued_bitwise"], r
        assert r["restored_step"] == 2 and r["resumed_from"] == 2 and r["step"] == 4
        assert r["restored_on_devices"] == [r["devices"]]


def test_damaged_sharded_checkpoint_falls_back_to_the_previous_step(mesh_rows):
    (r,) = [r for r in mesh_rows if r["check"] == "fallback"]
    # step 2 had one byte changed: refused, step 1 restored into the 4-device shardings
    assert r["fallbacks"] == [2] and r["restored_step"] == 1
    assert r["restored_equal"] and r["restored_on_devices"] == [4]


def test_fsdp_splits_dense_state_over_data_and_equals_one_device(mesh_rows):
    rows = {r["method"]: r for r in mesh_rows if r["check"] == "fsdp"}
    assert set(rows) == {"vmoe", "e3"}
    for name, r in rows.items():
        assert abs(r["loss"][0] - r["loss"][1]) <= 1e-5 * abs(r["loss"][0]), name
        assert r["params_diff"] < 1e-5 and r["opt_diff"] < 1e-5, name
        assert r["probs_diff"] < 1e-5, name
        # data = 4: the largest dim divisible by 4 goes to data, after the expert rule
        assert r["shapes"]["params/head/kernel"] == [32, 10]
        assert r["specs"]["params/head/kernel"] == "P('data',)", name
        assert r["specs"]["params/head/bias"] == "P()", name  # 10: not divisible by 4
        assert r["specs"]["opt_state/1/0/trace/head/kernel"] == "P('data',)", name
        experts = "params/Encoder/encoderblock_3/Moe/Mlp/Dense_0/kernel"
        assert r["shapes"][experts] == [8, 32, 64]
        assert r["specs"][experts] == "P('expert', None, 'data')", name
        assert r["specs"]["step"] == "P()", name
        # all but a few small leaves are split 4 ways more than without fsdp
        assert 3.9 < r["device_bytes_without_fsdp"] / r["device_bytes"] <= 4, name


def test_fresh_state_is_created_in_its_shardings_and_equals_one_device_bitwise(mesh_rows):
    (r,) = [r for r in mesh_rows if r["check"] == "sharded_init"]
    assert r["params_bitwise"] and r["opt_bitwise"] and r["all_placed"], r
    assert r["sharded_over_data"] > 0.9 * r["leaves"], r


def test_fresh_state_programs_never_hold_the_whole_state_on_one_device(mesh_rows):
    rows = {r["program"]: r for r in mesh_rows if r["check"] == "abstract_init"}
    assert set(rows) == {"params", "opt_state"}
    for name, r in rows.items():
        # 2 × 4 with fsdp: dense leaves split 2 ways (data), expert leaves 8 (expert × data)
        assert r["shard_bytes"] <= r["full_bytes"] / 2 + r["replicated_bytes"], (name, r)
        assert r["replicated_bytes"] <= 8, (name, r)  # at most the momentum's step count
        # XLA's own account of one device's outputs: its shards (+ alignment), no more
        assert r["shard_bytes"] <= r["output_bytes"] <= 1.02 * r["shard_bytes"], (name, r)
        # outputs and temporaries together stay below the whole state
        assert r["output_bytes"] + r["temp_bytes"] < r["full_bytes"], (name, r)


def test_tokens_move_by_all_to_all_and_nothing_is_all_gathered(mesh_rows):
    rows = {r["method"]: r for r in mesh_rows if r["check"] == "collectives"}
    assert set(rows) == {"vmoe", "e3"}
    for name, r in rows.items():
        # one MoE layer: dispatch and combine forward, their transposes backward
        assert r["ops"]["all-to-all"] == 4, (name, r["ops"])
        # E = 8 experts of H = 32, Q = 64 (kernels and biases), 2 per device on expert = 4
        assert r["expert_shapes"] == ["[8, 32, 64]", "[8, 32]", "[8, 64, 32]", "[8, 64]"]
        for shape in ("8,32,64", "8,64,32", "2,32,64", "2,64,32"):
            assert not any(f"[{shape}]" in g for g in r["all_gather_shapes"]), (name, shape)
        # nor tokens: no all-gather at all (dense weights replicated, grads all-reduced)
        assert r["ops"]["all-gather"] == 0, (name, r["all_gather_shapes"])
        assert not r["involuntary_remat"], name


def test_fsdp_mesh_option_is_validated_and_not_part_of_the_run_id():
    from e3lib.config import resolve, run_id
    from e3lib.parallel.mesh import fsdp_of

    plain = resolve({"method": "vmoe"})
    sharded = resolve({"method": "vmoe", "mesh": {"data": -1, "expert": 2, "fsdp": True}})
    assert run_id(plain) == run_id(sharded) and fsdp_of(sharded.mesh)
    assert mesh_shape(sharded.mesh, 8, 8) == (4, 2) and not fsdp_of("auto")
    with pytest.raises(ConfigError) as info:
        resolve({"mesh": {"data": -1, "fsdp": "yes"}})
    assert info.value.field == "mesh.fsdp" and "true or false" in str(info.value)
    with pytest.raises(ConfigError, match=r"options: \['fsdp'\]"):
        resolve({"mesh": {"data": -1, "replica": 2}})


# -- two processes × 4 devices through `e3 run` ----------------------------------------------

TINY_RUN = {
    "method": "e3",
    "model": {"ensemble_size": 2, "num_experts": 8, "group_images": 1, "moe_n": 1},
    "finetune": {"steps": 4, "warmup": 1, "batch_size": 8, "checkpoint_every": 2},
    "eval": {"corrupted": False, "fewshot": False, "ood": False, "batch_size": 64},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def e3_run(cfg: Path, out: Path, ckpt: Path, devices: int, extra=(), env_extra=None):
    env = dict(device_env(devices, ckpt.parent / "jax_cache"), **(env_extra or {}))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "e3lib.cli",
            "run",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--checkpoints",
            str(ckpt),
            "--log-mode",
            "plain",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def two_processes(cfg, out, ckpt, fault_on_1=None):
    port = free_port()
    procs = []
    for i in range(2):
        flags = [
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(i),
        ]
        env = {"E3_FAULT_AT_STEP": fault_on_1} if (i == 1 and fault_on_1) else None
        procs.append(e3_run(cfg, out, ckpt, 4, flags, env))
    outs = [p.communicate(timeout=900) for p in procs]
    return [p.returncode for p in procs], [o[1] for o in outs]


def records_by_key(results):
    return {
        (r["split"], r["corruption"], r["severity"], r["member"], r["metric"]): r["value"]
        for r in results["records"]
    }


def test_two_processes_run_end_to_end_write_once_and_agree_on_preemption(tmp_path):
    single = tmp_path / "single.json"
    single.write_text(json.dumps(TINY_RUN))
    meshed = tmp_path / "mesh.json"
    meshed.write_text(json.dumps(dict(TINY_RUN, mesh={"data": -1, "expert": 2})))

    ref = e3_run(single, tmp_path / "ref", tmp_path / "ck_ref", 1)
    _, err = ref.communicate(timeout=900)
    assert ref.returncode == 0, err[-3000:]
    codes, errs = two_processes(meshed, tmp_path / "mp", tmp_path / "ck_mp")
    assert codes == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    res = json.loads((tmp_path / "mp" / "results.json").read_text())
    want = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert res["provenance"]["devices"]["num_processes"] == 2
    assert res["provenance"]["devices"]["num_devices"] == 8
    assert res["provenance"]["devices"]["mesh"] == {"data": 4, "expert": 2}
    assert res["provenance"]["devices"]["writer"] == 0
    got, exp = records_by_key(res), records_by_key(want)
    assert got.keys() == exp.keys()
    for k, v in exp.items():
        if v is not None:
            assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    # results written once: only the writer's temporary-then-rename files, no stray copies
    assert sorted(p.name for p in (tmp_path / "mp").iterdir()) == [
        "curves.json",
        "predictions.npz",
        "progress.json",
        "results.json",
        "tb",
    ]
    # live metrics from process 0 alone: one event file; throughput over the 8 devices
    assert len(list((tmp_path / "mp" / "tb").iterdir())) == 1
    throughput = res["provenance"]["throughput"]
    assert throughput["num_devices"] == 8 and throughput["images_per_second_per_device"] > 0
    assert json.loads((tmp_path / "mp" / "progress.json").read_text())["num_devices"] == 8

    # SIGTERM to process 1 after step 2: both stop at the same step, save, exit 4
    codes, errs = two_processes(meshed, tmp_path / "pre", tmp_path / "ck_pre", "term:2")
    assert codes == [4, 4], errs[0][-2000:] + errs[1][-2000:]
    assert not (tmp_path / "pre" / "results.json").exists()
    assert (tmp_path / "ck_pre" / "3").is_dir() or (tmp_path / "ck_pre" / "2").is_dir()
    codes, errs = two_processes(meshed, tmp_path / "pre", tmp_path / "ck_pre")
    assert codes == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    resumed = json.loads((tmp_path / "pre" / "results.json").read_text())
    assert resumed["train"]["resumed_from_step"] in (2, 3)
    assert len(list((tmp_path / "pre" / "tb").iterdir())) == 2  # one file per attempt
    for k, v in records_by_key(resumed).items():
        if v is not None:
            assert v == pytest.approx(got[k], rel=1e-4, abs=1e-5), k


# -- e3 plan ----------------------------------------------------------------------------------


def test_plan_compiles_the_step_for_virtual_devices_and_counts_sharded_state():
    from e3lib.config import resolve
    from e3lib.cost.analytic import analytic_params

    sets = [
        "method=vmoe",
        "model.num_experts=8",
        "model.group_images=1",
        "finetune.batch_size=8",
        "finetune.warmup=0",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=FAST_XLA)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "e3lib.cli",
            "plan",
            "--set",
            *sets,
            "--devices",
            "8",
            "--chip",
            "v5e",
            "--num-classes",
            "10",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mesh"] == {"data": 1, "expert": 8} and out["devices"] == 8
    # tiny: H=32, Q=64, 2 MoE blocks of E=8 experts, each expert 2HQ + Q + H parameters
    experts = 2 * 8 * (2 * 32 * 64 + 64 + 32)
    cfg = resolve({"method": "vmoe", "model": {"num_experts": 8}})
    per_device = analytic_params(cfg, 10) - experts + experts // 8
    # params + SGD momentum (float32), the schedule's step count and the train step
    # (int32 each), rng key data (2 × uint32)
    assert out["state_bytes"] == 2 * 4 * per_device + 4 + 4 + 8
    assert out["peak_bytes"] > out["state_bytes"] and out["fits"] and out["chip_gib"] == 16
    assert out["step_tflops_per_device"] > 0


def test_h14_fresh_state_shardings_leave_no_large_leaf_whole_on_a_device():
    """H/14, E = 32, 384 px on an abstract 64-device mesh (data 2 × expert 32, fsdp): the
    shardings ``init_params`` / ``initial_state`` compile their outputs into (no devices,
    nothing allocated: ``jax.eval_shape`` and ``jax.sharding.AbstractMesh``)."""
    import jax
    import numpy as np
    from jax.sharding import AbstractMesh

    from e3lib.config import resolve
    from e3lib.cost.analytic import analytic_params
    from e3lib.models import build_model
    from e3lib.parallel.placement import Placement
    from e3lib.train.loop import param_init
    from e3lib.train.optim import finetune_optimizer

    cfg = resolve(
        {
            "method": "vmoe",
            "model": {"size": "H/14", "num_experts": 32, "num_selected": 2},
            "data": {"image_size": 384},
        }
    )
    placement = Placement(AbstractMesh((2, 32), ("data", "expert")), fsdp=True)
    params = jax.eval_shape(param_init(build_model(cfg, 1000), 384), jax.random.key(0))
    momentum = jax.eval_shape(finetune_optimizer(cfg.finetune).init, params)
    for tree in (params, momentum):
        leaves = jax.tree_util.tree_leaves(tree)
        shardings = jax.tree_util.tree_leaves(placement.state_shardings(tree))
        full = [x.size * x.dtype.itemsize for x in leaves]
        held = [
            int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
            for x, s in zip(leaves, shardings)
        ]
        # float32 parameters (and momentum) of the whole model: about 9.9 GiB
        assert abs(sum(full) - 4 * analytic_params(cfg, 1000)) <= 8
        # every leaf but the optimizer's step count is split at least over data (2)
        assert sum(f for f, h in zip(full, held) if h == f) <= 4
        assert all(h <= f // 2 for f, h in zip(full, held) if f > 4)
        # one device: the dense half plus 1/64 of the experts, under 1.2 GiB of 9.9
        assert sum(held) < 0.12 * sum(full)
