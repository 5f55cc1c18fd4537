"""FLOPs accounting against the paper and against XLA, printed in one run.

    .venv/bin/python benchmarks/bench_flops.py               # Tables 20-23, XLA spot checks
    .venv/bin/python benchmarks/bench_flops.py --calibrate   # + re-fit the elementwise terms

1. every cell of Tables 20 and 22 (GFLOPs) and Table 21 (percentages): paper, ours, error;
2. Table 23 parameter counts;
3. XLA's compiled cost of the real training step (full size, abstract inputs, not run)
   beside the analytic count, and the time each takes;
4. with --calibrate: the elementwise coefficients (FLOPs per token per block, per unit of
   H, of Q and per attention score) fitted by least squares to XLA's count of real ViTs,
   beside the constants e3lib.cost.analytic uses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e3lib.config import resolve  # noqa: E402
from e3lib.cost import analytic  # noqa: E402
from e3lib.cost.xla import xla_gflops  # noqa: E402
from e3lib.models.sizes import size_spec  # noqa: E402
from e3lib.report import flops_reference  # noqa: E402


def paper_tables() -> None:
    for table_id in ("table20", "table22"):
        rows = flops_reference.compare_with_paper(table_id)
        print(
            f"\n== {table_id}: GFLOPs per image, training step "
            f"({'index' if table_id == 'table20' else 'one-hot einsum'} dispatch)"
        )
        print(f"{'row':58s} {'paper':>10s} {'ours':>10s} {'error':>7s}")
        for r in rows:
            print(f"{r['label']:58s} {r['paper']:10.3f} {r['ours']:10.3f} {100 * r['rel']:+6.2f}%")
        worst = max(abs(r["rel"]) for r in rows)
        print(f"{len(rows)} cells, largest |error| {100 * worst:.2f}%")
    rows = flops_reference.compare_with_paper("table21")
    print("\n== table21: FLOPs of E³ (K=1, M=2) relative to V-MoE (K=1) and to a down-DE of two")
    print(f"{'row':58s} {'paper %':>10s} {'ours %':>10s} {'diff':>7s}")
    for r in rows:
        print(f"{r['label']:58s} {r['paper']:10.2f} {r['ours']:10.2f} {r['diff']:+6.2f}")
    print(f"largest |difference| {max(abs(r['diff']) for r in rows):.2f} percentage points")


def params_table() -> None:
    import yaml

    table = yaml.safe_load(open(flops_reference.REFERENCE_DIR / "table23.yaml"))
    print("\n== table23: parameters (JFT head 18,291 classes, representation layer, 224 px)")
    for row in table["rows"]:
        cfg = resolve(
            {
                "method": row["key"]["method"],
                "model": {"size": row["key"]["model.size"], "num_experts": 32},
                "data": {"image_size": 224},
            }
        )
        ours = analytic.analytic_params(cfg, 18291)
        paper = row["values"]["params"][0]
        print(f"{row['label']:24s} paper {paper / 1e6:8.1f}M  ours {ours:>13,} ({ours / 1e6:.1f}M)")


XLA_CASES = [
    ("vit", "S/32", {}),
    ("vmoe", "S/32", {"num_selected": 1}),
    ("e3", "S/32", {"ensemble_size": 2}),
    ("vit", "B/32", {}),
    ("vmoe", "B/32", {"num_selected": 2}),
    ("e3", "B/32", {"num_selected": 2, "ensemble_size": 2}),
    ("tiling", "B/32", {"num_selected": 2, "ensemble_size": 2}),
    ("partitioning", "B/32", {"num_selected": 1, "ensemble_size": 2}),
    ("multipred", "B/32", {"num_selected": 2, "num_predictions": 2}),
]


def xla_checks() -> None:
    print(
        "\n== XLA compiled cost of the real training step (384 px, E=32, batch 8, "
        "never executed) vs analytic"
    )
    print(
        f"{'config':40s} {'XLA':>9s} {'analytic':>9s} {'ratio':>7s} {'paper':>8s} "
        f"{'compile s':>9s} {'analytic s':>10s}"
    )
    for method, size, model in XLA_CASES:
        cfg = resolve(
            {
                "method": method,
                "model": dict(size=size, num_experts=32, **model),
                "data": {"image_size": 384},
            }
        )
        t0 = time.perf_counter()
        ours = analytic.analytic_gflops(cfg)
        t_analytic = time.perf_counter() - t0
        t0 = time.perf_counter()
        xla = xla_gflops(cfg)
        t_xla = time.perf_counter() - t0
        ref = flops_reference.paper_gflops(cfg)
        paper = f"{ref[2]:8.2f}" if ref else f"{'-':>8s}"
        label = f"{method} {size} " + " ".join(f"{k}={v}" for k, v in model.items())
        print(
            f"{label:40s} {xla:9.3f} {ours:9.3f} {ours / xla:7.4f} {paper} {t_xla:9.1f} "
            f"{t_analytic:10.4f}"
        )


def calibrate() -> None:
    """Fit elementwise FLOPs per token per block to XLA's count of real ViT training steps."""
    print(
        "\n== elementwise calibration: XLA count minus analytic matmul FLOPs, least squares "
        "over ViTs"
    )
    cases = [("tiny", 16), ("tiny", 32), ("mini", 32), ("mini", 64), ("S/32", 128), ("S/32", 256)]
    design, target = [], []
    for size, image in cases:
        cfg = resolve({"method": "vit", "model": {"size": size}, "data": {"image_size": image}})
        terms = analytic.flops_breakdown(cfg)
        matmul = sum(v for k, v in terms.items() if k != "elementwise")
        xla = xla_gflops(cfg) * 1e9
        spec = size_spec(cfg)
        T = (image // spec["patch"]) ** 2 + 1
        L, H, Q, A = spec["layers"], spec["hidden"], spec["mlp"], spec["heads"]
        design.append([L * T * H, L * T * Q, L * T * T * A])
        target.append(xla - matmul)
        print(f"vit {size} {image} px: XLA {xla / 1e9:.4f} GFLOPs, matmuls {matmul / 1e9:.4f}")
    coef, *_ = np.linalg.lstsq(np.array(design, float), np.array(target), rcond=None)
    print(
        f"fitted per token per block: {coef[0]:.1f}·H + {coef[1]:.1f}·Q + "
        f"{coef[2]:.1f}·T·A   (e3lib.cost.analytic uses {analytic.EW_PER_HIDDEN}·H + "
        f"{analytic.EW_PER_MLP}·Q + {analytic.EW_PER_SCORE}·T·A)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calibrate", action="store_true", help="re-fit the elementwise terms")
    p.add_argument("--no-xla", action="store_true", help="skip the XLA compilations")
    args = p.parse_args(argv)
    paper_tables()
    params_table()
    if not args.no_xla:
        xla_checks()
    if args.calibrate:
        calibrate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
