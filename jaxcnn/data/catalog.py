"""TFDS image classification datasets by name: prepared, offline builds, read or streamed.

Datasets are addressed by TFDS name (`mnist`, `fashion_mnist`, `cifar10`, `emnist/balanced`, ...)
and read from a TFDS data directory (`data_dir`, default `$TFDS_DATA_DIR` or
`~/tensorflow_datasets`). Nothing is fetched behind the user's back when there is no network:

* `manual_dir` builds the standard TFDS dataset from raw downloads in a folder; TFDS checks
  their names, sizes and sha256 against its registered checksums.
* A dataset that is neither prepared nor buildable offline fails within seconds with a
  `DataError` that says to use `--data-dir` or `--manual-dir` (TFDS alone retries for minutes).

The embedded default `digits` is scikit-learn's bundled 8x8 handwritten digits (1,797 real
images), registered as the TFDS builder `digits` so that it flows through the same pipeline:
train = the first 1,500 images, test = the last 297 (sklearn's order; every class has 27-33
test images). Pixel values 0..16 are stored as uint8 round(v * 255 / 16), so 16 -> 255.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import math
import os
import pathlib
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxcnn.data import arrays, images
from jaxcnn.errors import DataError
from jaxcnn.spec import DataConfig

SHARED_DATA_ENV = "JAXCNN_SHARED_DATA"


def shared_data_dir() -> pathlib.Path:
    """The folder of raw dataset downloads (`mnist/`, `fashion_mnist/`: a `manual_dir`
    each) that a source checkout's tests, experiments and benchmarks build from.

    `$JAXCNN_SHARED_DATA` when set, else `shared/data` beside the checkout holding this
    package. The folder need not exist; callers check for the files they need.
    """
    if os.environ.get(SHARED_DATA_ENV):
        return pathlib.Path(os.environ[SHARED_DATA_ENV])
    return pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"


DIGITS = "digits"
DIGITS_TRAIN_EXAMPLES = 1500  # of 1,797; the last 297 are the test split
_PROBE_TIMEOUT_S = 3.0  # a reachable download host answers well within this
_SHUFFLE_BUFFER = 16384  # tf.data shuffle buffer for streamed splits


@dataclasses.dataclass(frozen=True, eq=False)
class StreamSplit:
    """A split too big for device memory, streamed from TFDS through tf.data in numpy batches.

    Images are converted to `image_shape` and standardised on the fly, like a resident Split.
    Shuffling uses TFDS file shuffling plus a tf.data shuffle buffer seeded from
    (seed, epoch): reproducible per epoch and different across epochs, but not the order of
    `epoch_permutation` (that needs random access to the whole split).
    """

    num_examples: int
    builder: Any = dataclasses.field(repr=False)  # tfds.core.DatasetBuilder, prepared
    split: str  # TFDS split string, e.g. "train[:54000]"
    keys: tuple[str, str]  # (image feature, label feature)
    image_shape: tuple[int, int, int]  # after conversion
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = False,
        drop_remainder: bool = False,
    ) -> Iterator[arrays.Batch]:
        """Yields batches of the split; see Split.batches for padding and masks."""
        arrays.check_batch_size(batch_size)
        tf, tfds = images.tensorflow(), _tfds()
        tf_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)
        ds = self.builder.as_dataset(
            split=self.split,
            shuffle_files=shuffle,
            read_config=tfds.ReadConfig(shuffle_seed=tf_seed),
        )
        image_key, label_key = self.keys
        ds = ds.map(lambda ex: (ex[image_key], ex[label_key]))
        if shuffle:
            ds = ds.shuffle(min(self.num_examples, _SHUFFLE_BUFFER), seed=tf_seed)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(
            lambda x, y: (self._convert(x), tf.cast(y, tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        ds = ds.prefetch(tf.data.AUTOTUNE)
        for x, labels in tfds.as_numpy(ds):
            yield arrays.padded_batch(x, labels, batch_size)

    def shard(self, index: int, count: int) -> StreamSplit:
        """Part `index` of `count` equal, disjoint parts (one per training process).

        Uses TFDS split slicing (`tfds.even_splits`), so each process reads only its own
        files/ranges; the up to count - 1 examples that do not divide evenly are dropped.
        """
        if count == 1:
            return self
        part = _tfds().even_splits(self.split, n=count, drop_remainder=True)[index]
        return dataclasses.replace(
            self, split=part, num_examples=self.num_examples // count
        )

    def _convert(self, x):
        tf = images.tensorflow()
        out = images.convert_tf(tf.cast(x, tf.float32) / 255.0, self.image_shape)
        if self.mean is not None:
            out = (out - self.mean) / self.std
        return out


def load_tfds(
    config: DataConfig, target_shape: tuple[int, int, int] | None
) -> arrays.Dataset:
    """Prepares (if needed) and loads a TFDS dataset; see `jaxcnn.data.load_dataset`."""
    prepare_dataset(
        config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir
    )
    builder = _builder(config.dataset, config.data_dir)
    keys, num_classes, class_names, source_shape = _describe(builder)
    target_shape = target_shape or source_shape
    notes = list(images.conversion_notes(source_shape, target_shape))
    split_strings, split_notes = _split_strings(builder, config)
    notes += split_notes
    sizes = {part: _num_examples(builder, s) for part, s in split_strings.items()}

    total_bytes = sum(sizes.values()) * math.prod(target_shape) * 4
    if total_bytes <= config.device_limit_mb * 2**20:
        splits = {}
        for part, split in split_strings.items():
            x, labels = _read_split(builder, split, keys)
            x, _ = images.convert_images(x, target_shape)
            splits[part] = arrays.Split(x, labels)
    else:
        notes.append(
            f"streaming from TFDS: {total_bytes / 2**20:.0f} MB as float32 exceeds "
            f"data.device_limit_mb={config.device_limit_mb}"
        )
        splits = {
            part: StreamSplit(sizes[part], builder, split, keys, target_shape)
            for part, split in split_strings.items()
        }
    mean = std = None
    if config.standardize:
        splits, mean, std, note = arrays.standardize(splits)
        notes.append(note)
    elif config.mean is not None:
        splits, mean, std, note = arrays.normalize_splits(
            splits, config.mean, config.std, config.channels, target_shape
        )
        notes.append(note)
    return arrays.Dataset(
        name=config.dataset,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=num_classes,
        class_names=class_names,
        image_shape=target_shape,
        mean=mean,
        std=std,
        notes=tuple(notes),
        channels=config.channels if config.mean is not None else "rgb",
    )


def prepare_dataset(
    name: str, *, data_dir: str | None = None, manual_dir: str | None = None
) -> None:
    """Makes sure `name` is prepared in data_dir; a fast no-op when it already is.

    `digits` is generated from scikit-learn. Other datasets are built from the raw files in
    manual_dir when given (TFDS checks names, sizes and sha256), else downloaded by TFDS
    after a quick check that the download hosts are reachable.

    Raises:
      DataError: unknown name, not an image classification dataset, manual_dir missing or
        with missing / wrong files, or no network to download from.
    """
    builder = _builder(name, data_dir)
    _describe(builder)
    if _is_prepared(builder):
        return
    with _prepare_lock(builder):  # parallel runs (sweeps, test workers) build it once
        if not _is_prepared(builder):
            _download_and_prepare(builder, manual_dir)


def _is_prepared(builder) -> bool:
    # builder.is_prepared() alone logs a warning for every folder that is not there yet
    info_file = pathlib.Path(os.fspath(builder.data_path)) / "dataset_info.json"
    return info_file.is_file() and builder.is_prepared()


def _download_and_prepare(builder, manual_dir: str | None) -> None:
    tfds = _tfds()
    url_infos = type(builder).url_infos or {}
    manual = None
    if manual_dir is not None:
        manual = _check_manual_dir(
            builder, pathlib.Path(manual_dir).expanduser(), url_infos
        )
    elif builder.name != DIGITS:
        _check_network(builder, url_infos)
    try:
        with _extract_dir(builder, manual) as extract_dir:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=manual, extract_dir=extract_dir
                )
            )
    except tfds.download.download_manager.NonMatchingChecksumError as e:
        raise DataError(
            f"--manual-dir {manual}: a raw file for {builder.name!r} does not match the "
            f"size and sha256 that TFDS registered for it; replace it with the original "
            f"download. TFDS says: {e}"
        ) from None
    except (OSError, AssertionError) as e:
        raise DataError(
            f"could not prepare dataset {builder.name!r} in {builder.data_dir}: {e}. "
            f"Use --data-dir "
            f"for a TFDS data directory where it is prepared, or --manual-dir for a folder "
            f"with its raw files."
        ) from None


def dataset_info(
    name: str, *, data_dir: str | None = None
) -> tuple[int, tuple[str, ...], tuple[int, int, int]]:
    """Returns (num_classes, class_names, image_shape) from TFDS metadata, loading no images."""
    _, num_classes, class_names, image_shape = _describe(_builder(name, data_dir))
    return num_classes, class_names, image_shape


@functools.cache
def _tfds():
    """Imports TFDS (after _tf, so GPUs are hidden first) and registers the digits builder."""
    images.tensorflow()
    import tensorflow_datasets as tfds

    _register_digits(tfds)
    return tfds


def _register_digits(tfds) -> None:
    """Defines the TFDS builder `digits` (scikit-learn's 8x8 digits); see the module doc."""
    if DIGITS in tfds.list_builders(with_community_datasets=False):
        return  # registered by an earlier import of this module (TFDS itself has none)

    class Digits(tfds.core.GeneratorBasedBuilder):
        """scikit-learn's 8x8 handwritten digits (UCI optdigits test set), 1,797 images."""

        name = DIGITS
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "train = first 1,500 images, test = last 297."}

        def _info(self):
            return self.dataset_info_from_configs(
                description=(
                    "scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes). "
                    "Pixel values 0..16 are stored as uint8 round(v * 255 / 16). "
                    "train = the first 1,500 images, test = the last 297."
                ),
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(8, 8, 1)),
                        "label": tfds.features.ClassLabel(
                            names=[str(d) for d in range(10)]
                        ),
                    }
                ),
                supervised_keys=("image", "label"),
                homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
                citation="Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of "
                "Handwritten Digits. UCI Machine Learning Repository.",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # everything ships inside scikit-learn
            return {
                "train": self._generate_examples(0, DIGITS_TRAIN_EXAMPLES),
                "test": self._generate_examples(DIGITS_TRAIN_EXAMPLES, None),
            }

        def _generate_examples(self, start, stop):
            from sklearn import datasets

            digits = datasets.load_digits()
            pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
            for i in range(start, stop or len(pixels)):
                yield i, {"image": pixels[i], "label": int(digits.target[i])}


