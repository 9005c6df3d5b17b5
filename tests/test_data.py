"""Data layer: the embedded digits builder, real MNIST, batching, augmentation, conversions, errors."""

import pathlib
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxcnn import data
from jaxcnn.errors import DataError
from jaxcnn.spec import DataConfig

# the class counts of ../shared/data/README.md (the raw MNIST files)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A fresh TFDS data_dir with the embedded digits prepared in it (a few seconds)."""
    path = tmp_path_factory.mktemp("tfds")
    data.prepare_dataset("digits", data_dir=str(path))
    return str(path)


@pytest.fixture(scope="module")
def digits(digits_dir):
    return data.load_dataset(DataConfig(data_dir=digits_dir))


def _sklearn_digits():
    from sklearn import datasets

    return datasets.load_digits()


# --------------------------------------------------------------------------- embedded digits


def test_digits_is_our_tfds_builder(digits_dir):
    builder = data.catalog._tfds().builder("digits", data_dir=digits_dir)
    assert type(builder).__module__ == "jaxcnn.data.catalog"
    assert data.catalog._is_prepared(builder)
    assert builder.info.splits["train"].num_examples == 1500
    assert builder.info.splits["test"].num_examples == 297
    assert data.dataset_info("digits", data_dir=digits_dir) == (
        10,
        tuple(str(d) for d in range(10)),
        (8, 8, 1),
    )


def test_digits_dataset(digits):
    sk = _sklearn_digits()
    assert (digits.num_classes, digits.image_shape) == (10, (8, 8, 1))
    assert digits.class_names == tuple("0123456789")
    sizes = [s.num_examples for s in (digits.train, digits.val, digits.test)]
    assert sizes == [1350, 150, 297]  # val = last 10% of the first 1,500
    assert sum(sizes) == 1797
    labels = np.concatenate(
        [digits.train.labels, digits.val.labels, digits.test.labels]
    )
    np.testing.assert_array_equal(
        np.bincount(labels, minlength=10), np.bincount(sk.target)
    )
    np.testing.assert_array_equal(
        np.bincount(digits.test.labels), np.bincount(sk.target[1500:])
    )
    for split in (digits.train, digits.val, digits.test):
        assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
        assert split.images.min() == 0.0 and split.images.max() == 1.0
    # Pixels are round(v * 255 / 16) / 255 of sklearn's 0..16 values.
    test_pixels = np.sort(digits.test.images.reshape(297, -1).sum(axis=1))
    expected = np.round(sk.images[1500:] * 255 / 16).reshape(297, -1).sum(axis=1) / 255
    np.testing.assert_allclose(test_pixels, np.sort(expected), rtol=1e-5)


