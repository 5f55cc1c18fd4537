"""Training curves: the recorder's windowed means, the plateau statistic, curves.json of a
tiny fine-tune (points and means hand-derived), and a resumed run's history equal to the
uninterrupted one's; held-out points and their own plateau statistic."""

import json
import math

import numpy as np
import pytest

from e3lib import train
from e3lib.config import resolve, run_id
from e3lib.curves import (
    CurveRecorder,
    default_heldout_every,
    default_log_every,
    plateau,
    read_curve,
)

# -- recorder ---------------------------------------------------------------------------------


def feed(rec: CurveRecorder, losses, start: int = 0) -> None:
    for t, v in enumerate(losses, start):
        rec.add(t, {"loss": [v], "ce": [v - 0.5], "aux_loss": [0.5]})


def test_points_are_means_of_their_steps_and_the_last_window_is_partial():
    rec = CurveRecorder(5, 1, log_every=2, lr_at=lambda s: 0.1 * np.asarray(s))
    feed(rec, [4.0, 2.0, 3.0, 1.0, 7.0])
    c = rec.curve()
    assert c["step"] == [2, 4, 5]  # ⌈5/2⌉ = 3 points, stamped by steps done
    assert c["loss"] == [3.0, 2.0, 7.0]
    assert c["ce"] == [2.5, 1.5, 6.5] and c["aux_loss"] == [0.5, 0.5, 0.5]
    # lr of steps (0,1), (2,3), (4): 0.05, 0.25, 0.4
    assert c["lr"] == pytest.approx([0.05, 0.25, 0.4])


def test_default_log_every_keeps_at_most_100_points():
    assert default_log_every(12) == 1
    assert default_log_every(100) == 1
    assert default_log_every(101) == 2  # 51 points
    assert default_log_every(250_000) == 2500
    assert default_log_every(250_000, 10) == 10
    for steps in (1, 99, 101, 1234, 10_001):
        assert math.ceil(steps / default_log_every(steps)) <= 100


def test_recorder_state_round_trips_through_json_mid_window():
    losses = [0.1 * i + 1 / 3 for i in range(7)]
    whole = CurveRecorder(7, 1, log_every=3)
    feed(whole, losses)
    first = CurveRecorder(7, 1, log_every=3)
    feed(first, losses[:4])  # one point closed, one step in the open window
    saved = json.loads(json.dumps(first.state()))
    resumed = CurveRecorder(7, 1, log_every=3)
    resumed.restore(saved, 4)
    feed(resumed, losses[4:], start=4)
    assert resumed.curve()["loss"] == whole.curve()["loss"]  # exact
    with pytest.raises(ValueError, match="ends at step 4"):
        CurveRecorder(7, 1, log_every=3).restore(saved, 6)
    # resumed with another log_every (not part of the run id): a fresh curve from step 4
    other = CurveRecorder(7, 1, log_every=2)
    other.restore(saved, 4)
    feed(other, losses[4:], start=4)
    c = other.curve()
    assert c["first_step"] == 4 and c["step"] == [6, 7]
    assert c["loss"] == [(losses[4] + losses[5]) / 2, losses[6]]


def test_recorder_refuses_a_skipped_step():
    rec = CurveRecorder(4, 1, log_every=2)
    rec.add(0, {"loss": [1.0], "ce": [1.0], "aux_loss": [0.0]})
    with pytest.raises(ValueError, match="expected 1"):
        rec.add(2, {"loss": [1.0], "ce": [1.0], "aux_loss": [0.0]})


def test_packed_seeds_keep_one_curve_each():
    rec = CurveRecorder(2, 2, log_every=2)
    rec.add(0, {"loss": [1.0, 10.0], "ce": [1.0, 10.0], "aux_loss": [0.0, 0.0]})
    rec.add(1, {"loss": [3.0, 20.0], "ce": [3.0, 20.0], "aux_loss": [0.0, 0.0]})
    assert rec.curve(0)["loss"] == [2.0] and rec.curve(1)["loss"] == [15.0]


