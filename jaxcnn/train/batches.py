"""Where an epoch's training batches come from: one interface, resident or streamed data.

A `BatchSource` yields, per compiled call, the arguments of `Steps.train`: images and
labels, the rows of each step (resident data) and the number of steps. `fit` loops over it
without knowing which kind it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from jaxcnn import data
from jaxcnn.errors import DataError, JaxcnnError
from jaxcnn.spec import TrainConfig
from jaxcnn.train import sharding
from jaxcnn.train.step import Steps

Call = tuple  # (images, labels, indices or None, number of steps)


class BatchSource(Protocol):
    steps_per_epoch: int

    def place(self, layout: sharding.Layout) -> None:
        """Puts what stays on the devices for the whole run there (once)."""

    def epoch(
        self, steps: Steps, epoch: int, first: bool, skip: int = 0
    ) -> Iterator[Call]:
        """The calls of one epoch, after its first `skip` steps (a mid-epoch resume);
        `first`: this epoch starts the run (or its resume)."""


def source_for(
    split: data.Split | data.StreamSplit, cfg: TrainConfig, num_processes: int
) -> BatchSource:
    """The batch source of a training split, checked against the batch size and devices."""
    import jax

    for name in ("batch_size", "eval_batch_size"):
        if getattr(cfg, name) % jax.device_count():
            raise JaxcnnError(
                f"train.{name}={getattr(cfg, name)} does not divide by the "
                f"{jax.device_count()} devices that share each batch; use a multiple "
                f"of {jax.device_count()}"
            )
    if split.num_examples < cfg.batch_size:
        raise DataError(
            f"train.batch_size={cfg.batch_size} is larger than the {split.num_examples} "
            f"training examples; use a batch size <= {split.num_examples}"
        )
    if isinstance(split, data.Split):
        return ResidentBatches(split, cfg.batch_size, cfg.seed)
    return StreamedBatches(split, cfg.batch_size, cfg.seed, num_processes)


def eval_batch_size(cfg: TrainConfig, *splits: data.Split | data.StreamSplit) -> int:
    """`train.eval_batch_size`, at most the largest of `splits` (rounded up to a multiple
    of the devices): a larger batch would hold nothing but padding. Give every split a
    run evaluates, so that they share one batch shape (one compiled eval step)."""
    import jax

    devices = jax.device_count()
    largest = max(split.num_examples for split in splits)
    whole = -(-largest // devices) * devices
    return max(min(cfg.eval_batch_size, whole), devices)


class ResidentBatches:
    """A split held on the devices; each step gathers its rows there by index.

    Every process holds the (small) split and puts it on its own devices; the order of
    epoch e is `data.epoch_permutation(seed, e, n)`, cut into full batches.
    """

    def __init__(self, split: data.Split, batch_size: int, seed: int):
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.steps_per_epoch = split.num_examples // batch_size
        self._on_device = None

    def place(self, layout: sharding.Layout) -> None:
        self._layout = layout
        self._on_device = sharding.put(
            (self.split.images, self.split.labels), layout.replicated
        )

    def epoch(
        self, steps: Steps, epoch: int, first: bool, skip: int = 0
    ) -> Iterator[Call]:
        per_epoch, size = self.steps_per_epoch, self.batch_size
        perm = data.epoch_permutation(self.seed, epoch, self.split.num_examples)
        order = np.asarray(perm[: per_epoch * size]).reshape(per_epoch, size)
        images, labels = self._on_device
        done = skip
        while done < per_epoch:
            n = steps.count(per_epoch - done, first=first and done == skip)
            rows = steps.padded(order[done : done + n])
            yield images, labels, sharding.put(rows, self._layout.by_step_batch), n
            done += n


class StreamedBatches:
    """A split streamed from TFDS: n host batches stacked into one call.

    With several processes each reads its own equal slice of the split (TFDS split
    slicing) and contributes batch_size / processes rows to every batch.
    """

    def __init__(
        self, split: data.StreamSplit, batch_size: int, seed: int, num_processes: int
    ):
        from jaxcnn import distributed

        if num_processes > 1:
            split = split.shard(distributed.process_index(), num_processes)
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.local_batch = batch_size // num_processes
        self.steps_per_epoch = split.num_examples // self.local_batch

    def place(self, layout: sharding.Layout) -> None:
        self._layout = layout

    def epoch(
        self, steps: Steps, epoch: int, first: bool, skip: int = 0
    ) -> Iterator[Call]:
        per_epoch, done, chunk = self.steps_per_epoch, skip, []
        batches = self.split.batches(
            self.local_batch,
            seed=self.seed,
            epoch=epoch,
            shuffle=True,
            drop_remainder=True,
        )
        for _ in range(skip):  # the epoch's order is fixed: skip what already ran
            next(batches)
        for batch in batches:
            chunk.append(batch)
            if len(chunk) < steps.count(per_epoch - done, first and done == skip):
                continue
            images, labels = sharding.put_local(  # this process's rows of each batch
                (
                    steps.padded(np.stack([b.images for b in chunk])),
                    steps.padded(np.stack([b.labels for b in chunk])),
                ),
                self._layout.by_step_batch,
                self.batch_size,
                axis=1,
            )
            yield images, labels, None, len(chunk)
            done, chunk = done + len(chunk), []
            if done >= per_epoch:  # a shard may hold a few more
                return
