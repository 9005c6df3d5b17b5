"""A dataset's splits in host memory or streamed, its batches, the epoch order, augmentation.

Nothing here imports TensorFlow: the TFDS (`catalog`) and folder (`folders`) readers fill
these containers, and the trainer reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import DataError

STATS_CHUNK = (
    4096  # images per step of the standardisation statistics (bounds temporaries)
)


class Batch(NamedTuple):
    """One batch. Padding rows (only in the last batch) have mask 0 and zero images/labels.

    images: [batch, height, width, channels] float32. labels: [batch] int32. mask: [batch] float32.
    """

    images: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """A split held in host memory (the trainer places it on the device once).

    images: [n, height, width, channels] float32 in [0, 1], or standardised.
    labels: [n] int32.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.ndim != 4 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"Split needs images [n, H, W, C] and labels [n], got {self.images.shape} "
                f"and {self.labels.shape}"
            )

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = False,
        drop_remainder: bool = False,
    ) -> Iterator[Batch]:
        """Yields batches in order, or in the order of `epoch_permutation(seed, epoch, n)`.

        Without drop_remainder the last batch is padded to batch_size (mask 0), so every
        example is seen exactly once and shapes stay static.
        """
        check_batch_size(batch_size)
        n = self.num_examples
        order = (
            np.asarray(epoch_permutation(seed, epoch, n)) if shuffle else np.arange(n)
        )
        stop = n - n % batch_size if drop_remainder else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield padded_batch(self.images[index], self.labels[index], batch_size)


class Stream(Protocol):
    """A split read batch by batch (too big for device memory): TFDS or a folder's cache."""

    num_examples: int
    mean: np.ndarray | None
    std: np.ndarray | None

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = False,
        drop_remainder: bool = False,
    ) -> Iterator[Batch]:
        """Batches as `Split.batches` yields them (padding rows have mask 0)."""

    def shard(self, index: int, count: int) -> Stream:
        """Part `index` of `count` equal, disjoint parts (one per training process)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: three splits plus what the model and `predict` need to know."""

    name: str
    train: Split | Stream
    val: Split | Stream
    test: Split | Stream
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # H, W, C of the images the splits yield
    mean: np.ndarray | None  # [C] per-channel, when standardised (x - mean) / std
    std: np.ndarray | None
    notes: tuple[str, ...]  # human-readable conversions applied
    # Folders: sha256 of every file's (path, size, mtime); None for TFDS datasets
    fingerprint: str | None = None
    # "bgr": the splits' channels were reversed before mean/std (data.channels)
    channels: str = "rgb"


def check_fingerprint(record: Mapping[str, Any], dataset: Dataset) -> None:
    """Checks that `dataset` holds the files a run recorded (its config.json record).

    Raises:
      DataError: the record has a fingerprint and the dataset's files changed since.
    """
    saved = record.get("fingerprint")
    if saved is not None and saved != dataset.fingerprint:
        raise DataError(
            f"the images of dataset {dataset.name!r} changed since this run started "
            f"(fingerprint {str(dataset.fingerprint)[:12]} now, {saved[:12]} recorded: a "
            f"file was added, removed or modified); resuming would mix two datasets. "
            f"Restore the files, or use --restart or another --workdir to start afresh."
        )


def epoch_permutation(seed: int, epoch: int, n: int) -> jax.Array:
    """The example order of one epoch: int32 [n], from key fold_in(key(seed), epoch)."""
    key = jax.random.fold_in(jax.random.key(seed), epoch)
    return jax.random.permutation(key, n).astype(jnp.int32)


def augment(images: jax.Array, key: jax.Array, *, crop: int, flip: bool) -> jax.Array:
    """Random crop after zero padding and random horizontal flip, independently per image.

    Args:
      images: [batch, height, width, channels].
      key: PRNG key; consumed.
      crop: pad each side by this many zero pixels, then crop back to height x width at a
        random offset (0 disables).
      flip: mirror each image left-right with probability 1/2.

    Returns:
      Augmented images, same shape and dtype.
    """
    if crop == 0 and not flip:
        return images
    crop_key, flip_key = jax.random.split(key)
    batch, height, width, channels = images.shape
    if crop:
        padded = jnp.pad(images, ((0, 0), (crop, crop), (crop, crop), (0, 0)))
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * crop + 1)

        def crop_one(image, offset):
            return jax.lax.dynamic_slice(
                image, (offset[0], offset[1], 0), (height, width, channels)
            )

        images = jax.vmap(crop_one)(padded, offsets)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (batch,))
        images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1, :], images)
    return images


