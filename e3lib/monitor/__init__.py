"""Watching a run: live metrics in TensorBoard / W&B / MLflow, the ``progress.json``
record of a running job and the throughput and cost recorded with its results.

    sinks   the metric sinks behind one interface (TensorBoard, W&B, MLflow), guarded
    names   the sweeps listing a run, its readable label, the <results>/tb link tree
    peak    peak FLOP/s of a device (published for TPUs/GPUs, measured on CPU)
    run     RunMonitor: fed by the training loop, writes sinks and progress.json,
            computes provenance.throughput

``finetune_monitor`` and ``upstream_monitor`` build the monitor of a stage from its
configs. Only process 0 writes anything; logging never changes a result or a run id (the
``log`` section of a run config is not part of the id) and a failing sink never fails a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from e3lib import tree
from e3lib.monitor.names import label, results_root, sweep_memberships
from e3lib.monitor.peak import PEAK_FLOPS, device_peak, measured_cpu_peak
from e3lib.monitor.run import PROGRESS_FILE, RunMonitor
from e3lib.monitor.sinks import TB_DIR, RunTags


def _step_flops(cfg, num_classes: int, images: int) -> float | None:
    from e3lib.cost.analytic import analytic_gflops
    from e3lib.errors import ConfigError

    try:
        return analytic_gflops(cfg, num_classes) * 1e9 * images
    except (ConfigError, KeyError, ValueError):  # a model the closed form does not price
        return None


def finetune_monitor(
    cfgs: Sequence, outs: Sequence, num_classes: int, num_devices: int, writer: bool
) -> RunMonitor:
    """The monitor of a fine-tuning job of S packed configs (one out folder each) on
    ``num_devices`` devices."""
    from e3lib.config import non_default_fields, run_id

    tags = []
    for c, out in zip(cfgs, outs):
        rid = run_id(c)
        sweeps = sweep_memberships(results_root(Path(out)), rid) if writer else {}
        axes = next(iter(sweeps.values()), None)
        name = label(axes, c.seed) if axes is not None else f"{c.method},{rid},seed={c.seed}"
        params = tree.flatten(non_default_fields(c))
        tags.append(RunTags("finetune", rid, c.seed, name, sweeps, params))
    ft = cfgs[0].finetune
    flops = _step_flops(cfgs[0], num_classes, ft.batch_size * len(cfgs))
    return RunMonitor(
        "finetune",
        outs,
        tags,
        cfgs[0].log,
        ft.steps,
        ft.batch_size,
        flops,
        num_devices=num_devices,
        writer=writer,
        checkpoint_every=ft.checkpoint_every,
    )


def upstream_monitor(
    ucfg: Mapping[str, Any],
    model_cfg,
    upstream_id: str,
    out,
    log_cfg,
    num_classes: int,
    checkpoint_every: int | None = None,
) -> RunMonitor:
    """The monitor of an upstream pretraining job, on one device (``model_cfg``: its model
    as a run config, e3lib.train.upstream.upstream_model_config)."""
    params = {k: v for k, v in ucfg.items() if not isinstance(v, (list, dict))}
    name = f"upstream,{ucfg['method']},{ucfg['size']},{upstream_id}"
    tags = [RunTags("upstream", upstream_id, int(ucfg["seed"]), name, {}, params)]
    flops = _step_flops(model_cfg, num_classes, int(ucfg["batch_size"]))
    return RunMonitor(
        "upstream",
        [Path(out)],
        tags,
        log_cfg,
        ucfg["steps"],
        ucfg["batch_size"],
        flops,
        checkpoint_every=checkpoint_every,
    )


__all__ = [
    "PEAK_FLOPS",
    "PROGRESS_FILE",
    "TB_DIR",
    "RunMonitor",
    "RunTags",
    "device_peak",
    "finetune_monitor",
    "measured_cpu_peak",
    "upstream_monitor",
]
