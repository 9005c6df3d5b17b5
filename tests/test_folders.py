"""Folders of image files as datasets: layouts, splits, bad data, image modes, cache, runs."""

import gzip
import json
import logging
import os
import pathlib
import re
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxcnn import data, sweep, train
from jaxcnn.data import folders
from jaxcnn.errors import DataError
from jaxcnn.spec import DataConfig, RunConfig

FASHION = (
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
)


def read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file (the raw MNIST format) as a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_pngs(root: pathlib.Path, images, labels, names, prefix="") -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.squeeze(image)).save(folder / f"{prefix}{i:05d}.png")


def png(path: pathlib.Path, pixels, mode=None) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels), mode).save(path)
    return path


def bomb_png(path: pathlib.Path, side: int = 20000) -> pathlib.Path:
    """A PNG whose header claims side x side pixels (PIL checks the size on open)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def folder_config(root, tmp_path, **fields) -> DataConfig:
    return DataConfig(dataset=str(root), data_dir=str(tmp_path / "cache"), **fields)


def classes_of(root: pathlib.Path, sizes: dict[str, int], shape=(6, 5)) -> pathlib.Path:
    """root/<class>/<i>.png with sizes[class] random gray images."""
    rng = np.random.default_rng(len(sizes))
    for name, n in sizes.items():
        for i in range(n):
            png(root / name / f"{i:03d}.png", rng.integers(0, 256, shape, np.uint8))
    return root


@pytest.fixture(scope="session")
def mnist_folder(shared_data, tmp_path_factory) -> pathlib.Path:
    """2,000 real images as PNG files: 100 per MNIST digit and per Fashion-MNIST class."""
    root = tmp_path_factory.mktemp("folder") / "mnist_fashion"
    for name, names in (
        ("mnist", [f"digit-{d}" for d in range(10)]),
        ("fashion_mnist", FASHION),
    ):
        x = read_idx(shared_data / name / "train-images-idx3-ubyte.gz")
        y = read_idx(shared_data / name / "train-labels-idx1-ubyte.gz")
        pick = np.concatenate([np.flatnonzero(y == c)[:100] for c in range(10)])
        write_pngs(root, x[pick], y[pick], names, prefix=name)
    return root


@pytest.fixture(scope="session")
def folder_run(mnist_folder, tmp_path_factory) -> pathlib.Path:
    """keras_mnist trained on mnist_folder (20 classes) for 3 epochs."""
    workdir = tmp_path_factory.mktemp("folder_run") / "run"
    config = RunConfig().with_overrides(
        {
            "model.name": "keras_mnist",
            "data.dataset": str(mnist_folder),
            "data.data_dir": str(workdir.parent / "cache"),
            "train.epochs": 3,
            "train.batch_size": 32,
        }
    )
    train.fit(config, workdir, quiet=True)
    return workdir


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> pathlib.Path:
    """scikit-learn's 1,797 8x8 digits as PNG files in ten class folders."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits") / "digits"
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    write_pngs(root, pixels, digits.target, [str(d) for d in range(10)])
    return root


def digits_run(folder, tmp_path, **overrides) -> RunConfig:
    return RunConfig().with_overrides(
        {
            "data.dataset": str(folder),
            "data.data_dir": str(tmp_path / "cache"),
            "train.epochs": 1,
            **overrides,
        }
    )


