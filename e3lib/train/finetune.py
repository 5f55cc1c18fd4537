"""The fine-tuning stage: fine-tune one run (or S packed seeds) from its upstream
parameters and evaluate it (the ``e3 run`` command).

Recipe: ``e3lib.train.optim.finetune_optimizer`` (SGD with momentum, clipping, warmup
then cosine/linear decay); BatchEnsemble fast weights at ``be_lr_scale`` × the learning
rate. A diverged run writes ``diverged.json`` in its out dir (never results.json); a
finished one writes predictions.npz then results.json (``e3lib.evaluate.write_results``).
Its loss history (e3lib.curves) goes to ``curves.json`` beside results.json, with the
validation split's NLL and error every ``finetune.eval_every`` steps (None = ⌈steps/20⌉,
0 = none; ``attach_validation``): the held-out curve that says whether more fine-tuning
would still help, where the training loss of a small set keeps falling towards 0.
A streamed run (``e3lib.data.stream_suite.uses_stream``: a file-backed dataset or a set
``data.pp_train``) trains from a ``StepBatches`` stream and evaluates batch by batch
(``e3lib.evaluate.streaming``); its predictions.npz is compact and its final parameters
are kept in ``out/params`` for deep ensembles.

Devices (e3lib.parallel, docs/scale.md): the run's ``mesh`` gives the placement, built
before anything compiles (divisibility errors first); on several processes only process 0
writes results, predictions and diverged.json, results record the devices used
(``provenance.devices``), and every process returns the same exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path

from e3lib.checkpoint import TrainCheckpoints, atomic_write_json
from e3lib.config import run_id, short_hash, size_shape, upstream_id
from e3lib.curves import CURVES_FILE, default_heldout_every, write_curve
from e3lib.errors import ConfigError
from e3lib.monitor import finetune_monitor
from e3lib.progress import MODES as PROGRESS_MODES
from e3lib.provenance import provenance, utc_now
from e3lib.run_config import RunConfig, require_run_config
from e3lib.train.cache import setup_jax_cache
from e3lib.train.heldout import heldout_metrics
from e3lib.train.loop import Job, init_params, initial_state, stack_states, train, unstack_state
from e3lib.train.optim import finetune_lr, finetune_optimizer, host_schedule
from e3lib.train.signals import Diverged, StopFlag
from e3lib.train.stage import EXIT_BAD_INPUT, read_config, run_stage
from e3lib.upstreams.load import load_checkpoint_for_run, upstream_checkpoint


def adapt_upstream(upstream_params: Mapping, fresh_params: Mapping, cfg: RunConfig) -> dict:
    """Upstream params → the run's model (new head, router regrouping, posemb resize,
    optional expert permutation): ``e3lib.models.convert.convert_for_config``."""
    from e3lib.models.convert import convert_for_config

    return convert_for_config(upstream_params, fresh_params, cfg)


def load_upstream_params(upstream_dir: str | os.PathLike) -> dict:
    """Parameters of the upstream stage's output dir (its done.json names where they are)."""
    from e3lib.models.convert import restore_params

    done_file = Path(upstream_dir) / "done.json"
    if not done_file.is_file():
        raise FileNotFoundError(
            f"upstream dir {upstream_dir}: no done.json (run `e3 upstream` first)"
        )
    with open(done_file) as f:
        return restore_params(resolve_params_path(json.load(f)["params_path"], done_file.parent))


def resolve_params_path(stored: str, done_dir: Path) -> Path:
    """The upstream parameters named by a done file: relative paths are relative to its
    folder. An absolute path written before that (older done files) whose folder is the
    same name under this done file's folder, e.g. after the results moved, is read here."""
    path = Path(stored)
    if not path.is_absolute():
        return done_dir / path
    local = done_dir / path.name
    if local.exists() and local.resolve() != path.resolve():
        return local
    return path


