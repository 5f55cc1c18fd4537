"""The import-linter contracts of pyproject.toml hold for the package, and break when a
forbidden import is added (so they are not vacuous)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter not installed")


def lint(root: Path, *contracts: str) -> subprocess.CompletedProcess:
    args = [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"]
    for c in contracts:
        args += ["--contract", c]
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_core_and_report_contracts_hold_and_catch_a_forbidden_import(tmp_path):
    assert lint(REPO, "core-below-stages", "report-is-leaf").returncode == 0
    shutil.copytree(
        REPO / "e3lib", tmp_path / "e3lib", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    metrics = tmp_path / "e3lib" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom e3lib.report import tables  # noqa\n")
    broken = lint(tmp_path, "core-below-stages", "report-is-leaf")
    assert broken.returncode != 0
    assert "e3lib.metrics is not allowed to import e3lib.report" in broken.stdout