def test_digits_standardised_with_train_stats(digits, digits_dir):
    ds = data.load_dataset(DataConfig(data_dir=digits_dir, standardize=True))
    raw = digits.train.images
    np.testing.assert_allclose(ds.mean, raw.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ds.std, raw.std(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ds.train.images.mean(axis=(0, 1, 2)), [0.0], atol=1e-5)
    np.testing.assert_allclose(ds.train.images.std(axis=(0, 1, 2)), [1.0], atol=1e-4)
    np.testing.assert_allclose(
        ds.test.images, (digits.test.images - ds.mean) / ds.std, atol=1e-5
    )
    assert any("standardised" in note for note in ds.notes)


def test_digits_split_options(digits_dir):
    ds = data.load_dataset(
        DataConfig(data_dir=digits_dir, val_fraction=0.2, train_examples=100),
        input_shape=(12, 12, 3),
    )
    assert (ds.train.num_examples, ds.val.num_examples, ds.test.num_examples) == (
        100,
        300,
        297,
    )
    assert ds.train.images.shape == (100, 12, 12, 3) and ds.image_shape == (12, 12, 3)
    assert (
        "grayscale->RGB" in ds.notes and "resized 8x8 -> 12x12 (bilinear)" in ds.notes
    )
    ds = data.load_dataset(DataConfig(data_dir=digits_dir, val_split="test"))
    assert (ds.train.num_examples, ds.val.num_examples) == (1500, 297)
    with pytest.raises(DataError, match="val_split='validation'.*train, test"):
        data.load_dataset(DataConfig(data_dir=digits_dir, val_split="validation"))


def test_stream_split_matches_resident(digits, digits_dir):
    ds = data.load_dataset(
        DataConfig(data_dir=digits_dir, device_limit_mb=0, standardize=True)
    )
    assert isinstance(ds.train, data.StreamSplit) and ds.train.num_examples == 1350
    assert any("streaming" in note for note in ds.notes)
    np.testing.assert_allclose(
        ds.mean, digits.train.images.mean(axis=(0, 1, 2)), rtol=1e-5
    )
    batches = list(ds.test.batches(64))
    assert len(batches) == 5 and all(b.images.shape == (64, 8, 8, 1) for b in batches)
    mask = np.concatenate([b.mask for b in batches])
    assert mask.sum() == 297 and mask[297:].sum() == 0
    labels = np.concatenate([b.labels for b in batches])[:297]
    np.testing.assert_array_equal(labels, digits.test.labels)  # same unshuffled order
    images = np.concatenate([b.images for b in batches])[:297]
    np.testing.assert_allclose(
        images, (digits.test.images - ds.mean) / ds.std, atol=1e-5
    )

    def order(epoch):
        return np.concatenate(
            [b.labels for b in ds.train.batches(500, seed=3, epoch=epoch, shuffle=True)]
        )

    first = order(0)
    np.testing.assert_array_equal(first, order(0))
    assert not np.array_equal(first, order(1))
    np.testing.assert_array_equal(np.sort(first[:1350]), np.sort(digits.train.labels))
    dropped = list(ds.train.batches(500, drop_remainder=True))
    assert len(dropped) == 2 and all(b.mask.sum() == 500 for b in dropped)


# --------------------------------------------------------------------------- real MNIST


def test_mnist_from_raw_files(tfds_dir):
    ds = data.load_dataset(
        DataConfig(dataset="mnist", data_dir=str(tfds_dir), val_fraction=0.1)
    )
    assert (ds.train.num_examples, ds.val.num_examples, ds.test.num_examples) == (
        54000,
        6000,
        10000,
    )
    assert ds.image_shape == (28, 28, 1) and ds.class_names == tuple("0123456789")
    counts = np.bincount(np.concatenate([ds.train.labels, ds.val.labels]), minlength=10)
    np.testing.assert_array_equal(counts, MNIST_TRAIN_COUNTS)
    np.testing.assert_array_equal(
        np.bincount(ds.test.labels, minlength=10), MNIST_TEST_COUNTS
    )
    assert ds.train.images.dtype == np.float32 and ds.train.images.shape == (
        54000,
        28,
        28,
        1,
    )
    assert ds.train.images.min() == 0.0 and ds.train.images.max() == 1.0
    assert 0.12 < ds.train.images.mean() < 0.14  # MNIST's well-known mean 0.1307


@pytest.mark.slow
def test_mnist_streamed_and_converted(tfds_dir):
    config = DataConfig(dataset="mnist", data_dir=str(tfds_dir), device_limit_mb=1)
    ds = data.load_dataset(config, input_shape=(32, 32, 3))
    assert isinstance(ds.test, data.StreamSplit)
    labels, seen = [], 0
    for batch in ds.test.batches(1024):
        assert batch.images.shape == (1024, 32, 32, 3)
        np.testing.assert_array_equal(batch.images[..., 0], batch.images[..., 2])
        labels.append(batch.labels[batch.mask > 0])
        seen += int(batch.mask.sum())
    assert seen == 10000
    np.testing.assert_array_equal(
        np.bincount(np.concatenate(labels)), MNIST_TEST_COUNTS
    )


def test_fashion_mnist_is_not_mnist(tfds_dir):
    # Both use the same raw file names, which a shared TFDS extraction folder mixes up.
    builder = data.catalog._tfds().builder("fashion_mnist", data_dir=str(tfds_dir))
    images, labels = data.catalog._read_split(builder, "test", ("image", "label"))
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
    assert (
        0.27 < images.mean() / 255 < 0.30
    )  # Fashion-MNIST's mean 0.286; MNIST's is 0.13
    assert (
        data.dataset_info("fashion_mnist", data_dir=str(tfds_dir))[1][0]
        == "T-shirt/top"
    )


# --------------------------------------------------------------------------- batching and order


def _toy_split(n=23):
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones(
        (1, 2, 2, 1), np.float32
    )
    return data.Split(images, np.arange(n, dtype=np.int32))


def test_batches_cover_every_example_once_with_mask():
    split = _toy_split()
    batches = list(split.batches(7))
    assert len(batches) == 4
    assert all(
        b.images.shape == (7, 2, 2, 1) and b.mask.dtype == np.float32 for b in batches
    )
    mask = np.concatenate([b.mask for b in batches])
    np.testing.assert_array_equal(mask, [1.0] * 23 + [0.0] * 5)
    labels = np.concatenate([b.labels for b in batches])
    np.testing.assert_array_equal(labels[mask > 0], np.arange(23))
    np.testing.assert_array_equal(batches[-1].images[2:], 0.0)
    dropped = list(split.batches(7, drop_remainder=True))
    assert len(dropped) == 3 and all(b.mask.sum() == 7 for b in dropped)


def test_shuffle_order_is_epoch_permutation():
    split = _toy_split()

    def order(seed, epoch):
        batches = split.batches(5, seed=seed, epoch=epoch, shuffle=True)
        return np.concatenate([b.labels[b.mask > 0] for b in batches])

    np.testing.assert_array_equal(order(0, 0), order(0, 0))
    np.testing.assert_array_equal(np.sort(order(0, 1)), np.arange(23))
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))
    np.testing.assert_array_equal(
        order(4, 2), np.asarray(data.epoch_permutation(4, 2, 23))
    )


