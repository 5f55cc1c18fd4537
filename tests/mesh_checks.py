"""Multi-device checks run in ONE subprocess with 8 virtual CPU devices (see
tests/test_parallel.py): every mesh and method in one JAX process, so the suite pays for one
start-up. Prints one JSON line per check. Not collected by pytest."""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from model_helpers import random_params  # noqa: E402

from e3lib import train  # noqa: E402
from e3lib.config import resolve  # noqa: E402
from e3lib.evaluate import make_predict_fn  # noqa: E402
from e3lib.models import build_model  # noqa: E402
from e3lib.parallel.mesh import build_mesh  # noqa: E402
from e3lib.parallel.placement import Placement  # noqa: E402
from e3lib.train import loop  # noqa: E402
from e3lib.train.cache import setup_jax_cache  # noqa: E402

setup_jax_cache()  # $E3_JAX_CACHE: repeated programs (checkpoint runs) compile once

E, B, PX, CLASSES = 8, 8, 8, 10
METHODS = {
    "vit": {"method": "vit"},
    "vmoe": {"method": "vmoe", "model": {"num_selected": 2}},
    "e3": {"method": "e3", "model": {"ensemble_size": 2}},
    "e3_overlap": {"method": "e3", "model": {"ensemble_size": 2, "overlap": 2}},
    "tiling": {"method": "tiling", "model": {"ensemble_size": 2}},
    "partitioning": {"method": "partitioning", "model": {"ensemble_size": 2}},
    "multipred": {"method": "multipred", "model": {"num_selected": 2, "num_predictions": 2}},
    "batchensemble": {"method": "batchensemble", "model": {"ensemble_size": 2}},
    "mc_dropout": {
        "method": "mc_dropout",
        "model": {"ensemble_size": 2, "expert_dropout": 0.5},
    },
    "mimo": {
        "method": "mimo",
        "model": {"ensemble_size": 2, "mimo_input_repetition": 0.5, "mimo_batch_repetition": 2},
    },
}
MESHES = [(8, 1), (4, 2), (2, 4)]
# every mesh for the methods above the line; one with a non-trivial expert axis for the rest
ALL_MESHES = ("vit", "vmoe", "e3", "e3_overlap")


def config(name, mesh=None):
    over = json.loads(json.dumps(METHODS[name]))
    over.setdefault("model", {}).update(num_experts=E, group_images=1, moe_n=1)
    over["finetune"] = {"batch_size": B, "steps": 4, "warmup": 0}  # lr > 0 at step 0
    over["data"] = {"image_size": PX}
    if mesh is not None:
        over["mesh"] = {"data": mesh[0], "expert": mesh[1]}
    return resolve(over)


def data(n=B, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, PX, PX, 3), dtype=np.uint8),
        rng.integers(0, CLASSES, n).astype(np.int64),
    )


def job_of(cfg, placement):
    model = build_model(cfg, CLASSES)
    images, labels = data(4 * B)
    return train.Job(
        model=model,
        optimizer=train.finetune_optimizer(cfg.finetune),
        num_classes=CLASSES,
        images=images,
        labels=labels,
        batch_size=B,
        steps=cfg.finetune.steps,
        seeds=(cfg.seed,),
        placement=placement,
    )


def one_step_and_eval(cfg, placement):
    job = job_of(cfg, placement)
    params = random_params(job.model, jnp.zeros((1, PX, PX, 3)), train=False, seed=1)
    state = placement.put_state(train.initial_state(job.optimizer, params, 0))
    step = train.make_train_step(job)
    batch = placement.put_batch(lambda rows: train.batch_at(job, 0, rows), B)
    state, metrics = step(state, *batch)
    probs, _ = make_predict_fn(job.model, placement)(state["params"], train.batch_at(job, 1)[0])
    return state, {k: float(placement.fetch(v)) for k, v in metrics.items()}, np.asarray(probs)


def max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def expert_shards(state):
    """Leading sizes of the addressable shards of every expert leaf (params + momentum)."""
    out = set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys = jax.tree_util.keystr(path)
        if "'Moe'" in keys and "'Mlp'" in keys:
            out |= {s.data.shape[0] for s in leaf.addressable_shards}
    return sorted(out)


