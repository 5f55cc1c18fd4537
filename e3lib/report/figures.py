"""Seaborn figures of a sweep dataset (matplotlib Agg backend, PNG files).

Notation: M members, N test images, C classes; per-cell statistics are over seeds
(mean and standard error, from ``rows.sweep_rows``).

Which figures a sweep gets follows from its axes and data:
  pareto       metric vs GFLOPs per method (and model size), Pareto front dashed
               (needs the ``gflops`` cost)                      — Figures 3–8 style
  km_heatmap   mean NLL and GFLOPs over K × M, M = each row's members (rows.members_label:
               the runs of a deep ensemble, or M of one model)  — Figure 2
  sensitivity  metrics against λ (log scale) or the overlap o    — Figure 10, Tables 3/18
  reliability  accuracy vs confidence in 15 bins, from the runs' predictions.npz
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import xarray as xr  # noqa: E402

from e3lib.aggregate import STATUS_FLAGS, axis_dim, dataset_axes, select_grid  # noqa: E402
from e3lib.report.cells import _numeric_first  # noqa: E402
from e3lib.report.rows import MEMBER_AXES, MEMBERS, sweep_rows  # noqa: E402
from e3lib.report.spec import default_spec  # noqa: E402

PLOT_METRICS = ("nll", "error", "ece", "kl_diversity")
K_AXIS = "model.num_selected"
# M of the K × M grid is the derived column MEMBERS ("M") of ``tidy``: ensemble.runs for a
# deep ensemble (Figure 2: V-MoE runs=1 and its down-DEs), model.ensemble_size otherwise.
SENSITIVITY_AXES = {
    "model.aux_weight": ("λ (load-balancing strength)", "log"),
    "model.overlap": ("overlap o (shared experts)", "linear"),
}


@dataclass
class Figure:
    path: Path
    title: str
    kind: str


def tidy(ds: xr.Dataset, metrics: Sequence[str] = PLOT_METRICS + ("gflops",)) -> pd.DataFrame:
    """One row per (sweep cell, metric): axis labels, members (column ``MEMBERS``, "-"
    where the sweep has no member axis), mean, stderr, n, n_req."""
    spec = default_spec()
    metrics = [m for m in metrics if m in ds.data_vars and m in spec["metrics"]]
    records = []
    for r in sweep_rows(ds, metrics, (), spec):
        for m, c in r.stats.items():
            scale = spec["metrics"][m].get("scale", 1.0)
            records.append(
                {
                    **r.key,
                    MEMBERS: r.members or "-",
                    "metric": m,
                    "mean": c.mean * scale,
                    "stderr": c.stderr * scale,
                    "n": c.n,
                    "n_req": c.n_req,
                }
            )
    return pd.DataFrame.from_records(records)


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of points not dominated in (lower x, lower y), sorted by x."""
    order = np.lexsort((y, x))
    front, best = [], math.inf
    for i in order:
        if y[i] < best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15):
    """Mean confidence, accuracy and count per equal-width confidence bin.

    probs: (M, N, C) member probabilities; the prediction is their mean over M.
    Bins are (i/n_bins, (i+1)/n_bins], the first one closed at 0.
    """
    mean_probs = probs.mean(axis=0)  # (N, C)
    conf = mean_probs.max(axis=1)  # (N,)
    correct = (mean_probs.argmax(axis=1) == labels).astype(float)  # (N,)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        acc = np.bincount(idx, correct, n_bins) / count
    return mean_conf, acc, count


