"""Datasets of a run, by name: the embedded ``demo`` (no network) and real datasets read
from local files (``e3lib.data.loaders``).

``load_suite(cfg)`` gives the downstream ``DataSuite`` of a resolved run config (only the
parts its ``eval`` section asks for); ``load_upstream(ucfg)`` the pretraining set of an
upstream config (``e3lib.config.upstream_config``).

Real datasets and what the evaluation pairs them with (the paper's setting, §5, App. A):

========== ======= =========== ================== ============ ====================
name       classes val (A.3)   corrupted sets     near-OOD     far-OOD / shifted
========== ======= =========== ================== ============ ====================
cifar10    10      2% of train cifar10_corrupted  cifar100     svhn_cropped
cifar100   100     2% of train cifar100_corrupted cifar10      svhn_cropped
imagenet2012 1000  1% of train imagenet2012_corrupted —        imagenet_a, imagenet_v2 (shifted)
========== ======= =========== ================== ============ ====================

Corrupted sets are stored per type and severity as split ``{type}_{severity}`` of the
``*_corrupted`` dataset (the 15 benchmark corruptions of Hendrycks & Dietterich). Few-shot
tasks of real runs are the paper's 8 datasets (App. A.5), splits ``train`` (pool) and ``test``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from e3lib.config import CHOICES, ConfigError
from e3lib.data.embedded import demo_suite, upstream_set
from e3lib.data.loaders import DatasetNotFoundError, load_split
from e3lib.data.suite import DataSuite, FewShotTask, Labeled, batch_indices, to_float

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

__all__ = [
    "DATASETS",
    "DataSuite",
    "DatasetNotFoundError",
    "FewShotTask",
    "Labeled",
    "batch_indices",
    "check_dataset",
    "load_suite",
    "load_upstream",
    "to_float",
]

BENCHMARK_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
FEWSHOT_DATASETS = (
    "caltech_birds2011",
    "caltech101",
    "cars196",
    "cifar100",
    "colorectal_histology",
    "dtd",
    "oxford_iiit_pet",
    "uc_merced",
)


@dataclass(frozen=True)
class RealDataset:
    num_classes: int
    val_fraction: float
    corrupted: str | None
    ood_near: str | None
    ood_far: str | None
    shifted: tuple[str, ...] = ()


REAL: dict[str, RealDataset] = {
    "cifar10": RealDataset(10, 0.02, "cifar10_corrupted", "cifar100", "svhn_cropped"),
    "cifar100": RealDataset(100, 0.02, "cifar100_corrupted", "cifar10", "svhn_cropped"),
    "imagenet2012": RealDataset(
        1000, 0.01, "imagenet2012_corrupted", None, None, ("imagenet_a", "imagenet_v2")
    ),
}

DATASETS: tuple[str, ...] = CHOICES["data.dataset"]
assert set(DATASETS) == {"demo", *REAL}, "CHOICES['data.dataset'] and REAL disagree"


def check_dataset(name: Any, field: str = "data.dataset") -> None:
    if name not in DATASETS:
        raise ConfigError(field, name, f"allowed: {list(DATASETS)}")


def load_suite(cfg: RunConfig) -> DataSuite:
    """The downstream data of a resolved run config."""
    data, ev = cfg.data, cfg.eval
    name, size = data.dataset, data.image_size
    check_dataset(name)
    if name == "demo":
        suite = demo_suite(size, corrupted=bool(ev.corrupted))
        return suite if ev.fewshot else _without_fewshot(suite)
    return _real_suite(name, size, data.data_dir, ev)


def _without_fewshot(suite: DataSuite) -> DataSuite:
    import dataclasses

    return dataclasses.replace(suite, fewshot={})


def _real_suite(name: str, size: int, data_dir: str | None, ev: Mapping[str, Any]) -> DataSuite:
    spec = REAL[name]
    images, labels = load_split(name, "train", data_dir, size)
    perm = np.random.default_rng(0).permutation(len(labels))
    n_val = max(1, int(round(spec.val_fraction * len(labels))))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    train = Labeled(images[train_idx], labels[train_idx])
    val = Labeled(images[val_idx], labels[val_idx])
    test = Labeled(*load_split(name, "test", data_dir, size))
    suite = DataSuite(name=name, num_classes=spec.num_classes, train=train, val=val, test=test)
    if ev.corrupted and spec.corrupted:
        suite.corrupted = {
            c: {
                s: Labeled(*load_split(spec.corrupted, f"{c}_{s}", data_dir, size))
                for s in range(1, 6)
            }
            for c in BENCHMARK_CORRUPTIONS
        }
        suite.shifted = {s: Labeled(*load_split(s, "test", data_dir, size)) for s in spec.shifted}
    if ev.ood:
        if spec.ood_near:
            suite.ood_near = load_split(spec.ood_near, "test", data_dir, size, need_labels=False)[0]
        if spec.ood_far:
            suite.ood_far = load_split(spec.ood_far, "test", data_dir, size, need_labels=False)[0]
    if ev.fewshot:
        for task in FEWSHOT_DATASETS:
            pool = Labeled(*load_split(task, "train", data_dir, size))
            tst = Labeled(*load_split(task, "test", data_dir, size))
            suite.fewshot[task] = FewShotTask(
                pool, tst, int(max(pool.labels.max(), tst.labels.max())) + 1
            )
    return suite


def load_upstream(ucfg: RunConfig) -> tuple[Labeled, int]:
    """Pretraining set of an upstream config and its number of classes.

    ``demo`` pairs with the embedded upstream set (20 classes); any other name is read
    as split ``train`` of that local dataset.
    """
    name, size = ucfg["dataset"], ucfg["image_size"]
    if name == "demo":
        return upstream_set(size, ucfg.get("renderings", 1))
    if not isinstance(name, str) or not name:
        raise ConfigError("upstream.dataset", name, "must be a dataset name")
    images, labels = load_split(name, "train", ucfg["data_dir"], size)
    return Labeled(images, labels), int(labels.max()) + 1