def is_registered(name: str) -> bool:
    """Whether `name` (its dataset part, before any /config or :version) is a TFDS
    dataset registered here (TFDS's own, or the embedded digits)."""
    base = name.split("/")[0].split(":")[0]
    return base in _tfds().list_builders(with_community_datasets=False)


def _builder(name: str, data_dir: str | None):
    """tfds.builder(name), with an unknown name turned into a DataError listing close matches."""
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        base = name.split("/")[0].split(":")[0]
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else "see https://www.tensorflow.org/datasets/catalog for TFDS names"
        )
        if "/" in name:
            hint += f" (and there is no folder {name!r})"
        raise DataError(f"unknown dataset {name!r}: {hint}") from None
    except (ValueError, AssertionError) as e:  # unknown config or version
        raise DataError(f"cannot open TFDS dataset {name!r}: {e}") from None


def _describe(
    builder,
) -> tuple[tuple[str, str], int, tuple[str, ...], tuple[int, int, int]]:
    """Returns ((image key, label key), num_classes, class_names, image_shape) of a builder."""
    tfds = _tfds()
    features = builder.info.features
    keys = builder.info.supervised_keys
    if not (
        isinstance(keys, tuple)
        and len(keys) == 2
        and all(isinstance(k, str) for k in keys)
    ):
        keys = ("image", "label")
    image_key, label_key = keys
    names = (
        list(features.keys())
        if isinstance(features, tfds.features.FeaturesDict)
        else []
    )
    image = features[image_key] if image_key in names else None
    label = features[label_key] if label_key in names else None
    if not (
        isinstance(image, tfds.features.Image)
        and isinstance(label, tfds.features.ClassLabel)
    ):
        raise DataError(
            f"dataset {builder.name!r} is not an image classification dataset: it needs an "
            f"Image feature and a ClassLabel feature, but its features are {names or features}"
        )
    shape = tuple(image.shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise DataError(
            f"dataset {builder.name!r} has images of variable size {shape}; only datasets "
            f"with one fixed image shape are supported"
        )
    return keys, label.num_classes, tuple(label.names), tuple(int(d) for d in shape)


def _check_manual_dir(builder, manual: pathlib.Path, url_infos) -> pathlib.Path:
    """Checks that manual holds every registered raw file by name and size (sha256: TFDS)."""
    expected = {
        info.filename: info.size for info in url_infos.values() if info.filename
    }
    if not manual.is_dir():
        raise DataError(
            f"--manual-dir {manual} is not a directory; it must hold the raw files of "
            f"{builder.name!r}: {', '.join(sorted(expected)) or '(see the TFDS catalog)'}"
        )
    problems = []
    for filename, size in sorted(expected.items()):
        path = manual / filename
        if not path.is_file():
            problems.append(f"{filename} is missing (expected {int(size)} bytes)")
        elif path.stat().st_size != size:
            problems.append(
                f"{filename} has {path.stat().st_size} bytes, expected {int(size)}"
            )
    if problems:
        raise DataError(
            f"--manual-dir {manual} cannot build {builder.name!r}: {'; '.join(problems)}. "
            f"Put the original downloads there under these names."
        )
    return manual


def _data_root(builder) -> pathlib.Path:
    """The TFDS data_dir: data_path is <data_dir>/<name>[/<config>]/<version>."""
    depth = len(builder.info.full_name.split("/"))
    return pathlib.Path(os.fspath(builder.data_path)).parents[depth - 1]


@contextlib.contextmanager
def _prepare_lock(builder) -> Iterator[None]:
    """An exclusive file lock per dataset in its data_dir (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    root = _data_root(builder)
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / f".{builder.info.full_name.replace('/', '-')}.jaxcnn-lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _extract_dir(builder, manual: pathlib.Path | None) -> Iterator[str | None]:
    """A private, temporary extraction folder when building from a manual dir.

    TFDS names extractions of manual files `GZIP.<file name>` in one shared folder, so
    mnist and fashion_mnist (same file names) would silently reuse each other's files.
    """
    if manual is None:
        yield None
        return
    root = _data_root(builder)
    (root / "downloads").mkdir(parents=True, exist_ok=True)
    prefix = f"extract-{builder.info.full_name.replace('/', '-')}-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=root / "downloads") as path:
        yield path


def _check_network(builder, url_infos) -> None:
    """Fails fast with a DataError when the dataset's download hosts cannot be reached."""
    urls = list(url_infos) or ["https://storage.googleapis.com/"]
    for url in urls:
        error = _probe(url)
        if error:
            files = sorted(
                info.filename for info in url_infos.values() if info.filename
            )
            raw = f" ({', '.join(files)})" if files else ""
            raise DataError(
                f"dataset {builder.name!r} is not prepared in {builder.data_path} and cannot "
                f"be downloaded: {error}. Use --data-dir DIR for a TFDS data directory where "
                f"it is already prepared, or --manual-dir DIR for a folder with its raw "
                f"files{raw} to build it offline."
            )


def _probe(url: str) -> str | None:
    """Opens a TCP connection to url's host (or its proxy); returns why it failed, or None."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy:
        parts = urllib.parse.urlsplit(proxy if "//" in proxy else f"//{proxy}")
    host = parts.hostname
    port = parts.port or {"http": 80, "ftp": 21}.get(parts.scheme, 443)
    result = [f"{host}:{port} did not answer within {_PROBE_TIMEOUT_S:.0f} s"]

    def connect():  # DNS lookups ignore socket timeouts, hence the thread
        try:
            socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
            result[0] = None
        except OSError as e:
            result[0] = f"cannot reach {host}:{port} ({e})"

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 0.5)
    return result[0]


def _split_strings(builder, config: DataConfig) -> tuple[dict[str, str], list[str]]:
    """TFDS split strings for train / val / test, plus notes on how val was chosen."""
    available = list(builder.info.splits.keys())

    def need(split: str, field: str) -> str:
        if split.split("[")[0] not in available:
            raise DataError(
                f"data.{field}={split!r}: dataset {builder.name!r} has splits "
                f"{', '.join(available)}"
            )
        return split

    if "train" not in available:
        raise DataError(
            f"dataset {builder.name!r} has no 'train' split, only {available}"
        )
    test = need(config.test_split, "test_split")
    notes = []
    n_train = builder.info.splits["train"].num_examples
    if config.val_split is not None:
        val, train_end = need(config.val_split, "val_split"), n_train
    elif "validation" in available:
        val, train_end = "validation", n_train
    else:
        n_val = min(max(1, round(n_train * config.val_fraction)), n_train - 1)
        train_end = n_train - n_val
        val = f"train[{train_end}:]"
        notes.append(f"validation = last {n_val} of {n_train} train examples ({val})")
    if config.train_examples is not None and config.train_examples < train_end:
        train_end = config.train_examples
        notes.append(f"training on the first {train_end} examples only")
    train = "train" if train_end == n_train else f"train[:{train_end}]"
    return {"train": train, "val": val, "test": test}, notes


def _num_examples(builder, split: str) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
        raise DataError(
            f"bad split {split!r} for dataset {builder.name!r}: {e}"
        ) from None


def _read_split(
    builder, split: str, keys: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split into numpy: images [n, h, w, c] uint8, labels [n] int32."""
    tfds = _tfds()
    image_key, label_key = keys
    ds = builder.as_dataset(split=split, batch_size=-1)
    example = tfds.as_numpy(ds)
    return example[image_key], example[label_key].astype(np.int32)
