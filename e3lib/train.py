"""Upstream pretraining and downstream fine-tuning loops (the ``e3 upstream`` and
``e3 run`` commands).

Notation: B batch size, M members (predictions per image), C classes, S seeds packed in
one process, T total steps, t step index (0-based), H×W image size.

Recipes
-------
- Fine-tuning (paper App. A.3/A.4, reference configs): SGD with momentum 0.9
  (``finetune.momentum``), gradient global-norm clipping at 10 (``finetune.grad_clip``;
  0 disables it), linear warmup to ``finetune.lr`` over ``finetune.warmup`` steps then
  cosine or linear decay to ``finetune.end_lr`` at step T; optional mixup
  (``finetune.mixup`` = α: λ ~ Beta(α, α), each image mixed with the next one in the batch).
  Loss = mean over images and members of member cross-entropy + Σ-layers aux loss.
- Upstream (V-MoE paper's upstream recipe, standing in for JFT checkpoints): Adam
  (β₁ 0.9, β₂ 0.999) with decoupled weight decay ``upstream.weight_decay``, global-norm
  clipping at 1, linear warmup then linear decay to 0, training capacity factor
  ``upstream.capacity_factor`` (1.05).

Determinism and resumption
--------------------------
The training state is ``{"params", "opt_state", "step", "rng"}``. The randomness of step
t (router noise, dropout, mixup) is ``fold_in(rng, t)`` and its batch is
``batch_indices(N, B, seed, t)``, so a run restored from a checkpoint at step t replays
exactly the steps an uninterrupted run would (bitwise on CPU). Checkpoints are written
every ``finetune.checkpoint_every`` steps (``e3lib.checkpoint``). SIGTERM saves a
checkpoint at the current step and exits with ``EXIT_PREEMPTED``; a non-finite loss
stops the run with ``EXIT_DIVERGED`` and writes ``diverged.json`` (never results.json).

Seed packing: several configs that differ only in ``seed`` train in one process with the
step function ``jax.vmap``-ed over a leading seed axis S of params, optimizer state,
rng and batches; each seed keeps its own batch order and randomness.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from e3lib.checkpoint import TrainCheckpoints, atomic_write_json
from e3lib.config import (ConfigError, resolve, run_id, size_shape, upstream_config,
                          upstream_id)
from e3lib.data.loaders import DatasetNotFoundError
from e3lib.progress import MODES as PROGRESS_MODES
from e3lib.progress import Progress
from e3lib.provenance import provenance, utc_now

EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PREEMPTED = 0, 2, 3, 4
REPO = Path(__file__).resolve().parent.parent


def setup_jax_cache() -> str:
    """Persistent XLA compilation cache: ``$E3_JAX_CACHE`` or ``<repo>/.jax_cache``."""
    import jax

    cache = os.environ.get("E3_JAX_CACHE") or str(REPO / ".jax_cache")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return cache


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float, seed_index: int | None = None):
        self.step, self.loss, self.seed_index = step, loss, seed_index
        which = "" if seed_index is None else f" (packed seed #{seed_index})"
        super().__init__(f"training diverged at step {step}{which}: loss = {loss}")


class Preempted(RuntimeError):
    def __init__(self, step: int):
        self.step = step
        super().__init__(f"preempted (SIGTERM) at step {step}; checkpoint saved")


class StopFlag:
    """Set by SIGTERM; the loop checks it between steps."""

    def __init__(self):
        self.stop = False
        self.previous = None

    def install(self) -> "StopFlag":
        self.previous = signal.signal(signal.SIGTERM,
                                      lambda signum, frame: setattr(self, "stop", True))
        return self

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _fault_injection() -> tuple[str, int] | None:
    """``E3_FAULT_AT_STEP=kill:N`` (SIGKILL) or ``term:N`` (SIGTERM): the process sends
    itself that signal right after step N completes. For fault-injection tests."""
    spec = os.environ.get("E3_FAULT_AT_STEP")
    if not spec:
        return None
    kind, _, step = spec.partition(":")
    if kind not in ("kill", "term") or not step.isdigit():
        raise ValueError(f"E3_FAULT_AT_STEP={spec!r}: expected 'kill:N' or 'term:N'")
    return kind, int(step)


# ----------------------------------------------------------------------------------------
# Optimizers and schedules (Optax).

def lr_schedule(kind: str, peak: float, warmup: int, steps: int, end: float,
                field: str = "finetune"):
    import optax

    if warmup >= steps:
        raise ConfigError(f"{field}.warmup", warmup, f"must be < {field}.steps = {steps}")
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, end)
    if kind == "linear":
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                     optax.linear_schedule(peak, end, steps - warmup)],
                                    [warmup])
    raise ConfigError(f"{field}.schedule", kind, "allowed: ['cosine', 'linear']")


def finetune_optimizer(ft: Mapping[str, Any]):
    import optax

    sched = lr_schedule(ft["schedule"], ft["lr"], ft["warmup"], ft["steps"], ft["end_lr"])
    parts = [optax.clip_by_global_norm(ft["grad_clip"])] if ft["grad_clip"] > 0 else []
    return optax.chain(*parts, optax.sgd(sched, momentum=ft["momentum"]))


def upstream_optimizer(up: Mapping[str, Any]):
    import optax

    sched = lr_schedule("linear", up["lr"], up["warmup"], up["steps"], 0.0, field="upstream")
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(sched, b1=0.9, b2=0.999, weight_decay=up["weight_decay"]))


# ----------------------------------------------------------------------------------------
# One training job (or S packed ones).

@dataclass
class Job:
    """What the loop needs: model, optimizer, data and schedule of one (packed) job."""

    model: Any
    optimizer: Any
    num_classes: int
    images: np.ndarray          # (N, H, W, 3) uint8 training set
    labels: np.ndarray          # (N,)
    batch_size: int
    steps: int
    seeds: tuple[int, ...]      # one per packed run
    mixup: float = 0.0
    checkpoint_every: int = 25
    desc: str = "train"

    @property
    def packed(self) -> bool:
        return len(self.seeds) > 1


def init_params(model, seed: int, image_size: int):
    """Fresh parameters of ``model`` from ``seed`` (the init key is split from the seed)."""
    import jax
    import jax.numpy as jnp

    k_init = jax.random.split(jax.random.key(seed))[0]
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(lambda k: model.init({"params": k}, x, train=False))(k_init)["params"]


def initial_state(optimizer, params, seed: int) -> dict:
    import jax
    import jax.numpy as jnp

    k_train = jax.random.split(jax.random.key(seed))[1]
    # Own copies: the train step donates its state, and ``params`` may share buffers with
    # the upstream tree it was converted from.
    params = jax.tree_util.tree_map(jnp.array, params)
    return {"params": params, "opt_state": optimizer.init(params),
            "step": jnp.asarray(0, jnp.int32), "rng": jax.random.key_data(k_train)}


def make_train_step(job: Job) -> Callable:
    """(state, images (B,H,W,3), labels (B,)) → (state, metrics); vmapped over S if packed."""
    import jax
    import jax.numpy as jnp
    import optax

    from e3lib.models.losses import ensemble_train_loss

    model, optimizer, num_classes, alpha = job.model, job.optimizer, job.num_classes, job.mixup

    def step_fn(state, images, labels):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        k_mix, k_drop, k_gate = jax.random.split(rng, 3)
        targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # (B, C)
        if alpha > 0:
            lam = jax.random.beta(k_mix, alpha, alpha)
            images = lam * images + (1 - lam) * jnp.roll(images, 1, axis=0)
            targets = lam * targets + (1 - lam) * jnp.roll(targets, 1, axis=0)

        def loss_fn(params):
            logits, aux = model.apply({"params": params}, images, train=True,
                                      rngs={"dropout": k_drop, "gating": k_gate})
            ce = ensemble_train_loss(logits, targets)  # logits (B, M, C)
            return ce + aux["aux_loss"], (ce, aux["aux_loss"])

        (loss, (ce, aux_loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {"params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
        return new_state, {"loss": loss, "ce": ce, "aux_loss": aux_loss,
                           "grad_norm": optax.tree.norm(grads)}

    return jax.jit(jax.vmap(step_fn) if job.packed else step_fn, donate_argnums=(0,))


def batch_at(job: Job, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch of ``step``: (B,H,W,3) float32, (B,); with a leading S axis if packed."""
    from e3lib.data import batch_indices, to_float

    per_seed = [batch_indices(len(job.labels), job.batch_size, s, step) for s in job.seeds]
    idx = np.stack(per_seed) if job.packed else per_seed[0]   # (S, B) or (B,)
    return to_float(job.images[idx]), job.labels[idx]


