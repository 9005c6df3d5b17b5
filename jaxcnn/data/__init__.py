"""Datasets: TFDS image classification datasets, as arrays or streams, plus augmentation.

The package is the only place that imports TensorFlow / TensorFlow Datasets, lazily.
`arrays` holds the containers the trainer reads (`Split`, streams, `Dataset`, `Batch`),
`images` decodes image files and converts images to the model's input, `catalog` reads
TFDS datasets by name, `folders` reads folders of image files (one sub-folder per class).
`data.dataset` names a folder when it is a path by its form (starting with /, . or ~, or
ending with /) or an existing directory (`folders.is_folder`); anything else is a TFDS
name. A bare name (`mnist`, `digits`) that is both a registered TFDS dataset and a
directory where jaxcnn runs is the TFDS dataset, with a note saying how to use the folder
(`./mnist`): a folder of raw downloads, or a workdir named after the dataset, is never
read as a folder dataset by accident.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from jaxcnn.data import catalog, folders
from jaxcnn.data.arrays import (
    Batch,
    Dataset,
    Split,
    Stream,
    augment,
    check_fingerprint,
    epoch_permutation,
)
from jaxcnn.data.catalog import DIGITS, StreamSplit
from jaxcnn.data.folders import FolderStream
from jaxcnn.data.images import (
    IMAGE_SUFFIXES,
    convert_images,
    normalize,
    prepare,
    read_image,
)
from jaxcnn.spec import DataConfig

__all__ = [
    "DIGITS",
    "IMAGE_SUFFIXES",
    "Batch",
    "FolderStream",
    "Dataset",
    "Split",
    "Stream",
    "StreamSplit",
    "augment",
    "check_fingerprint",
    "convert_images",
    "dataset_info",
    "epoch_permutation",
    "folder_fingerprint",
    "load_dataset",
    "normalize",
    "prepare",
    "prepare_dataset",
    "read_image",
]


def load_dataset(
    config: DataConfig, *, input_shape: Sequence[int] | None = None
) -> Dataset:
    """Prepares (if needed) and loads a dataset as arrays, or as streams when it is too big.

    Args:
      config: which dataset, where it lives, splits, standardisation, device_limit_mb.
      input_shape: (H, W, C) the model expects; images are resized (bilinear) and converted
        (grayscale <-> RGB) to it when it differs from the dataset's. None keeps them as is.

    Returns:
      A Dataset whose splits are resident `Split`s when all three, as float32, fit in
      config.device_limit_mb, else streams (`StreamSplit`, `FolderStream`).

    Raises:
      DataError: unknown dataset, not prepared and not buildable offline, not an image
        classification dataset, unknown split, an impossible shape conversion, or bad
        files in a folder (see `folders`).
    """
    target = tuple(int(d) for d in input_shape) if input_shape else None
    if _is_folder(config.dataset):
        return folders.load_folder(config, target)
    ds = catalog.load_tfds(config, target)
    if folders.is_folder(config.dataset):  # a directory of that name is here too
        note = (
            f"data.dataset={config.dataset!r} is the registered dataset; the folder of "
            f"that name here is not read (pass ./{config.dataset} to train on it)"
        )
        ds = dataclasses.replace(ds, notes=(*ds.notes, note))
    return ds


def _is_folder(name: str) -> bool:
    """Whether `name` is read as a folder dataset (see the module doc)."""
    if not folders.is_folder(name):
        return False
    if folders.is_path_form(name):
        return True
    return not catalog.is_registered(name)


def prepare_dataset(
    name: str, *, data_dir: str | None = None, manual_dir: str | None = None
) -> None:
    """Makes sure TFDS dataset `name` is prepared in data_dir (see `catalog`); folders
    need no preparation (`load_dataset` decodes and caches them)."""
    if not _is_folder(name):
        catalog.prepare_dataset(name, data_dir=data_dir, manual_dir=manual_dir)


def folder_fingerprint(path: str | os.PathLike) -> str | None:
    """The fingerprint a run records for folder dataset `path` (every image file's
    path, size and modification time; nothing is decoded), or None when `path` is no
    longer a directory."""
    if not os.path.isdir(path):
        return None
    return folders.fingerprint(path)


def dataset_info(
    name: str, *, data_dir: str | None = None
) -> tuple[int, tuple[str, ...], tuple[int, int, int]]:
    """(num_classes, class_names, image_shape): TFDS metadata, or a folder's class folders
    and the shape of its first image."""
    if _is_folder(name):
        return folders.folder_info(name)
    return catalog.dataset_info(name, data_dir=data_dir)
