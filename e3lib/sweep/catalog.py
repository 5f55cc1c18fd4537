"""Lookups by id for the workflow: the configured sweeps' plan, then sweeps found on demand.

The Snakefile builds one ``Catalog`` at parse time; it writes nothing. A table target
(``reports/table3.html``) whose sweeps are not configured expands the sweep files of
``sweep_dir`` that reproduce it, on first use. Every expansion is a pure function of the
sweep files and is kept (memoized), never merged into the configured plan: ids are hashes
of what they name, so any plan that knows an id gives the same answer for it.
"""

from __future__ import annotations

from pathlib import Path

from e3lib.sweep.expand import expand_sweeps
from e3lib.sweep.load import read_reproduces
from e3lib.sweep.plan import Plan, Sweep
from e3lib.sweep.schema import SweepError


class Catalog:
    def __init__(
        self,
        sweep_files: list[str],
        variant: str,
        sweep_dir: str,
        max_runs: int | None = None,
        checkpoints: dict[str, str] | None = None,
    ):
        self.variant, self.sweep_dir, self.max_runs = variant, sweep_dir, max_runs
        self.checkpoints = dict(checkpoints or {})  # published name -> path (--config)
        self.configured: Plan = self._expand(sweep_files)
        self._table_plans: dict[str, Plan] = {}
        self._dir_plan: Plan | None = None

    # ------------------------------------------------------------------ sweeps

    def table_files(self, table: str) -> list[str]:
        """Sweep files in ``sweep_dir`` that reproduce ``table``."""
        return [
            str(p)
            for p in sorted(Path(self.sweep_dir).glob("*.y*ml"))
            if table in read_reproduces(p)
        ]

    def sweeps_for_table(self, table: str) -> list[str]:
        """Sweeps reproducing ``table``: the configured ones, else those in ``sweep_dir``."""
        names = [s.name for s in self.configured.sweeps.values() if table in s.reproduces]
        if names:
            return names
        if table not in self._table_plans:
            files = self.table_files(table)
            if not files:
                raise SweepError(
                    self.sweep_dir,
                    "(table)",
                    table,
                    f"no sweep file in {self.sweep_dir}/ reproduces it",
                )
            self._table_plans[table] = self._expand(files)
        return list(self._table_plans[table].sweeps)

    def sweep(self, name: str) -> Sweep:
        for plan in self._plans():
            if name in plan.sweeps:
                return plan.sweeps[name]
        raise SweepError(
            "--config sweeps",
            "(sweep)",
            name,
            f"not configured; configured: {sorted(self.configured.sweeps)} "
            "(add it with --config sweeps='[...]')",
        )

    # ------------------------------------------------------------------ ids

    def run(self, run_id: str) -> dict:
        return self._find("runs", run_id)

    def upstream_of(self, run_id: str) -> str:
        return self._find("run_upstream", run_id)

    def upstream_config(self, upstream_id: str) -> dict:
        return self.run(self._find("upstreams", upstream_id))

    def ensemble(self, ensemble_id: str) -> dict:
        return self._find("ensembles", ensemble_id)

    def _expand(self, files: list[str]) -> Plan:
        return expand_sweeps(files, self.variant, self.max_runs, self.checkpoints)

    def _plans(self):
        yield self.configured
        yield from self._table_plans.values()

    def _find(self, table: str, key: str):
        for plan in self._plans():
            if key in getattr(plan, table):
                return getattr(plan, table)[key]
        # An id of no plan seen yet (a job started on its own): every sweep file in
        # sweep_dir, expanded once.
        if self._dir_plan is None:
            files = [str(p) for p in sorted(Path(self.sweep_dir).glob("*.y*ml"))]
            self._dir_plan = self._expand(files) if files else Plan()
        found = getattr(self._dir_plan, table)
        if key in found:
            return found[key]
        raise SweepError(
            "--config sweeps",
            f"({table})",
            key,
            f"no configured sweep and no sweep file in {self.sweep_dir}/ has it",
        )
