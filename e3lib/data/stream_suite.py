"""The datasets of a streamed run: the sets of ``e3lib.data.load_suite``, each a lazily read
source (``e3lib.data.sources``) instead of an array, so no split is held in memory.

A run streams (``uses_stream``) when its dataset is file-backed (any dataset but the
embedded demo) or ``data.pp_train`` is set; the demo with no pp keeps its in-memory arrays
(``DataSuite``), and with a pp its arrays are wrapped as sources. The train/validation
split is the in-memory suite's (``split_train_val``), taken as index subsets of the
stored train split. pp strings come from ``data.pp_train`` / ``data.pp_eval`` (a recipe
name of ``e3lib.ppspec.RECIPES``, or a string; None = ``plain``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from e3lib.data.sources import (
    ArraySource,
    FolderSource,
    RecordSource,
    Subset,
    TfdsSource,
    decode_record,
    open_source,
    split_train_val,
)
from e3lib.ppspec import pp_string

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


def uses_stream(cfg: RunConfig) -> bool:
    return cfg.data.dataset != "demo" or cfg.data.pp_train is not None


def upstream_uses_stream(ucfg: Mapping[str, Any]) -> bool:
    """Pretraining streams from a file-backed set (any but the embedded ``demo``)."""
    return ucfg["dataset"] != "demo"


def open_upstream_source(ucfg: Mapping[str, Any]) -> tuple[Any, int, str]:
    """(source, number of classes, pp) of an upstream config's file-backed pretraining
    set: split ``train`` of ``upstream.dataset``, read with the ``plain`` recipe at the
    image size (the pixels ``e3lib.data.load_upstream`` would hold in memory)."""
    from e3lib.errors import ConfigError

    name = ucfg["dataset"]
    if not isinstance(name, str) or not name:
        raise ConfigError("upstream.dataset", name, "must be a dataset name")
    source = open_source(name, "train", ucfg["data_dir"])
    labels = source_labels(source)
    return source, int(labels.max()) + 1, pp_string(None, ucfg["image_size"], "train")


def open_upstream_heldout(ucfg: Mapping[str, Any]) -> tuple[Any, str] | None:
    """(source, pp) of the held-out set of a file-backed pretraining set: split
    ``validation`` of ``upstream.dataset`` (None when it has none)."""
    from e3lib.data.sources import DatasetNotFoundError

    try:
        source = open_source(ucfg["dataset"], "validation", ucfg["data_dir"])
    except DatasetNotFoundError:
        return None
    return source, pp_string(None, ucfg["image_size"], "eval")


@dataclass
class FewShotSources:
    pool: Any
    test: Any


@dataclass
class StreamSuite:
    """Sources of every set a run reads; ``pp_train`` / ``pp_eval`` are pp strings."""

    name: str
    num_classes: int
    pp_train: str
    pp_eval: str
    train: Any
    val: Any
    test: Any
    corrupted: dict[str, dict[int, Any]] = field(default_factory=dict)
    shifted: dict[str, Any] = field(default_factory=dict)
    ood_near: Any = None
    ood_far: Any = None
    fewshot: dict[str, FewShotSources] = field(default_factory=dict)


def source_labels(source) -> np.ndarray:
    """Labels (N,) of a source without decoding images where the format allows."""
    if isinstance(source, ArraySource):
        n = len(source)
        return (
            np.full(n, -1, np.int32)
            if source.labels is None
            else np.asarray(source.labels, np.int32)
        )
    if isinstance(source, Subset):
        return source_labels(source.source)[source.indices]
    if isinstance(source, RecordSource):
        return np.asarray(
            [decode_record(source.source[i])["label"] for i in range(len(source))], np.int32
        )
    if isinstance(source, FolderSource):
        return np.asarray([label for _, label in source.files], np.int32)
    if isinstance(source, TfdsSource):
        return np.asarray([source[i]["label"] for i in range(len(source))], np.int32)
    return np.asarray([source[i]["label"] for i in range(len(source))], np.int32)


def _arrays(labeled) -> ArraySource:
    return ArraySource(labeled.images, getattr(labeled, "labels", None))


def _from_data_suite(suite, pp_train: str, pp_eval: str) -> StreamSuite:
    """An in-memory ``DataSuite`` behind the source interface."""
    out = StreamSuite(
        suite.name,
        suite.num_classes,
        pp_train,
        pp_eval,
        _arrays(suite.train),
        _arrays(suite.val),
        _arrays(suite.test),
    )
    out.corrupted = {c: {s: _arrays(d) for s, d in by.items()} for c, by in suite.corrupted.items()}
    out.shifted = {k: _arrays(d) for k, d in suite.shifted.items()}
    for split in ("ood_near", "ood_far"):
        images = getattr(suite, split)
        if images is not None:
            setattr(out, split, ArraySource(images, None))
    out.fewshot = {
        t: FewShotSources(_arrays(task.train), _arrays(task.test))
        for t, task in suite.fewshot.items()
    }
    return out


def open_stream_suite(cfg: RunConfig) -> StreamSuite:
    """The sources of a resolved run config (only the sets its ``eval`` section asks for)."""
    from e3lib.data import BENCHMARK_CORRUPTIONS, FEWSHOT_DATASETS, REAL, check_dataset, load_suite

    data, ev = cfg.data, cfg.eval
    name, size, root = data.dataset, data.image_size, data.data_dir
    check_dataset(name)
    pp_train = pp_string(data.pp_train, size, "train")
    pp_eval = pp_string(data.pp_eval, size, "eval")
    if name == "demo":
        return _from_data_suite(load_suite(cfg), pp_train, pp_eval)
    spec = REAL[name]
    full = open_source(name, "train", root)
    train_idx, val_idx = split_train_val(len(full), spec.val_fraction)
    suite = StreamSuite(
        name,
        spec.num_classes,
        pp_train,
        pp_eval,
        Subset(full, train_idx),
        Subset(full, val_idx),
        open_source(name, "test", root),
    )
    if ev.corrupted and spec.corrupted:
        suite.corrupted = {
            c: {s: open_source(spec.corrupted, f"{c}_{s}", root) for s in range(1, 6)}
            for c in BENCHMARK_CORRUPTIONS
        }
        suite.shifted = {s: open_source(s, "test", root) for s in spec.shifted}
    if ev.ood:
        for split in ("ood_near", "ood_far"):
            other = getattr(spec, split)
            if other:
                setattr(suite, split, open_source(other, "test", root))
    if ev.fewshot:
        suite.fewshot = {
            t: FewShotSources(open_source(t, "train", root), open_source(t, "test", root))
            for t in FEWSHOT_DATASETS
        }
    return suite
