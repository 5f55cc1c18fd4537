"""Training-step performance, every ratio measured in one run on this machine.

Prints:
  1. dense-matmul GFLOP/s of the machine (jnp.dot, float32, square matrices);
  2. achieved GFLOP/s of the demo training step (XLA's compiled FLOPs / measured step time)
     and its ratio to (1), for the demo's methods (size ``demo``), the tests' ``tiny`` size
     and a larger config;
  3. E³ / V-MoE step-time ratio beside their compiled-FLOPs ratio;
  4. sparse dispatch: step time at E = 4, 8, 16, 32 with K fixed (flat), and growing with K
     and with the capacity factor;
  5. compiled peak memory of E³ and V-MoE training steps beside the Appendix C.3 estimate
     memory_params + memory_activations · (L_before + M·L_after) / L_total;
  6. the persistent compilation cache: the same step compiled by two fresh processes.

The training step is the one ``e3 run`` uses (``e3lib.train.make_train_step``: loss,
gradient, clipping, SGD-momentum update), compiled once and called on device-resident inputs.

    .venv/bin/python benchmarks/bench_step.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_step.py --quick    # fewer repetitions
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The `demo` model size (ViT-Ti width, e3lib/models/sizes.py) on the embedded data at
# 16 px: the smallest size whose CPU step is not bound by per-kernel overhead.
DEMO = {"model": {"size": "demo", "num_experts": 8}, "data": {"dataset": "demo", "image_size": 16}}
DEMO_LABEL = f"{DEMO['model']['size']}, {DEMO['data']['image_size']} px, B=64"
DEMO_CASES = {
    "vit": {"method": "vit"},
    "vmoe": {"method": "vmoe", "model": {"num_selected": 2}},
    "e3": {"method": "e3", "model": {"num_selected": 1, "ensemble_size": 2}},
}
NUM_CLASSES = 10
LARGER = [("S/32", 128, 32)]  # (size, image px, batch) beyond the demo
SMALLER = [("tiny", 16, 64)]  # below it: the tests' size, bound by per-kernel overhead


def merged(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for k, v in part.items():
            out[k] = merged(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def matmul_gflops(n: int, reps: int) -> float:
    """Best-of-``reps`` GFLOP/s of one (n×n)·(n×n) float32 product (2n³ FLOPs)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = min(_timed(lambda: dot(a, b).block_until_ready()) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Step:
    """A compiled training step of one run config, ready to time."""

    def __init__(self, overrides: dict, batch: int):
        import jax.numpy as jnp

        from e3lib.config import resolve
        from e3lib.models import build_model
        from e3lib.train import Job, finetune_optimizer, init_params, initial_state, make_train_step

        self.cfg = cfg = resolve(merged(overrides, {"finetune": {"batch_size": batch}}))
        size = cfg.data.image_size
        model = build_model(cfg, NUM_CLASSES)
        optimizer = finetune_optimizer(cfg.finetune)
        job = Job(
            model=model,
            optimizer=optimizer,
            num_classes=NUM_CLASSES,
            images=np.zeros((1, size, size, 3), np.uint8),
            labels=np.zeros(1, np.int32),
            batch_size=batch,
            steps=cfg.finetune.steps,
            seeds=(0,),
        )
        self.state = initial_state(optimizer, init_params(model, 0, size), 0)
        rng = np.random.default_rng(0)
        self.images = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
        self.labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32)
        step = make_train_step(job)
        t0 = time.perf_counter()
        lowered = step.lower(self.state, self.images, self.labels)
        self.compiled = lowered.compile()
        self.compile_seconds = time.perf_counter() - t0
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        self.flops = float(cost["flops"])
        self.batch = batch

    def warm_up(self) -> None:
        import jax

        for _ in range(2):
            self.state, metrics = self.compiled(self.state, self.images, self.labels)
        jax.block_until_ready(metrics)

    def one_step(self) -> float:
        """Wall time of one step (inputs already on the device, result waited for)."""
        import jax

        t0 = time.perf_counter()
        self.state, metrics = self.compiled(self.state, self.images, self.labels)
        jax.block_until_ready(metrics)
        return time.perf_counter() - t0

    def seconds_per_step(self, reps: int) -> float:
        """Fastest of ``reps`` steps after two warm-up steps.

        The minimum, not the mean: the machine is shared, and other processes only ever
        add time, so the fastest step is the best estimate of the step's own cost.
        """
        self.warm_up()
        return min(self.one_step() for _ in range(reps))


class MatmulProbe:
    """(n×n)·(n×n) float32 product, timed alongside training steps so both see the same load."""

    def __init__(self, n: int = 1024):
        import jax
        import jax.numpy as jnp

        self.a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        self.b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        self.dot = jax.jit(jnp.dot)
        self.flops = 2.0 * n**3

    def warm_up(self) -> None:
        self.dot(self.a, self.b).block_until_ready()

    def one_step(self) -> float:
        return _timed(lambda: self.dot(self.a, self.b).block_until_ready())


_STEPS: dict = {}


