"""Versioned result formats and entry statuses: what ``e3 aggregate`` reads.

results.json
    format 1 (no ``format`` field): records ``{split, corruption, severity, member,
    metric, value}``; few-shot records put the task in ``corruption`` and the shot count
    in ``severity``.
    format 2 (``"format": 2``): few-shot records carry ``task`` and ``shots`` instead;
    every other record keeps ``corruption`` and ``severity``. ``read_results`` upgrades
    format 1 to format 2; an unknown format is refused, naming the file.

done.json (beside each entry's results.json, written last by the workflow)
    ``{"status": "ok" | "diverged" | "member_failed", ...}``; a deep ensemble with a
    member that did not finish ok is ``member_failed`` with ``members`` = {member status
    file: its status}. No done.json: the entry is missing.

dataset.nc ``format_version``
    2: this layout (see ``e3lib.aggregate``). Files without it predate versioned datasets
    (their ``member_failed`` entries were counted as missing) and are refused.
"""

from __future__ import annotations

from pathlib import Path

from e3lib.aggregate.schemas import AggregateError, read_json, validate

RESULTS_FORMATS = (1, 2)
DATASET_FORMAT = 2
STATUS_FLAGS = {"ok": 0, "missing": 1, "diverged": 2, "not_requested": 3, "member_failed": 4}
FAILED = ("diverged", "member_failed")
# Dataset dims of a record. Few-shot records map task → corruption, shots → severity.
RECORD_DIMS = ("split", "corruption", "severity", "member")
SPLITS = ("val", "clean", "corrupted", "shifted", "ood_near", "ood_far", "fewshot")


def upgrade_v1(results: dict) -> dict:
    """A format-1 results dict as format 2 (few-shot corruption/severity → task/shots)."""
    records = []
    for r in results["records"]:
        if r["split"] == "fewshot":
            r = {k: v for k, v in r.items() if k not in ("corruption", "severity")} | {
                "task": r["corruption"],
                "shots": r["severity"],
            }
        records.append(r)
    return {**results, "format": 2, "records": records}


def read_results(path: str | Path) -> dict:
    """A results.json of any known format, validated and upgraded to format 2."""
    results = read_json(Path(path))
    version = results.get("format", 1) if isinstance(results, dict) else None
    if version not in RESULTS_FORMATS:
        raise AggregateError(
            f"{path}: field format: {version!r} is not a results format this e3lib reads "
            f"(allowed: {list(RESULTS_FORMATS)}); it was written by a newer e3lib, or is "
            f"not a results file"
        )
    validate(results, f"results-v{version}", path)
    return upgrade_v1(results) if version == 1 else results


def record_key(record: dict) -> tuple[str, str, int, str]:
    """The dataset coordinates (split, corruption, severity, member) of a format-2 record."""
    if record["split"] == "fewshot":
        return "fewshot", record["task"], int(record["shots"]), record["member"]
    return record["split"], record["corruption"], int(record["severity"]), record["member"]


def entry_status(done_path: str | Path) -> tuple[str, dict[str, str]]:
    """(status, failed members {member id: status}) of an entry from its done.json."""
    done_path = Path(done_path)
    if not done_path.exists():
        return "missing", {}
    done = read_json(done_path)
    validate(done, "done", done_path)
    # member status files are .../runs/{member id}/done.json
    members = {Path(p).parent.name: s for p, s in (done.get("members") or {}).items() if s != "ok"}
    return done["status"], members