def check_equivalence():
    for name in METHODS:
        ref_state, ref_metrics, ref_probs = one_step_and_eval(config(name), Placement(None))
        for shape in MESHES if name in ALL_MESHES else [(4, 2)]:
            cfg = config(name, shape)
            placement = Placement.for_config(cfg)
            state, metrics, probs = one_step_and_eval(cfg, placement)
            print(
                json.dumps(
                    {
                        "check": "equivalence",
                        "method": name,
                        "mesh": list(shape),
                        "loss": [ref_metrics["loss"], metrics["loss"]],
                        "metric_diff": max(abs(ref_metrics[k] - metrics[k]) for k in ref_metrics),
                        "params_diff": max_diff(ref_state["params"], state["params"]),
                        "opt_diff": max_diff(ref_state["opt_state"], state["opt_state"]),
                        "probs_diff": float(np.max(np.abs(ref_probs - probs))),
                        "expert_shard_sizes": expert_shards(state),
                        "head_sharding": str(state["params"]["head"]["kernel"].sharding.spec),
                    }
                ),
                flush=True,
            )


def check_checkpoint():
    """Save on 8 devices at steps 1 and 2; restore on 1 and on 4 devices and continue to
    step 4. The restored state must equal the saved one bitwise, and the continuation must
    equal, bitwise, the same steps run on that device count from the in-memory 8-device
    state. A damaged step 2 (one byte changed) makes ``restore_verified`` fall back to step
    1, restored into the 4-device shardings."""
    import shutil
    import tempfile

    from e3lib.checkpoint import TrainCheckpoints

    tmp = Path(tempfile.mkdtemp())
    cfg8 = config("e3", (4, 2))
    p8 = Placement.for_config(cfg8)
    job = job_of(cfg8, p8)
    params = random_params(job.model, jnp.zeros((1, PX, PX, 3)), train=False, seed=1)
    init = train.initial_state(job.optimizer, params, 0)
    saved = {}
    for steps in (1, 2):
        job.steps = steps
        ckpt = TrainCheckpoints(tmp / "ck8", every=1)
        state8, _ = train.train(job, init, ckpt, "plain")
        ckpt.close()
        saved[steps] = jax.tree_util.tree_map(lambda x: np.asarray(p8.fetch(x)), state8)
    mesh4 = build_mesh({"data": 2, "expert": 2}, cfg8, jax.devices()[:4])
    targets = {1: Placement(None), 4: Placement(mesh4)}

    def same(tree, ref, placement):
        return all(
            np.array_equal(np.asarray(placement.fetch(a)), b)
            for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(ref))
        )

    def on_devices(tree):
        return sorted({len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(tree)})

    for n, placement in targets.items():
        shutil.copytree(tmp / "ck8", tmp / f"ck{n}")
        ck = TrainCheckpoints(tmp / f"ck{n}", every=100)
        restored, at = ck.restore_verified(placement.put_state(init))
        jn = job_of(cfg8, placement)
        jn.steps = 4
        resumed, summary = train.train(jn, init, ck, "plain")
        ck.close()
        uninterrupted, _ = train.train(jn, placement.put_state(saved[2]), None, "plain")
        print(
            json.dumps(
                {
                    "check": "checkpoint",
                    "devices": n,
                    "restored_step": at,
                    "restored_equal": same(restored, saved[2], placement),
                    "restored_on_devices": on_devices(restored),
                    "resumed_from": summary["resumed_from_step"],
                    "continued_bitwise": max_diff(resumed, uninterrupted) == 0.0,
                    "step": int(np.asarray(placement.fetch(resumed["step"]))),
                }
            ),
            flush=True,
        )
    # integrity fallback with sharded state
    shutil.copytree(tmp / "ck8", tmp / "damaged")
    victim = max(
        (p for p in (tmp / "damaged" / "2").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    ck = TrainCheckpoints(tmp / "damaged", every=100)
    restored, at = ck.restore_verified(targets[4].put_state(init))
    print(
        json.dumps(
            {
                "check": "fallback",
                "restored_step": at,
                "fallbacks": [f["step"] for f in ck.fallbacks],
                "restored_equal": same(restored, saved[1], targets[4]),
                "restored_on_devices": on_devices(restored),
            }
        ),
        flush=True,
    )
    ck.close()
    shutil.rmtree(tmp)


def fsdp_config(name, mesh):
    cfg = config(name, mesh)
    return resolve(dict(cfg.to_dict(), mesh={"data": mesh[0], "expert": mesh[1], "fsdp": True}))


def leaf_specs(state):
    return {
        train_path(path): str(leaf.sharding.spec)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
    }


def train_path(path):
    from e3lib.parallel.sharding import path_string

    return path_string(path)


def device_bytes(tree):
    """Bytes one device holds of ``tree`` (device 0's shards)."""
    dev = jax.devices()[0]
    return sum(
        s.data.nbytes
        for leaf in jax.tree_util.tree_leaves(tree)
        for s in leaf.addressable_shards
        if s.device == dev
    )


def check_fsdp():
    """One step and an evaluation with dense state split over ``data`` (4 × 2, fsdp) equal
    one device's; the shardings of a few leaves and device 0's share of the state."""
    for name in ("vmoe", "e3"):
        ref_state, ref_metrics, ref_probs = one_step_and_eval(config(name), Placement(None))
        cfg = fsdp_config(name, (4, 2))
        placement = Placement.for_config(cfg)
        state, metrics, probs = one_step_and_eval(cfg, placement)
        plain = Placement.for_config(config(name, (4, 2)))
        replicated_state = plain.put_state(ref_state)
        specs = leaf_specs(state)
        print(
            json.dumps(
                {
                    "check": "fsdp",
                    "method": name,
                    "loss": [ref_metrics["loss"], metrics["loss"]],
                    "params_diff": max_diff(ref_state["params"], state["params"]),
                    "opt_diff": max_diff(ref_state["opt_state"], state["opt_state"]),
                    "probs_diff": float(np.max(np.abs(ref_probs - probs))),
                    "specs": {k: v for k, v in specs.items() if SPEC_KEYS.search(k)},
                    "shapes": {
                        train_path(p): list(leaf.shape)
                        for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
                        if SPEC_KEYS.search(train_path(p))
                    },
                    "device_bytes": device_bytes(state),
                    "device_bytes_without_fsdp": device_bytes(replicated_state),
                }
            ),
            flush=True,
        )


SPEC_KEYS = __import__("re").compile(
    r"^params/(head/kernel|head/bias|Encoder/encoderblock_\d+/Moe/Mlp/Dense_0/kernel)$"
    r"|^opt_state/.*head/kernel$|^step$"
)


def check_sharded_init():
    """Fresh parameters and optimizer state created in their shardings on 4 × 2 (fsdp)
    equal, bitwise, those of one device, and are placed by the sharding rules."""
    cfg = fsdp_config("vmoe", (4, 2))
    placement = Placement.for_config(cfg)
    model = build_model(cfg, CLASSES)
    optimizer = train.finetune_optimizer(cfg.finetune)
    ref = train.initial_state(optimizer, train.init_params(model, 3, PX), 3)
    fresh = train.init_params(model, 3, PX, placement)
    state = train.initial_state(optimizer, fresh, 3, placement=placement)
    made = {"params": state["params"], "opt_state": state["opt_state"]}  # step, rng: scalars
    want = placement.state_shardings(made)
    placed = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda x, s: x.sharding == s, made, want)
    )
    print(
        json.dumps(
            {
                "check": "sharded_init",
                "params_bitwise": max_diff(ref["params"], state["params"]) == 0.0,
                "opt_bitwise": max_diff(ref["opt_state"], state["opt_state"]) == 0.0,
                "all_placed": all(placed),
                "leaves": len(placed),
                "sharded_over_data": sum(
                    "data" in str(x.sharding.spec) for x in jax.tree_util.tree_leaves(made)
                ),
            }
        ),
        flush=True,
    )


