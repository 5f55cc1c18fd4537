"""The training loop shared by both stages: one job (or S packed seeds), its train step,
deterministic batches, checkpoints, preemption and divergence.

Notation: B batch size, M members (predictions per image), C classes, S seeds packed in
one process, T total steps, t step index (0-based), H×W image size.

Loss = mean over images and members of member cross-entropy + Σ-layers aux loss, with
optional mixup (``finetune.mixup`` = α: λ ~ Beta(α, α), each image mixed with the next
one in the batch).

Micro-steps (``Job.microsteps``, gradient accumulation, ``e3lib.train.micro``): the batch,
after mixup, is cut into micro-batches whose gradients are averaged into the one update.
The parameters are stored in ``initial_state``'s ``param_dtype``.

Determinism and resumption
--------------------------
The training state is ``{"params", "opt_state", "step", "rng"}``. The randomness of step
t (router noise, dropout, mixup) is ``fold_in(rng, t)`` and its batch is
``batch_indices(N, B, seed, t)``, so a run restored from a checkpoint at step t replays
exactly the steps an uninterrupted run would (bitwise on CPU). A streamed job
(``Job.stream``, e3lib.data.stream.StepBatches) saves its input iterator state inside each
checkpoint and restores it on resume, so it continues at the exact next example.
Checkpoints are written every ``checkpoint_every`` steps (``e3lib.checkpoint``), each with
the loss history so far (``e3lib.curves.CurveRecorder``: a point every ``Job.log_every``
steps, the mean loss, cross-entropy, aux loss and learning rate of its steps; and, if the job
has a held-out set, ``Job.heldout``'s loss and error every ``Job.heldout_every`` steps and
at the last), so a resumed run's history equals the uninterrupted run's. SIGTERM
saves a checkpoint at the current step and raises ``Preempted``; a non-finite loss
raises ``Diverged``.

Devices: ``Job.placement`` (e3lib.parallel.placement.Placement; None = one device) places
the state, compiles the step with the mesh's shardings, loads each process's rows of a
batch and agrees on stopping across processes (docs/scale.md, lines marked
``[parallel hook]``). Checkpoints restore straight into the placed state's shardings, on
the same or a different number of devices.

Seed packing: several configs that differ only in ``seed`` train in one process with the
step function ``jax.vmap``-ed over a leading seed axis S of params, optimizer state,
rng and batches; each seed keeps its own batch order and randomness.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from e3lib.checkpoint import TrainCheckpoints
from e3lib.curves import MEASURED, CurveRecorder
from e3lib.progress import Progress
from e3lib.train.micro import accumulated, check_micro_batches
from e3lib.train.signals import Diverged, Preempted, StopFlag, fault_injection, inject_fault


@dataclass
class Job:
    """What the loop needs: model, optimizer, data and schedule of one (packed) job."""

    model: Any
    optimizer: Any
    num_classes: int
    images: np.ndarray  # (N, H, W, 3) uint8 training set
    labels: np.ndarray  # (N,)
    batch_size: int
    steps: int
    seeds: tuple[int, ...]  # one per packed run
    mixup: float = 0.0
    checkpoint_every: int = 25
    desc: str = "train"
    stream: Any = None  # e3lib.data.stream.StepBatches; None = images/labels above
    placement: Any = None  # e3lib.parallel.placement.Placement; None = one device
    log_every: int | None = None  # steps per loss-history point; None = ⌈steps/100⌉
    lr_at: Callable | None = None  # step indices → learning rates (the schedule), for curves
    # params → {"loss": [...], "error": [...]} (one entry per seed) on a held-out set,
    # evaluated every ``heldout_every`` steps and at the last (e3lib.curves); None = none
    heldout: Callable | None = None
    heldout_every: int = 0
    microsteps: int = 1  # μ micro-batches per step (gradient accumulation)
    microsteps_field: str = "finetune.microsteps"  # the config field μ comes from
    group_images: int = 1  # images per routing group a micro-batch keeps whole (1: no groups)
    monitor: Any = None  # e3lib.monitor.RunMonitor: live metrics, progress.json, throughput

    @property
    def packed(self) -> bool:
        return len(self.seeds) > 1


def init_params(model, seed: int, image_size: int, placement=None):
    """Fresh parameters of ``model`` from ``seed`` (the init key is split from the seed).

    [parallel hook] With a mesh placement each leaf is computed straight into its sharding
    (``jit_into_shardings``): no device ever holds a whole model. The values equal the
    single-device ones (partitionable random bits)."""
    import jax

    k_init = jax.random.split(jax.random.key(seed))[0]
    init = param_init(model, image_size)
    return jit_into_shardings(init, placement, k_init)(k_init)


def param_init(model, image_size: int) -> Callable:
    """init key -> fresh parameters of ``model`` for images of ``image_size`` pixels."""
    import jax.numpy as jnp

    def init(key):
        x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        return model.init({"params": key}, x, train=False)["params"]

    return init


def jit_into_shardings(fn: Callable, placement, *args):
    """``jax.jit(fn)``; on a mesh placement with ``out_shardings`` = the state shardings of
    ``fn``'s outputs (their shapes from ``jax.eval_shape`` on ``args``, arrays or shape
    structs), so each output is created in its shards. The jit object: ``.lower`` works."""
    import jax

    if placement is None or placement.mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, out_shardings=placement.state_shardings(jax.eval_shape(fn, *args)))


def initial_state(
    optimizer, params, seed: int, param_dtype: str = "float32", placement=None
) -> dict:
    """The train state of ``params``, whose floating leaves are stored in ``param_dtype``;
    with a mesh placement the optimizer state is created in its shardings
    (``jit_into_shardings``)."""
    import jax
    import jax.numpy as jnp

    k_train = jax.random.split(jax.random.key(seed))[1]
    dtype = jnp.dtype(param_dtype)

    def stored(x):
        # Own copies: the train step donates its state, and ``params`` may share buffers
        # with the upstream tree it was converted from.
        floating = jnp.issubdtype(jnp.result_type(x), jnp.floating)
        return jnp.array(x, dtype) if floating else jnp.array(x)

    params = jax.tree_util.tree_map(stored, params)
    on_mesh = placement is not None and placement.mesh is not None
    opt_init = jit_into_shardings(optimizer.init, placement, params) if on_mesh else optimizer.init
    return {
        "params": params,
        "opt_state": opt_init(params),
        "step": jnp.asarray(0, jnp.int32),
        "rng": jax.random.key_data(k_train),
    }


def make_train_step(job: Job) -> Callable:
    """(state, images (B,H,W,3), labels (B,)) → (state, metrics); vmapped over S if packed."""
    import jax
    import jax.numpy as jnp
    import optax

    from e3lib.models.losses import ensemble_train_loss

    model, optimizer, num_classes, alpha = job.model, job.optimizer, job.num_classes, job.mixup
    micro, mesh = job.microsteps, placement_of(job).mesh
    shards = 1 if mesh is None else mesh.size  # blocks of batch rows, one per device
    check_micro_batches(job.batch_size, micro, shards, job.group_images, job.microsteps_field)

    def loss_fn(params, images, targets, k_drop, k_gate):
        logits, aux = model.apply(
            {"params": params}, images, train=True, rngs={"dropout": k_drop, "gating": k_gate}
        )
        ce = ensemble_train_loss(logits, targets)  # logits (B, M, C)
        return ce + aux["aux_loss"], (ce, aux["aux_loss"])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    gradients = accumulated(grad_fn, micro, shards)  # the plain grad_fn when μ = 1

    def step_fn(state, images, labels):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        k_mix, k_drop, k_gate = jax.random.split(rng, 3)
        targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # (B, C)
        if alpha > 0:
            lam = jax.random.beta(k_mix, alpha, alpha)
            images = lam * images + (1 - lam) * jnp.roll(images, 1, axis=0)
            targets = lam * targets + (1 - lam) * jnp.roll(targets, 1, axis=0)
        (loss, ce, aux_loss), grads = gradients(state["params"], images, targets, k_drop, k_gate)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": state["rng"],
        }
        return new_state, {
            "loss": loss,
            "ce": ce,
            "aux_loss": aux_loss,
            "grad_norm": optax.tree.norm(grads),
        }

    # [parallel hook] jit with the mesh's in/out shardings (plain jit on one device)
    return placement_of(job).jit_step(jax.vmap(step_fn) if job.packed else step_fn, job.packed)


def placement_of(job: Job):
    """The job's placement (a single-device one when it has none)."""
    from e3lib.parallel.placement import Placement

    return job.placement or Placement(None)


