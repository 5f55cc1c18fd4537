"""What the held-out evaluation costs a small pretraining: one `tiny` V-MoE upstream (E=8,
K=2, 1000 steps at lr 3e-3) trained through ``e3 upstream`` with
``upstream.eval_every`` 0 (no held-out points) and null (the default: every ⌈steps/20⌉
steps, 20 evaluations of the 1798 held-out images), alternately, in one run; prints each
training time (``train.train_seconds`` of the done file, evaluations included) and the ratio.

    .venv/bin/python benchmarks/upstream_heldout.py [--repeats 2] [--steps 1000]
"""

from __future__ import annotations

import argparse

from upstream_checkpoints import alternate  # one upstream through `e3 upstream`, alternated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    a = ap.parse_args()
    settings = {"eval_every null": {"eval_every": None}, "eval_every    0": {"eval_every": 0}}
    times = alternate(settings, a.repeats, a.steps)
    best = [min(ts) for ts in times.values()]
    print(f"with / without held-out points: {best[0] / best[1]:.2f}x (best of {a.repeats})")


if __name__ == "__main__":
    main()
