"""The embedded demo data (structure, determinism, corruptions) and the loaders of real
datasets on small files written here."""

import numpy as np
import pytest

from e3lib.config import ConfigError, override, resolve
from e3lib.data import (
    DatasetNotFoundError,
    batch_indices,
    check_dataset,
    load_suite,
    load_upstream,
    to_float,
)
from e3lib.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from e3lib.data.embedded import demo_suite, upstream_set
from e3lib.data.loaders import load_split


def test_demo_suite_has_the_papers_structure():
    s = demo_suite(16)
    assert s.num_classes == 8
    for split in (s.train, s.val, s.test):
        assert split.images.shape[1:] == (16, 16, 3) and split.images.dtype == np.uint8
        assert set(np.unique(split.labels)) == set(range(8))
    assert len(s.train) > len(s.test) > len(s.val) > 0
    assert len(s.corrupted) >= 8
    assert all(sorted(v) == [1, 2, 3, 4, 5] for v in s.corrupted.values())
    assert s.ood_near.shape[1:] == (16, 16, 3) and s.ood_far.shape[1:] == (16, 16, 3)
    assert len(s.fewshot) >= 3
    for task in s.fewshot.values():
        counts = np.bincount(task.train.labels, minlength=task.num_classes)
        assert counts.min() >= 25  # enough for the 25-shot setting


def test_digits_read_without_sklearn_equal_load_digits():
    from sklearn.datasets import load_digits

    from e3lib.data.embedded import _digits

    images, labels = _digits()
    ref = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.float64
    np.testing.assert_array_equal(images, ref.images / 16.0)
    np.testing.assert_array_equal(labels, ref.target)
    assert labels.dtype == np.int32 and images.max() == 1.0 and images.min() == 0.0


def test_demo_splits_are_disjoint_and_deterministic():
    a, b = demo_suite.__wrapped__(16), demo_suite.__wrapped__(16)  # rebuilt, not cached
    assert np.array_equal(a.train.images, b.train.images)
    assert np.array_equal(
        a.corrupted["gaussian_noise"][3].images, b.corrupted["gaussian_noise"][3].images
    )
    rows = {img.tobytes() for img in a.train.images}
    assert not any(img.tobytes() in rows for img in a.test.images)


def test_upstream_set_differs_from_downstream():
    up, classes = upstream_set(16)
    assert classes == 20 and set(np.unique(up.labels)) == set(range(20))
    down = demo_suite(16)
    rows = {img.tobytes() for img in up.images}
    assert not any(img.tobytes() in rows for img in down.test.images)


def test_upstream_renderings_extend_the_plain_set_with_jittered_copies():
    plain, _ = upstream_set(16)
    three, classes = upstream_set(16, 3)
    n = len(plain)  # 898 digits of half A, upright and rotated
    assert n == 1796 and len(three) == 3 * n and classes == 20
    assert np.array_equal(three.images[:n], plain.images)  # rendering 0 is the plain set
    assert np.array_equal(three.labels, np.tile(plain.labels, 3))
    for r in (1, 2):  # new colours and a jitter: no copy repeats its source image
        copy = three.images[r * n : (r + 1) * n]
        same = np.all(copy == plain.images, axis=(1, 2, 3))
        assert not same.any()
    assert not np.array_equal(three.images[n : 2 * n], three.images[2 * n :])
    upstream_set.cache_clear()
    assert np.array_equal(upstream_set(16, 3)[0].images, three.images)  # deterministic


def test_upstream_heldout_is_the_upstream_task_on_other_digits():
    from e3lib.data.embedded import _digits, _halves, upstream_heldout

    held = upstream_heldout(16)
    gray8, digit = _digits()
    _, half_b = _halves(len(digit))
    assert len(held) == 2 * len(half_b) == 1798
    # upright digits keep their label, the rotated copies get digit + 10
    assert np.array_equal(held.labels, np.concatenate([digit[half_b], digit[half_b] + 10]))
    train_rows = {img.tobytes() for img in upstream_set(16)[0].images}
    assert not any(img.tobytes() in train_rows for img in held.images)
    # random colours: light digits on dark backgrounds, not the downstream's fixed pair
    corner = held.images[:, 0, 0, :]  # (N, 3): the background pixel of nearly every digit
    assert np.mean(corner.max(axis=1) <= round(0.35 * 255)) > 0.95
    assert len(np.unique(corner, axis=0)) > 1000
    upstream_heldout.cache_clear()
    assert np.array_equal(upstream_heldout(16).images, held.images)  # deterministic


def test_jitter_moves_a_pixel_by_the_drawn_shift():
    from e3lib.data.embedded import _jitter

    class Fixed:  # rotation 0, scale 1, shift (+1, -2) pixels
        def uniform(self, lo, hi, shape):
            if (lo, hi) == (-15.0, 15.0):
                return np.zeros(shape)
            return np.ones(shape) if (lo, hi) == (0.9, 1.1) else np.array([[1.0, -2.0]])

    gray = np.zeros((1, 16, 16))
    gray[0, 5, 9] = 1.0
    moved = _jitter(gray, Fixed())
    assert moved[0, 6, 7] == pytest.approx(1.0) and moved.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_grow_with_severity_and_are_deterministic(name):
    rng = np.random.default_rng(0)
    x = rng.integers(40, 216, (6, 16, 16, 3)).astype(np.uint8)
    dist = [np.abs(corrupt(x, name, s).astype(float) - x).mean() for s in SEVERITIES]
    assert dist[0] > 0
    assert dist[-1] > dist[0]
    assert np.array_equal(corrupt(x, name, 2, seed=1), corrupt(x, name, 2, seed=1))


