"""What periodic checkpoints cost a small pretraining: one `tiny` V-MoE upstream (E=8, K=2,
1000 steps, the small recipe) trained through ``e3 upstream`` with ``upstream.checkpoint_every``
25 (the old fixed interval) and 1000 (the default), alternately, in one run; prints each
training time (``train.train_seconds`` of the done file, compilation included) and the ratio.

    .venv/bin/python benchmarks/upstream_checkpoints.py [--repeats 2] [--steps 1000]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from small_regime import _e3  # `e3 <command>` in a subprocess, its error on failure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_seconds(cfg: dict, upstream: dict, work: Path) -> float:
    """Train seconds of the upstream of ``cfg`` with the fields ``upstream`` set."""
    run = work / "_".join(f"{k}{v}" for k, v in upstream.items())
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cfg = copy.deepcopy(cfg)
    cfg["upstream"].update(upstream)
    (run / "cfg.json").write_text(json.dumps(cfg))
    _e3("upstream", "--config", str(run / "cfg.json"), "--workdir", str(run),
        "--done", str(run / "done.json"))  # fmt: skip
    return json.loads((run / "done.json").read_text())["train"]["train_seconds"]


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
        train_seconds(cfg, {"checkpoint_every": a.steps}, work)  # warm the compilation cache
        times: dict[int, list[float]] = {25: [], a.steps: []}
        for _ in range(a.repeats):
            for every in times:
                times[every].append(train_seconds(cfg, {"checkpoint_every": every}, work))
    for every, ts in times.items():
        print(f"checkpoint_every {every:5d}: train seconds {', '.join(f'{t:.1f}' for t in ts)}")
    best = {every: min(ts) for every, ts in times.items()}
    print(f"every 25 / every {a.steps}: {best[25] / best[a.steps]:.2f}x (best of {a.repeats})")


if __name__ == "__main__":
    main()