def finetune_job(cfgs: Sequence[RunConfig], suite, model) -> Job:
    """The training job of packed configs; ``suite`` is a ``DataSuite`` (in-memory arrays)
    or a ``StreamSuite`` (its train source read through a ``StepBatches`` stream)."""
    from e3lib.data.stream import StepBatches
    from e3lib.data.stream_suite import StreamSuite
    from e3lib.models.batchensemble import with_fast_weight_lr_scale
    from e3lib.models.registry import routing_group_images

    ft = cfgs[0].finetune
    # BatchEnsemble: fast weights at be_lr_scale × the learning rate (App. G.1).
    optimizer = with_fast_weight_lr_scale(finetune_optimizer(ft), cfgs[0])
    seeds = tuple(c.seed for c in cfgs)
    streamed = isinstance(suite, StreamSuite)
    stream = (
        StepBatches(
            suite.train,
            suite.pp_train,
            ft.batch_size,
            seeds,
            workers=cfgs[0].data.input_workers,
        )
        if streamed
        else None
    )
    return Job(
        model=model,
        optimizer=optimizer,
        num_classes=suite.num_classes,
        images=None if streamed else suite.train.images,
        labels=None if streamed else suite.train.labels,
        stream=stream,
        batch_size=ft.batch_size,
        steps=ft.steps,
        seeds=seeds,
        mixup=float(ft.mixup),
        checkpoint_every=ft.checkpoint_every,
        desc=f"finetune {cfgs[0].method}",
        log_every=ft.log_every,
        lr_at=host_schedule(finetune_lr(ft)),
        microsteps=ft.microsteps,
        group_images=routing_group_images(cfgs[0]),
    )


def attach_validation(job: Job, suite, ft) -> None:
    """Give ``job`` its held-out points: the suite's validation split (in memory, or its
    first ``HELDOUT_EXAMPLES`` through the eval pipeline) every ``finetune.eval_every``
    steps (None = ⌈steps/20⌉, 0 = none); nothing when the suite has no validation split.
    After the placement is set: on a mesh the evaluation runs sharded."""
    from e3lib.data.stream_suite import StreamSuite

    every = default_heldout_every(ft.steps, ft.eval_every)
    if not every or suite.val is None or not len(suite.val):
        return
    val = (suite.val, suite.pp_eval) if isinstance(suite, StreamSuite) else suite.val
    job.heldout = heldout_metrics(job.model, val, job.packed, job.placement)
    job.heldout_every = every


