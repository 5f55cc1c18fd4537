"""Fine-tuning: resume after preemption and SIGKILL is bitwise equal to an uninterrupted
run, divergence gives the diverged status and no results, packed seeds equal separate
runs, the upstream stage writes its done file last. Tiny models, a dozen steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from e3lib import train
from e3lib.config import resolve
from e3lib.errors import ConfigError

TINY = {
    "method": "e3",
    "model": {"ensemble_size": 2},
    "finetune": {"steps": 12, "warmup": 2, "batch_size": 16, "checkpoint_every": 4},
    "upstream": {"steps": 6, "warmup": 1, "batch_size": 16},
    "eval": {"corrupted": False, "fewshot": False, "batch_size": 64},
}


def write_cfg(path: Path, overrides=None, **top) -> Path:
    cfg = json.loads(json.dumps(TINY))
    for section, values in (overrides or {}).items():
        cfg.setdefault(section, {}).update(values)
    cfg.update(top)
    path.write_text(json.dumps(cfg))
    return path


def e3(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "e3lib.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def upstream_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("upstream")
    cfg = write_cfg(d / "cfg.json")
    rc = train.cli_upstream(
        [
            "--config",
            str(cfg),
            "--workdir",
            str(d / "up"),
            "--done",
            str(d / "up" / "done.json"),
            "--log-mode",
            "plain",
        ]
    )
    assert rc == 0
    return d / "up"


def test_upstream_done_file_is_written_last_with_params(upstream_dir):
    done = json.loads((upstream_dir / "done.json").read_text())
    assert done["status"] == "ok" and done["num_classes"] == 20  # demo upstream: 20 classes
    # relative to the done file's folder, so a moved results folder reads its own
    assert done["params_path"] == "params" and (upstream_dir / "params").is_dir()
    assert done["config"]["capacity_factor"] == 1.05 and done["config"]["method"] == "vmoe"
    assert np.isfinite(done["metrics"]["final_loss"])
    # its loss history beside it: 6 steps, log_every null = ⌈6/100⌉ = 1 → 6 points
    curve = json.loads((upstream_dir / "curves.json").read_text())
    assert curve["step"] == [1, 2, 3, 4, 5, 6] and "curves" not in done
    assert curve["loss"][-1] == pytest.approx(done["metrics"]["final_loss"], rel=1e-6)
    assert curve["lr"][0] == 0.0  # linear warmup from 0 over 1 step


def test_upstream_checkpoints_every_upstream_checkpoint_every_steps(tmp_path, upstream_dir):
    # the fixture's 6 steps at the default interval (1000): no periodic checkpoint
    assert not any(p.name.isdigit() for p in (upstream_dir / "ckpt").iterdir())
    cfg = write_cfg(tmp_path / "cfg.json", {"upstream": {"checkpoint_every": 2}})
    work = tmp_path / "up"
    rc = train.cli_upstream(
        ["--config", str(cfg), "--workdir", str(work), "--done", str(work / "done.json")]
    )
    assert rc == 0
    kept = sorted(int(p.name) for p in (work / "ckpt").iterdir() if p.name.isdigit())
    assert kept == [4, 6]  # saved at 2, 4, 6; the latest two kept
    done = json.loads((work / "done.json").read_text())
    first = json.loads((upstream_dir / "done.json").read_text())
    assert done["upstream_id"] == first["upstream_id"]  # not part of the upstream's identity
    assert done["train"]["final"] == first["train"]["final"]


def _upstream(tmp_path, name, upstream, env_extra=None):
    cfg = write_cfg(tmp_path / f"{name}.json", {"upstream": upstream})
    work = tmp_path / name
    args = ["--config", cfg, "--workdir", work, "--done", work / "done.json", "--log-mode", "plain"]
    return e3("upstream", *args, env_extra=env_extra), work


def test_upstream_records_its_heldout_loss_every_eval_every_steps(tmp_path, upstream_dir):
    from e3lib.config import upstream_config
    from e3lib.data.embedded import upstream_heldout
    from e3lib.evaluate import predict
    from e3lib.models import build_model
    from e3lib.models.convert import restore_params
    from e3lib.train.upstream import upstream_model_config

    fixture = json.loads((upstream_dir / "curves.json").read_text())
    assert fixture["heldout"]["step"] == [1, 2, 3, 4, 5, 6]  # 6 steps: every ⌈6/20⌉ = 1
    done, work = _upstream(tmp_path, "every4", {"eval_every": 4})
    assert done.returncode == 0, done.stderr
    curve = json.loads((work / "curves.json").read_text())
    result = json.loads((work / "done.json").read_text())
    held = curve["heldout"]
    assert held["every"] == 4 and held["step"] == [4, 6]  # every 4 steps and at the last
    assert held["loss"][-1] == fixture["heldout"]["loss"][-1]  # the same model after 6 steps
    assert result["metrics"]["heldout_nll"] == held["loss"][-1]
    assert result["metrics"]["heldout_error"] == held["error"][-1]
    # the final point, recomputed: mean −log p(label) of the saved model on half B's digits
    ucfg = upstream_config(resolve(json.loads((tmp_path / "every4.json").read_text())))
    model = build_model(upstream_model_config(ucfg), 20)
    data = upstream_heldout(16)
    probs = predict(model, restore_params(work / "params"), data.images, 256)[0].mean(0)
    picked = probs[np.arange(len(data)), data.labels]  # (1798,)
    assert len(data) == 1798
    assert held["loss"][-1] == pytest.approx(float(-np.log(picked).mean()), rel=1e-5)
    assert held["error"][-1] == pytest.approx(float((probs.argmax(1) != data.labels).mean()))
    # evaluating changes neither the training nor the upstream's identity
    first = json.loads((upstream_dir / "done.json").read_text())
    assert result["upstream_id"] == first["upstream_id"]
    assert result["train"]["final"] == first["train"]["final"]
    done, work = _upstream(tmp_path, "off", {"eval_every": 0})
    assert done.returncode == 0, done.stderr
    assert "heldout" not in json.loads((work / "curves.json").read_text())
    assert "heldout_nll" not in json.loads((work / "done.json").read_text())["metrics"]


def test_resumed_upstream_keeps_its_heldout_points(tmp_path):
    whole, a = _upstream(tmp_path, "a", {"eval_every": 2})
    assert whole.returncode == 0, whole.stderr
    cut, b = _upstream(tmp_path, "b", {"eval_every": 2}, {"E3_FAULT_AT_STEP": "term:3"})
    assert cut.returncode == train.EXIT_PREEMPTED, cut.stderr
    saved = json.loads((b / "ckpt" / "3" / "history.json").read_text())
    assert saved["heldout"]["step"] == [2]
    again, b = _upstream(tmp_path, "b", {"eval_every": 2})
    assert again.returncode == 0, again.stderr
    ca, cb = (json.loads((d / "curves.json").read_text()) for d in (a, b))
    assert cb["heldout"]["step"] == [2, 4, 6] and ca == cb


def test_upstream_from_an_existing_checkpoint_is_registered_not_trained(
    tmp_path, upstream_dir, capsys
):
    params = str(upstream_dir / json.loads((upstream_dir / "done.json").read_text())["params_path"])
    cfg = write_cfg(tmp_path / "cfg.json", {"upstream": {"checkpoint": params}})
    rc = train.cli_upstream(
        [
            "--config",
            str(cfg),
            "--workdir",
            str(tmp_path / "up"),
            "--done",
            str(tmp_path / "up" / "done.json"),
        ]
    )
    assert rc == 0
    done = json.loads((tmp_path / "up" / "done.json").read_text())
    assert done["params_path"] == params and "train" not in done
    bad = write_cfg(tmp_path / "bad.json", {"upstream": {"checkpoint": str(tmp_path / "nope")}})
    rc = train.cli_upstream(
        [
            "--config",
            str(bad),
            "--workdir",
            str(tmp_path / "up2"),
            "--done",
            str(tmp_path / "up2" / "done.json"),
        ]
    )
    assert rc == train.EXIT_BAD_INPUT
    assert "upstream.checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "up2" / "done.json").exists()


def test_a_moved_upstream_folder_reads_its_own_parameters(tmp_path, upstream_dir):
    import shutil

    from e3lib.train.finetune import load_upstream_params

    first = tmp_path / "old" / "up"
    shutil.copytree(upstream_dir, first)
    want = load_upstream_params(first)
    moved = tmp_path / "new" / "up"
    shutil.copytree(first, moved)
    shutil.rmtree(first / "params")  # only the moved folder still has parameters
    got = load_upstream_params(moved)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), want, got))
    # a done file written before paths were relative names the old folder absolutely
    done = json.loads((moved / "done.json").read_text())
    (moved / "done.json").write_text(json.dumps({**done, "params_path": str(first / "params")}))
    got = load_upstream_params(moved)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), want, got))


def test_progress_plain_lines_show_step_loss_rate_and_eta():
    import io

    from e3lib.progress import Progress

    buf = io.StringIO()
    p = Progress(20, "finetune", "plain", every=10, stream=buf)
    for step in range(1, 21):
        p.update(step, 0.5)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("finetune: step 10/20 loss 0.5000 ")
    assert "steps/s eta" in lines[0]
    with pytest.raises(ValueError, match="allowed"):
        Progress(5, "x", "fancy")


def test_preempt_then_kill_then_resume_matches_uninterrupted(tmp_path, upstream_dir, monkeypatch):
    # The full evaluation suite, so that every record is compared.
    cfg = write_cfg(tmp_path / "cfg.json", {"eval": {"corrupted": True, "fewshot": True}})

    def run_args(name):
        return [
            "run",
            "--config",
            cfg,
            "--upstream",
            upstream_dir,
            "--out",
            tmp_path / name,
            "--checkpoints",
            tmp_path / f"ck_{name}",
            "--log-mode",
            "plain",
        ]

    def run_here(name):
        return train.cli_run([str(a) for a in run_args(name)[1:]])

    assert run_here("a") == 0  # the uninterrupted reference

    out, ck = tmp_path / "b", tmp_path / "ck_b"
    # SIGTERM after step 5: a checkpoint at step 5 (off the every-4 grid), exit status 4.
    monkeypatch.setenv("E3_FAULT_AT_STEP", "term:5")
    assert run_here("b") == train.EXIT_PREEMPTED
    monkeypatch.delenv("E3_FAULT_AT_STEP")
    assert sorted(p.name for p in ck.iterdir() if p.name.isdigit()) == ["4", "5"]
    assert not (out / "results.json").exists()
    # A separate process resumes from 5 and is SIGKILLed after step 10 (checkpoint 8).
    killed = e3(*run_args("b"), env_extra={"E3_FAULT_AT_STEP": "kill:10"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "8" in [p.name for p in ck.iterdir()]
    assert not (out / "results.json").exists()
    assert run_here("b") == 0  # resumes from step 8

    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert a["train"]["resumed_from_step"] is None
    assert b["train"]["resumed_from_step"] == 8
    assert a["records"] == b["records"]  # every metric value bitwise equal
    # and the loss history, validation points included (one after every step: ⌈12/20⌉ = 1)
    ca, cb = (json.loads((d / "curves.json").read_text()) for d in (tmp_path / "a", out))
    assert cb["heldout"]["step"] == list(range(1, 13)) and ca == cb
    assert a["train"]["final"] == b["train"]["final"]
    pa, pb = np.load(tmp_path / "a" / "predictions.npz"), np.load(out / "predictions.npz")
    assert sorted(pa.files) == sorted(pb.files)
    for k in pa.files:
        assert np.array_equal(pa[k], pb[k]), k
    assert pa["probs"].shape[0] == 2  # M = 2 members (E³)
    # the suite: 10 corruptions × 5 severities + mean, near/far OOD, 3 tasks × 4 shots
    recs = b["records"]
    corr = {(r["corruption"], r["severity"]) for r in recs if r["split"] == "corrupted"}
    assert len(corr) == 10 * 5 + 1 and ("mean", 0) in corr
    assert {r["metric"] for r in recs if r["split"] == "ood_far"} == {"auroc", "aupr", "fpr95"}
    few = {(r["task"], r["shots"], r["member"]) for r in recs if r["split"] == "fewshot"}
    assert len(few) == (3 + 1) * 4 * 2  # tasks + mean, shots, joint/disjoint
    assert {r["member"] for r in recs if r["split"] == "clean"} == {"ensemble", "0", "1"}
    prov = b["provenance"]
    assert prov["packages"]["jax"] and prov["code_commit"] and prov["finished"] >= prov["started"]
    check_live_metrics(tmp_path / "a", out, ca, a["provenance"]["throughput"], prov["throughput"])
    # the upstream records the same: its throughput in its done file, its own series
    up = json.loads((upstream_dir / "done.json").read_text())["provenance"]["throughput"]
    assert up["num_devices"] == 1 and up["images_per_second_per_device"] > 0
    assert up["device_hours"] == up["wall_seconds"] / 3600 and 0 < up["mfu"] < 1
    progress = json.loads((upstream_dir / "progress.json").read_text())
    assert (progress["stage"], progress["step"], progress["steps"]) == ("upstream", 6, 6)
    assert any((upstream_dir / "tb").glob("events.out.tfevents.*"))
    assert b["config"]["method"] == "e3" and b["upstream_id"] == a["upstream_id"]
    assert b["format"] == 2


def check_live_metrics(a: Path, b: Path, curve: dict, ta: dict, tb: dict) -> None:
    """TensorBoard's reader finds every series of the uninterrupted run a, and the same
    points in run b (preempted at 5, killed after 10, resumed from 8): one per step, none
    twice; both record their throughput (e3lib.monitor)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series = []
    for run in (a, b):
        acc = EventAccumulator(str(run / "tb"))
        acc.Reload()
        series.append(
            {k: [(e.step, e.value) for e in acc.Scalars(k)] for k in acc.Tags()["scalars"]}
        )
    sa, sb = series
    train = [f"train/{q}" for q in ("loss", "ce", "aux_loss", "lr", "grad_norm")]
    want = {
        *train,
        "heldout/loss",
        "heldout/error",
        "throughput/images_per_second_per_device",
        "throughput/mfu",
        "throughput/device_hours",
        "eval/clean/nll",
        "eval/val/error",
    }
    assert want <= set(sa) and want <= set(sb)
    for k in ("train/loss", "train/grad_norm", "heldout/loss"):
        assert [st for st, _ in sb[k]] == list(range(1, 13)) == [st for st, _ in sa[k]], k
    # float32 events of the curve's float64 means; the resumed run's values equal a's
    assert [v for _, v in sa["train/loss"]] == pytest.approx(curve["loss"], rel=1e-6)
    assert sb["train/loss"] == sa["train/loss"] and sb["train/lr"] == sa["train/lr"]
    assert sorted(p.name for p in (b / "tb").iterdir())[0].endswith(".step000000000")
    assert len(list((b / "tb").iterdir())) == 3  # one event file per attempt
    for t in (ta, tb):
        assert t["images_per_second_per_device"] > 0 and 0 < t["mfu"] < 1
        assert t["device_hours"] == t["wall_seconds"] * t["num_devices"] / 3600
        assert t["device_kind"] == "cpu" and t["step_flops"] > 0
    # b's wall time counts its three attempts (the killed one up to its last record)
    progress = json.loads((b / "progress.json").read_text())
    assert progress["step"] == 12 and progress["previous_wall_seconds"] > 0
    assert tb["wall_seconds"] > progress["wall_seconds"]