# --------------------------------------------------------------------------- training on folders
def test_training_on_a_folder_records_its_classes(folder_run, mnist_folder):
    summary = json.loads((folder_run / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.5  # 20 classes: chance is 0.05
    record = json.loads((folder_run / "config.json").read_text())["dataset"]
    names = sorted(p.name for p in mnist_folder.iterdir())
    assert record["class_names"] == names and record["num_classes"] == 20
    assert (
        record["train_examples"],
        record["val_examples"],
        record["test_examples"],
    ) == (
        1600,
        200,
        200,
    )
    assert len(record["fingerprint"]) == 64


def test_eval_splits_of_a_folder_run(folder_run):
    record = json.loads((folder_run / "config.json").read_text())["dataset"]
    for split in ("val", "test"):
        report = train.evaluate(folder_run, split)
        assert report["examples"] == record[f"{split}_examples"]
        assert report["class_names"] == record["class_names"]
    summary = json.loads((folder_run / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"])
    with pytest.raises(DataError, match="no split folders"):
        train.evaluate(folder_run, "extra")


def test_predict_names_classes_and_reports_bad_files_one_by_one(
    folder_run, mnist_folder, tmp_path
):
    files = [mnist_folder / "digit-3" / f"mnist{i:05d}.png" for i in range(300, 310)]
    bomb = bomb_png(tmp_path / "bomb.png")
    out = train.predict(folder_run, [*files, bomb])
    assert "decompression" in out[-1]["error"] and "top" not in out[-1]
    names = [r["top"][0]["name"] for r in out[:-1]]
    assert names.count("digit-3") >= 6


def test_sweep_on_a_folder(digits_folder, tmp_path):
    base = digits_run(digits_folder, tmp_path, **{"train.epochs": 2})
    s = sweep.Sweep(
        name="f", base=base, points=({"optim.lr": 3e-3}, {"optim.lr": 1e-2})
    )
    rows = sweep.run_sweep(s, tmp_path / "sweep", quiet=True)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["test_accuracy"] > 0.5 for r in rows)


def test_resume_notices_changed_files(digits_folder, tmp_path):
    config = digits_run(digits_folder, tmp_path)
    train.fit(config, tmp_path / "run", quiet=True)
    resumed = train.fit(
        config.with_overrides({"train.epochs": 2}), tmp_path / "run", quiet=True
    )
    assert resumed.epochs == 2
    changed = digits_folder / "0" / "00000.png"
    original, stat = changed.read_bytes(), changed.stat()
    try:
        png(changed, np.zeros((8, 8), np.uint8))
        with pytest.raises(DataError, match="changed since this run started"):
            train.fit(
                config.with_overrides({"train.epochs": 3}), tmp_path / "run", quiet=True
            )
    finally:
        changed.write_bytes(original)
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.slow
def test_folder_and_tfds_of_the_same_images_train_alike(tfds_dir, tmp_path):
    """keras_mnist on 10,000 MNIST images as PNG files and as TFDS: same accuracy."""
    builder = data.catalog._tfds().builder("mnist", data_dir=str(tfds_dir))
    root = tmp_path / "mnist"
    names = [str(d) for d in range(10)]
    for split, tfds_split in (("train", "train[:10000]"), ("val", "train[54000:]")):
        x, y = data.catalog._read_split(builder, tfds_split, ("image", "label"))
        write_pngs(root / split, x, y, names)
    x, y = data.catalog._read_split(builder, "test", ("image", "label"))
    write_pngs(root / "test", x, y, names)
    common = {"model.name": "keras_mnist", "train.epochs": 2, "train.batch_size": 64}
    tfds_run = RunConfig().with_overrides(
        {**common, "data.dataset": "mnist", "data.data_dir": str(tfds_dir)}
    )
    tfds_run = tfds_run.with_overrides({"data.train_examples": 10000})
    folder_run = RunConfig().with_overrides(
        {**common, "data.dataset": str(root), "data.data_dir": str(tmp_path / "c")}
    )
    a = train.fit(tfds_run, tmp_path / "tfds", quiet=True)
    b = train.fit(folder_run, tmp_path / "folder", quiet=True)
    assert a.test_accuracy > 0.95
    assert abs(a.test_accuracy - b.test_accuracy) < 0.015


# --------------------------------------------------------------------------- layouts and splits
def test_class_layout_is_sorted_stratified_and_deterministic(tmp_path):
    sizes = {"b": 10, "a": 20, "C": 31}
    root = classes_of(tmp_path / "ds", sizes)
    ds = data.load_dataset(folder_config(root, tmp_path))
    assert ds.class_names == ("C", "a", "b")  # sorted, as Keras and torchvision
    assert ds.image_shape == (6, 5, 1)
    for split in (ds.val, ds.test):
        assert np.bincount(split.labels).tolist() == [3, 2, 1]  # round(n * 0.1)
    assert np.bincount(ds.train.labels).tolist() == [25, 16, 8]
    again = data.load_dataset(folder_config(root, tmp_path))
    np.testing.assert_array_equal(again.val.images, ds.val.images)
    other = data.load_dataset(folder_config(root, tmp_path, split_seed=1))
    assert not np.array_equal(other.val.images, ds.val.images)
    everything = np.concatenate([ds.train.images, ds.val.images, ds.test.images])
    assert len(np.unique(everything.reshape(61, -1), axis=0)) == 61  # disjoint splits


def test_a_class_carves_the_same_whatever_other_classes_exist(tmp_path):
    small = classes_of(tmp_path / "small", {"a": 30, "b": 30})
    shutil.copytree(small, tmp_path / "big")
    big = classes_of(tmp_path / "big", {"c": 30})
    one = data.load_dataset(folder_config(small, tmp_path))
    two = data.load_dataset(folder_config(big, tmp_path))
    np.testing.assert_array_equal(one.test.images, two.test.images[two.test.labels < 2])


def test_split_layout_given_and_carved(tmp_path):
    root = tmp_path / "ds"
    classes_of(root / "train", {"x": 20, "y": 20})
    classes_of(root / "test", {"x": 3, "y": 4})
    ds = data.load_dataset(folder_config(root, tmp_path))
    assert (ds.train.num_examples, ds.val.num_examples, ds.test.num_examples) == (
        36,
        4,
        7,
    )
    assert any("val = 4 images carved" in note for note in ds.notes)
    classes_of(root / "validation", {"x": 2, "y": 2})
    ds = data.load_dataset(folder_config(root, tmp_path))
    assert (ds.train.num_examples, ds.val.num_examples) == (40, 4)
    ds = data.load_dataset(folder_config(root, tmp_path, val_split="test"))
    assert ds.val.num_examples == 7
    with pytest.raises(DataError, match="has split folders test, train, validation"):
        data.load_dataset(folder_config(root, tmp_path, test_split="holdout"))


def test_split_layout_without_test_carves_it(tmp_path):
    root = tmp_path / "ds"
    classes_of(root / "train", {"x": 20, "y": 20})
    ds = data.load_dataset(folder_config(root, tmp_path))
    assert (ds.train.num_examples, ds.val.num_examples, ds.test.num_examples) == (
        32,
        4,
        4,
    )


def test_class_only_in_test_is_an_error(tmp_path):
    root = tmp_path / "ds"
    classes_of(root / "train", {"x": 5, "y": 5})
    classes_of(root / "test", {"x": 2, "z": 2})
    with pytest.raises(DataError, match="classes without a readable train/ image: z"):
        data.load_dataset(folder_config(root, tmp_path))


def test_class_layout_has_no_split_folders_to_name(tmp_path):
    root = classes_of(tmp_path / "ds", {"a": 10, "b": 10})
    with pytest.raises(DataError, match="data.val_split='val'.*no split folders"):
        data.load_dataset(folder_config(root, tmp_path, val_split="val"))


def test_too_few_images_to_carve(tmp_path):
    root = classes_of(tmp_path / "ds", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="the val split is empty"):
        data.load_dataset(folder_config(root, tmp_path))


def test_folder_names_and_tfds_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert folders.is_folder("mine") and folders.is_folder("./nothing")
    assert folders.is_folder("/no/such") and folders.is_folder("~/x")
    assert not folders.is_folder("emnist/balanced") and not folders.is_folder("mnist")
    with pytest.raises(DataError, match="'./nothing' is not a folder"):
        data.load_dataset(DataConfig(dataset="./nothing"))
    with pytest.raises(DataError, match="no folder 'pics/cats'"):
        data.load_dataset(DataConfig(dataset="pics/cats"))


def test_dataset_info_of_a_folder(tmp_path):
    root = classes_of(tmp_path / "ds", {"b": 1, "a": 1})
    assert data.dataset_info(str(root)) == (2, ("a", "b"), (6, 5, 1))


# --------------------------------------------------------------------------- bad data
def _bad_folder(root: pathlib.Path) -> pathlib.Path:
    classes_of(root, {"a": 10, "b": 10})
    full = (root / "a" / "000.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "fake.jpg").write_bytes(b"plain text with an image suffix")
    (root / "c").mkdir()
    (root / "b" / ".DS_Store").write_bytes(b"\0")
    (root / "README.md").write_text("about the data")
    return root


def test_bad_files_are_an_error_naming_each(tmp_path):
    root = _bad_folder(tmp_path / "ds")
    with pytest.raises(DataError) as e:
        data.load_dataset(folder_config(root, tmp_path))
    message = str(e.value)
    for name in ("a/truncated.png", "b/notes.txt", "b/fake.jpg", "c/: empty class"):
        assert name in message
    assert "4 bad files" in message and "data.bad_files='skip'" in message
    assert ".DS_Store" not in message


def test_bad_files_skipped_are_logged_and_counted(tmp_path, caplog):
    root = _bad_folder(tmp_path / "ds")
    with caplog.at_level(logging.WARNING, logger="jaxcnn.data.folders"):
        ds = data.load_dataset(folder_config(root, tmp_path, bad_files="skip"))
    assert ds.class_names == ("a", "b")
    total = ds.train.num_examples + ds.val.num_examples + ds.test.num_examples
    assert total == 20
    logged = " ".join(r.getMessage() for r in caplog.records)
    for name in ("truncated.png", "notes.txt", "fake.jpg"):
        assert name in logged
    notes = " ".join(ds.notes)
    assert "skipped 4 bad files" in notes and "left out classes" in notes
    assert "ignored 1 files outside class folders" in notes
    assert "ignored 1 hidden files and folders" in notes


def test_a_single_class_is_an_error_even_when_skipping(tmp_path):
    root = classes_of(tmp_path / "ds", {"only": 10})
    for bad_files in ("error", "skip"):
        with pytest.raises(DataError, match="at least 2 class folders"):
            data.load_dataset(folder_config(root, tmp_path, bad_files=bad_files))


def test_decompression_bomb_in_a_folder_is_one_bad_file(tmp_path):
    root = classes_of(tmp_path / "ds", {"a": 10, "b": 10})
    bomb_png(root / "a" / "bomb.png")
    with pytest.raises(DataError, match="a/bomb.png: .*decompression"):
        data.load_dataset(folder_config(root, tmp_path))
    ds = data.load_dataset(folder_config(root, tmp_path, bad_files="skip"))
    assert ds.train.num_examples + ds.val.num_examples + ds.test.num_examples == 20


# --------------------------------------------------------------------------- images
def test_16_bit_png_is_scaled_by_its_true_maximum(tmp_path):
    pixels = np.array([[0, 32768, 65535]], np.uint16)
    image, notes = data.read_image(png(tmp_path / "deep.png", pixels))
    assert image.dtype == np.float32 and image.shape == (1, 3, 1)
    np.testing.assert_allclose(image[0, :, 0], [0.0, 32768 / 65535, 1.0])
    assert notes == ("16-bit image (I;16) scaled by 1/65535",)


def test_alpha_only_png_uses_alpha_as_gray(tmp_path):
    la = np.zeros((4, 4, 2), np.uint8)
    la[1:3, 1:3, 1] = 255  # a black glyph drawn with alpha only
    image, notes = data.read_image(png(tmp_path / "glyph.png", la, "LA"))
    assert image.shape == (4, 4, 1) and image[1, 1, 0] == 255 and image[0, 0, 0] == 0
    assert notes == ("alpha used as the gray image (its color is uniform)",)


def test_transparent_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[0, 0, 1] = 200, 100
    rgba[..., 3] = [[255, 128], [0, 255]]
    image, notes = data.read_image(png(tmp_path / "rgba.png", rgba, "RGBA"))
    assert image.shape == (2, 2, 3)
    assert image[0, 1, 0] == 100 and image[1, 0, 0] == 0 and image[1, 1, 0] == 200
    assert notes == ("transparent image composited on black",)
    rgba[..., 3] = 255
    image, notes = data.read_image(png(tmp_path / "opaque.png", rgba, "RGBA"))
    assert notes == () and image[1, 0, 0] == 200


def test_unreadable_images_raise_data_errors_naming_the_file(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(
        DataError, match="bomb.png: cannot read image .*MAX_IMAGE_PIXELS"
    ):
        data.read_image(bomb)
    noise = np.random.default_rng(0).integers(0, 256, (40, 40), np.uint8)
    good = png(tmp_path / "good.png", noise).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.png: cannot read image"):
        data.read_image(tmp_path / "cut.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(DataError, match="text.png: cannot read image .not a PNG, JPEG"):
        data.read_image(tmp_path / "text.png")


def test_mixed_modes_and_sizes_in_one_folder(tmp_path):
    root = classes_of(tmp_path / "ds", {"a": 10, "b": 10}, shape=(8, 8))
    png(root / "a" / "rgb.png", np.full((12, 10, 3), 90, np.uint8))
    png(root / "a" / "deep.png", np.full((8, 8), 65535, np.uint16))
    png(root / "b" / "palette.gif", np.full((8, 8), 7, np.uint8))
    la = np.zeros((8, 8, 2), np.uint8)
    la[2:6, 2:6, 1] = 255
    png(root / "b" / "alpha.png", la, "LA")
    ds = data.load_dataset(folder_config(root, tmp_path), input_shape=(8, 8, 1))
    notes = " ".join(ds.notes)
    # the GIF opens as a palette image, read as RGB
    assert "images of 3 shapes (HxWxC): 8x8x1 (22), 12x10x3 (1), 8x8x3 (1)" in notes
    assert "RGB->grayscale (luminance) (2 images)" in notes
    assert "16-bit image (I;16) scaled by 1/65535 (1 images)" in notes
    assert "alpha used as the gray image (its color is uniform) (1 images)" in notes
    assert "resized 12x10 -> 8x8 (bilinear) (1 images)" in notes
    everything = np.concatenate([ds.train.images, ds.val.images, ds.test.images])
    assert everything.shape == (24, 8, 8, 1)
    assert (everything == 1.0).all(axis=(1, 2, 3)).sum() == 1  # 16-bit, not clipped
    assert (everything == 1.0).sum(axis=(1, 2, 3)).max() >= 16  # the alpha glyph


# --------------------------------------------------------------------------- streaming and cache
def test_streamed_folder_yields_what_resident_does(tmp_path):
    root = classes_of(tmp_path / "ds", {"a": 30, "b": 25, "c": 20})
    resident = data.load_dataset(folder_config(root, tmp_path, standardize=True))
    cfg = folder_config(root, tmp_path, standardize=True, device_limit_mb=0)
    streamed = data.load_dataset(cfg)
    assert isinstance(streamed.train, data.FolderStream)
    assert isinstance(resident.train, data.Split)
    np.testing.assert_allclose(streamed.mean, resident.mean, rtol=1e-5)
    for a, b in zip(
        resident.train.batches(16, seed=3, epoch=2, shuffle=True),
        streamed.train.batches(16, seed=3, epoch=2, shuffle=True),
        strict=True,
    ):
        np.testing.assert_allclose(a.images, b.images, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.mask, b.mask)
    parts = [streamed.train.shard(i, 3) for i in range(3)]
    assert {p.num_examples for p in parts} == {streamed.train.num_examples // 3}
    rows = np.concatenate([p.rows for p in parts])
    assert len(np.unique(rows)) == len(rows)


def test_the_cache_is_reused_and_follows_changed_files(tmp_path, monkeypatch):
    root = classes_of(tmp_path / "ds", {"a": 10, "b": 10})
    shape = (6, 5, 1)
    first = data.load_dataset(folder_config(root, tmp_path), input_shape=shape)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    with monkeypatch.context() as m:
        m.setattr(folders.images, "decode", no_decoding)
        again = data.load_dataset(folder_config(root, tmp_path), input_shape=shape)
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.train.images, first.train.images)
    png(root / "a" / "000.png", np.full((6, 5), 255, np.uint8))
    os.utime(root / "a" / "000.png", ns=(1, 1))
    changed = data.load_dataset(folder_config(root, tmp_path), input_shape=shape)
    assert changed.fingerprint != first.fingerprint
    assert 1.0 in np.concatenate(
        [changed.train.images, changed.val.images, changed.test.images]
    )


# --------------------------------------------------------------------------- not files
@pytest.fixture
def no_hang():
    """Fails a test that blocks (opening a FIFO waits for a writer) instead of hanging."""
    import signal

    def stop(signum, frame):
        raise TimeoutError("blocked for 120 s: a special file was opened")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _socket_at(path: pathlib.Path):
    import socket

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    return server


def test_fifos_sockets_and_devices_in_a_folder_are_skipped_and_named(tmp_path, no_hang):
    root = classes_of(tmp_path / "ds", {"a": 10, "b": 10})
    os.mkfifo(root / "a" / "fifo.png")
    (root / "b" / "null.png").symlink_to("/dev/null")  # a character device
    server = _socket_at(root / "b" / "sock.png")
    try:
        ds = data.load_dataset(folder_config(root, tmp_path))
    finally:
        server.close()
    total = ds.train.num_examples + ds.val.num_examples + ds.test.num_examples
    assert total == 20
    (note,) = [n for n in ds.notes if "special files" in n]
    assert note.startswith("skipped 3 special files, not opened")
    for name in ("a/fifo.png (a FIFO)", "b/null.png (a character device)"):
        assert name in note
    assert "b/sock.png (a socket)" in note


def test_a_dangling_link_is_a_bad_file_not_a_traceback(tmp_path):
    root = classes_of(tmp_path / "ds", {"a": 10, "b": 10})
    (root / "a" / "gone.png").symlink_to(tmp_path / "moved.png")
    with pytest.raises(DataError) as e:
        data.load_dataset(folder_config(root, tmp_path))
    assert (
        f"a/gone.png: a symbolic link to {tmp_path / 'moved.png'}, which does not"
        in str(e.value)
    )
    ds = data.load_dataset(folder_config(root, tmp_path, bad_files="skip"))
    assert ds.train.num_examples + ds.val.num_examples + ds.test.num_examples == 20


def test_linked_folders_in_a_class_are_followed_and_loops_reported(tmp_path):
    root = classes_of(tmp_path / "ds", {"a": 10, "b": 10})
    classes_of(tmp_path / "more", {"a": 5})
    (root / "a" / "more").symlink_to(tmp_path / "more" / "a")
    ds = data.load_dataset(folder_config(root, tmp_path))
    assert ds.train.num_examples + ds.val.num_examples + ds.test.num_examples == 25
    (root / "b" / "again").symlink_to(root / "b")
    with pytest.raises(
        DataError, match=r"b/again/: a link to a folder already listed \(a loop\)"
    ):
        data.load_dataset(folder_config(root, tmp_path))


def test_a_class_folder_name_that_is_not_utf8_is_a_clear_error(tmp_path):
    root = classes_of(tmp_path / "ds", {"a": 10})
    bad = os.path.join(os.fsencode(root), b"caf\xe9")
    os.mkdir(bad)
    shutil.copy(root / "a" / "000.png", os.path.join(bad, b"000.png"))
    with pytest.raises(DataError) as e:
        data.load_dataset(folder_config(root, tmp_path))
    assert f"class folder {bad!r} has a name that is not valid UTF-8" in str(e.value)


def test_predict_and_viz_do_not_open_special_files(tmp_path, no_hang):
    from jaxcnn import viz

    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match="fifo.png: a FIFO, not an image file; not"):
        data.read_image(tmp_path / "fifo.png")
    with pytest.raises(DataError, match="fifo.png: a FIFO"):
        viz.load_image(tmp_path / "fifo.png", (8, 8, 1))
    with pytest.raises(DataError, match="gone.png: a symbolic link to .*nowhere.png"):
        data.read_image(tmp_path / "gone.png")
    with pytest.raises(DataError, match=r"/dev/null: a device, not an image file"):
        data.read_image("/dev/null")


def test_a_registered_name_is_the_dataset_even_beside_a_folder_of_that_name(
    tmp_path, monkeypatch
):
    """`jaxcnn train --workdir digits` creates ./digits before it loads the default
    dataset `digits`; a folder of raw files called mnist sits where people work."""
    monkeypatch.chdir(tmp_path)
    result = train.fit(RunConfig().override("train.epochs", 1), "digits", quiet=True)
    assert result.dataset == "digits" and result.test_accuracy > 0.3
    record = json.loads((tmp_path / "digits" / "config.json").read_text())["dataset"]
    assert record["num_classes"] == 10
    assert any("pass ./digits to train on it" in note for note in record["notes"])
    classes_of(tmp_path / "mine", {"a": 10, "b": 10})  # not a registered name
    ds = data.load_dataset(DataConfig(dataset="mine", data_dir=str(tmp_path / "c")))
    assert ds.class_names == ("a", "b")


def test_eval_reads_the_folder_the_run_trained_on_from_anywhere(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    classes_of(tmp_path / "a" / "ds", {"x": 30, "y": 30}, shape=(8, 8))
    config = RunConfig().with_overrides(
        {"data.dataset": "./ds", "data.data_dir": str(tmp_path / "cache")}
    )
    train.fit(config.override("train.epochs", 1), tmp_path / "run", quiet=True)
    record = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    assert record["folder"] == str((tmp_path / "a" / "ds").resolve())

    monkeypatch.chdir(tmp_path)  # another ./ds here: not the run's
    classes_of(tmp_path / "ds", {"p": 7, "q": 7, "r": 7}, shape=(8, 8))
    report = train.evaluate(tmp_path / "run")
    assert report["class_names"] == ["x", "y"]
    assert report["examples"] == record["test_examples"]
    assert capsys.readouterr().err == ""

    png(tmp_path / "a" / "ds" / "x" / "extra.png", np.zeros((8, 8), np.uint8))
    train.evaluate(tmp_path / "run")
    err = capsys.readouterr().err
    assert err.startswith(f"warning: the images of folder {record['folder']} changed")
    assert err.count("\n") == 1


def test_init_from_a_run_whose_folder_changed_since_warns(
    digits_folder, tmp_path, capsys
):
    source = tmp_path / "source"
    train.fit(digits_run(digits_folder, tmp_path), source, quiet=True)
    fine_tune = digits_run(digits_folder, tmp_path, **{"train.init_from": str(source)})
    train.fit(fine_tune, tmp_path / "same", quiet=True)
    assert "warning" not in capsys.readouterr().err
    changed = digits_folder / "0" / "00000.png"
    original, stat = changed.read_bytes(), changed.stat()
    try:
        png(changed, np.zeros((8, 8), np.uint8))
        train.fit(fine_tune, tmp_path / "changed", quiet=True)
    finally:
        changed.write_bytes(original)
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    err = capsys.readouterr().err
    assert f"warning: the folder {digits_folder.resolve()} that {source} trained" in err
    assert "changed (a file was added, removed or modified) since" in err


def test_fixed_statistics_and_channel_order(tmp_path):
    """data.mean / data.std / data.channels: each split as (x[..., ::-1] - mean) / std,
    the same streamed as resident; wrong channel counts and streamed BGR refused."""
    root = classes_of(tmp_path / "rgb", {"a": 12, "b": 10}, shape=(6, 5, 3))
    plain = data.load_dataset(folder_config(root, tmp_path))
    stats = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.25, 2.0)}
    rgb = data.load_dataset(folder_config(root, tmp_path, **stats))
    bgr = data.load_dataset(folder_config(root, tmp_path, channels="bgr", **stats))
    mean, std = np.float32(stats["mean"]), np.float32(stats["std"])
    for part in ("train", "val", "test"):
        x = getattr(plain, part).images
        np.testing.assert_allclose(getattr(rgb, part).images, (x - mean) / std, 1e-6)
        want = (x[..., ::-1] - mean) / std
        np.testing.assert_allclose(getattr(bgr, part).images, want, 1e-6)
    assert (rgb.channels, bgr.channels) == ("rgb", "bgr")
    np.testing.assert_allclose(rgb.mean, mean)
    np.testing.assert_allclose(rgb.std, std)
    assert any("data.mean [0.1" in note for note in rgb.notes)
    streamed = data.load_dataset(
        folder_config(root, tmp_path, device_limit_mb=0, **stats)
    )
    assert isinstance(streamed.train, data.FolderStream)
    for a, b in zip(rgb.train.batches(8), streamed.train.batches(8), strict=True):
        np.testing.assert_allclose(a.images, b.images, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="3 values but the images have 1 channel"):
        data.load_dataset(folder_config(root, tmp_path, **stats), input_shape=(6, 5, 1))
    with pytest.raises(DataError, match='channels="bgr" needs the dataset resident'):
        data.load_dataset(
            folder_config(root, tmp_path, channels="bgr", device_limit_mb=0, **stats)
        )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"mean": [0.5]}, "data.mean and data.std go together"),
        ({"mean": [0.5, 0.5], "std": [1.0]}, "one value per channel, the same number"),
        ({"mean": [0.5], "std": [0.0]}, "must be finite and > 0"),
        ({"mean": [0.5], "std": [1.0], "standardize": True}, "cannot be combined"),
        ({"channels": "hsv"}, '\'channels\' must be "rgb" | "bgr"'),
    ],
)
def test_fixed_statistics_errors(fields, message):
    from jaxcnn.errors import SpecError

    with pytest.raises(SpecError, match=re.escape(message)):
        DataConfig(**fields)
