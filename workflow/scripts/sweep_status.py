"""Record the status of every entry of a sweep (runs and deep ensembles) in one JSON file.

    python workflow/scripts/sweep_status.py --index results/sweeps/S/index.json \
        --results-root results --out results/sweeps/S/status.json

Statuses come from the done.json files written by stage.py ("ok", "diverged",
"member_failed"); an entry without one is "missing". Counts per status are printed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the e3lib of this checkout
from e3lib import atomic  # noqa: E402


def entry_status(results_root: str, entry: dict) -> str:
    kind = "runs" if entry["kind"] == "run" else "ensembles"
    path = os.path.join(results_root, kind, entry["id"], "done.json")
    try:
        with open(path) as f:
            return json.load(f).get("status", "unknown")
    except FileNotFoundError:
        return "missing"
    except ValueError:
        return "unreadable"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sweep_status.py")
    ap.add_argument("--index", required=True)
    ap.add_argument("--results-root", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    with open(args.index) as f:
        index = json.load(f)
    statuses = {e["id"]: entry_status(args.results_root, e) for e in index["entries"]}
    counts = collections.Counter(statuses.values())
    out = {"sweep": index["sweep"], "counts": dict(sorted(counts.items())), "entries": statuses}
    atomic.write_text(args.out, json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{index['sweep']}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
