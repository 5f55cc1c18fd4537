"""Live metrics (e3lib.monitor): TensorBoard event files read back with TensorBoard's own
reader, a resumed attempt that continues its series without duplicate or missing points,
progress.json, the throughput record, the W&B offline and MLflow sinks, a failing sink,
sweep names. The monitor is driven here as the training loop drives it, with a real
CurveRecorder and hand-made losses (no model compiles); the end-to-end checks on real runs
are in tests/test_train.py (preempted and resumed) and tests/test_parallel.py (two processes).
"""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from e3lib.config import resolve, run_id
from e3lib.curves import CurveRecorder
from e3lib.monitor import PROGRESS_FILE, RunMonitor, RunTags, finetune_monitor
from e3lib.monitor.names import label, link_event_dir, sweep_memberships
from e3lib.monitor.peak import published_peak
from e3lib.run_config import LogConfig

pytest.importorskip("tensorboardX", reason="the TensorBoard sink needs tensorboardX")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="reading event files back needs tensorboard",
).EventAccumulator

STEPS, LOG_EVERY, HELD_EVERY, B = 12, 2, 4, 8
TAGS = RunTags("finetune", "abc123abc123", 3, "model.num_experts=8,seed=3", {"sw": {"x": 1}})


def loss_at(step: int, attempt: int) -> float:
    return 10.0 * attempt + step  # distinct per attempt: the reader must show the last one


def drive(out: Path, log: LogConfig, attempt: int, stop: int, restored=None, close=True, ckpt=2):
    """Steps up to ``stop`` as e3lib.train.loop feeds them (start after ``restored``:
    (step, recorder state)); returns the monitor and the recorder's state after each step
    (what a checkpoint there would hold)."""
    rec = CurveRecorder(STEPS, 1, LOG_EVERY, lambda t: np.full(len(t), 0.1))
    start = 0
    if restored is not None:
        start, state = restored
        rec.restore(state, start)
    mon = RunMonitor("finetune", [out], [TAGS], log, STEPS, B, 1e9, checkpoint_every=ckpt)
    mon.begin(start, rec, np.asarray)
    states = {}
    for t in range(start, stop):
        v = np.asarray([loss_at(t + 1, attempt)])
        rec.add(t, {"loss": v, "ce": v - 1, "aux_loss": v * 0 + 0.5})
        if (t + 1) % HELD_EVERY == 0 or t + 1 == STEPS:
            rec.add_heldout(t + 1, HELD_EVERY, {"loss": [1.0], "error": [0.5]})
        mon.after_step(t + 1, 0.01, {"grad_norm": np.asarray([2.0 * (t + 1)])}, rec)
        states[t + 1] = json.loads(json.dumps(rec.state()))
    if close:
        mon.log_records(
            0,
            [
                {
                    "split": "clean",
                    "member": "ensemble",
                    "metric": "nll",
                    "value": 0.7,
                    "corruption": "none",
                    "severity": 0,
                }
            ],
        )
        mon.throughput()
        mon.close()
    return mon, states


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator(str(logdir))
    acc.Reload()
    return {k: [(e.step, e.value) for e in acc.Scalars(k)] for k in acc.Tags()["scalars"]}


def test_tensorboard_holds_every_series_and_a_resume_adds_no_duplicate(tmp_path):
    log = LogConfig()
    # attempt 1 (checkpoints every 3 steps) writes up to step 10 and is killed (never
    # closed); attempt 2 restores the recorder state of its last checkpoint, step 9
    mon1, states = drive(tmp_path, log, attempt=1, stop=10, close=False, ckpt=3)
    first = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert first["step"] == 9 and first["previous_wall_seconds"] == 0  # a fresh start
    drive(tmp_path, log, attempt=2, stop=STEPS, restored=(9, states[9]), ckpt=3)

    s = read_scalars(tmp_path / "tb")
    assert set(s) >= {
        "train/loss", "train/ce", "train/aux_loss", "train/lr", "train/grad_norm",
        "heldout/loss", "heldout/error", "throughput/images_per_second_per_device",
        "throughput/device_hours", "throughput/mfu", "eval/clean/nll",
    }  # fmt: skip
    # one point per log interval, none twice: steps 2, 4, ..., 12
    assert [st for st, _ in s["train/loss"]] == [2, 4, 6, 8, 10, 12]
    # points up to the checkpoint from attempt 1 (loss 10 + step, mean of 2 steps); point
    # 10 averages attempt 1's step 9 (restored window) and attempt 2's step 10 (20 + 10)
    assert [v for _, v in s["train/loss"]] == [11.5, 13.5, 15.5, 17.5, 24.5, 31.5]
    assert [v for _, v in s["train/ce"]] == [10.5, 12.5, 14.5, 16.5, 23.5, 30.5]
    assert [st for st, _ in s["heldout/loss"]] == [4, 8, 12]
    assert s["train/grad_norm"][-1] == (12, 24.0)  # the point's last step
    assert s["train/lr"][0][1] == pytest.approx(0.1)
    assert s["eval/clean/nll"] == [(12, pytest.approx(0.7))]

    progress = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert set(progress) == {
        "stage", "step", "steps", "started", "updated", "wall_seconds", "num_devices",
        "images_per_second_per_device", "previous_wall_seconds",
    }  # fmt: skip
    assert (progress["stage"], progress["step"], progress["steps"]) == ("finetune", 12, 12)
    # 3 steps in attempt 2, the first not timed: 2 steps × 8 images / (2 × 0.01 s) / 1 device
    assert progress["images_per_second_per_device"] == pytest.approx(800.0)
    # attempt 2 counts attempt 1's wall time (which counted the one before it)
    assert progress["previous_wall_seconds"] == pytest.approx(
        first["previous_wall_seconds"] + first["wall_seconds"]
    )