def stack_states(states: Sequence[dict]) -> dict:
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def unstack_state(state: dict, i: int) -> dict:
    import jax

    return jax.tree_util.tree_map(lambda x: x[i], state)


def train(job: Job, state: dict, checkpoints: TrainCheckpoints | None,
          progress_mode: str = "auto", stop: StopFlag | None = None) -> tuple[dict, dict]:
    """Run ``job`` from ``state`` (resuming from the latest checkpoint if there is one)
    to ``job.steps``. Returns the final state and a summary of the run."""
    resumed_from = None
    if checkpoints is not None:
        # Newest step that passes its integrity check; damaged ones are set aside.
        restored, resumed_from = checkpoints.restore_verified(state)
        if restored is not None:
            state = restored
    # Commit every leaf to the device: the step's outputs are committed, and mixing
    # committed and uncommitted inputs would compile the step a second time.
    import jax

    state = jax.device_put(state, jax.devices()[0])
    step = int(np.asarray(state["step"]).reshape(-1)[0])
    step_fn = make_train_step(job)
    progress = Progress(job.steps, job.desc, progress_mode, start=step)
    t0, compile_seconds, metrics = time.perf_counter(), None, None
    fault = _fault_injection()
    batch = batch_at(job, step) if step < job.steps else None
    try:
        while step < job.steps:
            if stop is not None and stop.stop:
                if checkpoints is not None:
                    checkpoints.save(step, state, force=True)
                raise Preempted(step)
            t_step = time.perf_counter()
            state, metrics = step_fn(state, *batch)
            # The step runs asynchronously: gather the next batch on the host meanwhile.
            batch = batch_at(job, step + 1) if step + 1 < job.steps else None
            losses = np.atleast_1d(np.asarray(metrics["loss"]))  # (S,) or (1,)
            if compile_seconds is None:
                compile_seconds = time.perf_counter() - t_step
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                raise Diverged(step, float(losses[bad[0]]),
                               int(bad[0]) if job.packed else None)
            step += 1
            if checkpoints is not None:
                checkpoints.save(step, state)
            progress.update(step, float(losses.mean()))
            if fault is not None and step == fault[1]:
                os.kill(os.getpid(), signal.SIGKILL if fault[0] == "kill" else signal.SIGTERM)
    finally:
        progress.close()
    last = {} if metrics is None else \
        {k: np.atleast_1d(np.asarray(v)).tolist() for k, v in metrics.items()}
    return state, {"steps": job.steps, "resumed_from_step": resumed_from,
                   "checkpoint_fallbacks": [] if checkpoints is None else checkpoints.fallbacks,
                   "train_seconds": time.perf_counter() - t0,
                   "first_step_seconds": compile_seconds, "final": last}


