"""Readers of Hugging Face ``save_to_disk`` directories and TFDS array_record builds
(``e3lib.data.loaders.load_split``), on tiny sets the tests write with each library's own
writer (``Dataset.save_to_disk``; a ``tfds.core.GeneratorBasedBuilder`` with
``file_format='array_record'``, no TensorFlow)."""

from __future__ import annotations

import builtins
import io

import numpy as np
import pytest

from e3lib.data.loaders import (
    DatasetNotFoundError,
    linear_resize_weights,
    load_split,
    resize_images,
)


def constant_image(value: int, size: int, channels: int = 3) -> np.ndarray:
    shape = (size, size) if channels == 1 else (size, size, channels)
    return np.full(shape, value, np.uint8)


# ---------------------------------------------------------------- resizing


def test_linear_resize_hand_values():
    # 2 → 4 pixels, corners aligned: positions 0, 1/3, 2/3, 1 of the row [0, 30]
    # give 0, 10, 20, 30; 3 → 2: positions 0 and 2 (the end pixels).
    np.testing.assert_allclose(
        linear_resize_weights(2, 4), [[1, 0], [2 / 3, 1 / 3], [1 / 3, 2 / 3], [0, 1]], atol=1e-7
    )
    np.testing.assert_allclose(linear_resize_weights(3, 2), [[1, 0, 0], [0, 0, 1]])
    row = np.array([0, 30], np.uint8)[None, None, :, None]  # (1, 1, 2, 1)
    image = np.repeat(np.repeat(row, 2, axis=1), 3, axis=3)  # (1, 2, 2, 3)
    out = resize_images(image, 4)
    assert out.shape == (1, 4, 4, 3) and out.dtype == np.uint8
    assert out[0, :, :, 1].tolist() == [[0, 10, 20, 30]] * 4


@pytest.mark.parametrize("stored, size", [(32, 16), (32, 224), (7, 5)])
def test_resize_keeps_every_edge_pixel(stored, size):
    # A constant image stays constant: rows of the weights sum to 1 and no sample falls
    # outside the image (scipy's zoom with its default constant mode put a fraction of the
    # last row/column at 0 when p = i·(n−1)/(S−1) rounded just above n − 1).
    from scipy import ndimage

    image = np.full((2, stored, stored, 3), 255, np.uint8)
    assert (resize_images(image, size) == 255).all()
    # and it is scipy's linear zoom with edge clamping, to float32 rounding (±1 at .5)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, stored, stored + 3, 3)).astype(np.uint8)
    zoomed = ndimage.zoom(
        image.astype(np.float64),
        (1, size / stored, size / (stored + 3), 1),
        order=1,
        mode="nearest",
    )
    expected = np.clip(np.round(zoomed), 0, 255)
    assert np.abs(resize_images(image, size).astype(int) - expected).max() <= 1


# ---------------------------------------------------------------- Hugging Face datasets


