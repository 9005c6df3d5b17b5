"""The train step and the eval step, pure functions of (state, batch), and their compiled form.

`train_step` and `eval_step` are the only definitions of what one optimiser step and one
evaluation batch compute. `fit` runs them through `Steps` (k steps per compiled call on the
run's `Layout`) and the benchmarks time `Steps`.

State is the pytree of `nnx.split((model, optimizer))`; a graph def (train or eval mode)
turns it back into modules inside compiled code only, so a call costs one dispatch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import data, optim
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import RunConfig
from jaxcnn.train import sharding

_AUGMENT_STREAM = 0x5EED  # folded into the seed: augmentation keys, apart from init


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What a step computes beyond the model: label smoothing and augmentation."""

    label_smoothing: float = 0.0
    augment_crop: int = 0
    augment_flip: bool = False

    @classmethod
    def from_config(cls, config: RunConfig) -> StepOptions:
        return cls(
            config.optim.label_smoothing,
            config.data.augment_crop,
            config.data.augment_flip,
        )


def check_augment_crop(crop: int, image_shape: tuple[int, ...]) -> None:
    """Refuses a random-crop padding that would leave most crops mostly padding.

    The crop pads by `crop` pixels and cuts an image-sized window at a random offset,
    shifting the image by up to `crop` pixels each way. A quarter of the smaller side
    keeps at least three quarters of each axis in every crop (4 on 32 px, CIFAR's
    usual); beyond it, training sees shifted-out, mostly empty images.
    """
    limit = min(image_shape[:2]) // 4
    if crop > limit:
        raise JaxcnnError(
            f"data.augment_crop={crop} shifts the {image_shape[0]}x{image_shape[1]} "
            f"images by up to {crop} pixels, so many crops would be mostly padding; "
            f"use 0 to {limit} (a quarter of the smaller side)"
        )


def augment_key(seed: int) -> jax.Array:
    """The run's augmentation key; step s augments with fold_in(key, s)."""
    return jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM)


def loss_and_sums(model, images, labels, weights, label_smoothing: float):
    """Weighted mean cross-entropy, its sums and the logits.

    Returns:
      (loss, sums, logits): sums is [loss sum, correct, weight sum] over the batch.
    """
    logits = model(images)
    per_example = optim.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    total = jnp.sum(weights)
    loss = jnp.sum(per_example * weights) / jnp.maximum(total, 1.0)
    sums = jnp.stack(
        [jnp.sum(per_example * weights), jnp.sum(correct * weights), total]
    )
    return loss, (sums, logits)