# ----------------------------------------------------------------------------------------
# Upstream.

def upstream_model_config(ucfg: Mapping[str, Any]) -> dict:
    """A resolved run config describing the upstream model (for ``build_model``)."""
    model = {"size": ucfg["size"], "capacity_factor": ucfg["capacity_factor"],
             "representation": ucfg["representation"]}
    if ucfg["method"] == "vmoe":
        model.update(num_experts=ucfg["num_experts"], num_selected=ucfg["num_selected"],
                     moe_placement=ucfg["moe_placement"], moe_n=ucfg["moe_n"])
    return resolve({"method": ucfg["method"], "seed": ucfg["seed"], "model": model,
                    "data": {"image_size": ucfg["image_size"]}})


def pretrain_upstream(ucfg: Mapping[str, Any], workdir: str | os.PathLike,
                      progress_mode: str = "auto", stop: StopFlag | None = None) -> dict:
    """Pretrain the upstream model; returns the done-file content (params saved first)."""
    from e3lib.data import load_upstream
    from e3lib.evaluate import predict
    from e3lib.metrics import error, nll
    from e3lib.models import build_model

    workdir = Path(workdir)
    data, num_classes = load_upstream(ucfg)
    mcfg = upstream_model_config(ucfg)
    model = build_model(mcfg, num_classes)
    job = Job(model=model, optimizer=upstream_optimizer(ucfg), num_classes=num_classes,
              images=data.images, labels=data.labels, batch_size=ucfg["batch_size"],
              steps=ucfg["steps"], seeds=(ucfg["seed"],), checkpoint_every=25,
              desc=f"upstream {ucfg['method']}")
    params = init_params(model, ucfg["seed"], ucfg["image_size"])
    state = initial_state(job.optimizer, params, ucfg["seed"])
    ckpt = TrainCheckpoints(workdir / "ckpt", every=job.checkpoint_every)
    try:
        state, summary = train(job, state, ckpt, progress_mode, stop)
    finally:
        ckpt.close()
    from e3lib.models.convert import save_params

    params_dir = workdir / "params"
    if params_dir.exists():  # left by an attempt killed before its done file: redo
        shutil.rmtree(params_dir)
    save_params(params_dir, state["params"])
    n = min(len(data), 512)
    probs, _ = predict(model, state["params"], data.images[:n], 256)
    return {"status": "ok", "config": dict(ucfg),
            "params_path": str(params_dir.absolute()), "num_classes": num_classes,
            "metrics": {"train_subset_nll": nll(probs.mean(0), data.labels[:n]),
                        "train_subset_error": error(probs.mean(0), data.labels[:n]),
                        "final_loss": summary["final"].get("loss", [None])[0]},
            "train": summary}