def test_nan_loss_gives_diverged_status_and_no_results(tmp_path):
    # lr 1e30: after warmup the first update sends params to ±inf and the loss to NaN.
    cfg = write_cfg(tmp_path / "cfg.json", {"finetune": {"lr": 1e30, "steps": 6}})
    rc = train.cli_run(
        ["--config", str(cfg), "--out", str(tmp_path / "out"), "--log-mode", "plain"]
    )
    assert rc == train.EXIT_DIVERGED
    diverged = json.loads((tmp_path / "out" / "diverged.json").read_text())
    assert diverged["status"] == "diverged" and "diverged at step" in diverged["message"]
    assert not (tmp_path / "out" / "results.json").exists()
    assert not (tmp_path / "out" / "predictions.npz").exists()


def test_packed_seeds_equal_separate_runs(tmp_path):
    cfgs = [resolve(dict(TINY, seed=s)) for s in (3, 4)]
    train.finetune_and_evaluate(cfgs, None, [tmp_path / "p3", tmp_path / "p4"], None, "plain")
    for s, cfg in zip((3, 4), cfgs):
        train.finetune_and_evaluate([cfg], None, [tmp_path / f"s{s}"], None, "plain")
        packed = json.loads((tmp_path / f"p{s}" / "results.json").read_text())
        single = json.loads((tmp_path / f"s{s}" / "results.json").read_text())
        assert packed["run_id"] == single["run_id"]
        assert packed["train"]["packed_seeds"] == [3, 4]
        got = {(r["split"], r["member"], r["metric"]): r["value"] for r in packed["records"]}
        want = {(r["split"], r["member"], r["metric"]): r["value"] for r in single["records"]}
        assert got.keys() == want.keys()
        for k in want:  # vmapped matmuls may round differently from unbatched ones
            assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    # the two seeds really differ (own init, batches and router noise)
    p3 = np.load(tmp_path / "p3" / "predictions.npz")["probs"]
    p4 = np.load(tmp_path / "p4" / "predictions.npz")["probs"]
    assert not np.allclose(p3, p4)