def step_of(overrides: dict, batch: int) -> Step:
    """Compile each (config, batch) once per benchmark run."""
    key = json.dumps([overrides, batch], sort_keys=True)
    if key not in _STEPS:
        _STEPS[key] = Step(overrides, batch)
    return _STEPS[key]


def interleaved(steps: list[Step], reps: int) -> list[float]:
    """Fastest step time of each, measured alternately so that load changes hit all alike."""
    for step in steps:
        step.warm_up()
    best = [float("inf")] * len(steps)
    for _ in range(reps):
        for i, step in enumerate(steps):
            best[i] = min(best[i], step.one_step())
    return best


def section(title: str) -> None:
    print(f"\n== {title}")


def throughput(reps: int, matmul: float) -> dict:
    section(
        "2. achieved GFLOP/s of training steps (compiled FLOPs / step time), each group "
        "timed in alternation with a 1024² matmul"
    )
    groups = [
        [
            (f"demo {name} ({DEMO_LABEL})", merged(DEMO, case), 64)
            for name, case in DEMO_CASES.items()
        ]
    ]
    for size, image, batch in SMALLER + LARGER:
        groups.append(
            [
                (
                    f"{name} {size}, {image} px, B={batch}",
                    merged(
                        {"model": {"size": size, "num_experts": 8}, "data": {"image_size": image}},
                        DEMO_CASES[name],
                    ),
                    batch,
                )
                for name in ("vit", "vmoe", "e3")
            ]
        )
    rows = {}
    probe = MatmulProbe(1024)
    print(
        f"{'config':40s} {'GFLOP/step':>10s} {'ms/step':>9s} {'GFLOP/s':>8s} "
        f"{'matmul GFLOP/s':>14s} {'ratio':>6s}"
    )
    for group in groups:
        steps = [step_of(overrides, batch) for _, overrides, batch in group]
        big = steps[0].flops > 1e10
        times = interleaved(steps + [probe], max(3, reps // 4) if big else reps)
        mm_rate = max(probe.flops / times[-1] / 1e9, matmul)
        for (label, _, _), step, sec in zip(group, steps, times):
            rate = step.flops / sec / 1e9
            rows[label] = dict(
                flops=step.flops,
                seconds=sec,
                gflops_per_s=rate,
                matmul_gflops_per_s=mm_rate,
                ratio=rate / mm_rate,
            )
            print(
                f"{label:40s} {step.flops / 1e9:10.3f} {1e3 * sec:9.2f} {rate:8.1f} "
                f"{mm_rate:14.1f} {rate / mm_rate:6.1%}"
            )
    print("(matmul GFLOP/s: the larger of section 1 and the matmul timed within the group)")
    return rows


def e3_vs_vmoe(reps: int) -> dict:
    section("3. E³ / V-MoE: step-time ratio beside compiled-FLOPs ratio")
    out = {}
    pairs = [(f"demo ({DEMO_LABEL})", DEMO, 64)]
    pairs += [
        (
            f"{size}, {image} px, E=8, B={batch}",
            {"model": {"size": size, "num_experts": 8}, "data": {"image_size": image}},
            batch,
        )
        for size, image, batch in LARGER
    ]
    for label, base, batch in pairs:
        e3 = step_of(merged(base, DEMO_CASES["e3"]), batch)
        vm = step_of(merged(base, DEMO_CASES["vmoe"]), batch)
        t_e3, t_vm = interleaved([e3, vm], max(3, reps // 4) if vm.flops > 1e10 else reps)
        time_ratio, flop_ratio = t_e3 / t_vm, e3.flops / vm.flops
        out[label] = dict(time_ratio=time_ratio, flops_ratio=flop_ratio)
        print(
            f"{label:28s} E³(K=1,M=2) {1e3 * t_e3:7.2f} ms, V-MoE(K=2) {1e3 * t_vm:7.2f} ms: "
            f"time ratio {time_ratio:.3f}, FLOPs ratio {flop_ratio:.3f}, "
            f"time/FLOPs {time_ratio / flop_ratio:.3f}"
        )
    return out


def dispatch_scaling(reps: int) -> dict:
    section("4. sparse dispatch: V-MoE step time vs E (K=2 fixed), vs K and vs capacity factor")
    base = {"method": "vmoe", "model": {"size": "mini"}, "data": {"image_size": 16}}
    out: dict = {"E": {}, "K": {}, "capacity": {}}
    for key, values, field in [
        ("E", (4, 8, 16, 32), "num_experts"),
        ("K", (1, 2, 4), "num_selected"),
        ("capacity", (1.0, 2.0, 4.0), "capacity_factor"),
    ]:
        fixed = {"num_experts": 32, "num_selected": 2}
        steps = [step_of(merged(base, {"model": dict(fixed, **{field: v})}), 64) for v in values]
        for v, step, sec in zip(values, steps, interleaved(steps, reps)):
            out[key][v] = dict(seconds=sec, flops=step.flops)
        first = out[key][values[0]]
        cells = "  ".join(
            f"{field}={v}: {1e3 * out[key][v]['seconds']:.1f} ms "
            f"(x{out[key][v]['seconds'] / first['seconds']:.2f} time, "
            f"x{out[key][v]['flops'] / first['flops']:.2f} FLOPs)"
            for v in values
        )
        print(f"mini, 16 px, B=64 | {cells}")
    return out


def memory(batch: int) -> dict:
    section("5. compiled peak memory of training steps vs the Appendix C.3 estimate")
    from e3lib.cost.xla import compiled_train_step
    from e3lib.models.sizes import size_spec

    out = {}
    for size in ("B/32", "L/32"):
        res = {}
        for name in ("vmoe", "e3"):
            overrides = merged(
                {"model": {"size": size, "num_experts": 32}, "data": {"image_size": 384}},
                DEMO_CASES[name],
            )
            from e3lib.config import resolve

            cfg = resolve(overrides)
            compiled, _ = compiled_train_step(cfg, 1000, batch)
            mem = compiled.memory_analysis()
            res[name] = dict(
                args=mem.argument_size_in_bytes,
                out=mem.output_size_in_bytes,
                temp=mem.temp_size_in_bytes,
                alias=mem.alias_size_in_bytes,
            )
            res[name]["peak"] = (
                res[name]["args"] + res[name]["out"] + res[name]["temp"] - res[name]["alias"]
            )
            spec = size_spec(cfg)
        L = spec["layers"]
        before = spec["moe_layers"][0]
        after = L - before
        M = 2
        vm = res["vmoe"]
        params_part = vm["args"] + vm["out"] - vm["alias"]
        estimate = params_part + vm["temp"] * (before + M * after) / L
        measured = res["e3"]["peak"]
        out[size] = dict(
            vmoe_peak=vm["peak"],
            e3_peak=measured,
            estimate=estimate,
            activation_factor=(before + M * after) / L,
            measured_activation_factor=(res["e3"]["temp"] / vm["temp"]),
        )
        gib = 2**30
        print(
            f"{size}, 384 px, B={batch}, E=32: V-MoE(K=2) peak {vm['peak'] / gib:.2f} GiB "
            f"(params+grads {params_part / gib:.2f}, activations/temporaries "
            f"{vm['temp'] / gib:.2f}); E³(K=1,M=2) peak {measured / gib:.2f} GiB; "
            f"C.3 estimate {estimate / gib:.2f} GiB (activations x(L_before+M·L_after)/L = "
            f"x({before}+{M}·{after})/{L} = x{(before + M * after) / L:.3f}; measured "
            f"temporaries x{res['e3']['temp'] / vm['temp']:.3f}); measured/estimate "
            f"{measured / estimate:.3f}"
        )
    return out


CACHE_PROBE = "--cache-probe"


def cache_probe() -> None:
    """Child process: compile the demo E³ step with the persistent cache on; print timings."""
    from e3lib.train import setup_jax_cache

    cache = setup_jax_cache()
    step = Step(merged(DEMO, DEMO_CASES["e3"]), 64)
    files = sum(len(f) for _, _, f in os.walk(cache))
    print(json.dumps({"compile_seconds": step.compile_seconds, "cache_files": files}))


def compilation_cache() -> dict:
    section("6. persistent compilation cache: the demo E³ step compiled by two fresh processes")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, E3_JAX_CACHE=cache)
        for run in ("first", "second"):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, CACHE_PROBE],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            wall = time.perf_counter() - t0
            out[run] = dict(json.loads(proc.stdout.strip().splitlines()[-1]), process_seconds=wall)
    f, s = out["first"], out["second"]
    print(
        f"first process: lower+compile {f['compile_seconds']:.2f} s (cache then holds "
        f"{f['cache_files']} files), whole process {f['process_seconds']:.1f} s"
    )
    print(
        f"second process: lower+compile {s['compile_seconds']:.2f} s, whole process "
        f"{s['process_seconds']:.1f} s; compile speed-up "
        f"x{f['compile_seconds'] / s['compile_seconds']:.1f}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--json", help="also write the measurements to this JSON file")
    p.add_argument(CACHE_PROBE, action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cache_probe:
        cache_probe()
        return 0
    import jax

    reps = 5 if args.quick else 30
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
        f"cpu count {os.cpu_count()}"
    )
    section("1. machine dense-matmul GFLOP/s (jnp.dot float32, best of repetitions)")
    matmul = {n: matmul_gflops(n, 5 if args.quick else 20) for n in (1024, 2048)}
    peak = max(matmul.values())
    for n, rate in matmul.items():
        print(f"n={n}: {rate:.1f} GFLOP/s")
    print(f"best: {peak:.1f} GFLOP/s")
    results = {"matmul_gflops_per_s": matmul}
    results["throughput"] = throughput(reps, peak)
    results["e3_vs_vmoe"] = e3_vs_vmoe(reps)
    results["dispatch"] = dispatch_scaling(max(10, reps // 2))
    results["memory"] = memory(32)
    results["cache"] = compilation_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
