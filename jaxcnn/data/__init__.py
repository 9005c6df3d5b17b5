"""Datasets: TFDS image classification datasets, as arrays or streams, plus augmentation.

The package is the only place that imports TensorFlow / TensorFlow Datasets, lazily.
`arrays` holds the containers the trainer reads (`Split`, streams, `Dataset`, `Batch`),
`images` converts images to the model's input, `catalog` reads TFDS datasets by name.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxcnn.data import catalog
from jaxcnn.data.arrays import Batch, Dataset, Split, Stream, augment, epoch_permutation
from jaxcnn.data.catalog import DIGITS, StreamSplit, dataset_info, prepare_dataset
from jaxcnn.data.images import convert_images
from jaxcnn.spec import DataConfig

__all__ = [
    "DIGITS",
    "Batch",
    "Dataset",
    "Split",
    "Stream",
    "StreamSplit",
    "augment",
    "convert_images",
    "dataset_info",
    "epoch_permutation",
    "load_dataset",
    "prepare_dataset",
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
      config.device_limit_mb, else streams.

    Raises:
      DataError: unknown dataset, not prepared and not buildable offline, not an image
        classification dataset, unknown split, or an impossible shape conversion.
    """
    target = tuple(int(d) for d in input_shape) if input_shape else None
    return catalog.load_tfds(config, target)