def batch_at(job: Job, step: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """The batch of ``step``: (B,H,W,3) float32, (B,); with a leading S axis if packed.
    ``rows``: only those rows of it (the part this process's devices hold); a stream
    reads only this process's block of rows (e3lib.data.stream), which are those."""
    from e3lib.data import batch_indices, to_float

    if job.stream is not None:
        images, labels = job.stream.batch(step)
        _check_stream_rows(rows, labels.shape[-1], job.batch_size)
        return images, labels
    per_seed = [batch_indices(len(job.labels), job.batch_size, s, step)[rows] for s in job.seeds]
    idx = np.stack(per_seed) if job.packed else per_seed[0]  # (S, B) or (B,)
    return to_float(job.images[idx]), job.labels[idx]


def _check_stream_rows(rows: slice, local: int, batch: int) -> None:
    """A stream's block p of b rows must be the rows the devices of process p hold."""
    if rows == slice(None):
        return
    from e3lib.parallel.distributed import process_index

    want = slice(process_index() * local, (process_index() + 1) * local)
    if (rows.start or 0, rows.stop or batch) != (want.start, want.stop):
        raise ValueError(f"this process's devices hold batch rows {rows}, its stream {want}")


def _input_state(job: Job, step: int):
    """The stream's iterator states just before batch ``step`` (None for in-memory data)."""
    return None if job.stream is None else job.stream.state_at(step)


def stack_states(states: Sequence[dict]) -> dict:
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def unstack_state(state: dict, i: int) -> dict:
    import jax

    return jax.tree_util.tree_map(lambda x: x[i], state)


def train(
    job: Job,
    state: dict,
    checkpoints: TrainCheckpoints | None,
    progress_mode: str = "auto",
    stop: StopFlag | None = None,
) -> tuple[dict, dict]:
    """Run ``job`` from ``state`` (resuming from the latest checkpoint if there is one)
    to ``job.steps``. Returns the final state and a summary of the run."""
    # [parallel hook] Commit every leaf (one device, or sharded on the mesh) before the
    # restore, so Orbax restores straight into the target shardings. (The step's outputs
    # are committed; mixing committed and uncommitted inputs would compile it twice.)
    placement = placement_of(job)
    state = placement.put_state(state, job.packed)
    resumed_from = None
    recorder = CurveRecorder(job.steps, len(job.seeds), job.log_every, job.lr_at)
    if checkpoints is not None:
        # The newest step that passes its integrity check; damaged ones are set aside.
        restored, resumed_from = checkpoints.restore_verified(state)
        if restored is not None:
            state = placement.put_state(restored, job.packed)  # a no-op unless moved
            input_state = checkpoints.input_state(resumed_from)
            if job.stream is not None and input_state is not None:
                job.stream.restore(input_state, _step_of(placement, state))
            recorder.restore(checkpoints.history(resumed_from), _step_of(placement, state))

    def batch_of(t):  # this process's rows of batch t, as (global) arrays
        return placement.put_batch(lambda rows: batch_at(job, t, rows), job.batch_size, job.packed)

    step = _step_of(placement, state)
    if resumed_from is None and step > 0:  # started from a state past step 0, no checkpoint
        recorder.restore(None, step)
    if recorder.heldout_every not in (None, job.heldout_every):  # interval changed on resume
        recorder.restart_heldout(step)
    step_fn = make_train_step(job)
    progress = Progress(job.steps, job.desc, progress_mode, start=step)
    if job.monitor is not None:
        job.monitor.begin(step, recorder, placement.fetch)
    t0, compile_seconds, metrics = time.perf_counter(), None, None
    fault = fault_injection()
    batch = batch_of(step) if step < job.steps else None
    try:
        while step < job.steps:
            if placement.agree(stop is not None and stop.stop):  # same step on every host
                if checkpoints is not None:
                    checkpoints.save(
                        step,
                        state,
                        force=True,
                        extra=_input_state(job, step),
                        history=recorder.state(),
                    )
                raise Preempted(step)
            t_step = time.perf_counter()
            state, metrics = step_fn(state, *batch)
            # The step runs asynchronously: gather the next batch on the host meanwhile.
            batch = batch_of(step + 1) if step + 1 < job.steps else None
            losses = np.atleast_1d(placement.fetch(metrics["loss"]))  # (S,) or (1,)
            if compile_seconds is None:
                compile_seconds = time.perf_counter() - t_step
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                raise Diverged(step, float(losses[bad[0]]), int(bad[0]) if job.packed else None)
            # the loss is already on the host (``losses``); fetch only the other quantities
            rest = {k: placement.fetch(metrics[k]) for k in MEASURED if k != "loss"}
            recorder.add(step, {"loss": losses, **rest})
            step_seconds = time.perf_counter() - t_step
            step += 1
            if job.heldout is not None and (step % job.heldout_every == 0 or step == job.steps):
                recorder.add_heldout(step, job.heldout_every, job.heldout(state["params"]))
            if job.monitor is not None:  # before the checkpoint: its points are on disk
                job.monitor.after_step(step, step_seconds, metrics, recorder)
            if checkpoints is not None:
                checkpoints.save(
                    step, state, extra=_input_state(job, step), history=recorder.state()
                )
            progress.update(step, float(losses.mean()))
            inject_fault(fault, step)
    finally:
        progress.close()
    last = (
        {}
        if metrics is None
        else {k: np.atleast_1d(placement.fetch(v)).tolist() for k, v in metrics.items()}
    )
    return state, {
        "steps": job.steps,
        "resumed_from_step": resumed_from,
        "checkpoint_fallbacks": [] if checkpoints is None else checkpoints.fallbacks,
        "train_seconds": time.perf_counter() - t0,
        "first_step_seconds": compile_seconds,
        "final": last,
        "curves": [recorder.curve(i) for i in range(len(job.seeds))],  # one per seed
    }


def _step_of(placement, state: dict) -> int:
    return int(placement.fetch(state["step"]).reshape(-1)[0])