def check_packable(cfgs: Sequence[RunConfig], sources: Sequence[str]) -> None:
    base = replace(cfgs[0], seed=0)
    for c, src in zip(cfgs[1:], sources[1:]):
        if replace(c, seed=0) != base:
            diff = sorted(
                f.name
                for f in fields(c)
                if f.name != "seed" and getattr(c, f.name) != getattr(cfgs[0], f.name)
            )
            raise ConfigError(
                "seed",
                c.seed,
                f"packed configs may differ only in seed; "
                f"{src} differs from {sources[0]} in {diff}",
                source=src,
            )
    seeds = [c.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seed", seeds, "packed configs need distinct seeds", source=sources[0])


def finetune_and_evaluate(
    cfgs: Sequence[RunConfig],
    upstream_dir: str | None,
    outs: Sequence[str | os.PathLike],
    checkpoint_dir: str | os.PathLike | None,
    progress_mode: str = "auto",
    stop: StopFlag | None = None,
    upstream_params: Mapping | None = None,
) -> None:
    """Fine-tune one config (or several packed seeds) and write each run's results.

    Raises ``Diverged`` (after writing ``diverged.json`` in every out dir) or
    ``Preempted`` (after saving a checkpoint).
    """
    from e3lib.data import load_suite
    from e3lib.data.stream_suite import open_stream_suite, uses_stream
    from e3lib.evaluate import evaluate_run, write_results
    from e3lib.evaluate.streaming import evaluate_streamed
    from e3lib.models import build_model
    from e3lib.parallel.distributed import is_writer
    from e3lib.parallel.placement import Placement

    started = utc_now()
    for c in cfgs:
        require_run_config(c, "finetune_and_evaluate")
    cfg0 = cfgs[0]
    placement = Placement.for_config(cfg0)  # [parallel hook] mesh + divisibility checks
    suite = open_stream_suite(cfg0) if uses_stream(cfg0) else load_suite(cfg0)
    model = build_model(cfg0, suite.num_classes)
    job = finetune_job(cfgs, suite, model)
    job.placement = placement
    attach_validation(job, suite, cfg0.finetune)
    devices = placement.describe()
    job.monitor = finetune_monitor(
        cfgs, [Path(o) for o in outs], suite.num_classes, devices["num_devices"], is_writer()
    )
    size = cfg0.data.image_size
    # A checkpoint named by upstream.checkpoint (no upstream stage), or a published one the
    # upstream stage registered, is read and converted by e3lib.upstreams.
    checkpoint = None if upstream_params is not None else upstream_checkpoint(cfg0, upstream_dir)
    if checkpoint is None and upstream_params is None and upstream_dir is not None:
        upstream_params = load_upstream_params(upstream_dir)
    # On a mesh, each converted leaf goes to its devices (sharding by the rules) as soon as
    # it is ready; packed seeds are stacked on the host first, then placed by put_state.
    put = placement.put_param if placement.mesh is not None and not job.packed else None
    # [parallel hook] one run on a mesh: fresh parameters and optimizer state are created in
    # their shardings (never whole on one device)
    where = placement if put is not None else None
    states = []
    for c in cfgs:
        fresh = init_params(model, c.seed, size, where)
        if checkpoint is not None:
            params = load_checkpoint_for_run(checkpoint, fresh, c, put=put)
        else:
            params = adapt_upstream(upstream_params, fresh, c) if upstream_params else fresh
        states.append(initial_state(job.optimizer, params, c.seed, c.model.param_dtype, where))
    state = stack_states(states) if job.packed else states[0]
    ckpt = None
    if checkpoint_dir is not None:
        directory = Path(checkpoint_dir)
        if job.packed:
            directory = directory / f"pack-{short_hash([run_id(c) for c in cfgs])}"
        ckpt = TrainCheckpoints(directory, every=job.checkpoint_every)
    try:
        state, summary = train(job, state, ckpt, progress_mode, stop)
    except BaseException as err:
        job.monitor.close()  # the last progress record; sinks flushed on every way out
        if not isinstance(err, Diverged):
            raise
        bad = [0] if err.seed_index is None else [err.seed_index]
        for i, (c, out) in enumerate(zip(cfgs, outs) if is_writer() else ()):
            msg = str(err) if i in bad else f"packed with a diverged seed: {err}"
            atomic_write_json(
                Path(out) / "diverged.json",
                {
                    "run_id": run_id(c),
                    "status": "diverged",
                    "message": msg,
                    "step": err.step,
                    "loss": err.loss if i in bad else None,
                    "config": c.to_dict(),
                },
            )
        raise
    finally:
        if ckpt is not None:
            ckpt.close()
        if job.stream is not None:
            job.stream.close()
    for i, (c, out) in enumerate(zip(cfgs, outs)):
        params = unstack_state(state, i)["params"] if job.packed else state["params"]
        if job.stream is not None:
            records, probs, labels, cost = evaluate_streamed(model, params, suite, c, out)
        else:
            records, probs, labels, cost = evaluate_run(model, params, suite, c)
        if not is_writer():  # [parallel hook] one process writes
            continue
        cost["train_seconds"] = summary["train_seconds"]
        train_info = {k: v for k, v in summary.items() if k not in ("final", "curves")}
        train_info["final"] = {k: v[i] for k, v in summary["final"].items()}
        train_info["packed_seeds"] = list(job.seeds) if job.packed else None
        job.monitor.log_records(i, records)
        throughput = job.monitor.throughput(i)
        write_curve(Path(out) / CURVES_FILE, summary["curves"][i])  # before results.json
        write_results(
            out,
            {
                "run_id": run_id(c),
                "status": "ok",
                "config": c.to_dict(),
                "model_shape": size_shape(c),
                "upstream_id": upstream_id(c),
                "provenance": dict(provenance(started), devices=devices, throughput=throughput),
                "cost": cost,
                "train": train_info,
                "records": records,
            },
            probs,
            labels,
        )
    job.monitor.close()


def cli_run(argv: list[str]) -> int:
    from e3lib.parallel.distributed import FLAGS, agree_exit_code, start

    argv = start(argv)  # [parallel hook] join the job's hosts (--coordinator ... or auto)
    p = argparse.ArgumentParser(
        prog="e3 run",
        epilog=f"multi-host: {' '.join(FLAGS)} (docs/scale.md)",
        description="Fine-tune and evaluate one run "
        "(or several seeds of one config, packed in one process).",
    )
    p.add_argument("--config", required=True, nargs="+", help="resolved run config(s) (JSON)")
    p.add_argument(
        "--upstream",
        default=None,
        help="upstream dir (with done.json); omit to start from upstream.checkpoint if "
        "the config sets one, else from a fresh init",
    )
    p.add_argument("--out", required=True, nargs="+", help="one results dir per config")
    p.add_argument(
        "--checkpoints",
        nargs="+",
        default=None,
        help="checkpoint dir(s); packed runs use the first",
    )
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
    code, _ = run_stage(
        "e3 run",
        lambda stop: finetune_and_evaluate(cfgs, a.upstream, a.out, checkpoints, a.log_mode, stop),
    )
    return agree_exit_code(code)  # [parallel hook] one outcome on every host
