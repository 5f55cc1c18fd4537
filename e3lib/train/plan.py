"""The ``e3 plan`` command: compile a run's real train step for D virtual devices.

Compiles ``e3lib.train.loop.make_train_step`` with the mesh's shardings ahead of time, on
abstract arguments (nothing is allocated or executed), and reports per-device memory from
the compiled program (``memory_analysis``: arguments + outputs + temporaries − donated
aliases) beside the chip's memory, the step's FLOPs (XLA cost analysis, per device) and
the mesh. ``--analytic`` prints the calibrated closed form instead
(``e3lib.parallel.fitcheck.analytic_bytes``).

Notation: D devices, B global batch, E experts.

The compiled program is XLA:CPU's, so fusion and layout differ somewhat from TPU/GPU; the
figures estimate the same program's footprint, they are not a measurement on the chip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from e3lib.parallel.fitcheck import CHIP_GIB, GIB, analytic_bytes, fits

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


def abstract_state(cfg: RunConfig, num_classes: int):
    """Model, optimizer and the train state as shape structs (nothing allocated)."""
    import jax
    import jax.numpy as jnp

    from e3lib.models import build_model
    from e3lib.train.loop import initial_state
    from e3lib.train.optim import finetune_optimizer

    model = build_model(cfg, num_classes)
    optimizer = finetune_optimizer(cfg.finetune)
    size = cfg.data.image_size

    def init():
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        params = model.init({"params": jax.random.key(0)}, x, train=False)["params"]
        return initial_state(optimizer, params, cfg.seed, cfg.model.param_dtype)

    return model, optimizer, jax.eval_shape(init)


def compile_step(cfg: RunConfig, num_classes: int = 1000, devices=None) -> dict:
    """AOT-compile the run's train step on its mesh; returns the plan's numbers."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from e3lib.models.registry import routing_group_images
    from e3lib.parallel import sharding as shd
    from e3lib.parallel.mesh import build_mesh, fsdp_of
    from e3lib.parallel.placement import Placement
    from e3lib.train.loop import Job, make_train_step

    devices = list(jax.devices() if devices is None else devices)
    mesh = build_mesh(cfg.mesh or "auto", cfg, devices)
    model, optimizer, state = abstract_state(cfg, num_classes)

    class Lowering(Placement):  # hands back the jit object instead of a caller
        def jit_step(self, step_fn, packed=False):
            return self.jitted_step(step_fn, state, packed)

    placement = Lowering(mesh, fsdp_of(cfg.mesh))
    B, size = cfg.finetune.batch_size, cfg.data.image_size
    job = Job(
        model=model,
        optimizer=optimizer,
        num_classes=num_classes,
        images=None,
        labels=None,
        batch_size=B,
        steps=cfg.finetune.steps,
        seeds=(cfg.seed,),
        mixup=float(cfg.finetune.mixup),
        placement=placement,
        microsteps=cfg.finetune.microsteps,
        group_images=routing_group_images(cfg),
    )
    shardings = placement.state_shardings(state)
    state_in = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings
    )
    batch = shd.batch_sharding(mesh)
    images = jax.ShapeDtypeStruct((B, size, size, 3), jnp.float32, sharding=batch)
    labels = jax.ShapeDtypeStruct((B,), jnp.int32, sharding=batch)
    t0 = time.perf_counter()
    compiled = make_train_step(job).lower(state_in, images, labels).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}

    def shard_bytes(struct, sharding) -> int:
        shape = sharding.shard_shape(struct.shape)
        return int(np.prod(shape, dtype=np.int64)) * struct.dtype.itemsize

    state_bytes = sum(
        shard_bytes(s, sh)
        for s, sh in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(shardings))
    )
    return {
        "size": cfg.model.size,
        "method": cfg.method,
        "devices": len(devices),
        "mesh": dict(zip(mesh.axis_names, mesh.devices.shape)),
        "batch": B,
        "image_size": size,
        "peak_bytes": int(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        ),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "state_bytes": int(state_bytes),
        "step_tflops_per_device": float(cost.get("flops", float("nan"))) / 1e12,
        "compile_seconds": round(seconds, 1),
    }


def cli_plan(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="e3 plan",
        description="Compile a run's train step for "
        "D virtual devices (never executed) and print per-device "
        "memory beside the chip's, step FLOPs and the mesh.",
    )
    p.add_argument("--config", help="run config (JSON or YAML); --set fields override it")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--chip", choices=sorted(CHIP_GIB), default="v4")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--analytic", action="store_true", help="closed-form estimate only")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from e3lib import tree
    from e3lib.config import resolve
    from e3lib.errors import ConfigError
    from e3lib.safeyaml import YamlInputError, load_config_file

    try:
        raw = load_config_file(a.config) if a.config else {}
        cfg = resolve(tree.merge(raw, tree.parse_assignments(a.set)))
    except (ConfigError, YamlInputError, OSError, ValueError) as err:
        print(f"e3 plan: {err}", file=sys.stderr)
        return 2
    if a.analytic:
        out = {
            "size": cfg.model.size,
            "method": cfg.method,
            "devices": a.devices,
            "peak_bytes": analytic_bytes(cfg, a.devices, a.num_classes),
        }
    else:
        # Read when the backend starts: the first device query below, unless something
        # in this process already started it (then the device count tells).
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={a.devices}"
        )
        import jax

        if jax.device_count() != a.devices:
            print(
                f"e3 plan: JAX already started with {jax.device_count()} devices; run "
                "in a fresh process",
                file=sys.stderr,
            )
            return 2
        try:
            out = compile_step(cfg, a.num_classes)
        except ConfigError as err:
            print(f"e3 plan: {err}", file=sys.stderr)
            return 2
    out["chip"], out["chip_gib"] = a.chip, CHIP_GIB[a.chip]
    out["fits"] = fits(out["peak_bytes"], a.chip)
    out["peak_gib"] = round(out["peak_bytes"] / GIB, 2)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>24}: {v}")
    return 0