# -- plateau ----------------------------------------------------------------------------------


def test_plateau_on_a_flat_tail():
    # 20 points: windows of 2; prev = (1.0, 1.0), last = (0.99, 0.99): drop 1% < 2%
    curve = list(np.linspace(3.0, 1.0, 16)) + [1.0, 1.0, 0.99, 0.99]
    p = plateau(curve)
    assert p["window"] == 2 and p["drop"] == pytest.approx(0.01)
    assert p["plateaued"] is True


def test_plateau_on_a_still_falling_curve():
    # 10 points, windows of 1: prev 2.0, last 1.8: drop 10%
    curve = [3.0] * 8 + [2.0, 1.8]
    p = plateau(curve)
    assert p["window"] == 1 and p["drop"] == pytest.approx(0.1)
    assert p["plateaued"] is False
    assert plateau(curve, threshold=0.2)["plateaued"] is True


def test_plateau_of_a_rising_tail_and_of_too_short_curves():
    assert plateau([2.0, 2.0, 1.0, 1.5])["drop"] == pytest.approx(-0.5)
    assert plateau([2.0, 2.0, 1.0, 1.5])["plateaued"] is True
    assert plateau([1.0])["drop"] is None and plateau([])["plateaued"] is None


# -- a tiny fine-tune -------------------------------------------------------------------------

TINY = {
    "method": "e3",
    "model": {"ensemble_size": 2},
    "finetune": {"steps": 5, "warmup": 2, "batch_size": 16, "checkpoint_every": 4},
    "eval": {"corrupted": False, "fewshot": False, "ood": False, "batch_size": 64},
}


def tiny(log_every):
    return resolve({**TINY, "finetune": {**TINY["finetune"], "log_every": log_every}})


def test_log_every_changes_no_run_id():
    assert run_id(tiny(2)) == run_id(tiny(None)) == run_id(tiny(1))


def test_finetune_writes_curves_with_hand_derived_points(tmp_path):
    train.finetune_and_evaluate([tiny(1)], None, [tmp_path / "every1"], None, "plain")
    train.finetune_and_evaluate([tiny(2)], None, [tmp_path / "every2"], None, "plain")
    per_step = read_curve(tmp_path / "every1" / "curves.json")
    c = read_curve(tmp_path / "every2" / "curves.json")
    assert per_step["step"] == [1, 2, 3, 4, 5] and c["step"] == [2, 4, 5]
    assert c["log_every"] == 2 and c["steps"] == 5
    for q in ("loss", "ce", "aux_loss"):
        s = per_step[q]
        assert c[q] == pytest.approx([(s[0] + s[1]) / 2, (s[2] + s[3]) / 2, s[4]], rel=1e-12)
    assert np.allclose(np.add(c["ce"], c["aux_loss"]), c["loss"], rtol=1e-6)
    # cosine warmup 2 steps to 0.01 then decay to 1e-5 over 3: lr(0..4) =
    # 0, 0.005, 0.01, 1e-5 + 0.00999·0.75, 1e-5 + 0.00999·0.25
    lr = [0.0, 0.005, 0.01, 1e-5 + 0.00999 * 0.75, 1e-5 + 0.00999 * 0.25]
    assert c["lr"] == pytest.approx([(lr[0] + lr[1]) / 2, (lr[2] + lr[3]) / 2, lr[4]], rel=1e-5)
    assert per_step["loss"][-1] == pytest.approx(
        json.loads((tmp_path / "every1" / "results.json").read_text())["train"]["final"]["loss"],
        rel=1e-6,
    )
    assert "curves" not in json.loads((tmp_path / "every2" / "results.json").read_text())["train"]
    assert c["plateau"]["window"] == 1


