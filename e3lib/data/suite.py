"""Containers for the datasets of one run: downstream splits, shifted test sets, OOD
sets and few-shot tasks; plus the deterministic batch order used by training.

Notation: N examples, H×W pixels (square, ``image_size``), 3 channels, C classes.
Images are stored as uint8 (N, H, W, 3) and turned into float32 in [-1, 1] only when a
batch is formed (``to_float``), which keeps a whole suite small in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Labeled:
    """Images (N, H, W, 3) uint8 and integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3), got {self.images.shape}")
        if self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {self.labels.shape}")
        self.labels = self.labels.astype(np.int32)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class FewShotTask:
    """A linear few-shot task: a pool to draw k examples per class from, and a test set."""

    train: Labeled
    test: Labeled
    num_classes: int


@dataclass
class DataSuite:
    """Everything the fine-tuning and evaluation of one run reads."""

    name: str
    num_classes: int
    train: Labeled
    val: Labeled
    test: Labeled
    # corrupted[type][severity]: the corrupted test set (labels as stored with it).
    corrupted: dict[str, dict[int, Labeled]] = field(default_factory=dict)
    # Other shifted test sets with their own labels (e.g. ImageNet-A / -V2).
    shifted: dict[str, Labeled] = field(default_factory=dict)
    ood_near: np.ndarray | None = None
    ood_far: np.ndarray | None = None
    fewshot: dict[str, FewShotTask] = field(default_factory=dict)


def to_float(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (…, H, W, 3) → float32 in [-1, 1]."""
    return images_uint8.astype(np.float32) * (2.0 / 255.0) - 1.0


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Example indices (batch_size,) of training step ``step`` (0-based).

    Epoch e = ⌊step·B / N⌋ visits a permutation drawn from (seed, e); the batch is a
    window of the concatenated epoch permutations. Because it depends on (seed, step)
    only, a resumed run sees exactly the batches an uninterrupted one would.
    """
    start = step * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    filled = 0
    while filled < batch_size:
        epoch, offset = divmod(start + filled, num_examples)
        perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
        take = min(batch_size - filled, num_examples - offset)
        out[filled : filled + take] = perm[offset : offset + take]
        filled += take
    return out