def test_packing_rejects_configs_differing_beyond_seed(tmp_path, capsys):
    a = write_cfg(tmp_path / "a.json", seed=0)
    b = write_cfg(tmp_path / "b.json", {"finetune": {"lr": 0.5}}, seed=1)
    rc = train.cli_run(
        ["--config", str(a), str(b), "--out", str(tmp_path / "x"), str(tmp_path / "y")]
    )
    assert rc == train.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "differ only in seed" in err and "b.json" in err and "finetune" in err


def test_bad_config_is_a_clear_error_naming_file_and_field(tmp_path, capsys):
    bad = write_cfg(tmp_path / "bad.json", {"data": {"dataset": "mnist"}})
    assert train.cli_run(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "data.dataset" in err and "cifar10" in err


def test_schedules_warmup_then_decay():
    # cosine: 0 → peak linearly over warmup, then peak → end along a half cosine.
    # At t = warmup + (T − warmup)/2 the cosine is at its midpoint (peak + end)/2.
    s = train.lr_schedule("cosine", 1.0, 10, 110, 0.0)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0) and float(s(60)) == pytest.approx(0.5)
    lin = train.lr_schedule("linear", 2.0, 4, 8, 0.0)
    # linear: 2·t/4 during warmup, then 2·(1 − (t−4)/4)
    assert [float(lin(t)) for t in (2, 4, 6, 8)] == pytest.approx([1.0, 2.0, 1.0, 0.0])
    # warmup >= steps is refused by the config validation, before any job starts
    with pytest.raises(ConfigError, match="finetune.warmup=10: must be < finetune.steps = 10"):
        resolve({"finetune": {"warmup": 10, "steps": 10}})