def test_flushes_and_progress_records_at_most_every_interval_and_at_checkpoints(
    tmp_path, monkeypatch
):
    import e3lib.monitor.run as run

    monkeypatch.setattr(run, "WRITE_EVERY_SECONDS", 1e9)  # never due by time
    drive(tmp_path / "a", LogConfig(), attempt=1, stop=10, close=False, ckpt=None)
    assert json.loads((tmp_path / "a" / PROGRESS_FILE).read_text())["step"] == 0  # at begin
    drive(tmp_path / "b", LogConfig(), attempt=1, stop=10, close=False, ckpt=4)
    assert json.loads((tmp_path / "b" / PROGRESS_FILE).read_text())["step"] == 8
    monkeypatch.setattr(run, "WRITE_EVERY_SECONDS", 0.0)  # due at every point
    drive(tmp_path / "c", LogConfig(), attempt=1, stop=10, close=False, ckpt=None)
    assert json.loads((tmp_path / "c" / PROGRESS_FILE).read_text())["step"] == 10


def test_throughput_record(tmp_path):
    mon, _ = drive(tmp_path, LogConfig(tensorboard=False), attempt=1, stop=STEPS, close=False)
    rec = mon.throughput()
    assert rec["images_per_second_per_device"] == pytest.approx(800.0)  # 11 timed steps
    assert rec["device_hours"] == rec["wall_seconds"] * rec["num_devices"] / 3600
    assert rec["device_kind"] == "cpu" and rec["peak_flops_per_device"] > 0
    assert "measured" in rec["peak_source"]
    # 1 GFLOP per step at 100 steps/s
    assert rec["mfu"] == pytest.approx(1e9 * 100 / rec["peak_flops_per_device"])
    assert not (tmp_path / "tb").exists()  # log.tensorboard false: no event files
    # results.json's schema takes the record and refuses a broken one
    from e3lib.aggregate.schemas import AggregateError, validate

    doc = {"format": 2, "status": "ok", "records": [], "provenance": {"throughput": rec}}
    validate(doc, "results-v2", tmp_path / "results.json")
    doc["provenance"]["throughput"] = dict(rec, device_hours=-1.0)
    with pytest.raises(AggregateError, match="provenance.throughput.device_hours"):
        validate(doc, "results-v2", tmp_path / "results.json")


def test_published_peaks_by_device_kind():
    assert published_peak("TPU v4") == 275e12
    assert published_peak("TPU v5 lite") == 197e12 and published_peak("TPU v5p") == 459e12
    assert published_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert published_peak("NVIDIA H100 PCIe") == 756e12 and published_peak("cpu") is None