def test_hf_cifar10_layout_img_and_label(tmp_path):
    import datasets

    # CIFAR-10 on the Hub: columns "img" (Image) and "label" (ClassLabel).
    # Image i is constant 20*i, label i % 3; a constant image stays constant under
    # bilinear resizing, so after 8 → 16 every pixel of image i is still 20*i.
    n = 5
    ds = datasets.Dataset.from_dict(
        {"img": [constant_image(20 * i, 8) for i in range(n)], "label": [i % 3 for i in range(n)]},
        features=datasets.Features(
            {"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)}
        ),
    )
    ds.save_to_disk(str(tmp_path / "cifar10" / "test"))
    images, labels = load_split("cifar10", "test", str(tmp_path), 16)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.tolist() == [0, 1, 2, 0, 1]
    assert [int(images[i].min()) for i in range(n)] == [0, 20, 40, 60, 80]
    assert [int(images[i].max()) for i in range(n)] == [0, 20, 40, 60, 80]


def test_hf_images_round_trip_exactly_at_their_own_size(tmp_path):
    import datasets

    # PNG is lossless and no resize happens when S equals the stored size: bytes in = out.
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    ds = datasets.Dataset.from_dict(
        {"image": list(stored), "label": [2, 0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    ds.save_to_disk(str(tmp_path / "pets" / "train"))
    images, labels = load_split("pets", "train", str(tmp_path), 8)
    np.testing.assert_array_equal(images, stored)
    assert labels.tolist() == [2, 0, 1]


def test_hf_cifar100_datasetdict_fine_label_grey_and_mixed_sizes(tmp_path):
    import datasets

    # CIFAR-100 on the Hub: "img", "fine_label", "coarse_label"; the fine label is the
    # class. A DatasetDict saved to ROOT/NAME has one save_to_disk dir per split.
    # Images here are greyscale ("L") and of two sizes (as ImageNet's are): each is
    # resized to 12×12 and made RGB (grey value repeated over the 3 channels).
    from PIL import Image

    def split(n, offset):
        return datasets.Dataset.from_dict(
            {
                "img": [
                    Image.fromarray(constant_image(offset + i, 6 + 4 * (i % 2), channels=1))
                    for i in range(n)
                ],
                "fine_label": [10 * i + 7 for i in range(n)],
                "coarse_label": [i for i in range(n)],
            },
            features=datasets.Features(
                {
                    "img": datasets.Image(),
                    "fine_label": datasets.Value("int64"),
                    "coarse_label": datasets.Value("int64"),
                }
            ),
        )

    datasets.DatasetDict({"train": split(4, 100), "test": split(2, 200)}).save_to_disk(
        str(tmp_path / "cifar100")
    )
    images, labels = load_split("cifar100", "train", str(tmp_path), 12)
    assert images.shape == (4, 12, 12, 3) and images.dtype == np.uint8
    assert labels.tolist() == [7, 17, 27, 37]
    assert [np.unique(im).tolist() for im in images] == [[100], [101], [102], [103]]
    images, labels = load_split("cifar100", "test", str(tmp_path), 12)
    assert labels.tolist() == [7, 17] and images.shape == (2, 12, 12, 3)


def test_hf_without_a_label_column_names_the_directory_and_columns(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": [constant_image(1, 4)], "caption": ["x"]}, features=features
    )
    path = tmp_path / "svhn_cropped" / "test"
    ds.save_to_disk(str(path))
    with pytest.raises(ValueError) as err:
        load_split("svhn_cropped", "test", str(tmp_path), 4)
    msg = str(err.value)
    assert str(path) in msg and "'caption'" in msg and "fine_label" in msg
    # OOD sets are read without labels
    images, labels = load_split("svhn_cropped", "test", str(tmp_path), 4, need_labels=False)
    assert images.shape == (1, 4, 4, 3) and labels is None


def test_missing_dataset_names_it_and_every_path_looked_at(tmp_path, monkeypatch):
    monkeypatch.delenv("E3_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_split("cifar10", "test", str(tmp_path), 16)
    msg = str(err.value)
    assert "'cifar10'" in msg and "'test'" in msg
    base = tmp_path / "cifar10"
    for path in (
        base / "test.npz",
        f"{base / 'test'}/",
        base / "*" / "cifar10-test.array_record-*",
        base / "test" / "*" / "cifar10-test.array_record-*",
        base / "*" / "*" / "cifar10-test.array_record-*",
        tmp_path / "home" / "tensorflow_datasets" / "cifar10" / "test.npz",
    ):
        assert str(path) in msg


def test_missing_packages_are_named_with_how_to_install(tmp_path, monkeypatch):
    # A save_to_disk dir / an array_record build exist, but the package is not importable.
    (tmp_path / "cifar10" / "test").mkdir(parents=True)
    (tmp_path / "cifar10" / "test" / "dataset_info.json").write_text("{}")
    (tmp_path / "dtd" / "3.0.1").mkdir(parents=True)
    (tmp_path / "dtd" / "3.0.1" / "dtd-train.array_record-00000-of-00001").write_bytes(b"")
    real_import = builtins.__import__

    def no_hf_no_tfds(name, *args, **kwargs):
        if name.split(".")[0] in ("datasets", "tensorflow_datasets"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hf_no_tfds)
    with pytest.raises(ImportError) as err:
        load_split("cifar10", "test", str(tmp_path), 8)
    assert str(tmp_path / "cifar10" / "test") in str(err.value)
    assert "pip install datasets" in str(err.value)
    with pytest.raises(ImportError) as err:
        load_split("dtd", "train", str(tmp_path), 8)
    assert str(tmp_path / "dtd" / "3.0.1") in str(err.value)
    assert "pip install tensorflow_datasets array_record" in str(err.value)


# ---------------------------------------------------------------- TFDS array_record


def png_bytes(image: np.ndarray) -> bytes:
    # TFDS's own numpy → PNG encoder runs through TensorFlow; the stored bytes are the same
    # kind (PNG), written with PIL, as in TFDS's CIFAR builds.
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def build_tfds(
    data_dir, dataset_name, splits, config=None, image_size=8, labels=True, version="1.0.0"
):
    """Prepare a tiny array_record build NAME[/CONFIG]/VERSION with TFDS's builder API.

    ``splits``: {split: n}; example i of a split is constant 30*(i % 3) + i // 3 with
    label i % 3, so the label of every read image is ``value // 30``.
    """
    import tensorflow_datasets as tfds

    features = {"image": tfds.features.Image(shape=(image_size, image_size, 3))}
    if labels:
        features["label"] = tfds.features.ClassLabel(num_classes=3)

    class TinyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = dataset_name
        VERSION = tfds.core.Version(version)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config)] if config else []

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(n) for split, n in splits.items()}

        def _generate_examples(self, n):
            for i in range(n):
                example = {"image": png_bytes(constant_image(30 * (i % 3) + i // 3, image_size))}
                if labels:
                    example["label"] = i % 3
                yield i, example

    builder = TinyBuilder(
        data_dir=str(data_dir), file_format="array_record", **({"config": config} if config else {})
    )
    builder.download_and_prepare()
    return builder


def test_tfds_array_record_build_is_read_without_tensorflow(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("tensorflow") is None  # the point of this reader
    build_tfds(tmp_path, "cifar10", {"train": 7, "test": 4})
    assert (tmp_path / "cifar10" / "1.0.0" / "cifar10-test.array_record-00000-of-00001").is_file()
    assert (tmp_path / "cifar10" / "1.0.0" / "features.json").is_file()
    images, labels = load_split("cifar10", "train", str(tmp_path), 16)
    assert images.shape == (7, 16, 16, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    # TFDS stores examples in a hashed order; the pairing image ↔ label must survive it.
    values = images.reshape(7, -1)
    assert (values.min(1) == values.max(1)).all()  # constant images stay constant
    assert (values[:, 0] // 30).tolist() == labels.tolist()
    # the 7 examples: values 0,30,60 (i=0..2), 1,31,61 (i=3..5), 2 (i=6)
    assert sorted(values[:, 0].tolist()) == [0, 1, 2, 30, 31, 60, 61]
    images, labels = load_split("cifar10", "test", str(tmp_path), 8)
    assert images.shape == (4, 8, 8, 3) and sorted(labels.tolist()) == [0, 0, 1, 2]


def test_tfds_corrupted_config_layout_and_unlabelled_ood(tmp_path):
    # TFDS's cifar10_corrupted: one builder config per corruption and severity, each with
    # a "test" split; the toolkit names these splits "{type}_{severity}".
    build_tfds(tmp_path, "cifar10_corrupted", {"test": 5}, config="gaussian_noise_3")
    assert (tmp_path / "cifar10_corrupted" / "gaussian_noise_3" / "1.0.0").is_dir()
    images, labels = load_split("cifar10_corrupted", "gaussian_noise_3", str(tmp_path), 8)
    assert images.shape == (5, 8, 8, 3) and sorted(labels.tolist()) == [0, 0, 1, 1, 2]
    with pytest.raises(DatasetNotFoundError):
        load_split("cifar10_corrupted", "gaussian_noise_4", str(tmp_path), 8)
    # an OOD set without a label feature
    build_tfds(tmp_path, "svhn_cropped", {"test": 2}, labels=False)
    images, labels = load_split("svhn_cropped", "test", str(tmp_path), 8, need_labels=False)
    assert images.shape == (2, 8, 8, 3) and labels is None
    with pytest.raises(ValueError, match="needs features 'image' and 'label'"):
        load_split("svhn_cropped", "test", str(tmp_path), 8)


def test_tfds_newest_version_is_read_and_ambiguous_configs_are_refused(tmp_path):
    # versions compare as numbers: 10.0.0 is newer than 9.0.0 (3 vs 5 examples)
    build_tfds(tmp_path, "dtd", {"train": 3}, version="10.0.0")
    build_tfds(tmp_path, "dtd", {"train": 5}, version="9.0.0")
    images, labels = load_split("dtd", "train", str(tmp_path), 8)
    assert images.shape == (3, 8, 8, 3)
    # a split present in two builder configs: which one is meant is not guessed
    build_tfds(tmp_path, "imagenet_v2", {"test": 2}, config="matched-frequency")
    build_tfds(tmp_path, "imagenet_v2", {"test": 2}, config="threshold-0.7")
    with pytest.raises(
        ValueError,
        match=r"several builder configs \['matched-frequency', "
        r"'threshold-0.7'\]",
    ):
        load_split("imagenet_v2", "test", str(tmp_path), 8)


def test_npz_folder_and_hf_give_the_same_pixels(tmp_path):
    import datasets
    from PIL import Image

    # the same 3 random 10×10 images, one per class, in three formats → one resize
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (3, 10, 10, 3)).astype(np.uint8)
    (tmp_path / "a").mkdir()
    np.savez(tmp_path / "a" / "train.npz", images=stored, labels=np.arange(3))
    for c in range(3):
        (tmp_path / "b" / "train" / f"class{c}").mkdir(parents=True)
        Image.fromarray(stored[c]).save(tmp_path / "b" / "train" / f"class{c}" / "0.png")
    datasets.Dataset.from_dict(
        {"image": list(stored), "label": [0, 1, 2]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    ).save_to_disk(str(tmp_path / "c" / "train"))
    results = [load_split(name, "train", str(tmp_path), 16) for name in "abc"]
    for images, labels in results:
        assert labels.tolist() == [0, 1, 2]
        np.testing.assert_array_equal(images, results[0][0])
