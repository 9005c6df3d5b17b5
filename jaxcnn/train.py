"""Training: compiled train/eval steps, the epoch loop, fit(), evaluate(), predict(), restore().

The model and optimiser live as one pytree `state` between steps (nnx.split once, nnx.merge
only inside compiled code), so each dispatch costs one call into XLA. A dispatch runs up
to `k` train steps as one rolled loop with a traced step count: one executable serves every
count, the epoch's last few steps included.

Resume is exact: the data order of an epoch is a function of (seed, epoch), augmentation
keys of (seed, step), and dropout draws from the model's own RNG state, which is part of
every checkpoint. Checkpoints are taken at epoch ends, so a run killed mid-epoch repeats
that epoch from its start and ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn import (
    checkpoint,
    cputune,
    data,
    distributed,
    metrics,
    models,
    optim,
    shapes,
    transfer,
)
from jaxcnn.errors import CheckpointError, DataError, JaxcnnError, TrainingError
from jaxcnn.spec import ModelSpec, RunConfig

# Fields that may change when a run in an existing workdir is continued.
_RESUMABLE_CHANGES = ("train.epochs", "train.patience")


def enable_compilation_cache(directory: str | None = None) -> None:
    """Turns on JAX's persistent compilation cache (shared by runs, trials, workers)."""
    directory = directory or os.environ.get(
        "JAXCNN_COMPILATION_CACHE",
        str(pathlib.Path.home() / ".cache" / "jaxcnn" / "xla"),
    )
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def default_steps_per_dispatch(backend: str) -> int:
    """How many train steps one compiled call runs when the config says 0 (auto).

    On CPU 4 steps per call: with jaxcnn.cputune's settings in effect, keras_mnist
    measured 9,679 (1 step) vs 10,457 images/s (4 steps) on synthetic data and 1.05-1.15x
    in real MNIST epochs; vgg_cifar 245 vs 260. Without them (JAXCNN_CPU_TUNING=off, or
    not glibc) 4 steps per call is what amortises XLA re-faulting its scratch memory on
    every call (1.7x). The steps are a rolled loop, so k costs no compile time; 8
    measured 3-6% faster than 4, within the run-to-run spread (benchmarks/results/
    levers_loop.md). Not measured on GPU/TPU: one step per call there.
    """
    return 4 if backend == "cpu" else 1


def rolls_steps(model: nnx.Module) -> bool:
    """Whether the steps of one call run as a rolled loop (`run_steps`) for `model`.

    Yes, except on CPU with a convolution running XLA's lax.conv: XLA:CPU runs it ~25x
    slower inside a loop body (jax-ml/jax#12868; a 3x3 conv step 13 ms vs 340 ms).
    """
    return model.kernel_plan().rolls_steps


def run_steps(step: Callable, num_steps: int, carry, rolled: bool):
    """carry = step(i, carry) for i in 0..num_steps-1, inside a traced function.

    Rolled, the steps are one `lax.fori_loop` whose body compiles once, so a call of k
    steps compiles as fast as a call of one (keras_mnist k=4: first call 1.4-1.7 s vs
    4.0-5.6 s unrolled) at the same speed per step, and num_steps may be a traced int32:
    one executable then runs any count (as fast as a static count: vgg_cifar 468 vs 469
    images/s). Unrolled in Python otherwise, and for a static count of one.
    """
    if rolled and not (isinstance(num_steps, int) and num_steps <= 1):
        return jax.lax.fori_loop(0, num_steps, step, carry)
    for i in range(num_steps):
        carry = step(i, carry)
    return carry


@dataclasses.dataclass
class FitResult:
    """What fit() returns: the summary.json fields plus the trained model."""

    summary: dict[str, Any]
    model: nnx.Module
    config: RunConfig
    spec: ModelSpec
    workdir: pathlib.Path
    history: list[dict[str, Any]]

    def __getattr__(self, name: str) -> Any:
        summary = self.__dict__.get("summary", {})
        if name in summary:
            return summary[name]
        raise AttributeError(name)


