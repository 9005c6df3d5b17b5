"""Folders of image files as datasets: one sub-folder per class, optionally per split.

Layouts (class names are the sub-folder names, sorted, as Keras and torchvision order them;
images may sit in nested folders below their class folder):

    ROOT/<class>/*.png|jpg|jpeg|bmp|gif|webp              val and test carved per class
    ROOT/train/<class>/...  ROOT/val/<class>/...  ROOT/test/<class>/...   splits given

A folder is the split layout when it has a `train` folder of folders. A missing val (or
`validation`) or test folder is carved from train. Carving takes round(n * val_fraction)
and round(n * test_fraction) of each class's n images, chosen by `data.split_seed` and the
class name: stratified, deterministic, and the same for every `train.seed`.

Every image is decoded once (`images.read_image`), converted to the model's input shape and
cached as uint8 [n, H, W, C] (8 bits, also for 16-bit sources) in `data.data_dir`, default
$JAXCNN_FOLDER_CACHE or ~/.cache/jaxcnn/folders, under the folder's fingerprint and that
shape. Datasets that fit `data.device_limit_mb` are then held in memory like TFDS ones;
larger ones stream from the cache file (a memory map) in the same per-epoch order
(`epoch_permutation`), so a resumed run ends identical either way.

The fingerprint, sha256 of every file's (path, size, mtime), is `Dataset.fingerprint`, so a
resumed run can tell that files changed. Nothing is dropped silently: a file that is not an
image, cannot be decoded (truncated, corrupt, over PIL's decompression-bomb limit), and an
empty class folder are a DataError, or with `data.bad_files = "skip"` left out, each one
logged and counted in the notes; so are a dangling symbolic link and a folder that cannot
be listed. Hidden files and files outside class folders are ignored and counted in the
notes. Only regular files are opened: FIFOs, sockets and device files are skipped and
named in the notes (opening a FIFO would wait forever). Symbolic links to folders inside
a class folder are followed, except one leading to a folder already listed for that class
(a loop), which is reported. Class folder names must be valid UTF-8 (they are text in
config.json and in predictions).

TFDS's `tfds.folder_dataset.ImageFolder` does not fit: it reads only PNG and JPEG, needs
split folders, passes over other files without a word, cannot slice its splits (sharding
across processes needs that) and stops the whole pipeline at one truncated file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import stat as stat_lib
import warnings
import zlib
from collections.abc import Iterator

import numpy as np

from jaxcnn import spec
from jaxcnn.data import arrays, images
from jaxcnn.errors import DataError, listing
from jaxcnn.spec import DataConfig

log = logging.getLogger(__name__)

_CACHE_VERSION = 1  # bump when the cache's contents change meaning
_DECODE_CHUNK = 64  # images decoded and converted per step (bounds memory)
_LISTED = 10  # bad files named in an error message or note
_VAL_NAMES = ("val", "validation")


def is_folder(name: str) -> bool:
    """Whether `data.dataset` could name a folder (`spec.is_folder_dataset`): a path by
    its form, or an existing directory (`jaxcnn.data` lets a registered TFDS name win
    over a bare directory name)."""
    return spec.is_folder_dataset(name)


def is_path_form(name: str) -> bool:
    """Whether `name` is written as a path: starting with /, . or ~, ending with /, or
    holding the platform's separator where it is not "/"."""
    return (
        name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or (os.sep != "/" and os.sep in name)
    )


@dataclasses.dataclass(frozen=True, eq=False)
class FolderStream:
    """A split streamed from a folder's decoded cache (uint8 [n, H, W, C] `.npy` file).

    Random access to the cache gives the order of `epoch_permutation(seed, epoch, n)`, as a
    resident `Split` has; only the rows of a batch are read and converted at a time.
    """

    cache: str  # path of images.npy
    rows: np.ndarray = dataclasses.field(repr=False)  # [n] rows of the cache
    labels: np.ndarray = dataclasses.field(repr=False)  # [n] int32
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @property
    def num_examples(self) -> int:
        return int(self.rows.shape[0])

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = False,
        drop_remainder: bool = False,
    ) -> Iterator[arrays.Batch]:
        """Yields batches of the split; see `Split.batches` for padding and masks."""
        arrays.check_batch_size(batch_size)
        n = self.num_examples
        order = (
            np.asarray(arrays.epoch_permutation(seed, epoch, n))
            if shuffle
            else np.arange(n)
        )
        cache = np.load(self.cache, mmap_mode="r")
        stop = n - n % batch_size if drop_remainder else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            x = cache[self.rows[index]].astype(np.float32) * np.float32(1 / 255)
            if self.mean is not None:
                x = (x - self.mean) / self.std
            yield arrays.padded_batch(x, self.labels[index], batch_size)

    def shard(self, index: int, count: int) -> FolderStream:
        """Part `index` of `count` equal, disjoint parts (one per training process); the
        up to count - 1 examples that do not divide evenly are dropped."""
        size = self.num_examples // count
        part = slice(index * size, (index + 1) * size)
        return dataclasses.replace(self, rows=self.rows[part], labels=self.labels[part])


