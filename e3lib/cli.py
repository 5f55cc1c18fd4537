"""The ``e3`` command: one subcommand per workflow stage, each runnable by hand.

    e3 upstream   pretrain the upstream model of a run config (checkpoint + done file)
    e3 run        fine-tune one run and evaluate it (results.json + predictions.npz)
    e3 ensemble   combine saved predictions of independent runs into a deep ensemble
    e3 expand     expand sweep files into run configs and a readable run index
    e3 aggregate  gather the results of a sweep into one xarray Dataset (netCDF)
    e3 report     render tables, figures and the HTML report
    e3 flops      print GFLOPs per image and parameter count of a config, before launching
    e3 checkpoint inspect a published upstream checkpoint (and its mapping onto a run)
    e3 plan       compile the train step for a TPU slice or D virtual devices: memory vs chip
    e3 status     where sweeps stand: jobs done / running / failed, device-hours, time left

Each subcommand takes its own arguments (``e3 <subcommand> --help``). The functions below
import their command where it is called, so ``e3 expand`` does not pay for importing JAX.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def upstream(argv: list[str]) -> int:
    from e3lib.train.upstream import cli_upstream

    return cli_upstream(argv)


def run(argv: list[str]) -> int:
    from e3lib.train.finetune import cli_run

    return cli_run(argv)


def ensemble(argv: list[str]) -> int:
    from e3lib.evaluate.ensemble import cli_ensemble

    return cli_ensemble(argv)


def expand(argv: list[str]) -> int:
    from e3lib.sweep.cli import cli_expand

    return cli_expand(argv)


def aggregate(argv: list[str]) -> int:
    from e3lib.aggregate.cli import cli_aggregate

    return cli_aggregate(argv)


def report(argv: list[str]) -> int:
    from e3lib.report import cli_report

    return cli_report(argv)


def flops(argv: list[str]) -> int:
    from e3lib.flops_cli import cli_flops

    return cli_flops(argv)


def checkpoint(argv: list[str]) -> int:
    from e3lib.upstreams.inspect import cli_checkpoint

    return cli_checkpoint(argv)


def plan(argv: list[str]) -> int:
    from e3lib.train.plan_cli import cli_plan

    return cli_plan(argv)


def status(argv: list[str]) -> int:
    from e3lib.report.status_cli import cli_status

    return cli_status(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "upstream": upstream,
    "run": run,
    "ensemble": ensemble,
    "expand": expand,
    "aggregate": aggregate,
    "report": report,
    "flops": flops,
    "checkpoint": checkpoint,
    "plan": plan,
    "status": status,
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
    return int(SUBCOMMANDS[name](rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