def check_abstract_init():
    """The fresh-state programs of a run on 2 × 4 with fsdp, compiled on abstract arguments
    (nothing allocated): the bytes of the whole state, of one device's shards by the
    shardings, and of one device's outputs and temporaries by XLA's memory analysis."""

    cfg = fsdp_config("vmoe", (2, 4))
    placement = Placement.for_config(cfg)
    model = build_model(cfg, CLASSES)
    key = jax.random.key(0)
    init = loop.jit_into_shardings(loop.param_init(model, PX), placement, key)
    params = jax.eval_shape(loop.param_init(model, PX), key)
    opt_init = loop.jit_into_shardings(
        train.finetune_optimizer(cfg.finetune).init, placement, params
    )
    programs = {"params": init.lower(key), "opt_state": opt_init.lower(params)}
    for name, lowered in programs.items():
        compiled = lowered.compile()
        outs = jax.tree_util.tree_leaves(lowered.out_info)
        shardings = jax.tree_util.tree_leaves(compiled.output_shardings)
        full = [int(np.prod(o.shape, dtype=np.int64)) * o.dtype.itemsize for o in outs]
        shard = [
            int(np.prod(sh.shard_shape(o.shape), dtype=np.int64)) * o.dtype.itemsize
            for o, sh in zip(outs, shardings)
        ]
        mem = compiled.memory_analysis()
        print(
            json.dumps(
                {
                    "check": "abstract_init",
                    "program": name,
                    "full_bytes": sum(full),
                    "shard_bytes": sum(shard),
                    "replicated_bytes": sum(f for f, b in zip(full, shard) if b == f),
                    "largest_leaf_bytes": max(full),
                    "output_bytes": int(mem.output_size_in_bytes),
                    "temp_bytes": int(mem.temp_size_in_bytes),
                    "sharded_leaves": sum(b < f for f, b in zip(full, shard)),
                    "leaves": len(full),
                }
            ),
            flush=True,
        )


