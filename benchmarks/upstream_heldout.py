"""What the held-out evaluation costs a small pretraining: one `tiny` V-MoE upstream (E=8,
K=2, 1000 steps, the small recipe) trained through ``e3 upstream`` with
``upstream.eval_every`` 0 (no held-out points) and null (the default: every ⌈steps/20⌉
steps, 20 evaluations of the 1798 held-out images), alternately, in one run; prints each
training time (``train.train_seconds`` of the done file, evaluations included) and the ratio.

    .venv/bin/python benchmarks/upstream_heldout.py [--repeats 2] [--steps 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from upstream_checkpoints import train_seconds  # one upstream through `e3 upstream`

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    a = ap.parse_args()
    from e3lib import tree
    from e3lib.config import resolve

    sets = ["method=vmoe", "model.num_selected=2", f"upstream.steps={a.steps}", "upstream.lr=0.003"]
    cfg = resolve(tree.parse_assignments(sets), job=True).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("E3_JAX_CACHE", str(work / "jax_cache"))
        train_seconds(cfg, {"eval_every": None}, work)  # warm the compilation cache
        times: dict[str, list[float]] = {"0": [], "null": []}
        for _ in range(a.repeats):
            for every in times:
                value = None if every == "null" else int(every)
                times[every].append(train_seconds(cfg, {"eval_every": value}, work))
    for every, ts in times.items():
        print(f"eval_every {every:>4s}: train seconds {', '.join(f'{t:.1f}' for t in ts)}")
    best = {every: min(ts) for every, ts in times.items()}
    print(f"with / without held-out points: {best['null'] / best['0']:.2f}x (best of {a.repeats})")


if __name__ == "__main__":
    main()