# --------------------------------------------------------------------------- compiled steps
def _loss_and_metrics(model, images, labels, weights, label_smoothing):
    logits = model(images)
    per_example = optim.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    loss = jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, (jnp.sum(per_example * weights), jnp.sum(correct * weights), logits)


class Steps:
    """The compiled functions of one run: train k steps, train 1 step, evaluate a batch.

    Data parallel over all devices of all processes: a 1-D mesh, parameters and
    optimiser state replicated, every batch split along its first axis; XLA inserts the
    gradient all-reduce. On one device this is the plain single-device program. Arrays
    enter through `_put` / `_put_local`, which build global arrays from what each
    process holds, so one process and many run the same code.
    """

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer,
        config: RunConfig,
        steps_per_call: int | None = None,
    ):
        """steps_per_call: the k of `count`/`padded`; None: every call runs the steps it
        is given, compiled once per count."""
        self.config = config
        self.rolled = rolls_steps(model)
        self.k = steps_per_call
        self.mesh = Mesh(np.array(jax.devices()), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.by_batch = NamedSharding(self.mesh, P("data"))  # [batch, ...]
        self.by_step_batch = NamedSharding(
            self.mesh, P(None, "data")
        )  # [steps, batch, ...]
        model.train()
        self.train_graph, state = nnx.split((model, optimizer))
        model.eval()
        self.eval_graph, _ = nnx.split((model, optimizer))
        self.state = _put(state, self.replicated)
        self._compiled: dict[Any, Any] = {}
        self.compile_seconds = 0.0
        seed = config.train.seed
        self.augment_key = jax.random.fold_in(jax.random.key(seed), 0x5EED)

    def _train_steps(self, state, images, labels, indices, step0, count):
        """Runs `count` steps (`run_steps`); images/labels are the resident split (rows
        chosen by `indices`, [steps, batch]) or the batches ([steps, batch, ...]), the
        leading axis padded beyond `count` when rolled."""
        cfg = self.config
        num_steps = images.shape[0] if indices is None else indices.shape[0]
        if self.rolled:
            num_steps = count

        def one_step(i, carry):
            state, sums = carry
            model, optimizer = nnx.merge(self.train_graph, state)
            if indices is None:  # streamed data: batch i was passed in
                x, y = images[i], labels[i]
            else:  # resident data: gather the batch on device
                x, y = images[indices[i]], labels[indices[i]]
            if cfg.data.augment_crop or cfg.data.augment_flip:
                key = jax.random.fold_in(self.augment_key, step0 + i)
                x = data.augment(
                    x, key, crop=cfg.data.augment_crop, flip=cfg.data.augment_flip
                )
            weights = jnp.ones(y.shape, jnp.float32)

            def loss_fn(model):
                return _loss_and_metrics(
                    model, x, y, weights, cfg.optim.label_smoothing
                )

            (_, (loss_sum, correct, _)), grads = nnx.value_and_grad(
                loss_fn, has_aux=True
            )(model)
            optimizer.update(model, grads)
            sums = sums + jnp.stack([loss_sum, correct, jnp.float32(y.shape[0])])
            _, state = nnx.split((model, optimizer))
            return state, sums

        sums = jnp.zeros((3,), jnp.float32)  # loss sum, correct sum, examples
        return run_steps(one_step, num_steps, (state, sums), self.rolled)

    def _eval_batch(self, state, images, labels, mask):
        model, _ = nnx.merge(self.eval_graph, state)
        _, (loss_sum, correct, logits) = _loss_and_metrics(
            model, images, labels, mask, self.config.optim.label_smoothing
        )
        return jnp.stack([loss_sum, correct, jnp.sum(mask)]), jnp.argmax(
            logits, axis=-1
        )

    def _get(self, name: str, fn: Callable, args: tuple, donate: tuple[int, ...] = ()):
        """Compiles `fn` for these argument shapes once (ahead of time) and times it."""
        key = (name, tuple((a.shape, str(a.dtype)) for a in args[1:] if a is not None))
        if key not in self._compiled:
            start = time.perf_counter()
            jitted = jax.jit(fn, donate_argnums=donate, out_shardings=self.replicated)
            self._compiled[key] = jitted.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    @property
    def num_compiled(self) -> int:
        return len(self._compiled)

    def count(self, remaining: int, first: bool = False) -> int:
        """How many steps the next call runs, `remaining` steps before the epoch ends.

        Rolled: k, or the `remaining` ones in one call (the same executable); the first
        call of a run runs one step, so that its loss arrives after compiling and one step
        rather than k. Unrolled, each count is its own executable: k, then one at a time.
        """
        if self.rolled:
            return 1 if first else min(self.k, remaining)
        return self.k if remaining >= self.k else 1

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """Per-step rows [n, ...] padded with zeros to [k, ...] when rolled: the one shape
        the rolled loop is compiled for (the padding is never read)."""
        if not self.rolled or len(rows) == self.k:
            return rows
        pad = np.zeros((self.k - len(rows), *rows.shape[1:]), rows.dtype)
        return np.concatenate([rows, pad])

    def train(
        self, images, labels, indices, step0: int, count: int | None = None
    ) -> jax.Array:
        """Runs `count` train steps (default: one per row of the leading axis) on the
        state; returns the [loss sum, correct, examples] sums of those steps."""
        if count is None:
            count = images.shape[0] if indices is None else indices.shape[0]
        args = (
            self.state,
            images,
            labels,
            indices,
            _put(np.int32(step0), self.replicated),
            _put(np.int32(count), self.replicated),
        )
        compiled = self._get("train", self._train_steps, args, donate=(0,))
        self.state, sums = compiled(*args)
        return sums

    def evaluate(
        self, batches
    ) -> tuple[tuple[float, float, float], np.ndarray, np.ndarray]:
        """Returns ([loss_sum, correct, count], labels, predictions) of the real examples."""
        totals = None
        labels, predictions = [], []
        for batch in batches:  # every process holds the whole batch; feeds its devices
            args = (
                self.state,
                *_put((batch.images, batch.labels, batch.mask), self.by_batch),
            )
            sums, preds = self._get("eval", self._eval_batch, args)(*args)
            totals = sums if totals is None else totals + sums
            keep = batch.mask > 0
            labels.append(batch.labels[keep])
            predictions.append(_host(preds)[keep])
        totals = tuple(float(v) for v in _host(totals))
        return totals, np.concatenate(labels), np.concatenate(predictions)

    def model(self) -> nnx.Module:
        model, _ = nnx.merge(self.eval_graph, self.state)
        return model


def _put(tree, sharding: NamedSharding):
    """Global arrays with `sharding` from values every process holds in full.

    Each process builds only the shards of its own devices (`make_array_from_callback`),
    so this works for one process and for many (where `jax.device_put` of a committed
    array onto other processes' devices is refused). Typed PRNG keys travel as key data.
    """

    def one(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                one(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jax.tree_util.tree_map(one, tree)


def _put_local(tree, sharding: NamedSharding, global_batch: int, axis: int):
    """Global arrays from this process's part of a batch (its rows along `axis`)."""

    def one(x):
        shape = list(x.shape)
        shape[axis] = global_batch
        return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

    return jax.tree_util.tree_map(one, tree)


def _host(x) -> np.ndarray:
    """A replicated array's value on the host (this process's copy)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


class _ReadOnlyLog:
    """The metrics history on processes other than 0, which write no files."""

    def __init__(self, workdir: pathlib.Path, resume_epoch: int):
        self._records = [
            r
            for r in metrics.read_metrics(workdir)
            if r.get("epoch", 0) <= resume_epoch
        ]

    def log_epoch(self, record: dict[str, Any]) -> None:
        self._records.append(dict(record))

    def read(self) -> list[dict]:
        return [dict(r) for r in self._records]

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- run set-up
def resolve_spec(config: RunConfig, num_classes: int | None = None) -> ModelSpec:
    """The model spec of a run; presets and families take the dataset's class count."""
    args = dict(config.model.args)
    if (
        num_classes is not None
        and "num_classes" not in args
        and config.model.spec is None
    ):
        name = config.model.name
        if name in models.PRESETS or name in models.FAMILIES:
            args["num_classes"] = num_classes
    spec = models.load_spec(dataclasses.replace(config.model, args=args))
    if num_classes is not None and spec.num_classes != num_classes:
        raise DataError(
            f"model {spec.name!r} has num_classes={spec.num_classes} but dataset "
            f"{config.data.dataset!r} has {num_classes} classes; set num_classes = "
            f"{num_classes} in the spec (or --classes/--set model.num_classes={num_classes})"
        )
    return spec


def _config_diff(old: dict, new: dict) -> list[str]:
    out = []
    for section in new:
        for key in sorted(set(old.get(section, {})) | set(new[section])):
            path = f"{section}.{key}"
            a, b = old.get(section, {}).get(key), new[section].get(key)
            if a != b and path not in _RESUMABLE_CHANGES:
                out.append(
                    f"{path}: {json.dumps(a)} in the workdir vs {json.dumps(b)} now"
                )
    return out


def _check_workdir(workdir: pathlib.Path, config: RunConfig, restart: bool) -> bool:
    """Returns True when the run should resume from checkpoints in `workdir`."""
    saved = workdir / "config.json"
    if restart or not saved.exists():
        return False
    diff = _config_diff(json.loads(saved.read_text()).get("run", {}), config.to_dict())
    if diff:
        raise JaxcnnError(
            f"workdir {workdir} holds a run with a different config ("
            + "; ".join(diff[:5])
            + "). Use another --workdir, or --restart to discard that run."
        )
    return checkpoint.has_checkpoint(workdir / "checkpoints")


def _clear_run_files(workdir: pathlib.Path) -> None:
    import shutil

    for name in ("checkpoints", "tensorboard"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "summary.json"):
        (workdir / name).unlink(missing_ok=True)


def _dataset_record(ds: data.Dataset) -> dict[str, Any]:
    return {
        "name": ds.name,
        "num_classes": ds.num_classes,
        "class_names": list(ds.class_names),
        "image_shape": list(ds.image_shape),
        "mean": None if ds.mean is None else np.asarray(ds.mean).tolist(),
        "std": None if ds.std is None else np.asarray(ds.std).tolist(),
        "train_examples": ds.train.num_examples,
        "val_examples": ds.val.num_examples,
        "test_examples": ds.test.num_examples,
        "notes": list(ds.notes),
    }


def _pure(state) -> Any:
    return nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state


# --------------------------------------------------------------------------- fit
def fit(
    config: RunConfig | None = None,
    workdir: str | os.PathLike | None = None,
    *,
    restart: bool = False,
    quiet: bool = False,
    dataset: data.Dataset | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Trains `config` in `workdir`, resuming from its checkpoints when they exist.

    Args:
      config: the run; defaults to the embedded digits run.
      workdir: where config.json, metrics.jsonl, summary.json, checkpoints/ and
        tensorboard/ go. Defaults to runs/<model>-<dataset>.
      restart: discard checkpoints and metrics already in `workdir`.
      quiet: no progress output.
      dataset: an already loaded dataset (sweeps reuse one across trials).
      on_epoch: called with each epoch's metrics record (sweeps prune on it); may raise
        to stop the run after its checkpoint was written.

    Returns:
      FitResult with the summary fields, the final model and the metrics history.
    """
    config = config or RunConfig()
    workdir = pathlib.Path(workdir or f"runs/{config.model.name}-{config.data.dataset}")
    enable_compilation_cache()
    # Several processes share one workdir (a shared filesystem): process 0 decides and
    # writes, the others follow its decision and only read.
    primary = distributed.is_primary()
    quiet = quiet or not primary
    try:
        resume = _check_workdir(workdir, config, restart) if primary else False
    except JaxcnnError:
        distributed.broadcast_from_primary(
            -1
        )  # the others stop too, instead of waiting
        raise
    status = distributed.broadcast_from_primary(int(resume))
    if status < 0:
        raise JaxcnnError(
            f"process 0 refused workdir {workdir}; its error message says why"
        )
    resume = bool(status)
    if primary and not resume:
        _clear_run_files(workdir)
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    distributed.barrier("jaxcnn:workdir")

    if dataset is None:
        # The class count does not change the input shape, which the data must match.
        input_shape = resolve_spec(config).input_shape
        dataset = data.load_dataset(config.data, input_shape=input_shape)
    spec = resolve_spec(config, dataset.num_classes)
    if dataset.image_shape != spec.input_shape:
        raise DataError(
            f"dataset {dataset.name!r} yields {dataset.image_shape} images but the model "
            f"takes {spec.input_shape}"
        )
    summary_static = shapes.infer(spec)
    if primary:
        metrics.write_json_atomic(
            workdir / "config.json",
            {
                "run": config.to_dict(),
                "model_spec": spec.to_dict(),
                "dataset": _dataset_record(dataset),
            },
        )

    cfg = config.train
    train_split = dataset.train
    batch_size = cfg.batch_size
    steps_per_epoch = train_split.num_examples // batch_size
    if steps_per_epoch == 0:
        raise DataError(
            f"train.batch_size={batch_size} is larger than the {train_split.num_examples} "
            f"training examples; use a batch size <= {train_split.num_examples}"
        )
    num_devices = jax.device_count()
    for name in ("batch_size", "eval_batch_size"):
        if getattr(cfg, name) % num_devices:
            raise JaxcnnError(
                f"train.{name}={getattr(cfg, name)} does not divide by the {num_devices} "
                f"devices that share each batch; use a multiple of {num_devices}"
            )
    num_processes = distributed.process_count()
    if num_processes > 1 and not isinstance(train_split, data.Split):
        # Streamed: each process reads its own equal slice of the training split and
        # contributes batch_size / num_processes rows to every batch.
        train_split = train_split.shard(distributed.process_index(), num_processes)
        steps_per_epoch = train_split.num_examples // (batch_size // num_processes)
    model = models.build_model(spec, seed=cfg.seed, kernels=cfg.kernels)
    if cfg.init_from and not resume:
        for note in transfer.init_from_run(
            model, spec, cfg.init_from, new_head=cfg.new_head
        ):
            if not quiet:
                print(note)
    tx, schedule = optim.make_optimizer(
        config.optim,
        steps_per_epoch=steps_per_epoch,
        epochs=cfg.epochs,
        trainable=transfer.trainable_mask(model, spec, cfg.freeze),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    backend = jax.default_backend()
    k = cfg.steps_per_dispatch or default_steps_per_dispatch(backend)
    k = min(k, steps_per_epoch)
    steps = Steps(model, optimizer, config, steps_per_call=k)

    history: list[dict[str, Any]] = []
    start_epoch, best_val = 0, -1.0
    with checkpoint.Checkpointer(
        workdir / "checkpoints", keep=cfg.keep_checkpoints
    ) as ckpt:
        if resume:  # every process restores (orbax reads collectively)
            restored, meta = ckpt.restore("latest", _pure(steps.state))
            nnx.replace_by_pure_dict(steps.state, restored)
            start_epoch = meta["epoch"]
            best_val = meta.get("best_val_accuracy", -1.0)
        if primary:
            log = metrics.MetricsLog(workdir, resume_epoch=start_epoch)
        else:
            log = _ReadOnlyLog(workdir, resume_epoch=start_epoch)
        history = log.read()
        resident = isinstance(train_split, data.Split)
        if resident:
            # Every process holds the (small) split and puts it on its own devices;
            # each device then gathers its rows of every batch by index.
            images_dev, labels_dev = _put(
                (train_split.images, train_split.labels), steps.replicated
            )
        # what loading and compiling left free goes back to the OS before the epochs
        cputune.release_free_memory()
        epochs_without_improvement = _epochs_since_best(history)
        train_seconds = sum(r.get("epoch_seconds", 0.0) for r in history)
        stopped_early = False
        try:
            for epoch in range(start_epoch, cfg.epochs):
                if cfg.patience and epochs_without_improvement >= cfg.patience:
                    stopped_early = True
                    break
                t0 = time.perf_counter()
                progress = metrics.Progress(
                    steps_per_epoch, epoch=epoch + 1, epochs=cfg.epochs, quiet=quiet
                )
                step0 = epoch * steps_per_epoch
                sums = None  # [loss sum, correct, count] summed over all processes
                compile_before = steps.compile_seconds
                if resident:
                    perm = data.epoch_permutation(
                        cfg.seed, epoch, train_split.num_examples
                    )
                    order = np.asarray(perm[: steps_per_epoch * batch_size]).reshape(
                        steps_per_epoch, batch_size
                    )
                    done = 0
                    while done < steps_per_epoch:
                        n = steps.count(
                            steps_per_epoch - done,
                            first=sums is None and epoch == start_epoch,
                        )
                        out = steps.train(
                            images_dev,
                            labels_dev,
                            _put(
                                steps.padded(order[done : done + n]),
                                steps.by_step_batch,
                            ),
                            step0 + done,
                            n,
                        )
                        sums = out if sums is None else sums + out
                        done += n
                        _report(
                            progress,
                            done,
                            sums,
                            t0,
                            steps.compile_seconds - compile_before,
                            batch_size,
                        )
                else:  # streamed: stack n host batches, one dispatch
                    done, chunk = 0, []
                    for batch in train_split.batches(
                        batch_size // num_processes,
                        seed=cfg.seed,
                        epoch=epoch,
                        shuffle=True,
                        drop_remainder=True,
                    ):
                        chunk.append(batch)
                        first = sums is None and epoch == start_epoch
                        if len(chunk) < steps.count(steps_per_epoch - done, first):
                            continue
                        xs, ys = _put_local(  # this process's rows of each batch
                            (
                                steps.padded(np.stack([b.images for b in chunk])),
                                steps.padded(np.stack([b.labels for b in chunk])),
                            ),
                            steps.by_step_batch,
                            batch_size,
                            axis=1,
                        )
                        out = steps.train(xs, ys, None, step0 + done, len(chunk))
                        sums = out if sums is None else sums + out
                        done, chunk = done + len(chunk), []
                        _report(
                            progress,
                            done,
                            sums,
                            t0,
                            steps.compile_seconds - compile_before,
                            batch_size,
                        )
                        if done >= steps_per_epoch:  # a shard may hold a few more
                            break
                train_loss, train_correct, train_count = (float(v) for v in _host(sums))
                train_time = (
                    time.perf_counter() - t0 - (steps.compile_seconds - compile_before)
                )
                if not math.isfinite(train_loss):
                    raise TrainingError(
                        f"the training loss became {train_loss} in epoch {epoch + 1}; the last "
                        f"good checkpoint (epoch {start_epoch if not history else history[-1]['epoch']}) "
                        f"is kept in {workdir / 'checkpoints'}. Lower the learning rate (now "
                        f"optim.lr={config.optim.lr}) or set optim.clip_norm=1.0"
                    )
                (val_loss, val_correct, val_count), _, _ = steps.evaluate(
                    dataset.val.batches(cfg.eval_batch_size)
                )
                step = step0 + steps_per_epoch
                record = {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": train_loss / train_count,
                    "train_accuracy": train_correct / train_count,
                    "val_loss": val_loss / val_count,
                    "val_accuracy": val_correct / val_count,
                    "lr": float(schedule(step)),
                    "epoch_seconds": time.perf_counter()
                    - t0
                    - (steps.compile_seconds - compile_before),
                    "images_per_second": train_count / max(train_time, 1e-9),
                }
                train_seconds += record["epoch_seconds"]
                if record["val_accuracy"] > best_val:
                    best_val, epochs_without_improvement = record["val_accuracy"], 0
                else:
                    epochs_without_improvement += 1
                if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                    ckpt.save(
                        step,
                        _pure(steps.state),
                        metrics={"val_accuracy": record["val_accuracy"]},
                        meta={"epoch": epoch + 1, "best_val_accuracy": best_val},
                    )
                log.log_epoch(record)
                history.append(record)
                progress.close(metrics.format_epoch(record, cfg.epochs))
                if on_epoch is not None:
                    on_epoch(record)
        finally:
            ckpt.wait()
            log.close()

        final_model = steps.model()
        # Test accuracy is reported for the best-by-validation checkpoint, as `eval` does.
        best_step = ckpt.best_step()
        if best_step is not None and best_step != ckpt.latest_step():
            best_state, _ = ckpt.restore("best", _pure(steps.state))
            nnx.replace_by_pure_dict(steps.state, best_state)
        (test_loss, test_correct, test_count), _, _ = steps.evaluate(
            dataset.test.batches(cfg.eval_batch_size)
        )
        best_epoch = (
            ckpt.read_meta(best_step)["epoch"] if best_step is not None else None
        )

    summary = {
        "test_accuracy": test_correct / test_count,
        "test_loss": test_loss / test_count,
        "best_val_accuracy": best_val,
        "best_epoch": best_epoch,
        "epochs": len(history),
        "stopped_early": stopped_early,
        "total_params": summary_static.total_params,
        "total_flops": summary_static.total_flops,
        "train_seconds": train_seconds,
        "compile_seconds": steps.compile_seconds,
        "executables": steps.num_compiled,
        "images_per_second": float(np.median([r["images_per_second"] for r in history]))
        if history
        else 0.0,
        "steps_per_dispatch": k,
        "dataset": dataset.name,
        "model": spec.name,
        "num_devices": jax.device_count(),
        "num_processes": num_processes,
        "backend": backend,
    }
    if primary:
        metrics.write_json_atomic(workdir / "summary.json", summary)
    if not quiet:
        print(
            f"test accuracy {summary['test_accuracy']:.4f} (best val "
            f"{best_val:.4f} at epoch {best_epoch}); run files in {workdir}"
        )
    return FitResult(summary, final_model, config, spec, workdir, history)


def _epochs_since_best(history: list[dict]) -> int:
    best, since = -1.0, 0
    for record in history:
        if record["val_accuracy"] > best:
            best, since = record["val_accuracy"], 0
        else:
            since += 1
    return since


def _report(progress, done, sums, t0, compile_s, batch_size) -> None:
    """Updates the progress bar when it will draw (reading `sums` syncs the device)."""
    if not progress.wants_update(done):
        return
    loss, correct, count = (float(v) for v in _host(sums))
    elapsed = max(time.perf_counter() - t0 - compile_s, 1e-9)
    progress.update(
        done,
        loss=loss / max(count, 1),
        accuracy=correct / max(count, 1),
        images_per_second=done * batch_size / elapsed,
    )


# --------------------------------------------------------------------------- restore / eval
@dataclasses.dataclass
class Restored:
    model: nnx.Module
    optimizer: nnx.Optimizer
    config: RunConfig
    spec: ModelSpec
    dataset: dict[str, Any]  # the dataset record from config.json (class names, stats)
    step: int
    epoch: int


def restore(workdir: str | os.PathLike, which: str | int = "best") -> Restored:
    """Rebuilds a run's model from `workdir` and loads a checkpoint ("best", "latest", step)."""
    workdir = pathlib.Path(workdir)
    config, spec, dataset_record = transfer.read_run(workdir)
    model, optimizer = transfer.build_run_state(config, spec)
    _, state = nnx.split((model, optimizer))
    with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
        step = {"best": ckpt.best_step, "latest": ckpt.latest_step}.get(
            which, lambda: which
        )()
        if step is None:
            raise CheckpointError(
                f"no checkpoint in {workdir / 'checkpoints'}; train first"
            )
        restored, meta = ckpt.restore(step, _pure(state))
    nnx.replace_by_pure_dict(state, restored)
    model, optimizer = nnx.merge(nnx.graphdef((model, optimizer)), state)
    model.eval()
    return Restored(
        model, optimizer, config, spec, dataset_record, int(step), int(meta["epoch"])
    )


def evaluate(
    workdir: str | os.PathLike, split: str = "test", *, which: str | int = "best"
) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix of a checkpoint on a split."""
    run = restore(workdir, which)
    ds = data.load_dataset(
        dataclasses.replace(run.config.data, test_split=split)
        if split not in ("train", "val")
        else run.config.data,
        input_shape=run.spec.input_shape,
    )
    chosen = {"train": ds.train, "val": ds.val}.get(split, ds.test)
    steps = Steps(run.model, run.optimizer, run.config)
    (loss, correct, count), labels, predictions = steps.evaluate(
        chosen.batches(run.config.train.eval_batch_size)
    )
    confusion = metrics.confusion_matrix(labels, predictions, ds.num_classes)
    return {
        "split": split,
        "step": run.step,
        "epoch": run.epoch,
        "examples": int(count),
        "loss": float(loss / count),
        "accuracy": float(correct / count),
        "class_names": list(ds.class_names),
        "per_class_accuracy": metrics.per_class_accuracy(confusion).tolist(),
        "confusion_matrix": confusion.tolist(),
    }


def predict(
    workdir: str | os.PathLike,
    images: Sequence[str | os.PathLike | np.ndarray],
    *,
    top_k: int = 3,
    which: str | int = "best",
) -> list[dict[str, Any]]:
    """Classifies images (paths to PNG/JPEG files, or uint8 HxWxC arrays).

    Returns one dict per input: `source`, and either `top` (list of {class, name,
    probability}) or `error` for a file that could not be read.
    """
    from PIL import Image, UnidentifiedImageError

    run = restore(workdir, which)
    record = run.dataset
    names = record["class_names"]
    results, arrays, where = [], [], []
    for item in images:
        source = str(item) if not isinstance(item, np.ndarray) else "<array>"
        if isinstance(item, np.ndarray):
            array = item
        else:
            try:
                with Image.open(item) as img:
                    array = np.asarray(
                        img.convert("RGB" if run.spec.input_shape[2] == 3 else "L")
                    )
            except (OSError, UnidentifiedImageError) as e:
                results.append({"source": source, "error": f"cannot read image: {e}"})
                continue
        if array.ndim == 2:
            array = array[:, :, None]
        results.append({"source": source})
        arrays.append(array)
        where.append(len(results) - 1)
    if arrays:
        batch = []
        for array in arrays:
            converted, notes = data.convert_images(array[None], run.spec.input_shape)
            batch.append(converted[0])
        x = np.stack(batch).astype(np.float32)
        if record.get("mean") is not None:
            x = (x - np.asarray(record["mean"], np.float32)) / np.asarray(
                record["std"], np.float32
            )
        probs = np.asarray(jax.nn.softmax(run.model(jnp.asarray(x)), axis=-1))
        k = min(top_k, probs.shape[1])
        for row, i in zip(probs, where, strict=True):
            order = np.argsort(-row)[:k]
            results[i]["top"] = [
                {"class": int(c), "name": names[c], "probability": float(row[c])}
                for c in order
            ]
    return results
