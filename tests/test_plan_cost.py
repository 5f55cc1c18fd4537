"""Fit check and cost before launch, without JAX: TPU topologies and peaks, the compile
table and the resources derived from it, the roofline, HLO collectives, the compiler's
out-of-memory message, sweep device-hours and the budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from e3lib import sweep as S
from e3lib.parallel import fitcheck, fittable, roofline

REPO = Path(__file__).resolve().parents[1]


def test_tpu_types_map_to_libtpu_topologies():
    t = fitcheck.tpu_topology
    # v3: 2 cores per chip, 2-D torus; v4 / v5p: one device per chip, 3-D; v5e: chips, 2-D
    assert [t(x) for x in ("v3-8", "v3-32", "v3-64", "v3-128", "v3-256", "v3-512")] == [
        "v3:2x2",
        "v3:4x4",
        "v3:4x8",
        "v3:8x8",
        "v3:8x16",
        "v3:16x16",
    ]
    assert [t(x) for x in ("v4-8", "v4-16", "v4-32", "v4-128")] == [
        "v4:2x2x1",
        "v4:2x2x2",
        "v4:2x2x4",
        "v4:4x4x4",
    ]
    assert t("v5p-64") == "v5p:2x4x4" and t("v5litepod-16") == "v5e:4x4"
    assert t("v5litepod-8") == "v5e:2x4"


def test_device_peaks_are_per_jax_device():
    v3 = fitcheck.device_peaks("v3")  # a core: half of a 123 TFLOP/s, 900 GB/s chip
    assert v3["flops"] == 61.5e12 and v3["hbm"] == 450e9
    assert fitcheck.device_peaks("v5p")["flops"] == 459e12
    assert fitcheck.device_peaks("h100")["hbm"] == 3350e9
    assert set(fitcheck.CHIP_PEAKS) == set(fitcheck.CHIP_GIB)


def test_roofline_of_a_step():
    # 123 TFLOP on a v3 core (61.5 TFLOP/s): 2 s; 900 GB at 450 GB/s: 2 s; 82 GB over
    # 4·656 Gbit/s / 2 cores = 164 GB/s: 0.5 s
    r = roofline.roofline(123e12, 900e9, 82e9, "v3")
    assert r["compute_s"] == pytest.approx(2.0) and r["memory_s"] == pytest.approx(2.0)
    assert r["collective_s"] == pytest.approx(0.5) and r["bound_s"] == pytest.approx(2.5)
    assert r["step_s"] == pytest.approx(2.5 / roofline.EFFICIENCY)
    m = roofline.roofline(1e12, 4.5e12, 0, "v3")
    assert m["bound"] == "memory" and m["bound_s"] == pytest.approx(10.0)
    a = roofline.analytic_step(61.5e12, "v3")
    assert a["bound_s"] == pytest.approx(1.0) and a["source"] == "analytic"
    assert roofline.device_hours(3600, 2.0, 8) == pytest.approx(16.0)


def test_collective_bytes_sum_result_shapes_of_each_kind():
    from e3lib.train.plan import collective_bytes

    hlo = "\n".join(
        [
            "  %ar = f32[1024,8]{1,0} all-reduce(f32[1024,8]{1,0} %x), replica_groups={}",
            "  %ag = bf16[4,256]{1,0} all-gather(bf16[1,256]{1,0} %y), dimensions={0}",
            "  %a2a = (f32[2,16]{1,0}, f32[2,16]{1,0}) all-to-all(f32[2,16] %p, f32[2,16] %q)",
            "  %ags = (f32[8]{0}, f32[64]{0}) all-gather-start(f32[8]{0} %z), dimensions={0}",
            "  %agd = f32[64]{0} all-gather-done((f32[8]{0}, f32[64]{0}) %ags)",
            "  %add = f32[1024,8]{1,0} add(f32[1024,8]{1,0} %ar, f32[1024,8]{1,0} %ar)",
        ]
    )
    out = collective_bytes(hlo)
    assert out["all-reduce"] == 1024 * 8 * 4
    assert out["all-gather"] == 4 * 256 * 2 + 64 * 4  # the async pair once, its result
    assert out["all-to-all"] == 2 * 2 * 16 * 4
    assert out["reduce-scatter"] == 0


def test_compiler_out_of_memory_message_is_parsed():
    from e3lib.train.plan_target import oom_verdict

    msg = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (20.01G) exceeds available HBM (15.48G)."
    )
    v = oom_verdict(msg)
    assert v["required_for"] == "HLO temporaries"
    assert v["required_bytes"] == int(20.01 * 2**30)
    assert v["available_bytes"] == int(15.48 * 2**30)
    assert oom_verdict("INVALID_ARGUMENT: bad shape") is None


def test_targets_are_parsed():
    from e3lib.train.plan_target import parse_target

    assert parse_target("cpu:16") == ("cpu", "cpu", 16)
    assert parse_target("v3-32") == ("tpu", "v3-32", 32)
    assert parse_target("v5e-16") == ("tpu", "v5litepod-16", 16)
    assert parse_target("v5p-8") == ("tpu", "v5p-8", 4)
    with pytest.raises(ValueError, match="v7-8"):
        parse_target("v7-8")


def _cfg(**over):
    from e3lib.config import as_dict, resolve

    return as_dict(resolve({"method": "vmoe", "data": {"image_size": 64}, **over}))


def test_program_key_ignores_what_never_changes_the_compiled_step():
    a = _cfg(seed=1, finetune={"lr": 0.1, "steps": 20}, model={"size": "S/32", "dropout": 0.1})
    b = _cfg(seed=2, finetune={"lr": 0.2, "steps": 99}, model={"size": "S/32", "dropout": 0.3})
    assert fittable.program_key(a) == fittable.program_key(b)
    assert fittable.program_key(a)["mesh"] == "auto"  # what e3 plan compiles
    c = _cfg(model={"size": "S/32"}, finetune={"batch_size": 512})
    assert fittable.program_key(a) != fittable.program_key(c)
    assert fittable.program_key(a, 100) != fittable.program_key(a, 1000)


def test_shipped_size_resources_hold_the_compiled_paper_grid():
    """For the sizes in the compile table, the fine-tuning slice is of the first TPU
    generation (v3, v4, v5p, v5e) where the table's paper-grid steps fit, and no smaller
    than its smallest compiled slice that holds them (heavier shipped jobs may need more:
    tests/test_sweep.py checks that the slice is the smallest holding every paper job)."""
    from e3lib.sweep.resources import preferred_slice, table_slices

    derived = table_slices(fittable.load_table())
    assert derived, "the shipped compile table holds no paper-grid entry"
    for size, by_family in derived.items():
        want = preferred_slice(by_family)
        family, n = S.SIZE_RESOURCES[size]["tpu"][0].rsplit("-", 1)
        assert want.rsplit("-", 1)[0] == family, (size, by_family)
        assert int(n) >= int(want.rsplit("-", 1)[1]), (size, by_family)


def test_table_entries_agree_with_their_own_verdicts():
    for (_, target), e in fittable.load_table().items():
        chip, devices = fitcheck.tpu_devices(target)
        assert e["devices"] == devices and e["chip"] == chip
        if e["compiler_fits"]:
            assert e["fits"] == fitcheck.fits(e["peak_bytes"], chip, fitcheck.HEADROOM)
            assert 0 < e["state_bytes"] < e["peak_bytes"] and e["step_tflops_per_device"] > 0
        else:
            assert not e["fits"] and e["oom"]["required_bytes"] > 0


def _paper_sweep(tmp_path, steps: int):
    doc = {
        "title": "cost",
        "reproduces": ["demo"],
        "base": {
            "method": "vmoe",
            "model": {"size": "S/32", "num_experts": 32, "num_selected": 2},
            "upstream": {"checkpoint": None, "steps": 1000, "batch_size": 4096},
            "data": {"image_size": 384},
            "finetune": {"batch_size": 512, "steps": steps},
        },
        "axes": [{"name": "finetune.lr", "values": [0.01, 0.03]}],
        "seeds": 1,
    }
    path = tmp_path / "cost.yaml"
    path.write_text(yaml.safe_dump(doc))
    return S.expand_sweeps([str(path)], "small"), str(path)


def test_sweep_device_hours_sum_steps_times_step_time_times_devices(tmp_path):
    plan, path = _paper_sweep(tmp_path, 10_000)
    (cost,) = S.sweep_costs(plan).values()
    fine = [r for k, r in cost["runs"].items() if k.startswith("finetune")]
    up = [r for k, r in cost["runs"].items() if k.startswith("upstream")]
    assert len(fine) == 2 and len(up) == 1  # two learning rates share one pretraining
    for r in fine:  # S/32 fine-tunes on a v3-8: 8 devices
        assert r["device_hours"] == pytest.approx(10_000 * r["step_s"] * 8 / 3600)
    assert up[0]["device_hours"] == pytest.approx(1000 * up[0]["step_s"] * 32 / 3600)
    assert cost["total"] == pytest.approx(sum(r["device_hours"] for r in fine + up))
    S.check_budget(plan)  # within the default budget


def test_a_run_of_a_billion_steps_is_refused_unless_the_budget_is_raised(tmp_path):
    plan, path = _paper_sweep(tmp_path, 10**9)
    with pytest.raises(S.SweepError) as info:
        S.check_budget(plan)
    msg = str(info.value)
    assert msg.startswith(f"{path}: finetune.steps=1000000000: run ")
    assert any(f"run {rid}: estimated" in msg for rid in plan.runs)
    assert "device-hours" in msg and "budget_run_device_hours" in msg
    with pytest.raises(S.SweepError, match="budget_device_hours"):
        S.check_budget(plan, budget_run_device_hours=1e12)
    S.check_budget(plan, budget_device_hours=1e12, budget_run_device_hours=1e12)


def test_budget_defaults_are_the_workflow_schema_defaults():
    from e3lib.sweep import cost

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]
    assert props["budget_device_hours"]["default"] == cost.DEFAULT_BUDGET_DEVICE_HOURS
    assert props["budget_run_device_hours"]["default"] == cost.DEFAULT_BUDGET_RUN_DEVICE_HOURS


def test_parse_time_checks_and_reference_estimates_import_no_jax(tmp_path):
    code = (
        "import sys\n"
        "from e3lib import sweep as S\n"
        "from e3lib.sweep.cost import reference_estimates\n"
        f"p = S.expand_sweeps([{str(REPO / 'sweeps/table13_permutation.yaml')!r}], 'paper')\n"
        "S.check_fits(p, 'paper'); S.check_budget(p)\n"
        "rows = reference_estimates()\n"
        "assert len(rows) == 2 and all(r['estimated_minutes'] > 0 for r in rows)\n"
        "assert 'jax' not in sys.modules, 'jax imported'\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_fit_check_reads_the_table_then_scales_an_anchor_then_estimates(monkeypatch):
    from e3lib.config import resolve
    from e3lib.parallel.fitcheck import GIB, analytic_bytes, tpu_need

    base = {
        "method": "vmoe",
        "model": {"size": "S/32", "num_experts": 32, "num_selected": 2},
        "data": {"image_size": 384},
        "finetune": {"batch_size": 512},
    }
    k2 = resolve(base)
    k4 = resolve({**base, "model": {**base["model"], "num_selected": 4}})
    fits_entry = {
        "key": fittable.program_key(k2.to_dict()),
        "target": "v3-8",
        "compiler_fits": True,
        "peak_bytes": 4 * GIB,
    }
    oom_entry = {
        "key": fittable.program_key(k4.to_dict()),
        "target": "v3-32",
        "compiler_fits": False,
        "oom": {"required_bytes": 20 * GIB, "required_for": "HLO temporaries"},
    }
    table = {(fittable.key_text(e["key"]), e["target"]): e for e in (fits_entry, oom_entry)}
    monkeypatch.setattr(fittable, "load_table", lambda path=None: table)
    got = tpu_need(k2, "v3-8")  # compiled: the compiler's peak
    assert got == {"bytes": 4 * GIB, "fits": True, "source": "TPU compiler"}
    got = tpu_need(k4, "v3-32")  # compiled, out of memory: does not fit
    assert not got["fits"] and got["bytes"] == 20 * GIB and "out of memory" in got["source"]
    got = tpu_need(k4, "v3-8")  # K=4 not compiled on v3-8: the K=2 figure, scaled
    ratio = analytic_bytes(k4, 8) / analytic_bytes(k2, 8)
    assert got["bytes"] == pytest.approx(4 * GIB * ratio) and "scaled" in got["source"]
    got = tpu_need(k2, "v3-64")  # nothing on v3-64: the analytic estimate
    assert got["bytes"] == analytic_bytes(k2, 64) and got["source"] == "analytic estimate"


def test_plan_without_libtpu_says_so_and_prints_the_analytic_estimate(monkeypatch, capsys):
    import json

    from e3lib.config import resolve
    from e3lib.parallel.fitcheck import GIB, analytic_bytes
    from e3lib.train import plan_cli, plan_target

    monkeypatch.setattr(plan_target, "libtpu_version", lambda: None)
    sets = ["model.size=S/32", "data.image_size=64", "finetune.batch_size=64"]
    assert plan_cli.cli_plan(["--target", "v3-32", "--json", "--set", *sets]) == 0
    out, err = capsys.readouterr()
    assert "libtpu is not installed" in err and "analytic estimate instead" in err
    got = json.loads(out)
    cfg = resolve({"model": {"size": "S/32"}, "data": {"image_size": 64},
                   "finetune": {"batch_size": 64}})  # fmt: skip
    assert got["source"] == "analytic estimate" and got["devices"] == 32
    assert got["peak_gib"] == round(analytic_bytes(cfg, 32) / GIB, 2)
    assert plan_cli.cli_plan(["--target", "v9-8", "--set", *sets]) == 2
    assert "TPU type 'v9-8'" in capsys.readouterr().err


def test_plan_sweep_prints_groups_and_totals(tmp_path, capsys):
    from e3lib.train import plan_cli

    plan, path = _paper_sweep(tmp_path, 10_000)
    (cost,) = S.sweep_costs(plan).values()
    assert plan_cli.cli_plan(["--sweep", path, "--variant", "small"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path} (small): 3 jobs, {cost['total']:,.0f} device-hours"
    fine = next(line for line in out if "finetune" in line)
    assert "S/32" in fine and "v3-8" in fine and "2 jobs" in fine
    assert out[-1].startswith(f"total: {cost['total']:,.0f} device-hours")
