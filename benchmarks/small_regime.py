"""The evidence behind the `small` sweep variants' training budget (docs/small_regime.md).

Trains upstreams and fine-tunes of the `tiny` model on the embedded data through the real
`e3 upstream` / `e3 run` commands, 3 seeds per fine-tune (packed in one process), and
prints one line per configuration: the upstream's loss and error on its training subset,
the fine-tune's final loss and, on the clean test split, error, NLL and ECE (mean ± sample
standard deviation over the seeds), and the wall time of each stage.

    .venv/bin/python benchmarks/small_regime.py --grid upstream [--workdir DIR]

Grids (``GRIDS``): ``upstream`` (V-MoE after 300/1000/3000 upstream steps at lr 1e-3 and
1000 at 3e-3, ViT after 1000 at both rates; fine-tune 100 steps), ``finetune`` (ViT, V-MoE,
E³ fine-tuned 100 or 300 steps from the chosen upstream), ``experts`` (V-MoE K=1 with E = 2,
4, 8 under the old budget and the chosen one), ``renderings`` (ViT against V-MoE on the
plain upstream set and on 8 renderings of it, ``upstream.renderings``, for 1000 to 4000
upstream steps; ``tiny`` and ``mini``), ``heldout`` (ViT against V-MoE on the plain set
after 1000 and 2000 upstream steps, ``tiny`` and ``mini``), ``sizes`` (ViT against V-MoE K=1
at the recipe's budget, widths ``tiny``, ``mini``, ``midi``, from five upstream seeds each,
also on the corrupted test split), ``sizes_renderings`` (the ``sizes`` pair at ``mini`` on 8
renderings of the upstream set, at the recipe's 2000 upstream steps and at 4000); these two
end in a summary per cell over the upstream seeds. Each line also gives the upstream curve's
plateau statistic (``drop``, ``e3lib.curves.plateau``), where the upstream recorded one its
held-out NLL and error and the held-out curve's plateau statistic (``held``), and the
fine-tune's error and NLL on the validation split (``val``). Upstreams and fine-tunes are
cached in ``--workdir`` by the hash of their config, so grids sharing an upstream train it
once. Corrupted, OOD and few-shot evaluation are off (clean test and validation only) but
for the corrupted split of ``sizes``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVAL_OFF = ["eval.corrupted=false", "eval.ood=false", "eval.fewshot=false"]
VMOE2 = "method=vmoe,model.num_selected=2,upstream.num_selected=2"
E3 = "method=e3,model.num_selected=1,model.ensemble_size=2,upstream.num_selected=2"
NEW_UP = "upstream.steps=1000,upstream.lr=0.003"  # chosen on the training loss; now 2000 (heldout)
RECIPE = "upstream.steps=2000,upstream.lr=0.003,finetune.steps=300"  # sweeps/recipes/small.yaml
RECIPE_LONG = "upstream.steps=4000,upstream.lr=0.003,finetune.steps=300"
VIT = "method=vit"
VMOE1 = "method=vmoe,model.num_selected=1,upstream.num_selected=2"
PAIR = (VIT, VMOE1)
OVER_PRETRAININGS = {  # grid -> (its cells, the upstream seeds each cell runs from)
    # the recipe at widths tiny (H=32), mini (64), midi (128); also the corrupted test split
    "sizes": (
        [f"model.size={z},{RECIPE},eval.corrupted=true" for z in ("tiny", "mini", "midi")],
        range(5),
    ),
    # mini on 8 renderings of the upstream set (the `renderings` grid's winning cell), at
    # the recipe's upstream budget and at twice it
    "sizes_renderings": (
        [
            f"model.size=mini,upstream.renderings=8,{RECIPE}",
            f"model.size=mini,upstream.renderings=8,{RECIPE_LONG}",
        ],
        range(5),
    ),
}


def pretraining_spec(method: str, cell: str, upstream_seed: int) -> str:
    """The spec of one (model, cell, upstream seed) of an OVER_PRETRAININGS grid."""
    return f"{method},{cell},upstream.seed={upstream_seed}"


GRIDS = {
    # upstream budget, fine-tune 100 steps (the old default)
    "upstream": [
        f"{VMOE2},upstream.steps=300",
        f"{VMOE2},upstream.steps=1000",
        f"{VMOE2},upstream.steps=3000",
        f"{VMOE2},{NEW_UP}",
        "method=vit,upstream.steps=1000",
        f"method=vit,{NEW_UP}",
    ],
    # fine-tune budget on the chosen upstream
    "finetune": [
        f"{m},{NEW_UP},finetune.steps={s}" for s in (100, 300) for m in ("method=vit", VMOE2, E3)
    ],
    # the upstream set rendered R times (upstream.renderings), fine-tune 300 steps
    "renderings": [
        f"{m},{NEW_UP},upstream.renderings={r},upstream.steps={n},finetune.steps=300"
        for r, n in ((1, 1000), (8, 1000), (8, 2000), (8, 4000))
        for m in ("method=vit", VMOE2)
    ]
    + [  # the wider `mini` model; R = 8, 2000 steps also from a second upstream seed
        f"{m},model.size=mini,{NEW_UP},upstream.renderings={r},upstream.steps={n},"
        f"upstream.seed={u},finetune.steps=300"
        for r, n, u in ((1, 1000, 0), (8, 1000, 0), (8, 2000, 0), (8, 2000, 1))
        for m in ("method=vit", VMOE2)
    ],
    # the plain set, upstream budget by the held-out loss's plateau, fine-tune 300 steps
    "heldout": [
        f"{m},model.size={z},upstream.lr=0.003,upstream.steps={n},finetune.steps=300"
        for z in ("tiny", "mini")
        for n in (1000, 2000)
        for m in ("method=vit", VMOE2)
    ],
    # sparse against dense over pretrainings (OVER_PRETRAININGS): ViT against V-MoE K=1
    # (upstream K=2) from each upstream seed
    **{
        grid: [pretraining_spec(m, cell, u) for cell in cells for u in ups for m in PAIR]
        for grid, (cells, ups) in OVER_PRETRAININGS.items()
    },
    # V-MoE K=1 with E = 2, 4, 8: old budget (upstream 300 steps, fine-tune 100) and new
    "experts": [
        f"method=vmoe,model.num_selected=1,model.num_experts={e},upstream.steps=300"
        for e in (2, 4, 8)
    ]
    + [
        f"method=vmoe,model.num_selected=1,model.num_experts={e},{NEW_UP},finetune.steps=300"
        for e in (2, 4, 8)
    ],
}
SEEDS = (0, 1, 2)


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _e3(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "e3lib.cli", *args, "--log-mode", "plain"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:1])} failed:\n{done.stderr[-2000:]}")


def run_case(spec: str, workdir: Path) -> tuple[str, dict[str, list[float]]]:
    """Train (or read from the cache) one configuration: its printed line and, per metric,
    the values of the fine-tuning seeds."""
    from e3lib import tree
    from e3lib.config import resolve, upstream_config

    sets = EVAL_OFF + spec.split(",")
    cfgs = [resolve(tree.parse_assignments([*sets, f"seed={s}"]), job=True) for s in SEEDS]
    up_dir = workdir / f"up_{_key(upstream_config(cfgs[0]))}"
    t0 = time.perf_counter()
    if not (up_dir / "done.json").exists():
        up_dir.mkdir(parents=True, exist_ok=True)
        (up_dir / "cfg.json").write_text(json.dumps(cfgs[0].to_dict()))
        _e3("upstream", "--config", str(up_dir / "cfg.json"), "--workdir", str(up_dir),
            "--done", str(up_dir / "done.json"))  # fmt: skip
    t1 = time.perf_counter()
    ft_dir = workdir / f"ft_{_key(cfgs[0].to_dict())}"
    outs = [ft_dir / f"seed{s}" for s in SEEDS]
    if not all((o / "results.json").exists() for o in outs):
        for cfg, out in zip(cfgs, outs, strict=True):
            out.mkdir(parents=True, exist_ok=True)
            (out / "cfg.json").write_text(json.dumps(cfg.to_dict()))
        _e3("run", "--config", *[str(o / "cfg.json") for o in outs], "--upstream", str(up_dir),
            "--out", *[str(o) for o in outs], "--checkpoints", str(ft_dir / "ckpt"))  # fmt: skip
    t2 = time.perf_counter()
    up = json.loads((up_dir / "done.json").read_text())["metrics"]
    up_curve = json.loads((up_dir / "curves.json").read_text())
    up_drop = up_curve["plateau"]["drop"]
    held = ""
    if "heldout" in up_curve:  # upstreams trained before held-out points were recorded lack it
        held = (
            f" held nll {up['heldout_nll']:.3f} err {up['heldout_error']:.3f}"
            f" drop {up_curve['plateau_heldout']['drop']:.3f}"
        )
    values: dict[str, list[float]] = {"loss": []}
    for out in outs:
        res = json.loads((out / "results.json").read_text())
        values["loss"].append(float(np.mean(res["train"]["final"]["loss"])))
        for rec in res["records"]:
            if rec["split"] in ("clean", "val") and rec["member"] == "ensemble":
                key = rec["metric"] if rec["split"] == "clean" else f"val {rec['metric']}"
                values.setdefault(key, []).append(rec["value"])
            # the corrupted split's mean over corruptions and severities (the report's c_*)
            if rec["split"] == "corrupted" and rec["corruption"] == "mean":
                if rec["member"] == "ensemble" and rec["metric"] in ("nll", "error"):
                    values.setdefault(f"c {rec['metric']}", []).append(rec["value"])
    cells = " ".join(
        f"{m} {np.mean(values[m]):.3f}±{np.std(values[m], ddof=1):.3f}"
        for m in ("loss", "error", "nll", "ece", "val error", "val nll", "c error", "c nll")
        if m in values
    )
    line = (
        f"{spec:78s} | upstream loss {up['final_loss']:.3f} err {up['train_subset_error']:.3f}"
        f" drop {up_drop:.3f}{held}"
        f" | fine-tune {cells} | {t1 - t0:4.0f}s + {t2 - t1:4.0f}s"
    )
    return line, dict(values, **{"upstream held-out nll": [up.get("heldout_nll", np.nan)]})


def pretrainings_summary(grid: str, results: dict[str, dict[str, list[float]]]) -> None:
    """Sparse against dense per cell, over pretrainings: each upstream seed's fine-tunes
    averaged into one value, V-MoE against ViT by a two-sided Welch test over upstream
    seeds (n = their number), and on how many upstream seeds the V-MoE is lower."""
    from e3lib.stats import welch_p

    metrics = ("nll", "error", "val nll", "val error", "upstream held-out nll")
    metrics += tuple(m for m in ("c nll", "c error") if all(m in r for r in results.values()))
    cells, ups = OVER_PRETRAININGS[grid]
    print(f"\n== {grid}: per-upstream means over {len(SEEDS)} fine-tunes, n = "
          f"{len(ups)} upstream seeds; V-MoE K=1 vs ViT")  # fmt: skip
    for cell in cells:
        print(cell)
        for metric in metrics:
            per = {
                m: [float(np.mean(results[pretraining_spec(m, cell, u)][metric]))
                    for u in ups]
                for m in PAIR
            }  # fmt: skip
            wins = sum(s < d for s, d in zip(per[VMOE1], per[VIT], strict=True))
            print(
                f"  {metric:22s} V-MoE {np.mean(per[VMOE1]):.4f} ViT {np.mean(per[VIT]):.4f}"
                f" | V-MoE lower on {wins}/{len(ups)} upstreams"
                f" | Welch p = {welch_p(per[VMOE1], per[VIT]):.3f}"
                f" | V-MoE {' '.join(f'{v:.3f}' for v in per[VMOE1])}"
                f" | ViT {' '.join(f'{v:.3f}' for v in per[VIT])}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), nargs="+", default=sorted(GRIDS))
    ap.add_argument("--workdir", type=Path, default=Path(".small_regime"))
    a = ap.parse_args()
    os.environ.setdefault("E3_JAX_CACHE", str((a.workdir / "jax_cache").absolute()))
    import jax

    print(f"jax {jax.__version__}, {os.cpu_count()} cpus; seeds {list(SEEDS)}; 16 px")
    for grid in a.grid:
        print(f"\n== {grid}")
        results = {}
        for spec in GRIDS[grid]:
            line, results[spec] = run_case(spec, a.workdir)
            print(line, flush=True)
        if grid in OVER_PRETRAININGS:
            pretrainings_summary(grid, results)


if __name__ == "__main__":
    main()