def test_resumed_history_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**TINY, "finetune": {**TINY["finetune"], "log_every": 2}}))

    def run(name):
        return train.cli_run(
            ["--config", str(cfg), "--out", str(tmp_path / name)]
            + ["--checkpoints", str(tmp_path / f"ck_{name}"), "--log-mode", "plain"]
        )

    assert run("a") == 0
    # SIGTERM after step 3: saved mid-window (point 2 holds step 2 of steps 2..3)
    monkeypatch.setenv("E3_FAULT_AT_STEP", "term:3")
    assert run("b") == train.EXIT_PREEMPTED
    monkeypatch.delenv("E3_FAULT_AT_STEP")
    saved = json.loads((tmp_path / "ck_b" / "3" / "history.json").read_text())
    assert saved["points"]["step"] == [2] and saved["window"]["count"] == 1
    assert run("b") == 0
    a = read_curve(tmp_path / "a" / "curves.json")
    b = read_curve(tmp_path / "b" / "curves.json")
    assert (
        json.loads((tmp_path / "b" / "results.json").read_text())["train"]["resumed_from_step"] == 3
    )
    assert a == b  # every point bitwise equal


# -- held-out points --------------------------------------------------------------------------


def test_heldout_points_and_their_own_plateau():
    rec = CurveRecorder(6, 1, log_every=3)
    feed(rec, [5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    assert "heldout" not in rec.curve()  # none recorded: no key
    for done, (loss, err) in zip((2, 4, 6), ((2.0, 0.5), (1.5, 0.3), (1.5, 0.25))):
        rec.add_heldout(done, 2, {"loss": [loss], "error": [err]})
    c = rec.curve()
    assert c["heldout"] == {
        "every": 2,
        "first_step": 0,
        "step": [2, 4, 6],
        "loss": [2.0, 1.5, 1.5],
        "error": [0.5, 0.3, 0.25],
    }
    # 3 points: window 1; (1.5 − 1.5) / 1.5 = 0 < 2%: plateaued, while the training loss
    # (points 4.0, 1.1667) still falls by 71%
    assert c["plateau_heldout"]["drop"] == 0.0 and c["plateau_heldout"]["plateaued"] is True
    assert c["plateau"]["drop"] == pytest.approx(1 - (3.5 / 3) / 4.0)
    with pytest.raises(ValueError, match="every 3 steps, before every 2"):
        rec.add_heldout(6, 3, {"loss": [1.0], "error": [0.0]})


def test_heldout_points_round_trip_and_restart_on_a_new_interval():
    rec = CurveRecorder(6, 1, log_every=2)
    feed(rec, [3.0, 2.0, 1.0, 1.0])
    rec.add_heldout(2, 2, {"loss": [2.5], "error": [0.4]})
    rec.add_heldout(4, 2, {"loss": [2.0], "error": [0.3]})
    saved = json.loads(json.dumps(rec.state()))
    resumed = CurveRecorder(6, 1, log_every=2)
    resumed.restore(saved, 4)
    assert resumed.heldout_every == 2
    resumed.add_heldout(6, 2, {"loss": [1.9], "error": [0.3]})
    assert resumed.curve()["heldout"]["step"] == [2, 4, 6]
    assert resumed.curve()["heldout"]["loss"] == [2.5, 2.0, 1.9]
    resumed.restart_heldout(4)  # resumed with another interval: its points start afresh
    resumed.add_heldout(6, 1, {"loss": [1.9], "error": [0.3]})
    held = resumed.curve()["heldout"]
    assert held["first_step"] == 4 and held["step"] == [6] and held["every"] == 1
    # a checkpoint written before held-out points were recorded restores without them
    old = {k: v for k, v in saved.items() if not k.startswith("heldout")}
    legacy = CurveRecorder(6, 1, log_every=2)
    legacy.restore(old, 4)
    assert legacy.heldout_every is None and legacy.heldout["first_step"] == 4


def test_default_heldout_every_gives_20_points():
    assert default_heldout_every(1000) == 50
    assert default_heldout_every(2000) == 100
    assert default_heldout_every(30) == 2  # ⌈30/20⌉
    assert default_heldout_every(6) == 1
    assert default_heldout_every(1000, 7) == 7 and default_heldout_every(1000, 0) == 0
