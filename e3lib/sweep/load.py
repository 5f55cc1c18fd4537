"""Reading sweep files: YAML loading, renamed fields, and the ``small`` / ``paper`` /
``public`` overlays (an overlay's ``recipe:`` names a shared file of run-config overrides,
relative to the sweep file, merged under its ``base``: e.g. ``recipes/paper_finetune.yaml``).

``read_doc`` is the one place a sweep file's text becomes a document; ``variant_doc``
applies the chosen variant's overlay and remembers where each field came from, so later
errors name the field as the file spells it (``variants.paper.axes[1]``, ``add_axes[0]``).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

from e3lib import safeyaml, tree
from e3lib.sweep import guards
from e3lib.sweep.schema import SweepError

VARIANTS = ("small", "paper", "public")
# Fields an overlay replaces wholesale (``base`` is merged, ``add_axes`` appended).
REPLACED = ("axes", "seeds", "upstream_seeds", "ensembles", "select")
# Fields that were renamed: old name -> (new name, why). Files using the old name are
# refused with a message naming the new one (never read with a guessed meaning).
RENAMED_ENSEMBLE_FIELDS = {
    "sizes": (
        "runs",
        "the number of member runs of a deep ensemble is `runs:` "
        "(e.g. runs: [2, 4]); `model.ensemble_size` is M of one E³-style model",
    ),
}


def read_doc(path: str | os.PathLike) -> Any:
    """The YAML document of a sweep file, read strictly (``e3lib.safeyaml``: size limit,
    UTF-8, no duplicate keys, no alias bombs, finite numbers); a SweepError naming the file
    and the line or field if it cannot be read or parsed."""
    file = str(path)
    if not os.path.exists(file):
        raise SweepError(file, "(file)", file, "sweep file not found")
    try:
        return safeyaml.load_file(file)
    except safeyaml.YamlInputError as err:
        problem = err.problem.replace("invalid YAML: ", "not valid YAML: ", 1)
        raise SweepError(file, err.where or "(file)", file, problem) from None


def read_reproduces(path: str | os.PathLike) -> list[str]:
    """The ``reproduces`` list of a sweep file, without expanding it."""
    doc = read_doc(path)
    return list((doc if isinstance(doc, dict) else {}).get("reproduces") or [])


def refuse_renamed_fields(doc: Any, file: str) -> None:
    """Refuse fields that were renamed (checked before the schema, for a precise message)."""
    if not isinstance(doc, dict):
        return
    blocks = [("ensembles", doc.get("ensembles"))]
    for name, overlay in (doc.get("variants") or {}).items():
        if isinstance(overlay, dict):
            blocks.append((f"variants.{name}.ensembles", overlay.get("ensembles")))
    for where, ensembles in blocks:
        for j, ens in enumerate(ensembles if isinstance(ensembles, list) else []):
            for old, (new, why) in RENAMED_ENSEMBLE_FIELDS.items():
                if isinstance(ens, dict) and old in ens:
                    raise SweepError(
                        file, f"{where}[{j}].{old}", ens[old], f"renamed to `{new}`: {why}"
                    )


def read_recipe(file: str, recipe: str, field: str) -> dict:
    """Run-config overrides of a recipe file, relative to the sweep file's directory."""
    path = os.path.join(os.path.dirname(file), recipe)
    try:
        doc = safeyaml.load_file(path)
    except safeyaml.YamlInputError as err:
        raise SweepError(file, field, recipe, f"recipe file: {err}") from None
    if not isinstance(doc, dict):
        raise SweepError(
            file,
            field,
            recipe,
            f"{path}: a recipe is a mapping of run-config "
            f"overrides (sections of e3lib.config.DEFAULTS)",
        )
    return doc


@dataclass
class SweepDoc:
    """A schema-valid sweep document with one variant applied."""

    file: str
    variant: str
    name: str | None
    title: str
    reproduces: list[str]
    base: dict
    axes: list[dict]
    seeds: list[int]
    ensembles: list[dict]
    select: dict | None
    max_runs: int = guards.DEFAULT_MAX_RUNS
    upstream_seeds: str = "shared"  # or "per_run": fine-tune seed s from upstream seed s
    # where each replaceable field came from: "axes" or "variants.paper.axes", ...
    where: dict[str, str] = field(default_factory=dict)
    n_axes_own: int = 0  # axis groups before the overlay's add_axes

    def axis_field(self, i: int) -> str:
        """How the file names axis group ``i``."""
        if i < self.n_axes_own:
            return f"{self.where['axes']}[{i}]"
        return f"add_axes[{i - self.n_axes_own}]"


def variant_doc(doc: dict, variant: str, file: str, max_runs: int | None = None) -> SweepDoc:
    """The sweep document with the chosen variant's overlay applied. ``max_runs`` (from
    ``--config``) overrides the overlay's and the file's ``max_runs:``."""
    if variant not in VARIANTS:
        raise SweepError(file, "variant", variant, f"allowed: {list(VARIANTS)}")
    variants = doc.get("variants") or {}
    if variants and variant not in variants:
        raise SweepError(
            file,
            f"variants.{variant}",
            None,
            f"this sweep defines variants {sorted(variants)} only",
        )
    overlay = variants.get(variant) or {}
    out = {k: copy.deepcopy(doc.get(k)) for k in ("base", *REPLACED)}
    if "recipe" in overlay:  # shared recipe file, under the overlay's own base
        recipe = read_recipe(file, overlay["recipe"], f"variants.{variant}.recipe")
        out["base"] = tree.merge(out["base"] or {}, recipe)
    if "base" in overlay:  # merged; unknown fields are refused with the merged base
        out["base"] = tree.merge(out["base"] or {}, overlay["base"])
    for key in REPLACED:
        if key in overlay:
            out[key] = copy.deepcopy(overlay[key])
    axes = list(out["axes"] or [])
    if "add_axes" in overlay:
        axes += copy.deepcopy(overlay["add_axes"])
    where = {k: f"variants.{variant}.{k}" if k in overlay else k for k in REPLACED}
    if max_runs is None:
        max_runs = overlay.get("max_runs", doc.get("max_runs", guards.DEFAULT_MAX_RUNS))
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
        raise SweepError(file, "max_runs", max_runs, "must be a positive integer")
    seeds = guards.seeds(out["seeds"], where["seeds"], file, max_runs)
    return SweepDoc(
        file=file,
        variant=variant,
        name=doc.get("name"),
        title=doc["title"],
        reproduces=list(doc["reproduces"]),
        base=out["base"] or {},
        axes=axes,
        seeds=seeds,
        ensembles=list(out["ensembles"] or []),
        select=out["select"],
        max_runs=max_runs,
        upstream_seeds=out["upstream_seeds"] or "shared",
        where=where,
        n_axes_own=len(overlay["axes"]) if "axes" in overlay else len(doc.get("axes") or []),
    )