def test_finetune_optimizer_clips_global_norm_then_sgd_momentum():
    import jax.numpy as jnp

    ft = resolve(
        {
            "finetune": {
                "lr": 1.0,
                "warmup": 1,
                "steps": 10,
                "grad_clip": 10.0,
                "schedule": "linear",
                "end_lr": 1.0,
            }
        }
    ).finetune
    opt = train.finetune_optimizer(ft)
    params = {"w": jnp.zeros(2)}
    state = opt.init(params)
    g = {"w": jnp.array([30.0, 40.0])}  # norm 50 → clipped to norm 10: [6, 8]
    upd, state = opt.update(g, state, params)  # step 0: lr 0 → no move
    assert np.allclose(upd["w"], 0.0)
    upd, state = opt.update(g, state, params)  # step 1: lr 1
    # momentum trace after step 0: [6,8]; after step 1: [6,8] + 0.9·[6,8] = 1.9·[6,8];
    # update = −lr·trace = −1.9·[6,8]
    assert np.allclose(upd["w"], -1.9 * np.array([6.0, 8.0]), rtol=1e-6)


def test_finetune_records_its_validation_loss_every_eval_every_steps(tmp_path):
    def run(name, finetune, seeds=(0,)):
        cfgs = [
            resolve(dict(TINY, seed=s, finetune={**TINY["finetune"], **finetune})) for s in seeds
        ]
        outs = [tmp_path / f"{name}{s}" for s in seeds]
        train.finetune_and_evaluate(cfgs, None, outs, None, "plain")
        return [
            (
                json.loads((o / "curves.json").read_text()),
                json.loads((o / "results.json").read_text()),
            )
            for o in outs
        ]

    [(curve, result)] = run("every4", {"eval_every": 4})
    held = curve["heldout"]
    assert held["every"] == 4 and held["step"] == [4, 8, 12]  # 12 steps: at 4, 8 and the last
    # the last point is the final model on the validation split: the final evaluation's
    # ensemble NLL and error of split "val"
    val = {
        r["metric"]: r["value"]
        for r in result["records"]
        if r["split"] == "val" and r["member"] == "ensemble"
    }
    assert held["loss"][-1] == pytest.approx(val["nll"], rel=1e-5)
    assert held["error"][-1] == pytest.approx(val["error"], abs=1e-9)
    assert curve["plateau_heldout"]["window"] == 1  # ⌊3 · 0.1⌋ → 1 point per window
    # evaluating changes neither the training nor the run's identity
    [(_, off)] = run("off", {"eval_every": 0})
    assert off["run_id"] == result["run_id"] and off["train"]["final"] == result["train"]["final"]
    assert "heldout" not in json.loads((tmp_path / "off0" / "curves.json").read_text())
    # the default: ⌈12/20⌉ = 1 → a point after every step; packed seeds get one curve each,
    # equal to their separate runs' points
    packed = run("packed", {}, seeds=(3, 4))
    for (c, _), s in zip(packed, (3, 4)):
        [(single, _)] = run(f"single{s}-", {}, seeds=(s,))
        assert c["heldout"]["step"] == list(range(1, 13))
        assert c["heldout"]["loss"] == pytest.approx(single["heldout"]["loss"], rel=1e-4)
    assert packed[0][0]["heldout"]["loss"] != packed[1][0]["heldout"]["loss"]
