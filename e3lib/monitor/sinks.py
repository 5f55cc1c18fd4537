"""Metric sinks of one run behind one interface: TensorBoard event files (tensorboardX),
Weights & Biases and MLflow. Each takes scalars at a step, the run's tags once, and is
flushed and closed; ``Guarded`` wraps one so a failure warns once and switches that sink
off, never failing the run.

Tags (``RunTags``): the stage, run id, seed, the sweeps listing the run with its axis
values there, and its config's non-default fields (what tells the runs of a sweep apart).
TensorBoard shows them as hparams (filter and sort runs in the HParams tab) and a text
summary; W&B as the run's config, group (its sweep) and tags; MLflow as run tags and params.

Resumption: a later attempt's event file starts with a ``SessionLog.START`` event at the
restored step + 1 (what tensorboardX's ``purge_step`` writes), so TensorBoard's reader
hides the events a killed attempt wrote past its last checkpoint (one point per step);
W&B resumes the run of the same id (``resume="allow"``) and MLflow the run tagged with the
same run id, both logging from the restored step on.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TB_DIR = "tb"  # under the run's folder
WANDB_DIR = "wandb"  # W&B writes <out>/wandb/<offline-run-...>/


@dataclass
class RunTags:
    """What identifies a run in a tracker."""

    stage: str  # "finetune" | "upstream"
    run_id: str
    seed: int
    label: str  # readable name: the sweep axes (or the method and id outside a sweep)
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)  # sweep → axis values
    params: dict[str, Any] = field(default_factory=dict)  # non-default config fields

    def flat(self) -> dict[str, Any]:
        """One flat mapping of scalars (str, int, float, bool): what trackers take."""
        out: dict[str, Any] = {"stage": self.stage, "run_id": self.run_id, "seed": self.seed}
        out["sweep"] = ",".join(sorted(self.sweeps))
        for axes in self.sweeps.values():
            for axis, value in axes.items():
                out[f"axis.{axis}"] = _scalar(value)
        out.update({f"config.{k}": _scalar(v) for k, v in self.params.items()})
        return out


def _scalar(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


class TensorBoardSink:
    """Event files under ``<out>/tb``: tensorboardX's synchronous ``EventsWriter`` and
    summary protos (its ``SummaryWriter`` queues events to a thread, so its ``flush``
    cannot promise that an event added before it is on disk)."""

    name = "tensorboard"

    def __init__(self, out: Path, tags: RunTags, resumed_step: int | None):
        from tensorboardX.event_file_writer import EventsWriter

        (out / TB_DIR).mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a folder's files in name order: the start step in the name
        # keeps two attempts started within one second (same time stamp) apart, in order.
        self.events = EventsWriter(str(out / TB_DIR / "events"), f".step{resumed_step or 0:09d}")
        self.tags = tags
        if resumed_step is not None:  # TensorBoard drops what earlier files hold past it
            from tensorboardX.proto.event_pb2 import SessionLog

            start = SessionLog(status=SessionLog.START)
            self._write(resumed_step + 1, session_log=start)

    def _write(self, step: int, **fields) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self.events.write_event(Event(wall_time=time.time(), step=int(step), **fields))

    def start(self, metric_tags: list[str]) -> None:
        from tensorboardX.summary import hparams, text

        flat = self.tags.flat()
        self._write(0, summary=text("run", _markdown(flat)))
        for summary in hparams(flat, dict.fromkeys(metric_tags, 0.0)):
            self._write(0, summary=summary)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboardX.summary import scalar

        for tag, value in values.items():
            self._write(step, summary=scalar(tag, float(value)))

    def flush(self) -> None:
        self.events.flush()

    def close(self) -> None:
        self.events.close()


def _markdown(flat: Mapping[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in flat.items())
    return "| field | value |\n|---|---|\n" + rows


class WandbSink:
    """A W&B run (offline by default: ``<out>/wandb``, uploaded later by ``wandb sync``)."""

    name = "wandb"

    def __init__(self, out: Path, tags: RunTags, resumed_step: int | None, log_cfg):
        import wandb

        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=log_cfg.wandb_project,
            dir=str(out),
            mode=log_cfg.wandb_mode,
            id=_wandb_id(tags),
            name=tags.label,
            group=",".join(sorted(tags.sweeps)) or None,
            job_type=tags.stage,
            tags=[tags.stage, *sorted(tags.sweeps)],
            config=tags.flat(),
            resume="allow",
            reinit="create_new",  # packed seeds: one run each, in one process
            settings=wandb.Settings(silent=True, console="off"),
        )

    def start(self, metric_tags: list[str]) -> None:
        pass

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def _wandb_id(tags: RunTags) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{tags.stage}-{tags.run_id}")


class MlflowSink:
    """An MLflow run in ``log.mlflow_uri`` (a file store, a SQLite URI or a server),
    experiment ``log.mlflow_experiment`` (None: the run's sweep, "e3" outside one)."""

    name = "mlflow"

    def __init__(self, out: Path, tags: RunTags, resumed_step: int | None, log_cfg):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=log_cfg.mlflow_uri)
        name = log_cfg.mlflow_experiment or (sorted(tags.sweeps) or ["e3"])[0]
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
        key = f"e3.{tags.stage}_id"
        found = self.client.search_runs(
            [exp_id], filter_string=f"tags.`{key}` = '{tags.run_id}'", max_results=1
        )
        flat = tags.flat()
        if found:  # a resumed attempt continues the same MLflow run
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run_tags = {key: tags.run_id, **{f"e3.{k}": str(v) for k, v in flat.items()}}
            run = self.client.create_run(exp_id, tags=run_tags, run_name=tags.label)
            self.run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in flat.items()]
            self.client.log_batch(self.run_id, params=params)

    def start(self, metric_tags: list[str]) -> None:
        pass

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Guarded:
    """A sink whose first failure prints one warning and switches it off for the run."""

    def __init__(self, name: str, make):
        self.name, self.sink = name, None
        self._call("open", make)

    def _call(self, what: str, fn, *args) -> None:
        try:
            out = fn(*args)
        except Exception as err:  # noqa: BLE001  a sink never fails the run
            print(
                f"live metrics: the {self.name} sink failed ({what}: "
                f"{type(err).__name__}: {err}); it is off for the rest of this run",
                file=sys.stderr,
                flush=True,
            )
            self.sink = None
            return
        if what == "open":
            self.sink = out

    @property
    def alive(self) -> bool:
        return self.sink is not None

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args):
            if self.sink is not None:
                self._call(method, getattr(self.sink, method), *args)

        return call


def open_sinks(out: Path, tags: RunTags, resumed_step: int | None, log_cfg) -> list[Guarded]:
    """The sinks ``log_cfg`` (the run config's ``log`` section) enables, each guarded."""
    sinks = []
    if log_cfg.tensorboard:
        sinks.append(Guarded("tensorboard", lambda: TensorBoardSink(out, tags, resumed_step)))
    if log_cfg.wandb_project:
        sinks.append(Guarded("wandb", lambda: WandbSink(out, tags, resumed_step, log_cfg)))
    if log_cfg.mlflow_uri:
        sinks.append(Guarded("mlflow", lambda: MlflowSink(out, tags, resumed_step, log_cfg)))
    return [s for s in sinks if s.alive]
