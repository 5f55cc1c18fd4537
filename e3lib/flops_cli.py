"""``e3 flops``: price a run config before launching it (``cli_flops(argv)``)."""

from __future__ import annotations

import argparse
import sys

from e3lib import tree
from e3lib.config import resolve
from e3lib.cost.analytic import DISPATCH_KINDS, analytic_params, flops_breakdown
from e3lib.cost.xla import xla_cost
from e3lib.errors import ConfigError
from e3lib.report.flops_reference import paper_gflops


def cli_flops(argv: list[str]) -> int:
    """``e3 flops``: price a config before launching it."""
    p = argparse.ArgumentParser(
        prog="e3 flops",
        description="GFLOPs per image of a training step (forward+backward, as in the paper's "
        "Table 20) and the parameter count of a run config.",
    )
    p.add_argument("--config", help="YAML file with run-config overrides")
    p.add_argument("--method", help="method name (a key of e3lib.models.registry.METHODS)")
    p.add_argument("--size", help="model size, e.g. S/32, B/32, L/16, H/14")
    p.add_argument("--image-size", type=int, help="input resolution in pixels (paper: 384)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. model.num_selected=2 (repeatable)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=1000,
        help="classes of the head (default 1000, ImageNet; JFT: 18291)",
    )
    p.add_argument(
        "--deep-ensemble",
        type=int,
        default=1,
        metavar="N",
        help="price a deep ensemble of N independent runs of this config",
    )
    p.add_argument(
        "--dispatch",
        choices=DISPATCH_KINDS,
        default="indices",
        help="dispatch implementation to count: indices (default, Table 20) or "
        "one-hot einsum (the paper's ablation code, Table 22)",
    )
    p.add_argument(
        "--xla",
        action="store_true",
        help="also lower and compile the real training step (abstract inputs) and "
        "print XLA's FLOP count and memory",
    )
    p.add_argument("--batch", type=int, help="batch size for --xla (default: group_images)")
    p.add_argument("--breakdown", action="store_true", help="print the analytic terms")
    args = p.parse_args(argv)
    overrides: dict = {}
    try:
        if args.config:
            from e3lib.safeyaml import YamlInputError, load_config_file

            try:
                loaded = load_config_file(args.config) or {}
            except YamlInputError as err:
                raise ConfigError(
                    "--config",
                    args.config,
                    f"{err.where}: {err.problem}" if err.where else err.problem,
                ) from None
            if not isinstance(loaded, dict):
                raise ConfigError("<root>", type(loaded).__name__, "must be a mapping", args.config)
            overrides = loaded
        quick: dict = {}
        if args.method:
            quick["method"] = args.method
        if args.size:
            quick.setdefault("model", {})["size"] = args.size
        if args.image_size:
            quick.setdefault("data", {})["image_size"] = args.image_size
        overrides = tree.merge(tree.merge(overrides, quick), tree.parse_assignments(args.set))
        cfg = resolve(overrides, source=args.config)
        if args.num_classes < 1:
            raise ConfigError("--num-classes", args.num_classes, "must be a positive integer")
        if args.deep_ensemble < 1:
            raise ConfigError("--deep-ensemble", args.deep_ensemble, "must be >= 1")
        n = args.deep_ensemble
        terms = flops_breakdown(cfg, args.num_classes, args.dispatch)
    except ConfigError as err:
        print(f"e3 flops: {err}", file=sys.stderr)
        return 2
    m = cfg.model
    what = (
        f"{cfg.method} {m.size} E={m.num_experts} K={m.num_selected} "
        f"M={m.ensemble_size} overlap={m.overlap} image={cfg.data.image_size} "
        f"classes={args.num_classes}" + (f" deep-ensemble={n}" if n > 1 else "")
    )
    print(what)
    analytic = n * sum(terms.values()) / 1e9
    print(f"analytic GFLOPs/image (train step, fwd+bwd, {args.dispatch} dispatch): {analytic:.2f}")
    if args.breakdown:
        for name, value in terms.items():
            print(f"  {name:24s} {n * value / 1e9:10.3f}")
    if args.xla:
        cost = xla_cost(cfg, args.num_classes, args.batch)
        print(
            f"XLA GFLOPs/image (compiled train step, batch {cost['batch']}): "
            f"{n * cost['gflops']:.2f}  (analytic/XLA = {analytic / (n * cost['gflops']):.3f})"
        )
        if "peak_bytes" in cost:
            print(
                f"XLA compiled memory (batch {cost['batch']}): "
                f"peak {cost['peak_bytes'] / 2**30:.2f}"
                f" GiB (temporaries {cost['temp_bytes'] / 2**30:.2f} GiB)"
            )
    params = analytic_params(cfg, args.num_classes)
    print(
        f"parameters: {params:,} ({params / 1e6:.1f}M)"
        + (f" per member, {n} members" if n > 1 else "")
    )
    ref = paper_gflops(cfg, n, args.dispatch, ignore=("model.num_experts",))
    if ref:
        table_id, label, value, differing = ref
        print(
            f"paper ({table_id}, {label}): {value:.2f} GFLOPs/image "
            f"(ours/paper = {analytic / value:.3f})"
        )
        for name, (theirs, ours) in differing.items():
            print(f"  note: the paper's row has {name}={theirs}, this config {ours}")
    else:
        print("paper: no row of Table 20/22 has this config")
    return 0
