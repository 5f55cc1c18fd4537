"""The compiled train step behind ``e3 plan`` (``e3lib.train.plan_cli``): the run's real
step (``e3lib.train.loop.make_train_step`` with the mesh's shardings) compiled ahead of time
on abstract arguments for a list of devices (virtual CPU devices, or the abstract devices of
a TPU slice from libtpu: ``e3lib.train.plan_target``). Nothing is allocated or executed.

Reported per device: memory from the compiled program (``memory_analysis``: arguments +
outputs + temporaries − donated aliases), the state's share of it, the step's FLOPs and
bytes accessed (XLA cost analysis) and the bytes produced by collectives (the compiled HLO).

Notation: D devices, B global batch, E experts.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


_COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute")
_HLO_OP = re.compile(r"=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(_COLLECTIVES) + r")(?:-start)?\(")
_HLO_ARRAY = re.compile(r"\b(pred|[a-z]+[0-9]+)\[([0-9,]*)\]")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes per device produced by each kind of collective in a compiled (partitioned)
    HLO module: the sum of its result shapes (an async pair counted once, at its start)."""
    out = dict.fromkeys(_COLLECTIVES, 0)
    for line in hlo_text.splitlines():
        m = _HLO_OP.search(line)
        if not m:
            continue
        sizes = []
        for dtype, dims in _HLO_ARRAY.findall(m.group("type")):
            n = _ITEMSIZE.get(dtype, 8 if dtype.endswith("64") else 4)
            for d in filter(None, dims.split(",")):
                n *= int(d)
            sizes.append(n)
        # an async start's tuple also holds its operand (and sync flags): count the result
        out[m.group("op")] += max(sizes, default=0) if "-start(" in line else sum(sizes)
    return out


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
    collectives = collective_bytes(compiled.as_text())

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
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "state_bytes": int(state_bytes),
        "step_tflops_per_device": float(cost.get("flops", float("nan"))) / 1e12,
        "bytes_accessed_per_device": float(cost.get("bytes accessed", float("nan"))),
        "collective_bytes_per_device": float(sum(collectives.values())),
        "collectives": collectives,
        "compile_seconds": round(seconds, 1),
    }
