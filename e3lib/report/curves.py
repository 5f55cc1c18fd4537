"""The training-curves page of a sweep (``curves_{sweep}.html``): loss vs step of every run
group (mean over seeds with a ±1 standard-error band) and of the upstreams, and a table of
each group's final loss and plateau statistic. Reads ``curves.nc`` beside the sweep's
dataset (``e3 aggregate``, e3lib.aggregate.curves); without one the page says so.

Notation: n seeds of a group (curves with points), P points.

Per group: ``final loss`` = mean over its seeds of each curve's last point; the plateau
statistic (``e3lib.curves.plateau``) is that of the seed-mean curve (points averaged over
seeds, which share one step grid), and ``seeds plateaued`` counts the seeds whose own
curve plateaued.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import xarray as xr  # noqa: E402

from e3lib.aggregate.curves import CURVES_DATASET_FORMAT, curves_path  # noqa: E402
from e3lib.curves import plateau  # noqa: E402
from e3lib.report.figures import Figure, _save  # noqa: E402


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
        if have:
            loss = ds["loss"].values[have]  # (n, P)
            mean_curve = np.nanmean(loss, axis=0)
            p = plateau(mean_curve[np.isfinite(mean_curve)])
            flags = ds["plateaued"].values[have]
            row.update(
                final=float(np.nanmean(ds["final_loss"].values[have])),
                drop=p["drop"],
                plateaued=p["plateaued"],
                seeds_plateaued=f"{int((flags == 1).sum())}/{len(have)}",
            )
        rows.append(row)
    return rows


def _long(ds: xr.Dataset, kind: str) -> pd.DataFrame:
    """(group, seed, step, loss) rows of every point of the curves of one kind."""
    records = []
    for i in range(ds.sizes["curve"]):
        if str(ds["kind"].values[i]) != kind or not _with_points(ds, i):
            continue
        steps, loss = ds["step"].values[i], ds["loss"].values[i]
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


def curves_figure(ds: xr.Dataset, out: Path, sweep: str) -> Figure | None:
    """Loss vs step: run groups (mean ± standard error over seeds), then the upstreams."""
    panels = [(k, df) for k in ("run", "upstream") if not (df := _long(ds, k)).empty]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (kind, df) in zip(axes[0], panels):
        sns.lineplot(data=df, x="step", y="loss", hue="group", errorbar="se", ax=ax)
        ax.set_title(f"{sweep}: {'fine-tuning' if kind == 'run' else 'upstream'} loss")
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (CE + aux)")
        ax.legend(fontsize=7, title=None)
    path = Path(out) / f"curves_{sweep}.png"
    return Figure(_save(fig, path), f"{sweep}: training loss curves", "curves")


def page_context(ds: xr.Dataset | None, why: str, figures_dir: Path, sweep: str) -> dict:
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
        "figure": curves_figure(ds, figures_dir, sweep),
        "groups": group_rows(ds),
        "missing": missing,
        "threshold": float(ds.attrs["plateau_threshold"]),
        "frac": float(ds.attrs["plateau_frac"]),
    }
