"""The ``e3`` command: one subcommand per workflow stage, each runnable by hand.

    e3 upstream   pretrain the upstream model of a run config (checkpoint + done file)
    e3 run        fine-tune one run and evaluate it (results.json + predictions.npz)
    e3 ensemble   combine saved predictions of independent runs into a deep ensemble
    e3 expand     expand sweep files into run configs and a readable run index
    e3 aggregate  gather the results of a sweep into one xarray Dataset (netCDF)
    e3 report     render tables, figures and the HTML report
    e3 flops      print GFLOPs per image and parameter count of a config, before launching

Each subcommand lives next to the code it drives and takes its own arguments
(``e3 <subcommand> --help``).
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "upstream": ("e3lib.train", "cli_upstream"),
    "run": ("e3lib.train", "cli_run"),
    "ensemble": ("e3lib.evaluate", "cli_ensemble"),
    "expand": ("e3lib.sweep", "cli_expand"),
    "aggregate": ("e3lib.aggregate", "cli_aggregate"),
    "report": ("e3lib.report", "cli_report"),
    "flops": ("e3lib.flops", "cli_flops"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"e3: unknown subcommand {name!r}; allowed: {sorted(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module, func = SUBCOMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