def test_epoch_permutation_derivation():
    perm = data.epoch_permutation(7, 3, 100)
    assert perm.dtype == np.int32 and perm.shape == (100,)
    key = jax.random.fold_in(jax.random.key(7), 3)
    np.testing.assert_array_equal(perm, jax.random.permutation(key, 100))


# --------------------------------------------------------------------------- augmentation


def test_augment_flip_is_exact_mirror(key):
    images = jax.random.uniform(key, (64, 5, 6, 3))
    out = jax.jit(data.augment, static_argnames=("crop", "flip"))(
        images, key, crop=0, flip=True
    )
    same = np.all(out == images, axis=(1, 2, 3))
    mirrored = np.all(out == images[:, :, ::-1, :], axis=(1, 2, 3))
    assert np.all(same | mirrored) and same.any() and mirrored.any()


def test_augment_crop_is_a_shifted_window(key):
    images = (
        jax.random.uniform(key, (32, 6, 6, 2)) + 1.0
    )  # nonzero, so padding is visible
    out = np.asarray(data.augment(images, jax.random.key(1), crop=2, flip=False))
    assert out.shape == images.shape
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for i in range(32):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(out[i], padded[i, dy : dy + 6, dx : dx + 6])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets are random per image
    assert data.augment(images, key, crop=0, flip=False) is images


# --------------------------------------------------------------------------- conversions


def test_convert_images_resize_and_channels():
    gray = np.full((2, 28, 28, 1), 128, np.uint8)
    out, notes = data.convert_images(gray, (32, 32, 3))
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 128 / 255, rtol=1e-6)
    assert notes == ("grayscale->RGB", "resized 28x28 -> 32x32 (bilinear)")

    red = np.zeros((1, 4, 4, 4), np.uint8)
    red[..., 0] = 255
    red[..., 3] = 7  # alpha is dropped
    out, notes = data.convert_images(red, (4, 4, 1))
    np.testing.assert_allclose(
        out, 0.2989, atol=1e-4
    )  # ITU-R 601 luminance of pure red
    assert notes == ("dropped the alpha channel", "RGB->grayscale (luminance)")

    checker = np.indices((8, 8)).sum(axis=0) % 2  # shrinking averages it (antialiased)
    out, _ = data.convert_images(
        checker[None, :, :, None].astype(np.float32), (2, 2, 1)
    )
    np.testing.assert_allclose(out, 0.5, atol=0.01)  # point sampling would give 0 or 1

    same, notes = data.convert_images(np.full((1, 3, 3, 3), 255, np.uint8), (3, 3, 3))
    assert notes == () and np.all(same == 1.0)


