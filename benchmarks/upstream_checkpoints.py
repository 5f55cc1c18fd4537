"""What periodic checkpoints cost a small pretraining: one `tiny` V-MoE upstream (E=8, K=2,
1000 steps at lr 3e-3) trained through ``e3 upstream`` with ``upstream.checkpoint_every``
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


def alternate(settings: dict[str, dict], repeats: int, steps: int) -> dict[str, list[float]]:
    """Train seconds of the recipe's `tiny` V-MoE upstream (E=8, K=2, ``steps`` steps, lr
    3e-3) under each named setting of upstream fields, the settings alternated ``repeats``
    times after one warm-up run (the compilation cache) of the first."""
    from e3lib import tree
    from e3lib.config import resolve

    sets = ["method=vmoe", "model.num_selected=2", f"upstream.steps={steps}", "upstream.lr=0.003"]
    cfg = resolve(tree.parse_assignments(sets), job=True).to_dict()
    times: dict[str, list[float]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("E3_JAX_CACHE", str(work / "jax_cache"))
        train_seconds(cfg, next(iter(settings.values())), work)
        for _ in range(repeats):
            for name, upstream in settings.items():
                times[name].append(train_seconds(cfg, upstream, work))
    for name, ts in times.items():
        print(f"{name}: train seconds {', '.join(f'{t:.1f}' for t in ts)}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    a = ap.parse_args()
    settings = {f"checkpoint_every {n}": {"checkpoint_every": n} for n in (a.steps, 25)}
    times = alternate(settings, a.repeats, a.steps)
    best = [min(ts) for ts in times.values()]
    print(f"every 25 / every {a.steps}: {best[1] / best[0]:.2f}x (best of {a.repeats})")


if __name__ == "__main__":
    main()
