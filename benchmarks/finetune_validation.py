"""What the validation curve costs a small fine-tune: one `tiny` E³ run (K=1, M=2, the small
recipe's 300 steps, from a fresh init: the upstream does not change the cost) fine-tuned
with ``finetune.eval_every`` 0 (no validation points) and null (the default: every
⌈steps/20⌉ steps, 20 evaluations of the demo's 73 validation images), alternately, in one
process after one warm-up run; prints each training time (``train.train_seconds`` of the
results, evaluations included) and the ratio. Only the clean test set is evaluated at the end.

    .venv/bin/python benchmarks/finetune_validation.py [--repeats 2] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_seconds(cfg: dict, eval_every: int | None, out: Path) -> float:
    from e3lib.config import resolve
    from e3lib.train import finetune_and_evaluate

    cfg = json.loads(json.dumps(cfg))
    cfg["finetune"]["eval_every"] = eval_every
    finetune_and_evaluate([resolve(cfg)], None, [out], None, "plain")
    return json.loads((out / "results.json").read_text())["train"]["train_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    cfg = {
        "method": "e3",
        "model": {"size": "tiny", "num_selected": 1, "ensemble_size": 2},
        "finetune": {"steps": a.steps, "checkpoint_every": a.steps},
        "eval": {"corrupted": False, "fewshot": False, "ood": False},
    }
    settings = {"eval_every null": None, "eval_every    0": 0}
    times: dict[str, list[float]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        train_seconds(cfg, None, Path(tmp) / "warmup")
        for r in range(a.repeats):
            for name, every in settings.items():
                times[name].append(train_seconds(cfg, every, Path(tmp) / f"{r}{every}"))
    for name, ts in times.items():
        print(f"{name}: train seconds {', '.join(f'{t:.1f}' for t in ts)}")
    best = [min(ts) for ts in times.values()]
    print(f"with / without validation points: {best[0] / best[1]:.2f}x (best of {a.repeats})")


if __name__ == "__main__":
    main()
