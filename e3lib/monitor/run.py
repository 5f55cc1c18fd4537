"""``RunMonitor``: what a training job shows while it runs and records when it ends.

Notation: S packed seeds (one run each), B images per step per seed, D devices of the job,
T steps, k steps per loss-history point (e3lib.curves).

Fed by the training loop (e3lib.train.loop) after every step with the step's wall seconds
(dispatch to the loss on the host, the sync the loop already does) and its metrics; when a
loss-history point closes (every k steps) it writes, on process 0 only (the sinks flushed
and progress.json rewritten at such a point when ``WRITE_EVERY_SECONDS`` have passed since
the last write, at every checkpoint step, before its checkpoint, and at the end, so a short
step with a point per step pays one flush and one fsync'd file per two seconds, and a
checkpoint never covers a point the event files lack):

- to every sink (e3lib.monitor.sinks) of each run: ``train/{loss,ce,aux_loss,lr}`` (the
  point's means, as curves.json holds them), ``train/grad_norm`` (of the point's last step:
  one fetch per point), ``heldout/{loss,error}`` (validation points) and
  ``throughput/images_per_second_per_device``; at the end ``eval/...`` (the final
  evaluation's ensemble metrics) and ``throughput/{mfu,device_hours}``;
- ``progress.json`` in each run's folder (``PROGRESS_FILE``, atomic): stage, step, steps,
  started, updated, wall_seconds (this attempt), num_devices, images_per_second_per_device,
  and previous_wall_seconds (earlier attempts of the run, from the record they left).

Throughput (``throughput()``, results' ``provenance.throughput``): images/s per device =
S·B·n / (t·D) over the n steps of this attempt after its first (which compiles), t their
wall seconds; wall_seconds = this attempt's (monitor creation to now) + earlier attempts';
device_hours = wall_seconds · D / 3600 / S (a packed run's share of the job); step_flops =
analytic training FLOPs per image (e3lib.cost.analytic) · B · S; mfu = step_flops · n / t /
(D · peak), peak per device from e3lib.monitor.peak.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e3lib import atomic
from e3lib.monitor.names import label, link_event_dir, results_root
from e3lib.monitor.peak import device_peak
from e3lib.monitor.sinks import TB_DIR, RunTags, open_sinks
from e3lib.provenance import utc_now

PROGRESS_FILE = "progress.json"
TRAIN_TAGS = ("loss", "ce", "aux_loss", "lr")
HPARAM_METRICS = ["train/loss", "heldout/loss", "heldout/error"]
WRITE_EVERY_SECONDS = 2.0  # between flushes and progress records, but see the docstring


class RunMonitor:
    """Live metrics, progress records and throughput of one job (S packed runs)."""

    def __init__(
        self,
        stage: str,
        outs: Sequence[Path],
        tags: Sequence[RunTags],
        log_cfg,
        steps: int,
        batch_size: int,
        step_flops: float | None,
        num_devices: int = 1,
        writer: bool = True,
        checkpoint_every: int | None = None,
    ):
        import jax

        self.t0, self.started = time.perf_counter(), utc_now()
        self.stage, self.tags, self.log_cfg = stage, tags, log_cfg
        self.outs = [Path(o) for o in outs]
        self.steps, self.images_per_step = int(steps), int(batch_size) * len(tags)
        self.step_flops, self.writer = step_flops, writer
        self.checkpoint_every, self.last_write = checkpoint_every, float("-inf")
        self.device = jax.devices()[0]
        self.num_devices = int(num_devices)
        self.sinks: list[list] = [[] for _ in tags]
        self.timed_steps, self.timed_seconds, self.first = 0, 0.0, True
        self.step, self.points_seen, self.held_seen = 0, 0, 0
        self.previous = _read_progress(self.outs[0]) if writer else {}

    # -- hooks of the training loop ---------------------------------------------------------
    def begin(self, step: int, recorder, fetch) -> None:
        """After the restore: the loop starts at ``step`` with ``recorder``'s history."""
        self.step, self.fetch = int(step), fetch
        if self.step == 0:  # a fresh start: earlier attempts' time is not this run's
            self.previous = {}
        self.points_seen = len(recorder.points["step"])
        self.held_seen = len(recorder.heldout["step"])
        if not self.writer:
            return
        for i, (out, tags) in enumerate(zip(self.outs, self.tags)):
            fresh = not any((out / TB_DIR).glob("events.out.tfevents.*"))
            # a later attempt: TensorBoard hides its predecessor's events past ``step``
            self.sinks[i] = open_sinks(out, tags, None if fresh else self.step, self.log_cfg)
            for s in self.sinks[i]:
                if fresh or s.name != "tensorboard":
                    s.start(HPARAM_METRICS)
                s.flush()
            root = results_root(out)
            if root is not None and self.log_cfg.tensorboard:
                for sweep, axes in tags.sweeps.items():
                    link_event_dir(root, sweep, label(axes, tags.seed), out / TB_DIR)
        self.write_progress()

    def after_step(self, done: int, seconds: float, metrics: Mapping[str, Any], recorder) -> None:
        """Step ``done`` (1-based) took ``seconds``; log the points it closed."""
        self.step = int(done)
        if self.first:  # the first step of an attempt compiles: not steady state
            self.first = False
        else:
            self.timed_steps += 1
            self.timed_seconds += seconds
        if not self.writer:
            return
        new_points = len(recorder.points["step"]) > self.points_seen
        new_held = len(recorder.heldout["step"]) > self.held_seen
        checkpointed = bool(self.checkpoint_every) and done % self.checkpoint_every == 0
        if not (new_points or new_held or checkpointed):
            return
        grad = np.atleast_1d(self.fetch(metrics["grad_norm"])) if new_points else None
        rate = self.images_per_second_per_device()
        for i in range(len(self.tags)):
            for j in range(self.points_seen, len(recorder.points["step"])):
                values = {f"train/{q}": recorder.points[q][j][i] for q in TRAIN_TAGS}
                values["train/grad_norm"] = float(grad[i])
                if rate is not None:
                    values["throughput/images_per_second_per_device"] = rate
                self._emit(i, recorder.points["step"][j], values)
            held = recorder.heldout
            for j in range(self.held_seen, len(held["step"])):
                values = {f"heldout/{q}": held[q][j][i] for q in ("loss", "error")}
                self._emit(i, held["step"][j], values)
        self.points_seen, self.held_seen = len(recorder.points["step"]), len(held["step"])
        due = time.perf_counter() - self.last_write >= WRITE_EVERY_SECONDS
        if checkpointed or due or done == self.steps:
            for run in self.sinks:
                for s in run:
                    s.flush()  # on disk before the step's checkpoint: a resume loses nothing
            self.write_progress()

    # -- the stage's end ----------------------------------------------------------------------
    def log_records(self, i: int, records: Sequence[Mapping[str, Any]]) -> None:
        """The final evaluation of run ``i``: its ensemble metrics, at the last step."""
        values = {}
        for r in records:
            if r.get("member") not in ("ensemble", None) or r.get("severity", 0) != 0:
                continue
            if r.get("task") not in (None, "mean") or r["value"] is None:
                continue
            parts = [r["split"]]
            if r.get("corruption") not in (None, "none"):
                parts.append(r["corruption"])
            if "shots" in r:
                parts.append(f"{r['shots']}shot")
            values["eval/" + "/".join(parts) + f"/{r['metric']}"] = float(r["value"])
        self._emit(i, self.steps, values)

    def throughput(self, i: int = 0) -> dict:
        """The ``provenance.throughput`` record of run ``i`` (see the module docstring); its
        mfu and device_hours go to the sinks at the last step."""
        wall = float(self.previous.get("wall_seconds_total", 0.0)) + self.attempt_seconds()
        rate = self.images_per_second_per_device()
        if rate is None:  # no timed step in this attempt: the rate an earlier one measured
            rate = self.previous.get("images_per_second_per_device")
        peak, source = device_peak(self.device)
        mfu = None
        if rate is not None and peak and self.step_flops:
            steps_per_second = rate * self.num_devices / self.images_per_step
            mfu = self.step_flops * steps_per_second / (self.num_devices * peak)
        record = {
            "images_per_second_per_device": rate,
            "wall_seconds": wall,
            "device_hours": wall * self.num_devices / 3600 / len(self.tags),
            "num_devices": self.num_devices,
            "device_kind": self.device.device_kind,
            "step_flops": self.step_flops,
            "peak_flops_per_device": peak,
            "peak_source": source,
            "mfu": mfu,
        }
        final = {"throughput/device_hours": record["device_hours"]}
        if mfu is not None:
            final["throughput/mfu"] = mfu
        self._emit(i, self.steps, final)
        return record

    def close(self) -> None:
        """The last progress record; flush and close every sink."""
        if not self.writer:
            return
        self.write_progress()
        for run in self.sinks:
            for s in run:
                s.close()
        self.sinks = [[] for _ in self.tags]

    # -- helpers ------------------------------------------------------------------------------
    def attempt_seconds(self) -> float:
        return time.perf_counter() - self.t0

    def images_per_second_per_device(self) -> float | None:
        if not self.timed_steps or self.timed_seconds <= 0:
            return None
        return self.timed_steps * self.images_per_step / self.timed_seconds / self.num_devices

    def _emit(self, i: int, step: int, values: Mapping[str, float]) -> None:
        if values:
            for s in self.sinks[i]:
                s.scalars(int(step), values)

    def write_progress(self) -> None:
        """``progress.json`` of every run of the job (process 0 only)."""
        if not self.writer:
            return
        wall = self.attempt_seconds()
        before = float(self.previous.get("wall_seconds_total", 0.0))
        record = {
            "stage": self.stage,
            "step": self.step,
            "steps": self.steps,
            "started": self.started,
            "updated": utc_now(),
            "wall_seconds": wall,
            "num_devices": self.num_devices,
            "images_per_second_per_device": self.images_per_second_per_device(),
            "previous_wall_seconds": before,
        }
        for out in self.outs:
            atomic.write_json(out / PROGRESS_FILE, record)
        self.last_write = time.perf_counter()


def _read_progress(out: Path) -> dict:
    """What an earlier attempt's progress record says: its total wall seconds (its own plus
    those before it) and the rate it measured. {} when there is none."""
    try:
        prev = json.loads((out / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    total = float(prev.get("previous_wall_seconds", 0.0)) + float(prev.get("wall_seconds", 0.0))
    return {
        "wall_seconds_total": total,
        "images_per_second_per_device": prev.get("images_per_second_per_device"),
    }
