"""The training-curves page of a sweep (``curves_{sweep}.html``): loss vs step of every run
group (mean over seeds with a ±1 standard-error band) and of the upstreams, their held-out
loss (a run's validation split, an upstream's held-out examples), and a table of each
group's final loss and plateau statistic with those of its held-out loss. Reads
``curves.nc`` beside the sweep's dataset (``e3 aggregate``, e3lib.aggregate.curves);
without one the page says so.

Notation: n seeds of a group (curves with points), P points.

Per group: ``final loss`` = mean over its seeds of each curve's last point; the plateau
statistic (``e3lib.curves.plateau``) is that of the seed-mean curve (points averaged over
seeds; none when their step grids differ, e.g. a resume with another interval), and
``seeds plateaued`` counts the seeds whose own curve plateaued. An upstream group is one
pretraining configuration over its seeds (``e3lib.aggregate.curves.upstream_groups``).
The held-out columns apply the same tests to the held-out points (``heldout_*`` of
curves.nc; "—" where none were recorded).

The pretrainings page (``PRETRAININGS_PAGE``, ``report_upstreams``) holds every upstream of
the report once, grouped by its configuration over all the sweeps: a pretraining several
sweeps share (or whose seeds different sweeps train) is judged on all its seeds, where a
sweep's own page sees only the seeds that sweep uses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import xarray as xr  # noqa: E402

from e3lib.aggregate.curves import (  # noqa: E402
    CURVES_DATASET_FORMAT,
    curves_path,
    upstream_groups,
)
from e3lib.curves import plateau  # noqa: E402
from e3lib.report.figures import Figure, _save  # noqa: E402

PRETRAININGS_PAGE = "pretrainings.html"  # no "curves_" prefix: never a sweep's page


def curves_page(sweep: str) -> str:
    return f"curves_{sweep}.html"


def load_curves(dataset: str | Path) -> tuple[xr.Dataset | None, str]:
    """The curves beside ``dataset`` and "" — or None and why there are none."""
    path = curves_path(dataset)
    if not path.is_file():
        return None, (
            f"{path} does not exist (aggregated before training curves were collected): "
            f"run `e3 aggregate` again to collect them"
        )
    with xr.open_dataset(path) as ds:
        if ds.attrs.get("format_version") != CURVES_DATASET_FORMAT:
            return None, f"{path}: format_version {ds.attrs.get('format_version')!r}, expected 1"
        return ds.load(), ""


def _done_config(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None  # labelled "upstream <id>" (upstream_groups)


def report_upstreams(inputs: Sequence[tuple[xr.Dataset | None, str | Path]]) -> xr.Dataset | None:
    """The upstream curves of every (sweep's curves, results root) given, each upstream once
    (C curves), regrouped by configuration over all of them: ``upstream_groups`` of the
    configs in ``{root}/upstream/{id}/done.json``. None when no sweep has an upstream curve."""
    parts, seen, configs = [], set(), {}
    for ds, root in inputs:
        if ds is None:
            continue
        ids = [str(v) for v in ds["id"].values]
        keep = [
            i
            for i, kind in enumerate(ds["kind"].values)
            if kind == "upstream" and ids[i] not in seen and _with_points(ds, i)
        ]
        seen.update(ids[i] for i in keep)
        configs.update(
            {ids[i]: _done_config(Path(root) / "upstream" / ids[i] / "done.json") for i in keep}
        )
        axis_vars = [v for v in ds.data_vars if "axis_name" in ds[v].attrs]
        parts += [ds.drop_vars(axis_vars).isel(curve=keep)] if keep else []
    if not parts:
        return None
    P, Q = (max(p.sizes[d] for p in parts) for d in ("point", "heldout_point"))
    padded = [
        p.pad(point=(0, P - p.sizes["point"]), heldout_point=(0, Q - p.sizes["heldout_point"]))
        for p in parts
    ]
    out = xr.concat(padded, dim="curve", combine_attrs="drop_conflicts")  # (C, P), (C, Q)
    labels = upstream_groups(configs)
    out["group"] = ("curve", np.asarray([labels[str(i)] for i in out["id"].values], dtype=str))
    out.attrs["sweep"] = "all sweeps"
    return out


def pretrainings_context(
    inputs: Sequence[tuple[str | Path, xr.Dataset | None, str]], figures_dir: Path
) -> dict:
    """``page_context`` of the pretrainings page; ``inputs``: (dataset, its curves as
    ``load_curves`` gave them, the results root it was aggregated from). The root beside the
    dataset (``{root}/sweeps/{name}/dataset.nc``) comes first: a relative root names a
    folder of wherever aggregation ran."""

    def root(dataset: str | Path, given: str) -> Path:
        here = Path(dataset).resolve().parents[2]
        return here if (here / "upstream").is_dir() or not given else Path(given)

    cds = report_upstreams([(c, root(d, r)) for d, c, r in inputs])
    why = "" if cds is not None else "no sweep of the report has an upstream curve"
    return page_context(cds, why, figures_dir, "all sweeps", "pretrainings")


def _with_points(ds: xr.Dataset, i: int) -> bool:
    return str(ds["note"].values[i]) == "" and bool(np.isfinite(ds["loss"].values[i]).any())


def group_rows(ds: xr.Dataset) -> list[dict]:
    """One row per run group (in order of first appearance), then one per upstream."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i in range(ds.sizes["curve"]):
        groups.setdefault((str(ds["kind"].values[i]), str(ds["group"].values[i])), []).append(i)
    rows = []
    for (kind, group), idx in sorted(groups.items(), key=lambda kv: kv[0][0] == "upstream"):
        have = [i for i in idx if _with_points(ds, i)]
        row = {"kind": kind, "group": group, "n": len(have), "n_all": len(idx)}
        row.update(final=None, drop=None, plateaued=None, seeds_plateaued="")
        row.update(_heldout_columns(ds, have))
        if have:
            p = _seed_mean_plateau(ds, have)
            row.update(
                final=float(np.nanmean(ds["final_loss"].values[have])),
                drop=p["drop"],
                plateaued=p["plateaued"],
                seeds_plateaued=_count_plateaued(ds["plateaued"].values[have]),
            )
        rows.append(row)
    return rows


def _seed_mean_plateau(ds: xr.Dataset, have: list[int], prefix: str = "") -> dict:
    """The plateau statistic of the mean curve of ``have`` (``prefix`` "heldout_": of their
    held-out points); drop and plateaued None unless the curves share one step grid."""
    steps = ds[f"{prefix}step"].values[have]  # (n, P)
    if not all(np.array_equal(s, steps[0], equal_nan=True) for s in steps):
        return {"drop": None, "plateaued": None}
    mean_curve = np.nanmean(ds[f"{prefix}loss"].values[have], axis=0)  # (P,)
    return plateau(mean_curve[np.isfinite(mean_curve)])


def _count_plateaued(flags: np.ndarray) -> str:
    """ "k/n": how many of n curves' own plateau flags (1 yes, 0 no, -1 unknown) say yes."""
    return f"{int((flags == 1).sum())}/{len(flags)}"


def _heldout_columns(ds: xr.Dataset, have: list[int]) -> dict:
    """Final held-out loss and error (mean over the curves with held-out points), the plateau
    statistic of their mean held-out curve (None unless they share one step grid) and how
    many of them plateaued on their own; None where no curve recorded held-out points."""
    none = dict.fromkeys(("held_final", "held_error", "held_drop", "held_plateaued"))
    none["held_seeds_plateaued"] = ""
    if "heldout_loss" not in ds or not have:
        return none
    have = [i for i in have if np.isfinite(ds["heldout_loss"].values[i]).any()]
    if not have:
        return none

    def final(rows):  # mean over curves of each one's last recorded point
        return float(np.mean([r[np.isfinite(r)][-1] for r in rows]))

    p = _seed_mean_plateau(ds, have, "heldout_")
    return {
        "held_final": final(ds["heldout_loss"].values[have]),
        "held_error": final(ds["heldout_error"].values[have]),
        "held_drop": p["drop"],
        "held_plateaued": p["plateaued"],
        "held_seeds_plateaued": _count_plateaued(ds["heldout_plateaued"].values[have]),
    }


def _long(ds: xr.Dataset, kind: str, prefix: str = "") -> pd.DataFrame:
    """(group, seed, step, loss) rows of every point of the curves of one kind
    (``prefix`` "heldout_": their held-out points)."""
    records = []
    for i in range(ds.sizes["curve"] if f"{prefix}loss" in ds else 0):
        if str(ds["kind"].values[i]) != kind or not _with_points(ds, i):
            continue
        steps, loss = ds[f"{prefix}step"].values[i], ds[f"{prefix}loss"].values[i]
        keep = np.isfinite(steps) & np.isfinite(loss)
        for s, v in zip(steps[keep], loss[keep]):
            records.append(
                {
                    "group": str(ds["group"].values[i]),
                    "seed": int(ds["seed"].values[i]),
                    "step": int(s),
                    "loss": float(v),
                }
            )
    return pd.DataFrame.from_records(records, columns=["group", "seed", "step", "loss"])


PANELS = (  # (curve kind, prefix of its variables, title, y label), in figure order
    ("run", "", "fine-tuning loss", "training loss (CE + aux)"),
    ("run", "heldout_", "fine-tuning validation loss", "validation NLL"),
    ("upstream", "", "upstream loss", "training loss (CE + aux)"),
    ("upstream", "heldout_", "upstream held-out loss", "held-out NLL"),
)


def figure_panels(ds: xr.Dataset) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, y label, long-form points) of each of ``PANELS`` that has points."""
    panels = []
    for kind, prefix, title, ylabel in PANELS:
        df = _long(ds, kind, prefix)
        if not df.empty:
            panels.append((title, ylabel, df))
    return panels


def curves_figure(ds: xr.Dataset, out: Path, sweep: str, stem: str = "") -> Figure | None:
    """Loss vs step (mean ± standard error over seeds): the run groups' training loss and
    validation loss, then the upstreams' training and held-out loss; panels without points
    are left out, two per row."""
    panels = figure_panels(ds)
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)  # ⌈panels / 2⌉
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, ylabel, df) in zip(axes.flat, panels):
        sns.lineplot(data=df, x="step", y="loss", hue="group", errorbar="se", ax=ax)
        ax.set_title(f"{sweep}: {title}")
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, title=None)
    path = Path(out) / f"{stem or 'curves_' + sweep}.png"
    return Figure(_save(fig, path), f"{sweep}: training loss curves", "curves")


def page_context(
    ds: xr.Dataset | None, why: str, figures_dir: Path, sweep: str, stem: str = ""
) -> dict:
    """Everything the template shows (figure, group table, curves without points)."""
    if ds is None:
        empty = {"figure": None, "groups": [], "missing": [], "threshold": None, "frac": None}
        return {"why": why, **empty}
    missing = [
        {
            "kind": str(ds["kind"].values[i]),
            "id": str(ds["id"].values[i]),
            "group": str(ds["group"].values[i]),
            "note": str(ds["note"].values[i]),
        }
        for i in range(ds.sizes["curve"])
        if not _with_points(ds, i)
    ]
    return {
        "why": "" if ds.sizes["curve"] else "the sweep has no finished runs yet",
        "figure": curves_figure(ds, figures_dir, sweep, stem),
        "groups": group_rows(ds),
        "missing": missing,
        "threshold": float(ds.attrs["plateau_threshold"]),
        "frac": float(ds.attrs["plateau_frac"]),
    }
