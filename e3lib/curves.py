"""Training curves: the loss history of a training run, its file, and whether it plateaued.

Notation: T total steps, k = ``log_every`` (steps per point), S packed seeds, n points.

Recording (``CurveRecorder``, fed by e3lib.train.loop once per step): point j is the mean
over the steps ``[j·k, min((j+1)·k, T))`` of the total loss, the cross-entropy, the
auxiliary loss and the learning rate, stamped with its last step count ``min((j+1)·k, T)``
(the number of steps done when it closes). So a run has n = ⌈T/k⌉ points; the last one
averages fewer steps when k does not divide T. ``log_every`` None = ⌈T/100⌉ (n ≤ 100).
Sums are kept in float64 per seed; the recorder's state (the points so far and the open
window's sums) is JSON and saved inside each training checkpoint, so a resumed run's
history equals the uninterrupted run's exactly.

Plateau (``plateau``): with w = max(1, ⌊n·frac⌋) points per window (frac = 0.1, the
last 10% of training), drop = (mean(prev w points) − mean(last w points)) / |mean(prev
w points)|; the curve has *plateaued* when drop < ``PLATEAU_THRESHOLD`` (2%), i.e. the
loss fell by less than 2% over the last tenth of training (a rising loss counts as
plateaued). Fewer than 2 points: no statistic (None).

Held-out loss (``CurveRecorder.add_heldout``; the upstream stage evaluates its held-out
set every ``upstream.eval_every`` steps and at the last step): points ``(step, loss, error)``
of the model's cross-entropy and error on a fixed set it does not train on, under
``"heldout"`` with their own plateau statistic ``"plateau_heldout"`` (the same test on
these points). The training loss of a finite set keeps falling towards 0 while the learning
rate decays; the held-out loss says whether more training still improves the model on
unseen examples (a held-out loss that rises has plateaued too: it overfits).

File (``curves.json``, written atomically): ``{"format", "log_every", "steps", "step",
"loss", "ce", "aux_loss", "lr", "plateau"}`` with one list per quantity (one seed), and
``"heldout": {"every", "first_step", "step", "loss", "error"}`` and ``"plateau_heldout"``
when a held-out set was evaluated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from e3lib import atomic

CURVES_FORMAT = 1
CURVES_FILE = "curves.json"
QUANTITIES = ("loss", "ce", "aux_loss", "lr")  # averaged per point
MEASURED = ("loss", "ce", "aux_loss")  # from the train step; lr from the schedule
MAX_POINTS = 100  # points of a run when log_every is None
HELDOUT_POINTS = 20  # held-out points of a run when its interval is None
PLATEAU_FRAC = 0.1
PLATEAU_THRESHOLD = 0.02
HELDOUT = ("loss", "error")  # per held-out point


def default_heldout_every(steps: int, every: int | None = None) -> int:
    """Steps between held-out evaluations: ``every`` if set (0 = none), else ⌈T/20⌉."""
    return int(every) if every is not None else max(1, math.ceil(steps / HELDOUT_POINTS))


def default_log_every(steps: int, log_every: int | None = None) -> int:
    """Steps per point: ``log_every`` if set, else ⌈T/100⌉ (at most 100 points)."""
    return int(log_every) if log_every else max(1, math.ceil(steps / MAX_POINTS))


class CurveRecorder:
    """Windowed means of the per-step losses of S seeds (see the module docstring).

    ``lr_at``: step indices (array) → learning rates (array), the optimizer's schedule;
    None records NaN.
    """

    def __init__(
        self,
        steps: int,
        num_seeds: int,
        log_every: int | None = None,
        lr_at: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.steps, self.num_seeds = int(steps), int(num_seeds)
        self.log_every = default_log_every(steps, log_every)
        self.lr_at = lr_at
        self.first_step = 0  # > 0: resumed from a checkpoint that had no history
        self.points: dict[str, list] = {"step": [], **{q: [] for q in QUANTITIES}}
        self.heldout_every: int | None = None  # set by the first ``add_heldout``
        self.heldout = _no_heldout(0)
        self._open(0)

    def _open(self, start: int) -> None:
        self.start = start  # first step of the open window
        self.count = 0
        self.sums = {q: [0.0] * self.num_seeds for q in MEASURED}

    def add(self, step: int, values: Mapping[str, Sequence[float]]) -> None:
        """The metrics of step index ``step`` (0-based): ``values[q]`` has one entry per
        seed for each of ``MEASURED``. Closes a point after every k-th step and the last."""
        if step != self.start + self.count:
            raise ValueError(f"curve recorder: step {step}, expected {self.start + self.count}")
        for q in MEASURED:
            v = np.asarray(values[q], dtype=np.float64).reshape(-1)
            self.sums[q] = [s + float(x) for s, x in zip(self.sums[q], v)]
        self.count += 1
        done = step + 1
        if done % self.log_every == 0 or done == self.steps:
            self._close(done)

    def add_heldout(self, done: int, every: int, values: Mapping[str, Sequence[float]]) -> None:
        """A held-out point after ``done`` steps: ``values[q]`` per seed for each of
        ``HELDOUT``; ``every`` is the evaluation interval (recorded with the points)."""
        if self.heldout_every is None:
            self.heldout_every = int(every)
        elif int(every) != self.heldout_every:
            raise ValueError(
                f"held-out points every {every} steps, before every {self.heldout_every}"
            )
        self.heldout["step"].append(int(done))
        for q in HELDOUT:
            v = np.asarray(values[q], dtype=np.float64).reshape(-1)
            self.heldout[q].append([float(x) for x in v])

    def _close(self, done: int) -> None:
        n = self.count
        self.points["step"].append(done)
        for q in MEASURED:
            self.points[q].append([s / n for s in self.sums[q]])
        if self.lr_at is None:
            lr = float("nan")
        else:
            lr = float(np.mean(np.asarray(self.lr_at(np.arange(self.start, done)), np.float64)))
        self.points["lr"].append([lr] * self.num_seeds)
        self._open(done)

    # -- checkpointed state -----------------------------------------------------------------
    def state(self) -> dict:
        """JSON-able state (saved with each checkpoint)."""
        return {
            "format": CURVES_FORMAT,
            "log_every": self.log_every,
            "first_step": self.first_step,
            "points": self.points,
            "window": {"start": self.start, "count": self.count, "sums": self.sums},
            "heldout_every": self.heldout_every,
            "heldout": self.heldout,
        }

    def restore(self, state: Mapping[str, Any] | None, step: int) -> None:
        """Continue from a checkpoint's ``state()`` at ``step``; None (a checkpoint saved
        without one) or one recorded with another ``log_every`` (the field is not part of
        the run id): start afresh at ``step`` (``first_step`` says where)."""
        if state is None or int(state["log_every"]) != self.log_every:
            self.first_step = step
            self.points = {"step": [], **{q: [] for q in QUANTITIES}}
            self.restart_heldout(step)
            self._open(step)
            return
        w = state["window"]
        if w["start"] + w["count"] != step:
            raise ValueError(
                f"curve history of the checkpoint at step {step} ends at step "
                f"{w['start'] + w['count']}"
            )
        self.first_step = int(state.get("first_step", 0))
        self.points = {k: list(v) for k, v in state["points"].items()}
        self.start, self.count = int(w["start"]), int(w["count"])
        self.sums = {q: [float(x) for x in w["sums"][q]] for q in MEASURED}
        # A checkpoint from before held-out points were recorded: they start here.
        self.heldout_every = state.get("heldout_every")
        held = state.get("heldout") or _no_heldout(step)
        self.heldout = {k: (list(v) if isinstance(v, list) else v) for k, v in held.items()}

    def restart_heldout(self, step: int) -> None:
        """Drop the held-out points (their interval changed on resume); new ones start at
        ``step``."""
        self.heldout_every, self.heldout = None, _no_heldout(step)

    def curve(self, seed_index: int = 0) -> dict:
        """One seed's curve, as ``curves.json`` holds it (with its plateau statistic)."""
        out = {
            "format": CURVES_FORMAT,
            "log_every": self.log_every,
            "steps": self.steps,
            "first_step": self.first_step,
            "step": list(self.points["step"]),
        }
        for q in QUANTITIES:
            out[q] = [p[seed_index] for p in self.points[q]]
        out["plateau"] = plateau(out["loss"])
        if self.heldout["step"]:
            held = {"every": self.heldout_every, "first_step": self.heldout["first_step"]}
            held["step"] = list(self.heldout["step"])
            for q in HELDOUT:
                held[q] = [p[seed_index] for p in self.heldout[q]]
            out["heldout"] = held
            out["plateau_heldout"] = plateau(held["loss"])
        return out


def _no_heldout(first_step: int) -> dict:
    return {"first_step": int(first_step), "step": [], **{q: [] for q in HELDOUT}}


def plateau(
    values: Sequence[float], frac: float = PLATEAU_FRAC, threshold: float = PLATEAU_THRESHOLD
) -> dict:
    """Relative drop of the mean loss between the last two ``frac`` windows of a curve and
    whether it is below ``threshold``; ``drop`` None when the curve has < 2 points."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    w = max(1, int(len(v) * frac))
    if len(v) < 2 * w:
        return {"drop": None, "plateaued": None, "window": w, "threshold": threshold}
    prev, last = float(v[-2 * w : -w].mean()), float(v[-w:].mean())
    drop = (prev - last) / abs(prev) if prev != 0 else 0.0
    return {"drop": drop, "plateaued": bool(drop < threshold), "window": w, "threshold": threshold}


def write_curve(path: str | os.PathLike, curve: Mapping[str, Any]) -> None:
    atomic.write_json(path, dict(curve))


def read_curve(path: str | os.PathLike) -> dict | None:
    """A ``curves.json`` (None if the file does not exist)."""
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
