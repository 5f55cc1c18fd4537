"""The upstream (pretraining) stage: the ``e3 upstream`` command.

Pretrains the upstream model of a run config with the upstream recipe
(``e3lib.train.optim.upstream_optimizer``, training capacity factor
``upstream.capacity_factor``), or registers an existing checkpoint
(``upstream.checkpoint``: an Orbax directory or a published checkpoint, e3lib.upstreams).
Its done file (written last) names the saved parameters; a pretrained one has its loss
history (e3lib.curves) in ``curves.json`` beside it, with the held-out loss and error
every ``upstream.eval_every`` steps (None = ⌈steps/20⌉, 0 = none) on the upstream set's
held-out examples: the embedded demo's ``upstream_heldout`` (digits no upstream trains on),
or split ``validation`` of a file-backed set (its first
``e3lib.train.heldout.HELDOUT_EXAMPLES``; none when the set has no such split).
``upstream.log_every``, ``upstream.eval_every`` and ``upstream.checkpoint_every`` are read
from the run config, not from the upstream's identity.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e3lib.checkpoint import TrainCheckpoints, atomic_write_json
from e3lib.config import short_hash, upstream_config, upstream_id, upstream_model_config
from e3lib.curves import CURVES_FILE, default_heldout_every, write_curve
from e3lib.errors import ConfigError
from e3lib.monitor import upstream_monitor
from e3lib.progress import MODES as PROGRESS_MODES
from e3lib.provenance import provenance, utc_now
from e3lib.run_config import LogConfig, UpstreamConfig
from e3lib.train.cache import setup_jax_cache
from e3lib.train.heldout import heldout_metrics, subset_probs
from e3lib.train.loop import Job, init_params, initial_state, train
from e3lib.train.optim import host_schedule, upstream_lr, upstream_optimizer
from e3lib.train.signals import Diverged, StopFlag
from e3lib.train.stage import EXIT_BAD_INPUT, EXIT_OK, read_config, run_stage
from e3lib.upstreams.catalog import checkpoint_path
from e3lib.upstreams.load import open_checked
from e3lib.upstreams.source import is_published


def pretrain_upstream(
    ucfg: Mapping[str, Any],
    workdir: str | os.PathLike,
    progress_mode: str = "auto",
    stop: StopFlag | None = None,
    log_every: int | None = None,
    checkpoint_every: int = UpstreamConfig.checkpoint_every,
    eval_every: int | None = UpstreamConfig.eval_every,
    remat: str = "none",
    log_cfg: LogConfig | None = None,
) -> dict:
    """Pretrain the upstream model; returns the done-file content (params saved first).

    A file-backed pretraining set streams (``e3lib.data.stream.StepBatches``: per-process
    shards, seeded order, iterator state saved in each checkpoint), as fine-tuning does;
    the embedded demo's arrays stay in memory. Its loss history (``e3lib.curves``, a point
    every ``log_every`` steps, held-out points every ``eval_every``) is under ``"curves"``."""
    from e3lib.data import load_upstream
    from e3lib.data.stream import StepBatches
    from e3lib.data.stream_suite import open_upstream_source, upstream_uses_stream
    from e3lib.metrics import error, nll
    from e3lib.models import build_model
    from e3lib.models.registry import routing_group_images

    workdir = Path(workdir)
    data, stream = None, None
    if upstream_uses_stream(ucfg):
        source, num_classes, pp = open_upstream_source(ucfg)
        stream = StepBatches(source, pp, ucfg["batch_size"], (ucfg["seed"],))
    else:
        data, num_classes = load_upstream(ucfg)
    mcfg = upstream_model_config(ucfg, remat)
    model = build_model(mcfg, num_classes)
    every = default_heldout_every(ucfg["steps"], eval_every)
    heldout = _heldout_set(ucfg, stream is not None) if every else None
    every = every if heldout is not None else 0
    job = Job(
        model=model,
        optimizer=upstream_optimizer(ucfg),
        num_classes=num_classes,
        images=None if data is None else data.images,
        labels=None if data is None else data.labels,
        stream=stream,
        batch_size=ucfg["batch_size"],
        steps=ucfg["steps"],
        seeds=(ucfg["seed"],),
        checkpoint_every=checkpoint_every,
        desc=f"upstream {ucfg['method']}",
        log_every=log_every,
        lr_at=host_schedule(upstream_lr(ucfg)),
        heldout=heldout_metrics(model, heldout) if every else None,
        heldout_every=every,
        microsteps=ucfg.get("microsteps", 1),  # in the upstream's identity unless 1
        microsteps_field="upstream.microsteps",
        group_images=routing_group_images(mcfg),
        monitor=upstream_monitor(
            ucfg,
            mcfg,
            short_hash(dict(ucfg)),
            workdir,
            log_cfg or LogConfig(),
            num_classes,
            checkpoint_every,
        ),
    )
    params = init_params(model, ucfg["seed"], ucfg["image_size"])
    state = initial_state(job.optimizer, params, ucfg["seed"])
    ckpt = TrainCheckpoints(workdir / "ckpt", every=job.checkpoint_every)
    try:
        state, summary = train(job, state, ckpt, progress_mode, stop)
    except BaseException:
        job.monitor.close()
        raise
    finally:
        ckpt.close()
        if stream is not None:
            stream.close()
    from e3lib.models.convert import save_params

    params_dir = workdir / "params"
    if params_dir.exists():  # left by an attempt killed before its done file: redo
        shutil.rmtree(params_dir)
    save_params(params_dir, state["params"])
    probs, labels = _train_subset_probs(model, state["params"], data, stream, 512)
    metrics = {
        "train_subset_nll": nll(probs.mean(0), labels),
        "train_subset_error": error(probs.mean(0), labels),
        "final_loss": summary["final"].get("loss", [None])[0],
    }
    held = summary["curves"][0].get("heldout")
    if held:
        metrics.update(heldout_nll=held["loss"][-1], heldout_error=held["error"][-1])
    job.monitor.log_records(0, [_record(k, v) for k, v in metrics.items()])
    throughput = job.monitor.throughput()
    job.monitor.close()
    return {
        "status": "ok",
        "config": dict(ucfg),
        "params_path": str(params_dir.absolute()),
        "num_classes": num_classes,
        "metrics": metrics,
        "train": {k: v for k, v in summary.items() if k != "curves"},
        "curves": summary["curves"][0],
        "throughput": throughput,
    }


def _record(name: str, value) -> dict:
    """An upstream metric as a final-evaluation record (e3lib.monitor logs ``eval/...``)."""
    return {"split": "train", "member": "ensemble", "metric": name, "value": value}


def _heldout_set(ucfg: Mapping[str, Any], streamed: bool):
    """The upstream's held-out examples: in-memory ``Labeled`` (the demo), ``(source,
    pp)`` (a file-backed set's validation split), or None (no such split)."""
    if not streamed:
        from e3lib.data.embedded import upstream_heldout

        return upstream_heldout(ucfg["image_size"])
    from e3lib.data.stream_suite import open_upstream_heldout

    return open_upstream_heldout(ucfg)


def _train_subset_probs(model, params, data, stream, n: int):
    """Probabilities (M, n', C) and labels of the first n' = min(N, n) training examples
    (in memory, or read in order through the eval pipeline from the stream's source)."""
    from e3lib.evaluate import make_predict_fn

    source, pp = (None, None) if stream is None else (stream.source, stream.pp)
    return subset_probs(make_predict_fn(model), params, data, source, pp, n)


def stored_params_path(params: str | os.PathLike, done_dir: Path) -> str:
    """``params`` relative to the done file's folder when it lies below it (the pretrained
    parameters in the work dir), so a moved results folder reads its own; else absolute."""
    params, done_dir = Path(params).absolute(), done_dir.absolute()
    if params.is_relative_to(done_dir):
        return params.relative_to(done_dir).as_posix()
    return str(params)


def cli_upstream(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="e3 upstream", description="Pretrain (or register) the upstream model of a run config."
    )
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
        path = checkpoint_path(ucfg["checkpoint"])
        try:  # fail now, not in every fine-tune, if it cannot be read
            if is_published(path):
                open_checked(path, cfg)
            elif not Path(path).exists():
                raise ConfigError("upstream.checkpoint", path, "path does not exist")
            else:
                from e3lib.models.convert import restore_params

                restore_params(path)
                path = str(Path(path).absolute())
        except ConfigError as err:
            print(
                f"e3 upstream: {ConfigError(err.field, err.value, err.rule, a.config)}",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        done = {
            "upstream_id": upstream_id(cfg),
            "status": "ok",
            "config": ucfg,
            "params_path": path,
            "num_classes": None,
            "metrics": {},
        }
    else:

        def record_divergence(err: Diverged) -> None:
            atomic_write_json(
                Path(a.workdir) / "diverged.json",
                {
                    "upstream_id": upstream_id(cfg),
                    "status": "diverged",
                    "message": str(err),
                    "step": err.step,
                },
            )

        code, done = run_stage(
            "e3 upstream",
            lambda stop: pretrain_upstream(
                ucfg,
                a.workdir,
                a.log_mode,
                stop,
                cfg.upstream.log_every,
                cfg.upstream.checkpoint_every,
                cfg.upstream.eval_every,
                cfg.model.remat,
                cfg.log,
            ),
            on_diverged=record_divergence,
        )
        if code != EXIT_OK:
            return code
        done["upstream_id"] = upstream_id(cfg)
        throughput = done.pop("throughput")
        write_curve(Path(a.done).parent / CURVES_FILE, done.pop("curves"))
    done["provenance"] = provenance(started)
    if not ucfg["checkpoint"]:
        done["provenance"]["throughput"] = throughput
    done["params_path"] = stored_params_path(done["params_path"], Path(a.done).parent)
    atomic_write_json(a.done, done)
    return EXIT_OK