def standardize(
    splits: dict[str, Split | Stream],
) -> tuple[dict[str, Split | Stream], np.ndarray, np.ndarray, str]:
    """Standardises every split per channel with the train split's mean and std.

    Resident splits are changed in place (their arrays belong to the loader); streams get
    mean and std to apply to each batch.

    Returns:
      (splits, mean [C], std [C], a note saying what was done).
    """
    train = splits["train"]
    if isinstance(train, Split):
        images = train.images
        mean, std = channel_stats(
            images[i : i + STATS_CHUNK] for i in range(0, len(images), STATS_CHUNK)
        )
        for split in splits.values():
            np.subtract(split.images, mean, out=split.images)
            np.divide(split.images, std, out=split.images)
    else:
        batches = train.batches(1024)
        mean, std = channel_stats(b.images[b.mask > 0] for b in batches)
        splits = {
            part: dataclasses.replace(s, mean=mean, std=std)
            for part, s in splits.items()
        }
    note = f"standardised per channel with train mean {fmt(mean)}, std {fmt(std)}"
    return splits, mean, std, note


def normalize_splits(
    splits: dict[str, Split | Stream],
    mean: Sequence[float],
    std: Sequence[float],
    channels: str,
    image_shape: Sequence[int],
) -> tuple[dict[str, Split | Stream], np.ndarray, np.ndarray, str]:
    """Normalises every split with fixed per-channel statistics (`data.mean`/`std`),
    after reversing the channels when `channels` is "bgr".

    Resident splits are changed in place; streams get mean and std to apply to each
    batch (and cannot reorder channels).

    Returns:
      (splits, mean [C], std [C], a note saying what was done).

    Raises:
      DataError: statistics for another number of channels than the images have, or
        "bgr" on a streamed split.
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if mean.shape != (image_shape[-1],):
        raise DataError(
            f"data.mean / data.std have {mean.size} values but the images have "
            f"{image_shape[-1]} channel(s) ({'x'.join(map(str, image_shape))}); give "
            f"one value per channel"
        )
    bgr = channels == "bgr"
    if bgr and not all(isinstance(s, Split) for s in splits.values()):
        raise DataError(
            'data.channels="bgr" needs the dataset resident in memory, but it streams '
            "(it exceeds data.device_limit_mb); raise data.device_limit_mb"
        )
    out = {}
    for part, split in splits.items():
        if isinstance(split, Split):
            if bgr:
                split.images[...] = split.images[..., ::-1]
            np.subtract(split.images, mean, out=split.images)
            np.divide(split.images, std, out=split.images)
            out[part] = split
        else:
            out[part] = dataclasses.replace(split, mean=mean, std=std)
    note = f"normalised per channel with data.mean {fmt(mean)}, std {fmt(std)}" + (
        " after reordering the channels to BGR" if bgr else ""
    )
    return out, mean, std, note


def channel_stats(chunks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std, float32 [C], over chunks of [n, H, W, C] images.

    One pass with float64 sums; chunks keep the temporaries small.
    """
    total = squares = 0.0
    count = 0
    for chunk in chunks:
        total = total + chunk.sum(axis=(0, 1, 2), dtype=np.float64)
        squares = squares + np.square(chunk).sum(axis=(0, 1, 2), dtype=np.float64)
        count += chunk.shape[0] * chunk.shape[1] * chunk.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def padded_batch(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Batch:
    """Pads a short last batch with zero rows whose mask is 0."""
    n = images.shape[0]
    mask = np.zeros(batch_size, np.float32)
    mask[:n] = 1.0
    if n < batch_size:
        pad = batch_size - n
        images = np.concatenate(
            [images, np.zeros((pad, *images.shape[1:]), images.dtype)]
        )
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return Batch(
        images.astype(np.float32, copy=False), labels.astype(np.int32, copy=False), mask
    )


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in np.asarray(values)) + "]"
