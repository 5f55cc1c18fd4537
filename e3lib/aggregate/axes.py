"""Sweep axes as dataset dimensions: netCDF-safe names and canonical value labels."""

from __future__ import annotations

import json
from typing import Any

import xarray as xr

MISSING_AXIS_LABEL = "-"


def axis_dim(axis: str) -> str:
    """netCDF-safe dimension name of a sweep axis: ``model.overlap`` → ``model__overlap``."""
    return axis.replace(".", "__")


def axis_label(value: Any) -> str:
    """Canonical text of an axis value (coordinates and reference keys compare by it).

    Whole floats print as integers (2.0 → "2") so YAML ``2`` and JSON ``2.0`` agree.
    """
    if value is None:
        return MISSING_AXIS_LABEL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def dataset_axes(ds: xr.Dataset) -> list[str]:
    """Original (dotted) axis names of a sweep dataset, in sweep order."""
    return list(json.loads(ds.attrs["axes"]))


def sort_key(value: Any) -> tuple:
    """Numbers first in numeric order, then text, then None (a conditional axis's "-")."""
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))