@dataclasses.dataclass(frozen=True)
class _Scan:
    """What listing a folder found, before any image is decoded."""

    root: pathlib.Path
    split_names: tuple[str, ...]  # the split folders, or ("",) for the class layout
    classes: tuple[str, ...]  # every class folder name, sorted
    files: tuple[str, ...]  # image files, relative to root (posix)
    labels: np.ndarray  # [n] int32, index into classes
    splits: np.ndarray  # [n] int32, index into split_names
    problems: tuple[tuple[str, str], ...]  # (relative path, what is wrong)
    notes: tuple[str, ...]  # files ignored
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class _Decoded:
    """The decoded cache of a scan: images.npy rows follow scan.files."""

    path: pathlib.Path  # images.npy
    bad: tuple[tuple[int, str], ...]  # (row, why it could not be read)
    notes: tuple[str, ...]  # conversions, counted


# --------------------------------------------------------------------------- load
def load_folder(
    config: DataConfig, target_shape: tuple[int, int, int] | None
) -> arrays.Dataset:
    """Loads the folder `config.dataset`; see the module doc and `load_dataset`."""
    scan = _scan(_root(config.dataset))
    target_shape = target_shape or _first_shape(scan)
    images.conversion_notes(target_shape, target_shape)  # checks the shape
    decoded = _decode(scan, target_shape, _cache_root(config))
    keep, classes, notes = _good_rows(scan, decoded, config.bad_files)
    labels = _relabel(scan, classes)
    rows, split_notes = _assign_splits(scan, keep, labels, config)
    notes += [*split_notes, *decoded.notes]
    total_bytes = sum(r.size for r in rows.values()) * math.prod(target_shape) * 4
    if total_bytes <= config.device_limit_mb * 2**20:
        cache = np.load(decoded.path, mmap_mode="r")
        splits = {
            part: arrays.Split(
                cache[r].astype(np.float32) * np.float32(1 / 255), labels[r]
            )
            for part, r in rows.items()
        }
    else:
        notes.append(
            f"streaming from the decoded cache {decoded.path}: "
            f"{total_bytes / 2**20:.0f} MB as float32 exceeds "
            f"data.device_limit_mb={config.device_limit_mb}"
        )
        splits = {
            part: FolderStream(str(decoded.path), r, labels[r])
            for part, r in rows.items()
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
        num_classes=len(classes),
        class_names=tuple(scan.classes[c] for c in classes),
        image_shape=target_shape,
        mean=mean,
        std=std,
        notes=tuple(notes),
        channels=config.channels if config.mean is not None else "rgb",
        fingerprint=scan.fingerprint,
    )


def folder_info(name: str) -> tuple[int, tuple[str, ...], tuple[int, int, int]]:
    """(num_classes, class names, shape of the first readable image), decoding one image."""
    scan = _scan(_root(name))
    return len(scan.classes), scan.classes, _first_shape(scan)


# --------------------------------------------------------------------------- scanning
def _root(name: str) -> pathlib.Path:
    root = pathlib.Path(name).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.dataset={name!r} is not a folder; a folder dataset is a directory "
            f"with one sub-folder of images per class (or train/ and test/ folders of "
            f"those); anything else is read as a TFDS dataset name"
        )
    return root


def fingerprint(root: str | os.PathLike) -> str:
    """sha256 of every image file's (path, size, mtime) under folder dataset `root`."""
    return _scan(pathlib.Path(root)).fingerprint