def test_impossible_channel_conversion():
    with pytest.raises(DataError, match=r"\(6, 6, 4\).*\(6, 6, 2\)"):
        data.convert_images(np.zeros((1, 6, 6, 4), np.uint8), (6, 6, 2))
    with pytest.raises(DataError, match="height, width, channels"):
        data.convert_images(np.zeros((6, 6, 3), np.uint8), (6, 6, 3))


def test_impossible_model_input_shape(digits_dir):
    with pytest.raises(DataError, match=r"\(8, 8, 1\).*\(8, 8, 2\)"):
        data.load_dataset(DataConfig(data_dir=digits_dir), input_shape=(8, 8, 2))


# --------------------------------------------------------------------------- errors and metadata


def test_unknown_dataset_lists_close_matches():
    with pytest.raises(DataError, match="unknown dataset 'mnsit'.*mnist"):
        data.prepare_dataset("mnsit")
    with pytest.raises(DataError, match="fashion_mnist"):
        data.dataset_info("fashion_mnst")


def test_not_an_image_classification_dataset(tmp_path):
    with pytest.raises(DataError, match="not an image classification dataset"):
        data.prepare_dataset("wine_quality", data_dir=str(tmp_path))


def test_metadata_without_preparing(tmp_path):
    assert data.dataset_info("cifar100", data_dir=str(tmp_path))[::2] == (
        100,
        (32, 32, 3),
    )
    num_classes, names, shape = data.dataset_info("mnist", data_dir=str(tmp_path))
    assert (num_classes, names, shape) == (10, tuple("0123456789"), (28, 28, 1))


def _online(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_not_prepared_without_network_fails_fast(tmp_path, monkeypatch):
    if _online(
        "www.cs.toronto.edu"
    ):  # make the offline case real on a connected machine

        def no_network(*args, **kwargs):
            raise OSError("network disabled by the test")

        monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        data.prepare_dataset("cifar10", data_dir=str(tmp_path))
    assert time.monotonic() - start < 20
    message = str(error.value)
    assert "--data-dir" in message and "--manual-dir" in message
    assert "cifar-10-binary.tar.gz" in message


def test_manual_dir_with_wrong_or_missing_files(tmp_path, shared_data):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(DataError, match="not a directory.*train-images-idx3-ubyte.gz"):
        data.prepare_dataset(
            "mnist", data_dir=data_dir, manual_dir=str(tmp_path / "nowhere")
        )
    with pytest.raises(
        DataError, match="train-images-idx3-ubyte.gz has 26421880 bytes"
    ):
        data.prepare_dataset(
            "mnist", data_dir=data_dir, manual_dir=str(shared_data / "fashion_mnist")
        )
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / "mnist" / name, raw / name)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is missing"):
        data.prepare_dataset("mnist", data_dir=data_dir, manual_dir=str(raw))
    shutil.copy(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz", raw)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(
        bytes(4542)
    )  # right size, wrong bytes
    with pytest.raises(DataError, match="sha256.*t10k-labels-idx1-ubyte.gz"):
        data.prepare_dataset("mnist", data_dir=data_dir, manual_dir=str(raw))


def test_tensorflow_sees_no_gpu_and_stays_lazy():
    assert data.images.tensorflow().config.get_visible_devices("GPU") == []
    code = (
        "import sys, jaxcnn.data; assert 'tensorflow' not in sys.modules, 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_parallel_prepare_builds_once(tmp_path):
    code = f"from jaxcnn import data; data.prepare_dataset('digits', data_dir={str(tmp_path)!r})"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    builder = data.catalog._tfds().builder("digits", data_dir=str(tmp_path))
    assert (
        data.catalog._is_prepared(builder)
        and builder.info.splits["train"].num_examples == 1500
    )


def test_shared_data_dir_is_the_env_folder_else_beside_the_checkout(
    monkeypatch, tmp_path
):
    from jaxcnn.data.catalog import shared_data_dir

    monkeypatch.setenv("JAXCNN_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.delenv("JAXCNN_SHARED_DATA")
    checkout = pathlib.Path(data.__file__).resolve().parents[2]
    assert shared_data_dir() == checkout.parent / "shared" / "data"