def train_step(
    graph, state, images, labels, key, options: StepOptions, tx_from=None, values=None
):
    """One optimiser step on one batch.

    Args:
      graph: the train-mode graph def of (model, optimizer).
      state: its state pytree.
      images: [batch, H, W, C]; labels: [batch] int32.
      key: this step's augmentation key (unused without augmentation).
      options: label smoothing and augmentation.
      tx_from, values: when given, the step updates with `tx_from(values)` rather than
        the optimizer's own transformation (the same one, built from the traced
        `values`, e.g. the learning rate, so they are arguments and not constants).

    Returns:
      (new state, [loss sum, correct, examples] of the batch).
    """
    model, optimizer = nnx.merge(graph, state)
    if tx_from is not None:
        optimizer.tx = tx_from(values)
    if options.augment_crop or options.augment_flip:
        images = data.augment(
            images, key, crop=options.augment_crop, flip=options.augment_flip
        )
    weights = jnp.ones(labels.shape, jnp.float32)

    def loss_fn(model):
        return loss_and_sums(model, images, labels, weights, options.label_smoothing)

    (_, (sums, _)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return nnx.split((model, optimizer))[1], sums


def eval_step(graph, state, images, labels, mask, options: StepOptions):
    """Sums [loss, correct, count] of the masked examples and the predicted classes."""
    model, _ = nnx.merge(graph, state)
    _, (sums, logits) = loss_and_sums(
        model, images, labels, mask, options.label_smoothing
    )
    return sums, jnp.argmax(logits, axis=-1)


def run_steps(step: Callable, num_steps, carry, rolled: bool):
    """carry = step(i, carry) for i in 0..num_steps-1, inside a traced function.

    Rolled, the steps are one `lax.fori_loop` whose body compiles once, and num_steps may
    be a traced int32 (one executable runs any count). Unrolled in Python otherwise, and
    for a static count of one.
    """
    if rolled and not (isinstance(num_steps, int) and num_steps <= 1):
        return jax.lax.fori_loop(0, num_steps, step, carry)
    for i in range(num_steps):
        carry = step(i, carry)
    return carry


def train_steps(
    graph,
    options,
    rolled,
    tx_from,
    state,
    images,
    labels,
    indices,
    step0,
    count,
    sums,
    key,
    values,
):
    """Runs `count` train steps, adding each step's sums to the running `sums`.

    Args:
      images, labels: the resident split (then `indices` [steps, batch] picks each step's
        rows on device) or the batches themselves ([steps, batch, ...], indices None).
        When rolled, the leading axis is padded beyond `count`; the padding is never read.
      step0: the global step of the first step (augmentation keys).
      count: steps to run (traced when rolled).
      sums: the epoch's running [loss sum, correct, examples]; adding in step order keeps
        the epoch's totals independent of how its steps are grouped into calls.
      key: the run's augmentation key.
      tx_from, values: the optimiser built from traced values (see `train_step`), or
        None and {}.
    """
    num_steps = count if rolled else (images if indices is None else indices).shape[0]

    def one(i, carry):
        state, sums = carry
        if indices is None:
            x, y = images[i], labels[i]
        else:
            x, y = images[indices[i]], labels[indices[i]]
        state, batch_sums = train_step(
            graph,
            state,
            x,
            y,
            jax.random.fold_in(key, step0 + i),
            options,
            tx_from,
            values,
        )
        return state, sums + batch_sums

    return run_steps(one, num_steps, (state, sums), rolled)


def rolls_steps(model: nnx.Module) -> bool:
    """Whether the steps of one call run as a rolled loop for `model` (its kernel plan)."""
    return model.kernel_plan().rolls_steps


def default_steps_per_dispatch(backend: str) -> int:
    """Train steps per compiled call when the config says 0 (auto).

    Several steps per call amortise the dispatch and XLA:CPU's per-call scratch memory
    (benchmarks/results/levers_loop.md); on GPU/TPU one step per call.
    """
    return 4 if backend == "cpu" else 1


class Steps:
    """The compiled train and eval steps of one run, and its current state.

    Each distinct argument shape compiles once (ahead of time, timed in
    `compile_seconds`). With `steps_per_call` k and rolled steps, one executable runs any
    count up to k; unrolled, each count is its own executable.

    With `tx_from` and `values` (`optim.make_optimizer`'s builder and its
    `optim.traced_values`), the train step builds the optimizer's transformation from
    `values` passed as arguments: the learning rate and the other optimiser numbers are
    then not constants of the executable, and runs that differ only in them share it
    (and its persistent cache entry). `tx_from(values)` must have the structure of the
    optimizer's own transformation.
    """

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer,
        config: RunConfig,
        steps_per_call: int | None = None,
        layout: sharding.Layout | None = None,
        tx_from: Callable[[dict], Any] | None = None,
        values: dict[str, float] | None = None,
    ):
        self.options = StepOptions.from_config(config)
        self.rolled = rolls_steps(model)
        self.k = steps_per_call
        self.layout = layout or sharding.Layout.over_all_devices()
        model.train()
        self.train_graph, state = nnx.split((model, optimizer))
        model.eval()
        self.eval_graph, _ = nnx.split((model, optimizer))
        self.state = sharding.put(state, self.layout.replicated)
        self.key = sharding.put(augment_key(config.train.seed), self.layout.replicated)
        self.tx_from = tx_from
        self.values = sharding.put(
            {k: np.float32(v) for k, v in (values or {}).items()},
            self.layout.replicated,
        )
        self._compiled: dict[Any, Any] = {}
        self.compile_seconds = 0.0
        self.cache_hits = 0  # executables loaded from the persistent compilation cache
        # told about each compile: (what, None) before it, (what, (seconds, cache
        # hit)) after it; None: silent
        self.on_compile: Callable[[str, tuple[float, bool] | None], None] | None = None

    def _get(self, name: str, fn: Callable, args: tuple, donate: tuple[int, ...] = ()):
        key = (name, tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(args[1:])))
        if key not in self._compiled:
            what = f"the {name} step"
            if self.on_compile:
                self.on_compile(what, None)
            hits = _persistent_cache_hits()
            start = time.perf_counter()
            self._compiled[key] = self.jit(fn, donate).lower(*args).compile()
            seconds = time.perf_counter() - start
            self.compile_seconds += seconds
            hit = _persistent_cache_hits() > hits
            self.cache_hits += hit
            if self.on_compile:
                self.on_compile(what, (seconds, hit))
        return self._compiled[key]

    def jit(self, fn: Callable, donate: tuple[int, ...] = ()):
        """`jax.jit` of a step function as this run compiles it (outputs replicated)."""
        return jax.jit(fn, donate_argnums=donate, out_shardings=self.layout.replicated)

    @property
    def num_compiled(self) -> int:
        return len(self._compiled)

    def memory(self) -> dict[str, int]:
        """XLA's memory analysis of the compiled train call with the most temporaries:
        bytes of its temporaries, arguments and outputs, and the bytes its cost
        analysis expects it to access ({} before the first train call, or where the
        backend reports none)."""
        calls = [c for key, c in self._compiled.items() if key[0] == "train"]
        reports = []
        for call in calls:
            stats, cost = call.memory_analysis(), call.cost_analysis()
            if stats is None:
                continue
            cost = cost[0] if isinstance(cost, list | tuple) else cost or {}
            reports.append(
                {
                    "temp_bytes": int(stats.temp_size_in_bytes),
                    "argument_bytes": int(stats.argument_size_in_bytes),
                    "output_bytes": int(stats.output_size_in_bytes),
                    "bytes_accessed": int(cost.get("bytes accessed", 0)),
                }
            )
        return max(reports, key=lambda r: r["temp_bytes"], default={})

    def count(self, remaining: int, first: bool = False) -> int:
        """How many steps the next call runs, `remaining` steps before the epoch ends.

        Rolled: k, or the `remaining` ones (the same executable); the first call of a run
        runs one step, so its loss arrives after compiling and one step rather than k.
        Unrolled: k, then one at a time.
        """
        if self.rolled:
            return 1 if first else min(self.k, remaining)
        return self.k if remaining >= self.k else 1

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """Per-step rows [n, ...] zero-padded to [k, ...] when rolled (the compiled shape)."""
        if not self.rolled or len(rows) == self.k:
            return rows
        pad = np.zeros((self.k - len(rows), *rows.shape[1:]), rows.dtype)
        return np.concatenate([rows, pad])

    def train(self, images, labels, indices, step0: int, count=None, sums=None):
        """Runs `count` train steps (default: one per row of the leading axis).

        Returns the running [loss sum, correct, examples]: `sums` (default zeros) plus
        those of these steps.
        """
        fn, args = self.train_call(images, labels, indices, step0, count, sums)
        self.state, sums = self._get("train", fn, args, donate=(0,))(*args)
        return sums

    def train_call(self, images, labels, indices, step0: int, count=None, sums=None):
        """(function, arguments) of the train call `train` compiles (with
        `jit(function, donate=(0,))`) and runs for these arguments."""
        if count is None:
            count = (images if indices is None else indices).shape[0]
        if sums is None:
            sums = np.zeros((3,), np.float32)
        replicated = self.layout.replicated
        fn = functools.partial(
            train_steps, self.train_graph, self.options, self.rolled, self.tx_from
        )
        args = (
            self.state,
            images,
            labels,
            indices,
            sharding.put(np.int32(step0), replicated),
            sharding.put(np.int32(count), replicated),
            sums if isinstance(sums, jax.Array) else sharding.put(sums, replicated),
            self.key,
            self.values,
        )
        return fn, args

    def compile_train(self, batch_size: int, input_shape: tuple[int, ...]) -> None:
        """Compiles the train call for `steps_per_call` batches of `batch_size` images of
        `input_shape` given per step (streamed data), without running it: `memory`
        then reports XLA's analysis of it."""
        k, by_step = self.k or 1, self.layout.by_step_batch
        images = jax.ShapeDtypeStruct((k, batch_size, *input_shape), np.float32)
        labels = jax.ShapeDtypeStruct((k, batch_size), np.int32)
        fn, args = self.train_call(
            jax.ShapeDtypeStruct(images.shape, images.dtype, sharding=by_step),
            jax.ShapeDtypeStruct(labels.shape, labels.dtype, sharding=by_step),
            None,
            0,
        )
        self._get("train", fn, args, donate=(0,))

    def evaluate(self, batches: Iterable[data.Batch]):
        """([loss sum, correct, count], labels, predictions) over the real examples.

        Every process holds each whole batch and feeds its own devices their rows.
        """
        totals, labels, predictions = None, [], []
        for batch in batches:
            fn, args = self.eval_call(batch)
            sums, preds = self._get("eval", fn, args)(*args)
            totals = sums if totals is None else totals + sums
            keep = batch.mask > 0
            labels.append(batch.labels[keep])
            predictions.append(sharding.host(preds)[keep])
        totals = tuple(float(v) for v in sharding.host(totals))
        return totals, np.concatenate(labels), np.concatenate(predictions)

    def eval_call(self, batch: data.Batch):
        """(function, arguments) of the eval call `evaluate` compiles (with
        `jit(function)`) and runs for one batch."""
        fn = functools.partial(eval_step, self.eval_graph, options=self.options)
        parts = (batch.images, batch.labels, batch.mask)
        return fn, (self.state, *sharding.put(parts, self.layout.by_batch))

    def model(self) -> nnx.Module:
        """The model with the current state, in eval mode."""
        model, _ = nnx.merge(self.eval_graph, self.state)
        return model


