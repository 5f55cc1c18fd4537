"""Write the done.json status files the workflow's stage wrapper leaves beside each entry
(``workflow/scripts/stage.py``), for result sets written by hand in tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_done_files(root: str | Path, index_path: str | Path) -> None:
    """For each entry of the index: results.json → "ok", diverged.json → "diverged",
    neither → no done.json (a missing entry)."""
    root = Path(root)
    index = json.loads(Path(index_path).read_text())
    for entry in index["entries"]:
        sub = "runs" if entry["kind"] == "run" else "ensembles"
        entry_dir = root / sub / entry["id"]
        if (entry_dir / "results.json").exists():
            status = {"status": "ok", "exit_code": 0}
        elif (entry_dir / "diverged.json").exists():
            status = {"status": "diverged", "exit_code": 3}
        else:
            continue
        (entry_dir / "done.json").write_text(json.dumps(status))