def test_contrast_corruption_by_hand():
    # contrast severity 2 keeps half the deviation from the image mean:
    # pixels {0, 200} → mean 100 → {50, 150}.
    x = np.zeros((1, 2, 2, 3), np.uint8)
    x[0, 0] = 200
    out = corrupt(x, "contrast", 2)
    assert out[0, 0, 0, 0] == 150 and out[0, 1, 0, 0] == 50


def test_corrupt_rejects_unknown_names_and_severities():
    x = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="allowed"):
        corrupt(x, "fog_of_war", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "contrast", 6)


def test_batch_order_depends_on_seed_and_step_only():
    # N=10, B=4: step 2 covers positions 8..11 = last two of epoch 0, first two of epoch 1.
    perm0 = np.random.default_rng([7, 0]).permutation(10)
    perm1 = np.random.default_rng([7, 1]).permutation(10)
    assert batch_indices(10, 4, 7, 2).tolist() == [*perm0[8:], *perm1[:2]]
    assert np.array_equal(batch_indices(10, 4, 7, 5), batch_indices(10, 4, 7, 5))
    assert not np.array_equal(batch_indices(10, 4, 7, 0), batch_indices(10, 4, 8, 0))


def test_to_float_range():
    assert to_float(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]


def test_unknown_dataset_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="data.dataset.*allowed"):
        resolve({"data": {"dataset": "mnist"}})
    with pytest.raises(ConfigError, match="data.dataset"):
        check_dataset("svhn")


def test_missing_real_dataset_names_dataset_and_paths(tmp_path):
    cfg = resolve({"data": {"dataset": "cifar10", "data_dir": str(tmp_path)}})
    with pytest.raises(DatasetNotFoundError) as err:
        load_suite(cfg)
    msg = str(err.value)
    assert "'cifar10'" in msg and str(tmp_path / "cifar10" / "train.npz") in msg


def write_npz(path, n, size, classes, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        images=rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8),
        labels=np.arange(n) % classes,
    )


def test_npz_and_image_folder_loaders(tmp_path):
    from PIL import Image

    write_npz(tmp_path / "cifar10" / "test.npz", 5, 32, 10, 0)
    images, labels = load_split("cifar10", "test", str(tmp_path), 16)
    assert images.shape == (5, 16, 16, 3) and labels.tolist() == [0, 1, 2, 3, 4]
    # image folder: class folders sorted by name give the labels
    for c, colour in (("b_dog", 200), ("a_cat", 10)):
        d = tmp_path / "pets" / "train" / c
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 20, 3), colour, np.uint8)).save(d / f"{i}.png")
    images, labels = load_split("pets", "train", str(tmp_path), 16)
    assert labels.tolist() == [0, 0, 1, 1]
    assert images[0].mean() == 10 and images[-1].mean() == 200
    # OOD folder without classes: images only
    d = tmp_path / "svhn_cropped" / "test"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "x.png")
    images, labels = load_split("svhn_cropped", "test", str(tmp_path), 16, need_labels=False)
    assert images.shape == (1, 16, 16, 3) and labels is None


def test_real_cifar10_suite_from_npz_files(tmp_path):
    root = tmp_path
    write_npz(root / "cifar10" / "train.npz", 100, 32, 10, 1)
    write_npz(root / "cifar10" / "test.npz", 20, 32, 10, 2)
    write_npz(root / "cifar100" / "test.npz", 7, 32, 100, 3)
    write_npz(root / "svhn_cropped" / "test.npz", 9, 32, 10, 4)
    cfg = resolve(
        {
            "data": {"dataset": "cifar10", "data_dir": str(root)},
            "eval": {"corrupted": False, "fewshot": False},
        }
    )
    s = load_suite(cfg)
    assert s.num_classes == 10
    assert (len(s.train), len(s.val), len(s.test)) == (98, 2, 20)  # 2% validation (App. A.3)
    assert s.ood_near.shape == (7, 16, 16, 3) and s.ood_far.shape == (9, 16, 16, 3)
    # a corrupted suite that is asked for but absent names the corrupted dataset
    cfg = override(cfg, {"eval": {"corrupted": True}})
    with pytest.raises(DatasetNotFoundError, match="cifar10_corrupted"):
        load_suite(cfg)


def test_upstream_of_demo_and_of_a_local_dataset(tmp_path):
    from e3lib.config import upstream_config

    data, classes = load_upstream(upstream_config(resolve({})))
    assert classes == 20 and len(data) == 1796
    data, _ = load_upstream(upstream_config(resolve({"upstream": {"renderings": 2}})))
    assert len(data) == 2 * 1796
    write_npz(tmp_path / "imagenet21k" / "train.npz", 12, 16, 6, 5)
    ucfg = upstream_config(
        resolve({"upstream": {"dataset": "imagenet21k"}, "data": {"data_dir": str(tmp_path)}})
    )
    data, classes = load_upstream(ucfg)
    assert classes == 6 and len(data) == 12