def cli_upstream(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="e3 upstream", description="Pretrain (or register) the "
                                "upstream model of a run config.")
    p.add_argument("--config", required=True, help="resolved run config (JSON)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--done", required=True, help="done file, written last")
    p.add_argument("--log-mode", choices=PROGRESS_MODES, default="auto")
    a = p.parse_args(argv)
    setup_jax_cache()
    try:
        cfg = read_config(a.config)
    except (ConfigError, OSError, ValueError) as err:
        print(f"e3 upstream: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    ucfg = upstream_config(cfg)
    started = utc_now()
    if ucfg["checkpoint"]:
        path = Path(ucfg["checkpoint"])
        if not path.exists():
            err = ConfigError("upstream.checkpoint", ucfg["checkpoint"], "path does not exist",
                              source=a.config)
            print(f"e3 upstream: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        from e3lib.models.convert import restore_params

        restore_params(path)  # fail now, not in every fine-tune, if it cannot be read
        done = {"upstream_id": upstream_id(cfg), "status": "ok", "config": ucfg,
                "params_path": str(path.absolute()), "num_classes": None, "metrics": {}}
    else:
        def record_divergence(err: Diverged) -> None:
            atomic_write_json(Path(a.workdir) / "diverged.json",
                              {"upstream_id": upstream_id(cfg), "status": "diverged",
                               "message": str(err), "step": err.step})

        code, done = run_stage("e3 upstream",
                               lambda stop: pretrain_upstream(ucfg, a.workdir, a.log_mode, stop),
                               on_diverged=record_divergence)
        if code != EXIT_OK:
            return code
        done["upstream_id"] = upstream_id(cfg)
    done["provenance"] = provenance(started)
    atomic_write_json(a.done, done)
    return EXIT_OK


# ----------------------------------------------------------------------------------------
# Fine-tuning.

def run_stage(prog: str, job: Callable[[StopFlag], Any],
              on_diverged: Callable[[Diverged], None] | None = None) -> tuple[int, Any]:
    """Run a training job with SIGTERM handling; map its failures to the stage exit codes.

    Returns (EXIT_OK, the job's result), or (EXIT_DIVERGED | EXIT_PREEMPTED |
    EXIT_BAD_INPUT, None) after printing the reason to stderr.
    """
    stop = StopFlag().install()
    try:
        return EXIT_OK, job(stop)
    except Diverged as err:
        if on_diverged is not None:
            on_diverged(err)
        code, reason = EXIT_DIVERGED, err
    except Preempted as err:
        code, reason = EXIT_PREEMPTED, err
    except (ConfigError, DatasetNotFoundError) as err:
        code, reason = EXIT_BAD_INPUT, err
    finally:
        stop.uninstall()
    print(f"{prog}: {reason}", file=sys.stderr)
    return code, None


def read_config(path: str) -> dict:
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"run config {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"run config {path}: not valid JSON ({err})") from None
    return resolve(raw, source=path)


def adapt_upstream(upstream_params: Mapping, fresh_params: Mapping, cfg: Mapping) -> dict:
    """Upstream params → the run's model (new head, router regrouping, posemb resize,
    optional expert permutation): ``e3lib.models.convert.convert_for_config``."""
    from e3lib.models.convert import convert_for_config

    return convert_for_config(upstream_params, fresh_params, cfg)


def load_upstream_params(upstream_dir: str | os.PathLike) -> dict:
    """Parameters of the upstream stage's output dir (its done.json names where they are)."""
    from e3lib.models.convert import restore_params

    done_file = Path(upstream_dir) / "done.json"
    if not done_file.is_file():
        raise FileNotFoundError(f"upstream dir {upstream_dir}: no done.json (run "
                                f"`e3 upstream` first)")
    with open(done_file) as f:
        return restore_params(json.load(f)["params_path"])


def finetune_job(cfgs: Sequence[Mapping[str, Any]], suite, model) -> Job:
    from e3lib.models.batchensemble import with_fast_weight_lr_scale

    ft = cfgs[0]["finetune"]
    # BatchEnsemble: fast weights at be_lr_scale × the learning rate (App. G.1).
    optimizer = with_fast_weight_lr_scale(finetune_optimizer(ft), cfgs[0])
    return Job(model=model, optimizer=optimizer, num_classes=suite.num_classes,
               images=suite.train.images, labels=suite.train.labels,
               batch_size=ft["batch_size"], steps=ft["steps"],
               seeds=tuple(c["seed"] for c in cfgs), mixup=float(ft["mixup"]),
               checkpoint_every=ft["checkpoint_every"], desc=f"finetune {cfgs[0]['method']}")


def check_packable(cfgs: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> None:
    base = dict(cfgs[0], seed=None)
    for c, src in zip(cfgs[1:], sources[1:]):
        if dict(c, seed=None) != base:
            diff = sorted(k for k in c if k != "seed" and c[k] != cfgs[0][k])
            raise ConfigError("seed", c["seed"], f"packed configs may differ only in seed; "
                              f"{src} differs from {sources[0]} in {diff}", source=src)
    seeds = [c["seed"] for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seed", seeds, "packed configs need distinct seeds", source=sources[0])


def finetune_and_evaluate(cfgs: Sequence[Mapping[str, Any]], upstream_dir: str | None,
                          outs: Sequence[str | os.PathLike],
                          checkpoint_dir: str | os.PathLike | None,
                          progress_mode: str = "auto", stop: StopFlag | None = None,
                          upstream_params: Mapping | None = None) -> None:
    """Fine-tune one config (or several packed seeds) and write each run's results.

    Raises ``Diverged`` (after writing ``diverged.json`` in every out dir) or
    ``Preempted`` (after saving a checkpoint).
    """
    from e3lib.data import load_suite
    from e3lib.evaluate import evaluate_run, write_results
    from e3lib.models import build_model

    started = utc_now()
    cfg0 = cfgs[0]
    suite = load_suite(cfg0)
    model = build_model(cfg0, suite.num_classes)
    job = finetune_job(cfgs, suite, model)
    size = cfg0["data"]["image_size"]
    if upstream_params is None and upstream_dir is not None:
        upstream_params = load_upstream_params(upstream_dir)
    states = []
    for c in cfgs:
        fresh = init_params(model, c["seed"], size)
        params = adapt_upstream(upstream_params, fresh, c) if upstream_params else fresh
        states.append(initial_state(job.optimizer, params, c["seed"]))
    state = stack_states(states) if job.packed else states[0]
    ckpt = None
    if checkpoint_dir is not None:
        directory = Path(checkpoint_dir)
        if job.packed:
            from e3lib.config import short_hash

            directory = directory / f"pack-{short_hash([run_id(c) for c in cfgs])}"
        ckpt = TrainCheckpoints(directory, every=job.checkpoint_every)
    try:
        state, summary = train(job, state, ckpt, progress_mode, stop)
    except Diverged as err:
        bad = [0] if err.seed_index is None else [err.seed_index]
        for i, (c, out) in enumerate(zip(cfgs, outs)):
            msg = str(err) if i in bad else f"packed with a diverged seed: {err}"
            atomic_write_json(Path(out) / "diverged.json",
                              {"run_id": run_id(c), "status": "diverged", "message": msg,
                               "step": err.step, "loss": err.loss if i in bad else None,
                               "config": c})
        raise
    finally:
        if ckpt is not None:
            ckpt.close()
    for i, (c, out) in enumerate(zip(cfgs, outs)):
        params = unstack_state(state, i)["params"] if job.packed else state["params"]
        records, probs, labels, cost = evaluate_run(model, params, suite, c)
        cost["train_seconds"] = summary["train_seconds"]
        train_info = {k: v for k, v in summary.items() if k != "final"}
        train_info["final"] = {k: v[i] for k, v in summary["final"].items()}
        train_info["packed_seeds"] = list(job.seeds) if job.packed else None
        write_results(out, {
            "run_id": run_id(c), "status": "ok", "config": c, "model_shape": size_shape(c),
            "upstream_id": upstream_id(c), "provenance": provenance(started), "cost": cost,
            "train": train_info, "records": records}, probs, labels)


def cli_run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="e3 run", description="Fine-tune and evaluate one run "
                                "(or several seeds of one config, packed in one process).")
    p.add_argument("--config", required=True, nargs="+", help="resolved run config(s) (JSON)")
    p.add_argument("--upstream", default=None, help="upstream dir (with done.json); omit to "
                   "fine-tune from a fresh init")
    p.add_argument("--out", required=True, nargs="+", help="one results dir per config")
    p.add_argument("--checkpoints", nargs="+", default=None, help="checkpoint dir(s); "
                   "packed runs use the first")
    p.add_argument("--log-mode", choices=PROGRESS_MODES, default="auto")
    a = p.parse_args(argv)
    if len(a.out) != len(a.config):
        p.error(f"--out needs one dir per --config ({len(a.config)}), got {len(a.out)}")
    setup_jax_cache()
    try:
        cfgs = [read_config(c) for c in a.config]
        if len(cfgs) > 1:
            check_packable(cfgs, a.config)
    except (ConfigError, OSError, ValueError) as err:
        print(f"e3 run: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    checkpoints = a.checkpoints[0] if a.checkpoints else None
    code, _ = run_stage("e3 run", lambda stop: finetune_and_evaluate(
        cfgs, a.upstream, a.out, checkpoints, a.log_mode, stop))
    return code