def _row_label(df: pd.DataFrame, names: Sequence[str]) -> pd.Series:
    if not names:
        return pd.Series(["all"] * len(df), index=df.index)
    return df[list(names)].astype(str).agg(", ".join, axis=1)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def _pareto(ds, df, out, sweep) -> list[Figure]:
    axes = dataset_axes(ds)
    if "gflops" not in set(df["metric"]):
        return []
    cost = df[df.metric == "gflops"].set_index(axes)["mean"]
    figs = []
    hue = "method" if "method" in axes else None
    style = "model.size" if "model.size" in axes else None
    for m in ("nll", "error", "ece"):
        d = df[df.metric == m].copy()
        if d.empty:
            continue
        d["gflops"] = d.set_index(axes).index.map(cost)
        d = d.dropna(subset=["gflops", "mean"])
        if len(d) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        sns.scatterplot(data=d, x="gflops", y="mean", hue=hue, style=style, ax=ax, s=60)
        ax.errorbar(
            d["gflops"], d["mean"], yerr=d["stderr"].fillna(0), fmt="none", ecolor="grey", alpha=0.6
        )
        front = pareto_front(d["gflops"].to_numpy(), d["mean"].to_numpy())
        ax.plot(
            d["gflops"].to_numpy()[front],
            d["mean"].to_numpy()[front],
            "k--",
            lw=1,
            label="Pareto front",
        )
        ax.set_xscale("log")
        label = default_spec()["metrics"][m]["label"]
        ax.set(
            xlabel="GFLOPs per image (training, log)",
            ylabel=f"{label} (lower is better)",
            title=f"{sweep}: {label} vs GFLOPs",
        )
        ax.legend(fontsize=7)
        figs.append(
            Figure(
                _save(fig, out / f"fig_{sweep}_pareto_{m}.png"),
                f"{label} vs GFLOPs, Pareto front dashed",
                "pareto",
            )
        )
    return figs


def _km_heatmap(ds, df, out, sweep) -> list[Figure]:
    axes = dataset_axes(ds)
    # Only for the K × M study itself: elsewhere K and M mix methods where they mean
    # different things (a ViT has no K).
    if (
        K_AXIS not in axes
        or not any(a in axes for a in MEMBER_AXES)
        or "figure2" not in json.loads(ds.attrs.get("reproduces", "[]"))
    ):
        return []
    rest = [a for a in axes if a != K_AXIS and a not in MEMBER_AXES]
    figs = []
    for m in ("nll", "gflops"):
        d = df[(df.metric == m) & (df[K_AXIS] != "-") & (df[MEMBERS] != "-")].copy()
        if d.empty:
            continue
        merged = [a for a in rest if a != "method"]
        if len(merged) < len(rest) and not d.duplicated(merged + [K_AXIS, MEMBERS]).any():
            panel_axes = merged  # e.g. V-MoE at M=1 and its deep ensembles at M>1: one grid
        else:
            panel_axes = rest
        d["panel"] = _row_label(d, panel_axes)
        panels = list(dict.fromkeys(d["panel"]))
        fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        for ax, panel in zip(axs[0], panels):
            p = d[d.panel == panel]
            grid = p.pivot_table(index=MEMBERS, columns=K_AXIS, values="mean")
            grid = grid.reindex(
                index=sorted(grid.index, key=_numeric_first),
                columns=sorted(grid.columns, key=float),
            )
            cmap = "viridis_r" if m in ("nll", "gflops") else "viridis"
            sns.heatmap(grid, annot=True, fmt=".3g", cmap=cmap, ax=ax, cbar=True)
            ax.invert_yaxis()
            ax.set(xlabel="K (experts per token)", ylabel="M (members)", title=panel)
        label = default_spec()["metrics"][m]["label"]
        fig.suptitle(f"{sweep}: {label} over K × M")
        figs.append(
            Figure(
                _save(fig, out / f"fig_{sweep}_km_{m}.png"),
                f"{label} over K × M (Figure 2 style)",
                "km_heatmap",
            )
        )
    return figs