def _scan(root: pathlib.Path) -> _Scan:
    """Lists the folder: layout, classes, image files, problems and the fingerprint."""
    train = root / "train"
    split_layout = train.is_dir() and bool(_folders(train)) and not _files(train)
    split_names = tuple(_folders(root)) if split_layout else ("",)
    found, problems, stats, classes, special = [], [], [], set(), []
    ignored = collections.Counter({"files outside class folders": len(_files(root))})
    for s, split in enumerate(split_names):
        base = root / split if split else root
        if split:
            ignored["files outside class folders"] += len(_files(base))
        for name in _folders(base):
            _check_class_name(base / name)
            classes.add(name)
            listed = []
            for path in _walk(base / name, ignored, root, problems):
                rel = path.relative_to(root).as_posix()
                try:
                    info = path.stat()
                except OSError as e:  # a dangling link, or no permission
                    problems.append((rel, _unreadable(path, e)))
                    continue
                if not stat_lib.S_ISREG(info.st_mode):
                    special.append(f"{rel} ({_special_kind(info.st_mode)})")
                    continue
                listed.append(path)
                stats.append((rel, info.st_size, info.st_mtime_ns))
                if path.suffix.lower() in images.IMAGE_SUFFIXES:
                    found.append((rel, name, s))
                else:
                    problems.append((rel, "not an image file (by its suffix)"))
            if not any(path.suffix.lower() in images.IMAGE_SUFFIXES for path in listed):
                rel = (base / name).relative_to(root).as_posix()
                problems.append((rel + "/", "empty class folder (no image files)"))
    classes = tuple(sorted(classes))
    index = {name: i for i, name in enumerate(classes)}
    digest = hashlib.sha256(json.dumps(sorted(stats)).encode()).hexdigest()
    notes = [f"ignored {n} {why}" for why, n in sorted(ignored.items()) if n]
    if special:
        notes.append(
            f"skipped {len(special)} special files, not opened (only regular files are "
            f"read): {listing(special, _LISTED)}"
        )
    return _Scan(
        root=root,
        split_names=split_names,
        classes=classes,
        files=tuple(rel for rel, _, _ in found),
        labels=np.array([index[c] for _, c, _ in found], np.int32),
        splits=np.array([s for _, _, s in found], np.int32),
        problems=tuple(problems),
        notes=tuple(notes),
        fingerprint=digest,
    )


def _folders(path: pathlib.Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")
    )


def _files(path: pathlib.Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(path) if e.is_file() and not e.name.startswith(".")
    )


def _walk(
    folder: pathlib.Path,
    ignored: collections.Counter,
    root: pathlib.Path,
    problems: list[tuple[str, str]],
) -> Iterator[pathlib.Path]:
    """Entries below folder that are not folders, in sorted order (following links to
    folders); hidden files and folders are counted and skipped; a folder that cannot
    be listed, or a link to a folder already listed here (a loop), is a problem."""

    def rel(path) -> str:
        return pathlib.Path(path).relative_to(root).as_posix() + "/"

    def cannot_list(error: OSError) -> None:
        problems.append((rel(error.filename), f"cannot be listed ({error.strerror})"))

    seen = set()
    for directory, subdirs, files in os.walk(
        folder, onerror=cannot_list, followlinks=True
    ):
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:
            problems.append(
                (
                    rel(directory),
                    "a link to a folder already listed (a loop); not listed",
                )
            )
            subdirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        ignored["hidden files and folders"] += sum(d.startswith(".") for d in subdirs)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                ignored["hidden files and folders"] += 1
            else:
                yield pathlib.Path(directory) / name


def _check_class_name(folder: pathlib.Path) -> None:
    """Class names are text: refuses a folder name that is not valid UTF-8."""
    try:
        folder.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"class folder {os.fsencode(folder)!r} has a name that is not valid UTF-8; "
            f"class names are text (in config.json and in predictions). Rename it to "
            f"a UTF-8 name (convmv -f latin1 -t utf8 -r --notest FOLDER converts a tree)"
        ) from None


def _unreadable(path: pathlib.Path, error: OSError) -> str:
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)}, which does not exist"
    return f"cannot be read ({error.strerror})"


