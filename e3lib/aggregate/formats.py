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
    3: this layout (see ``e3lib.aggregate``): few-shot metrics over their own dims
    ``task`` and ``shots``, every other metric over ``split``, ``corruption``,
    ``severity``.
    2: one layout for all metrics; few-shot values at split ``fewshot`` with the task in
    ``corruption`` and the shots in ``severity``. ``open_dataset`` migrates it on read
    (``e3lib.aggregate.migrate``).
    Files without a version predate versioned datasets (their ``member_failed`` entries
    were counted as missing) and are refused, as is any other version.
"""

from __future__ import annotations

from pathlib import Path

from e3lib.aggregate.schemas import AggregateError, read_json, validate

RESULTS_FORMATS = (1, 2)
DATASET_FORMAT = 3
MIGRATED_DATASET_FORMATS = (2,)  # read and converted by e3lib.aggregate.migrate
STATUS_FLAGS = {"ok": 0, "missing": 1, "diverged": 2, "not_requested": 3, "member_failed": 4}
FAILED = ("diverged", "member_failed")
# Dataset dims of a record: few-shot records (split "fewshot") have their own.
RECORD_DIMS = ("split", "corruption", "severity", "member")
FEWSHOT_DIMS = ("task", "shots", "member")
FEWSHOT_SPLIT = "fewshot"
# long_name attributes of the record coordinates in a dataset
RECORD_DIM_NAMES = {
    "split": "evaluation split (few-shot metrics have dims task, shots instead)",
    "corruption": "corruption type or 'mean' (corrupted), set name (shifted), 'none' elsewhere",
    "severity": "corruption severity 1..5 (corrupted), 0 elsewhere",
    "member": "member index, 'ensemble', or few-shot feature mode 'joint'/'disjoint'",
    "task": "few-shot task, or 'mean' over the tasks",
    "shots": "few-shot training examples per class",
}
INT_DIMS = ("severity", "shots")
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


def record_dims(record: dict) -> tuple[str, ...]:
    """The dataset dims of a format-2 record's metric: ``FEWSHOT_DIMS`` or ``RECORD_DIMS``."""
    return FEWSHOT_DIMS if record["split"] == FEWSHOT_SPLIT else RECORD_DIMS


def record_key(record: dict) -> tuple:
    """The dataset coordinates of a format-2 record along ``record_dims(record)``:
    (task, shots, member) of a few-shot record, else (split, corruption, severity, member)."""
    if record["split"] == FEWSHOT_SPLIT:
        return record["task"], int(record["shots"]), record["member"]
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