def _sensitivity(ds, df, out, sweep) -> list[Figure]:
    axes = dataset_axes(ds)
    figs = []
    for axis, (xlabel, scale) in SENSITIVITY_AXES.items():
        if axis not in axes:
            continue
        d = df[(df[axis] != "-") & df.metric.isin(PLOT_METRICS)].copy()
        if d.empty:
            continue
        d["x"] = d[axis].astype(float)
        if scale == "log":
            d = d[d.x > 0]
        d["series"] = _row_label(d, [a for a in axes if a != axis])
        metrics = [m for m in PLOT_METRICS if m in set(d.metric)]
        fig, axs = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
        for ax, m in zip(axs[0], metrics):
            p = d[d.metric == m].sort_values("x")
            sns.lineplot(
                data=p,
                x="x",
                y="mean",
                hue="series",
                marker="o",
                ax=ax,
                errorbar=None,
                legend=(m == metrics[0]),
            )
            for _, s in p.groupby("series"):
                ax.fill_between(
                    s.x, s["mean"] - s.stderr.fillna(0), s["mean"] + s.stderr.fillna(0), alpha=0.2
                )
            ax.set_xscale(scale)
            spec_m = default_spec()["metrics"][m]
            ax.set(xlabel=xlabel, ylabel=spec_m["label"], title=spec_m["label"])
        name = axis.split(".")[-1]
        fig.suptitle(f"{sweep}: metrics vs {xlabel} (band: ± standard error)")
        figs.append(
            Figure(
                _save(fig, out / f"fig_{sweep}_vs_{name}.png"),
                f"metrics vs {xlabel}",
                "sensitivity",
            )
        )
    return figs


def _reliability(ds, out, sweep, max_panels: int = 6) -> list[Figure]:
    axes = dataset_axes(ds)
    dims = [axis_dim(a) for a in axes]
    ok = ds["status"] == STATUS_FLAGS["ok"]
    panels = []
    for cell in itertools.product(*(ds[d].values.tolist() for d in dims)):
        pos = dict(zip(dims, cell))
        probs, labels = [], []
        for path, good in zip(
            np.asarray(ds["result_path"].sel(pos).values).ravel(),
            np.asarray(ok.sel(pos).values).ravel(),
        ):
            pred = Path(str(path)).parent / "predictions.npz"
            if good and pred.exists():
                with np.load(pred) as z:
                    probs.append(z["probs"].mean(axis=0))  # (N, C)
                    labels.append(z["labels"])
        if probs:
            label = ", ".join(str(v) for v in pos.values())
            # pool the seeds: (1, S·N, C) as a single "member"
            panels.append((label, np.concatenate(probs)[None], np.concatenate(labels)))
    if not panels:
        return []
    panels = panels[:max_panels]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axs.ravel()[len(panels) :]:
        ax.set_visible(False)
    for ax, (label, probs, labels) in zip(axs.ravel(), panels):
        conf, acc, count = reliability_bins(probs, labels)
        keep = count > 0
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.bar(conf[keep], acc[keep], width=1 / 15, alpha=0.6, edgecolor="k")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=label)
    fig.suptitle(f"{sweep}: reliability (seeds pooled, 15 bins)")
    return [
        Figure(
            _save(fig, out / f"fig_{sweep}_reliability.png"),
            "reliability diagrams (clean test set)",
            "reliability",
        )
    ]


def sweep_figures(ds: xr.Dataset, out: str | Path) -> list[Figure]:
    """Every figure the sweep's axes and data allow, written under ``out`` (at the
    grid points chosen by the sweep's ``select``, if it declares one)."""
    out = Path(out)
    sweep = ds.attrs["sweep"]
    ds = select_grid(ds)  # a sweep with `select:` is plotted at its chosen grid points
    sns.set_theme(style="whitegrid", context="paper")
    df = tidy(ds)
    figs: list[Figure] = []
    if not df.empty:
        figs += _pareto(ds, df, out, sweep)
        figs += _km_heatmap(ds, df, out, sweep)
        figs += _sensitivity(ds, df, out, sweep)
    figs += _reliability(ds, out, sweep)
    return figs