_CACHE_HIT = "/jax/compilation_cache/cache_hits"  # jax.monitoring's event
_events: dict[str, int] = {}


@functools.cache
def _listen_to_cache_events() -> None:
    """Counts jax.monitoring's events from now on (one listener for the process)."""
    jax.monitoring.register_event_listener(
        lambda event, **_: _events.__setitem__(event, _events.get(event, 0) + 1)
    )


def _persistent_cache_hits() -> int:
    """Executables loaded from the persistent compilation cache in this process so far
    (since the first call)."""
    _listen_to_cache_events()
    return _events.get(_CACHE_HIT, 0)


def enable_compilation_cache(directory: str | None = None) -> None:
    """Turns on JAX's persistent compilation cache (shared by runs, trials, workers).

    JAX writes an entry in place and never replaces an existing one, so an entry cut
    short (a process killed while writing it) would make every later run warn and
    compile again. Entries written since the last check are therefore read once here,
    and one that does not decompress is removed, so that the next compile rewrites it.
    """
    directory = directory or os.environ.get(
        "JAXCNN_COMPILATION_CACHE",
        str(pathlib.Path.home() / ".cache" / "jaxcnn" / "xla"),
    )
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        remove_unreadable_cache_entries(directory)


_CHECKED = ".jaxcnn-checked"  # its mtime: when the entries were last checked


def remove_unreadable_cache_entries(directory: str | os.PathLike) -> list[str]:
    """Removes the compilation cache entries written since the last check that do not
    decompress, each with a line on stderr; returns their file names.

    An entry being written by another process at that moment may be removed too; that
    only costs it a compile.
    """
    try:  # the codec JAX wrote the entries with (zstd or zlib)
        from jax._src.compilation_cache import decompress_executable
    except ImportError:
        return []
    directory = pathlib.Path(directory)
    stamp = directory / _CHECKED
    since = stamp.stat().st_mtime if stamp.exists() else 0.0
    started, removed = time.time(), []
    for entry in sorted(directory.glob("*-cache")):
        try:
            if entry.stat().st_mtime < since:
                continue
            decompress_executable(entry.read_bytes())
        except OSError:  # gone, or not readable: JAX reports what it cannot read
            continue
        except Exception as e:  # the codec's error for a truncated or damaged entry
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
            print(
                f"warning: removed the unreadable compilation cache entry {entry} "
                f"({type(e).__name__}: {e}); the next compile writes it again",
                file=sys.stderr,
            )
    if directory.is_dir():
        stamp.touch()
        os.utime(stamp, (started, started))
    return removed
