"""Training speed of the demo fine-tune, measured in one run on this machine.

Prints:
1. steps/s of the demo fine-tune (model size `demo`, 16 px, batch 64) for ViT,
   V-MoE (K=2) and E³ (K=1, M=2), after the first (compiling) step, through the real training loop;
2. the E³ / V-MoE step-time ratio beside the ratio of their XLA-compiled training FLOPs;
3. two seeds of E³ fine-tuned (and evaluated) packed in one ``e3 run`` process vs two
   separate processes, each with an empty compilation cache (compile time included).

    .venv/bin/python benchmarks/bench_train.py [--steps 60]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path

from bench_step import DEMO as DEMO_BASE  # the demo's model and data (size `demo`, 16 px)

CASES = {
    "ViT": {"method": "vit"},
    "V-MoE": {"method": "vmoe", "model": {"num_selected": 2}},
    "E3": {"method": "e3", "model": {"num_selected": 1, "ensemble_size": 2}},
}


def case_config(name: str, steps: int, **extra):
    """The resolved config (``RunConfig``) of a case."""
    from e3lib.config import resolve

    over = json.loads(json.dumps(DEMO_BASE))
    for k, v in CASES[name].items():
        over[k] = dict(over.get(k, {}), **v) if isinstance(v, dict) else v
    over["finetune"] = {"steps": steps, "warmup": min(10, steps // 4)}
    for k, v in extra.items():
        over[k] = dict(over.get(k, {}), **v)
    return resolve(over)


def loop_steps_per_second(cfg) -> tuple[float, float]:
    """(steady-state steps/s, first-step seconds) of the fine-tuning loop, no checkpoints."""
    from e3lib import train
    from e3lib.data import load_suite
    from e3lib.models import build_model

    suite = load_suite(cfg)
    model = build_model(cfg, suite.num_classes)
    job = train.finetune_job([cfg], suite, model)
    state = train.initial_state(job.optimizer, train.init_params(model, cfg.seed, 16), cfg.seed)
    with redirect_stderr(io.StringIO()):
        _, summary = train.train(job, state, None, "plain")
    steady = summary["train_seconds"] - summary["first_step_seconds"]
    return (job.steps - 1) / steady, summary["first_step_seconds"]


def run_process(configs: list[Path], outs: list[Path], cache: str) -> float:
    env = dict(os.environ, E3_JAX_CACHE=cache)
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "e3lib.cli",
            "run",
            "--config",
            *map(str, configs),
            "--out",
            *map(str, outs),
            "--log-mode",
            "plain",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    a = p.parse_args()
    from e3lib.cost import xla

    print(
        f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
        f"(other processes slow every number below)"
    )
    print(
        f"\n1. demo fine-tune loop ({DEMO_BASE['model']['size']}, "
        f"{DEMO_BASE['data']['image_size']} px, batch 64, {a.steps} steps)"
    )
    rates = {}
    for name in CASES:
        cfg = case_config(name, a.steps)
        rate, first = loop_steps_per_second(cfg)
        rates[name] = rate
        print(f"   {name:6s} {rate:7.1f} steps/s   first step (compile) {first:5.1f} s")

    e3_cfg, vmoe_cfg = case_config("E3", a.steps), case_config("V-MoE", a.steps)
    f_e3 = xla.xla_gflops(e3_cfg, 8, batch=64)
    f_vmoe = xla.xla_gflops(vmoe_cfg, 8, batch=64)
    print("\n2. E3 (K=1, M=2) vs V-MoE (K=2)")
    print(f"   step-time ratio E3/V-MoE      {rates['V-MoE'] / rates['E3']:.2f}")
    print(
        f"   compiled-FLOPs ratio E3/V-MoE {f_e3 / f_vmoe:.2f}   "
        f"({f_e3 * 1e3:.2f} vs {f_vmoe * 1e3:.2f} MFLOPs per image, XLA cost analysis)"
    )

    print(f"\n3. two E3 seeds, {a.steps} steps + full evaluation, empty compilation cache")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfgs = []
        for seed in (0, 1):
            cfgs.append(tmp / f"seed{seed}.json")
            cfgs[-1].write_text(json.dumps(case_config("E3", a.steps).to_dict() | {"seed": seed}))
        separate = sum(
            run_process([c], [tmp / f"sep{i}"], str(tmp / f"cache{i}")) for i, c in enumerate(cfgs)
        )
        packed = run_process(cfgs, [tmp / "pk0", tmp / "pk1"], str(tmp / "cache_packed"))
        train_s = [
            json.loads((tmp / d / "results.json").read_text())["train"]["train_seconds"]
            for d in ("sep0", "sep1", "pk0")
        ]
        print(
            f"   separate processes: {separate:6.1f} s wall "
            f"(training loops {train_s[0] + train_s[1]:.1f} s)"
        )
        print(f"   one packed process: {packed:6.1f} s wall (training loop {train_s[2]:.1f} s)")
        print(f"   speed-up packed vs separate: {separate / packed:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