def _special_kind(mode: int) -> str:
    for test, kind in (
        (stat_lib.S_ISFIFO, "a FIFO"),
        (stat_lib.S_ISSOCK, "a socket"),
        (stat_lib.S_ISCHR, "a character device"),
        (stat_lib.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _first_shape(scan: _Scan) -> tuple[int, int, int]:
    """The shape of the first image that decodes (the dataset's shape without a model)."""
    for rel in scan.files:
        with contextlib.suppress(DataError):
            return tuple(images.read_image(scan.root / rel)[0].shape)
    raise DataError(f"folder {scan.root} holds no readable image")


# --------------------------------------------------------------------------- decoding
def _cache_root(config: DataConfig) -> pathlib.Path:
    default = os.environ.get(
        "JAXCNN_FOLDER_CACHE", pathlib.Path.home() / ".cache" / "jaxcnn" / "folders"
    )
    return pathlib.Path(config.data_dir or default).expanduser()


def _decode(scan: _Scan, target: tuple[int, int, int], root: pathlib.Path) -> _Decoded:
    """The decoded, converted images of `scan` from the cache, building it when missing."""
    key = hashlib.sha256(
        json.dumps([_CACHE_VERSION, scan.fingerprint, list(target)]).encode()
    ).hexdigest()[:16]
    folder = root / f"{scan.root.resolve().name}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{folder.name}.lock"):
        if not (folder / "meta.json").is_file():
            _build_cache(scan, target, folder)
    meta = json.loads((folder / "meta.json").read_text())
    return _Decoded(
        folder / "images.npy",
        tuple((int(row), why) for row, why in meta["bad"]),
        tuple(meta["notes"]),
    )


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    """An exclusive file lock (parallel runs build a cache once; no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_cache(scan: _Scan, target: tuple[int, int, int], folder: pathlib.Path):
    """Decodes every image of scan into folder/images.npy (+ meta.json), atomically."""
    from PIL import Image

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(scan.files)
    out = np.lib.format.open_memmap(
        tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(max(n, 1), *target)
    )
    bad, counts, shapes = [], collections.Counter(), collections.Counter()
    with warnings.catch_warnings(), concurrent.futures.ThreadPoolExecutor() as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for start in range(0, n, _DECODE_CHUNK):
            paths = [scan.root / f for f in scan.files[start : start + _DECODE_CHUNK]]
            groups = collections.defaultdict(list)
            for row, (pixels, notes) in enumerate(pool.map(_try_decode, paths), start):
                if pixels is None:
                    bad.append((row, notes[0]))
                    continue
                counts.update(notes)
                shapes["x".join(map(str, pixels.shape))] += 1
                groups[(pixels.shape, pixels.dtype.str)].append((row, pixels))
            for members in groups.values():
                rows = [row for row, _ in members]
                out[rows] = _to_uint8(np.stack([p for _, p in members]), target, counts)
    out.flush()
    del out
    notes = [f"{note} ({k} images)" for note, k in sorted(counts.items())]
    if len(shapes) > 1:
        sizes = ", ".join(f"{s} ({k})" for s, k in shapes.most_common())
        notes.insert(0, f"images of {len(shapes)} shapes (HxWxC): {sizes}")
    meta = {"bad": bad, "notes": notes, "files": n}
    (tmp / "meta.json").write_text(json.dumps(meta))
    os.replace(tmp, folder)


def _try_decode(path: pathlib.Path) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """(pixels, notes), or (None, (why,)) for a file that cannot be decoded."""
    try:
        return images.decode(path)
    except DataError as e:
        return None, (str(e).removeprefix(f"{path}: "),)


def _to_uint8(batch: np.ndarray, target: tuple[int, int, int], counts) -> np.ndarray:
    """[n, h, w, c] images of one shape and dtype -> uint8 [n, H, W, C]; counts notes."""
    if batch.dtype == np.uint8 and batch.shape[1:] == target:
        return batch
    converted, notes = images.convert_images(batch, target)
    counts.update({note: len(batch) for note in notes})
    return np.rint(np.clip(converted, 0.0, 1.0) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- bad data, splits
def _good_rows(
    scan: _Scan, decoded: _Decoded, policy: str
) -> tuple[np.ndarray, list[int], list[str]]:
    """(rows to use [n] bool, classes kept, notes), or a DataError for bad data."""
    problems = list(scan.problems) + [(scan.files[r], why) for r, why in decoded.bad]
    keep = np.ones(len(scan.files), bool)
    keep[[r for r, _ in decoded.bad]] = False
    notes = list(scan.notes)
    if problems and policy == "error":
        raise DataError(
            f"folder {scan.root} has {len(problems)} bad files or folders: "
            f"{_listing(problems)}. Fix or remove them, or set data.bad_files='skip' to "
            f"leave them out (each is then logged and counted in the run's notes)"
        )
    for rel, why in problems:
        log.warning("skipped %s: %s", scan.root / rel, why)
    if problems:
        notes.append(
            f"skipped {len(problems)} bad files or folders (data.bad_files='skip'): "
            f"{_listing(problems)}"
        )
    train = scan.split_names.index("train") if "train" in scan.split_names else 0
    counts = np.bincount(
        scan.labels[keep & (scan.splits == train)], minlength=len(scan.classes)
    )
    empty = [scan.classes[c] for c in np.flatnonzero(counts == 0)]
    if empty and policy == "error":
        where = "train/" if len(scan.split_names) > 1 else ""
        raise DataError(
            f"folder {scan.root}: classes without a readable {where} image: "
            f"{', '.join(empty)}; every class needs training images"
        )
    if empty:
        notes.append(f"left out classes without a readable image: {', '.join(empty)}")
    classes = [int(c) for c in np.flatnonzero(counts)]
    if len(classes) < 2:
        raise DataError(
            f"folder {scan.root} has {len(classes)} class with images "
            f"({', '.join(scan.classes[c] for c in classes) or 'none'}); classification "
            f"needs at least 2 class folders of images"
        )
    return keep & np.isin(scan.labels, classes), classes, notes


def _listing(problems: list[tuple[str, str]]) -> str:
    return listing([f"{rel}: {why}" for rel, why in problems], _LISTED, sep="; ")


def _relabel(scan: _Scan, classes: list[int]) -> np.ndarray:
    """Labels over the kept classes (0..len(classes)-1); -1 for rows of dropped classes."""
    mapping = np.full(len(scan.classes), -1, np.int32)
    mapping[classes] = np.arange(len(classes), dtype=np.int32)
    return mapping[scan.labels]


def _assign_splits(
    scan: _Scan, keep: np.ndarray, labels: np.ndarray, config: DataConfig
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rows of train / val / test, given by split folders or carved; notes on carving."""
    names = scan.split_names
    rows = {
        name: np.flatnonzero(keep & (scan.splits == i)) for i, name in enumerate(names)
    }
    given = [n for n in names if n]
    if not given and (config.val_split is not None or config.test_split != "test"):
        field = "val_split" if config.val_split is not None else "test_split"
        raise DataError(
            f"data.{field}={getattr(config, field)!r}: folder {scan.root} has no split "
            f"folders (train/, val/, test/); its val and test splits are carved per class "
            f"with data.val_fraction and data.test_fraction"
        )
    val = config.val_split or next((n for n in _VAL_NAMES if n in given), None)
    for field, name in (("val_split", val), ("test_split", config.test_split)):
        if name is not None and given and name not in given and name != "test":
            raise DataError(
                f"data.{field}={name!r}: folder {scan.root} has split folders "
                f"{', '.join(given)}"
            )
    pool = rows["train" if given else ""]
    carve = {"val": config.val_fraction if val is None else 0.0}
    carve["test"] = config.test_fraction if config.test_split not in given else 0.0
    train, carved = _carve(pool, labels, carve, scan, config.split_seed)
    notes = [
        f"{part} = {len(r)} images carved per class from {'train/' if given else 'all'} "
        f"({carve[part]:g} of each class, data.split_seed={config.split_seed})"
        for part, r in carved.items()
        if carve[part]
    ]
    out = {
        "train": train,
        "val": carved["val"] if val is None else rows[val],
        "test": carved["test"] if carve["test"] else rows[config.test_split],
    }
    for part, r in out.items():
        if r.size == 0:
            raise DataError(
                f"folder {scan.root}: the {part} split is empty; add images (classes "
                f"need at least 1 / {part}_fraction images each to carve it)"
            )
    if config.train_examples is not None and config.train_examples < train.size:
        rng = np.random.default_rng(config.split_seed)
        out["train"] = np.sort(rng.permutation(train)[: config.train_examples])
        notes.append(
            f"training on {config.train_examples} of {train.size} train images "
            f"(chosen by data.split_seed)"
        )
    return out, notes


def _carve(
    pool: np.ndarray,
    labels: np.ndarray,
    fractions: dict[str, float],
    scan: _Scan,
    seed: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Splits rows `pool` per class into (rest, {part: rows}), round(n * fraction) each.

    Each class is shuffled by (seed, crc32 of its name), so a class's carve does not
    depend on which other classes exist; every class keeps at least one training image.
    """
    rest, parts = [], {part: [] for part in fractions}
    for label in np.unique(labels[pool]):
        members = pool[labels[pool] == label]
        name = scan.classes[scan.labels[members[0]]]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        members = rng.permutation(members)
        sizes = {part: int(len(members) * f + 0.5) for part, f in fractions.items()}
        while sum(sizes.values()) >= len(members) and any(sizes.values()):
            largest = max(sizes, key=sizes.get)
            sizes[largest] -= 1
        start = 0
        for part, size in sizes.items():
            parts[part].append(members[start : start + size])
            start += size
        rest.append(members[start:])

    def joined(chunks):
        return np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, np.int64)

    return joined(rest), {part: joined(chunks) for part, chunks in parts.items()}