def _wandb_records(path: Path):
    """The protobuf records of a .wandb file (LevelDB log format: 32 KiB blocks of
    checksum, length, type, data chunks; FULL = 1, LAST = 4 end a record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, block = path.read_bytes(), 7, b"", 32768  # 7-byte ':W&B' header
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def test_wandb_offline_run_and_mlflow_store_hold_metrics_and_tags(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the W&B sink needs wandb")
    pytest.importorskip("mlflow", reason="the MLflow sink needs mlflow(-skinny)")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: file store opt-in
    monkeypatch.setenv("WANDB_SILENT", "true")
    uri = (tmp_path / "mlruns").as_uri()
    log = LogConfig(tensorboard=False, wandb_project="e3test", mlflow_uri=uri)
    drive(tmp_path / "run", log, attempt=1, stop=STEPS)

    (wb,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-finetune-abc123abc123.wandb")
    history, run = {}, None
    for r in _wandb_records(wb):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            for i in r.history.item:
                key, value = i.key or "/".join(i.nested_key), json.loads(i.value_json)
                history.setdefault(key, []).append((r.history.step.num, value))
        elif kind == "run":
            run = r.run
    assert [st for st, _ in history["train/loss"]] == [2, 4, 6, 8, 10, 12]
    assert history["train/loss"][0][1] == pytest.approx(11.5)
    assert "throughput/mfu" in history and "eval/clean/nll" in history
    config = {c.key: json.loads(c.value_json) for c in run.config.update}
    assert (run.display_name, run.run_group) == (TAGS.label, "sw")
    assert config["run_id"] == TAGS.run_id and config["seed"] == 3 and config["axis.x"] == 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sw")  # the run's sweep names the experiment
    (found,) = client.search_runs([exp.experiment_id])
    assert found.data.tags["e3.finetune_id"] == TAGS.run_id
    assert found.data.tags["e3.axis.x"] == "1" and found.data.tags["e3.seed"] == "3"
    hist = client.get_metric_history(found.info.run_id, "train/loss")
    assert [m.step for m in hist] == [2, 4, 6, 8, 10, 12] and found.info.status == "FINISHED"


def test_a_failing_sink_warns_once_and_the_run_goes_on(tmp_path, capsys):
    pytest.importorskip("mlflow", reason="the MLflow sink needs mlflow(-skinny)")
    log = LogConfig(mlflow_uri="nosuchscheme://nowhere")
    drive(tmp_path, log, attempt=1, stop=STEPS)
    err = capsys.readouterr().err
    assert err.count("live metrics: the mlflow sink failed") == 1
    assert [st for st, _ in read_scalars(tmp_path / "tb")["train/loss"]] == [2, 4, 6, 8, 10, 12]


def test_log_section_is_not_part_of_the_run_id():
    base = resolve({})
    logged = resolve({"log": {"wandb_project": "p", "mlflow_uri": "sqlite:///m.db"}})
    assert run_id(base) == run_id(logged) and logged.log.wandb_project == "p"


def test_sweep_names_and_the_readable_link_tree(tmp_path):
    root = tmp_path / "results"
    sweep = root / "sweeps" / "sizes"
    sweep.mkdir(parents=True)
    cfg = resolve({"seed": 1, "model": {"num_experts": 4}})
    rid = run_id(cfg)
    rows = ["id\tkind\tseed\treplicate\tmodel.num_experts\tmembers",
            f"{rid}\trun\t1\t\t4\t", "ffffffffffff\tensemble\t\t0\t4\tx,y"]  # fmt: skip
    (sweep / "index.tsv").write_text("\n".join(rows) + "\n")
    assert sweep_memberships(root, rid) == {"sizes": {"model.num_experts": 4}}
    out = root / "runs" / rid
    mon = finetune_monitor([cfg], [out], 10, 1, True)
    assert mon.tags[0].label == "model.num_experts=4,seed=1" == label({"model.num_experts": 4}, 1)
    assert mon.tags[0].params["model.num_experts"] == 4 and mon.tags[0].params["seed"] == 1
    mon.begin(0, CurveRecorder(4, 1), np.asarray)
    mon.close()
    link = root / "tb" / "sizes" / "model.num_experts=4,seed=1"
    assert link.is_symlink() and link.resolve() == (out / "tb").resolve()
    assert not os.path.isabs(os.readlink(link))  # relative: the results folder may move
    link_event_dir(root, "sizes", link.name, out / "tb")  # idempotent
    assert any(link.glob("events.out.tfevents.*"))


def test_a_non_writer_process_writes_nothing(tmp_path):
    mon = RunMonitor("finetune", [tmp_path], [TAGS], LogConfig(), 4, B, None, 2, writer=False)
    rec = CurveRecorder(4, 1, 1)
    mon.begin(0, rec, np.asarray)
    for t in range(4):
        rec.add(t, {"loss": [1.0], "ce": [1.0], "aux_loss": [0.0]})
        mon.after_step(t + 1, 0.01, {"grad_norm": np.asarray([1.0])}, rec)
    mon.close()
    assert list(tmp_path.iterdir()) == []


def test_the_upstream_monitor_tags_by_the_upstreams_own_fields():
    from e3lib.monitor import upstream_monitor

    ucfg = {"method": "vmoe", "size": "S/32", "seed": 0, "batch_size": 4, "steps": 2}
    mon = upstream_monitor(ucfg, resolve({}), "0123456789ab", "/nonexistent", LogConfig(), 10)
    assert mon.tags[0].label == "upstream,vmoe,S/32,0123456789ab" and mon.num_devices == 1
    assert mon.tags[0].flat()["stage"] == "upstream" and mon.tags[0].params["seed"] == 0