@contextlib.contextmanager
def stderr_to(path):
    """fd 2 (where XLA's C++ logging goes) into ``path`` while inside."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def compiled_step_text(cfg):
    """HLO text of the run's train step compiled for its mesh (never executed)."""
    from e3lib.train.plan import abstract_state

    model, optimizer, state = abstract_state(cfg, CLASSES)
    placement = Placement.for_config(cfg)
    job = job_of(cfg, placement)
    jitted = {}

    class Lowering(Placement):  # keeps the jit object the step is built with
        def jit_step(self, step_fn, packed=False):
            jitted["step"] = self.jitted_step(step_fn, state, packed)
            return jitted["step"]

    job.placement = Lowering(placement.mesh, placement.fsdp)
    train.make_train_step(job)
    shardings = job.placement.state_shardings(state)
    state_in = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings
    )
    batch = job.placement.put_batch(lambda rows: train.batch_at(job, 0, rows), B)
    return jitted["step"].lower(state_in, *batch).compile().as_text(), state


def check_collectives():
    """V-MoE (K=2) and E³ on data 2 × expert 4: the compiled step's collectives, the
    shapes all-gathers produce, the expert weights' shapes, and XLA's log while compiling."""
    import re
    import tempfile

    for name in ("vmoe", "e3"):
        cfg = config(name, (2, 4))
        log = Path(tempfile.mkdtemp()) / "xla.log"
        with stderr_to(log):
            text, state = compiled_step_text(cfg)
        ops = {
            op: len(re.findall(rf"\s{op}(-start)?\(", text))
            for op in ("all-to-all", "all-gather", "all-reduce", "reduce-scatter")
        }
        gathered = [
            m.group(1) for m in re.finditer(r"= (\(?[a-z0-9]+\[[^=]*?) all-gather(-start)?\(", text)
        ]
        experts = sorted(
            {
                str(list(leaf.shape))
                for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]
                if "/Moe/Mlp/" in train_path(path)
            }
        )
        print(
            json.dumps(
                {
                    "check": "collectives",
                    "method": name,
                    "ops": ops,
                    "all_gather_shapes": gathered,
                    "expert_shapes": experts,
                    "expert_shard_leading": E // 4,
                    "involuntary_remat": "Involuntary full rematerialization" in log.read_text(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    for what in sys.argv[1:] or [
        "equivalence",
        "checkpoint",
        "fsdp",
        "sharded_init",
        "abstract_init",
        "collectives",
    ]:
        globals()[f"check_{what}"]()
