"""``e3 plan --target v3-8``: the TPU compiler (libtpu, abstract topology, no TPU) compiles
the real train step, and its out-of-memory verdict is "does not fit" with the amounts.
Skipped without libtpu (``pip install -e '.[tpu-plan]'``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu not installed (pip install -e '.[tpu-plan]'): no TPU compiler",
)


def plan(tmp_path: Path, *assignments: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), E3_PLAN_CACHE=str(tmp_path / "cache"))
    out = subprocess.run(
        [sys.executable, "-m", "e3lib.cli", "plan", "--target", "v3-8", "--json", "--set"]
        + list(assignments),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tpu_compiler_figures_of_a_small_vmoe_on_v3_8(tmp_path):
    from e3lib import tree
    from e3lib.config import resolve
    from e3lib.cost.analytic import analytic_gflops

    sets = (
        "method=vmoe model.size=tiny model.num_experts=8 model.num_selected=2 "
        "data.image_size=32 finetune.batch_size=64"
    ).split()
    r = plan(tmp_path, *sets)
    assert r["source"] == "TPU compiler (libtpu)" and r["devices"] == 8 and r["chip"] == "v3"
    assert r["versions"]["libtpu"] and r["mesh"] == {"data": 1, "expert": 8}
    assert r["compiler_fits"] and r["fits"] and not r["cached"]
    parts = ("argument_bytes", "output_bytes", "temp_bytes", "state_bytes")
    assert all(r[k] > 0 for k in parts)
    assert r["peak_bytes"] == (
        r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] - r["alias_bytes"]
    )
    assert r["state_bytes"] <= r["argument_bytes"] < r["peak_bytes"]
    # the compiler's FLOPs per device agree with the analytic count of the step (B/D images)
    cfg = resolve(tree.parse_assignments(sets))
    analytic = analytic_gflops(cfg) * 1e9 * 64 / 8
    assert 0.8 < r["step_tflops_per_device"] * 1e12 / analytic < 1.25
    assert r["bytes_accessed_per_device"] > 0 and r["collective_bytes_per_device"] > 0
    rf = r["roofline"]
    assert rf["bound_s"] == pytest.approx(max(rf["compute_s"], rf["memory_s"]) + rf["collective_s"])
    # compiled once: the second call reads the cache
    assert plan(tmp_path, *sets)["cached"]


def test_tpu_compiler_out_of_memory_is_does_not_fit_with_the_amounts(tmp_path):
    # 3137 tokens per image, 128 images per core: ~20 GiB of temporaries on a 16 GiB core
    r = plan(tmp_path, "method=vit", "model.size=tiny", "data.image_size=224",
             "finetune.batch_size=1024")  # fmt: skip
    assert r["fits"] is False and r["compiler_fits"] is False
    oom = r["oom"]
    assert oom["kind"] == "CompileTimeHbmOom" and oom["required_for"] == "HLO temporaries"
    assert oom["required_bytes"] > oom["available_bytes"] > 15 * 2**30
