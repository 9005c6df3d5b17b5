"""K seeds in one compiled program: `jax.vmap` of the one train step over a replica axis.

Replica i is the run `train.fit` would do with train.seed = seed + i: its own
initialisation (`build_model(seed=seed + i)`), its own data order
(`data.epoch_permutation(seed + i, epoch, n)`), its own augmentation key and its own
dropout RNG state (part of the model state). The K states are stacked leaf by leaf and
`step.train_step` / `step.eval_step`, vmapped, update and evaluate all of them; the data
stays shared and unbatched.

Limits (see also `sweep.trial.default_replicas_mode`): resident datasets only, one step per
dispatch, no checkpoints (an interrupted vmapped trial restarts; the sequential mode
resumes per seed), test metrics of the final (not best-by-val) weights.
"""

from __future__ import annotations

import functools
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import data, models, optim, rundir
from jaxcnn.errors import JaxcnnError, TrainingError
from jaxcnn.spec import RunConfig
from jaxcnn.train import loop, step


class _Replicas:
    """K stacked run states and their vmapped, compiled train and eval steps."""

    def __init__(self, config: RunConfig, spec, dataset: data.Dataset, seeds):
        cfg = config.train
        self.seeds, self.batch_size = seeds, cfg.batch_size
        self.steps_per_epoch = dataset.train.num_examples // cfg.batch_size
        states = []
        for seed in seeds:
            model = models.build_run_model(spec, cfg, seed)
            tx, self.schedule = optim.make_optimizer(
                config.optim, steps_per_epoch=self.steps_per_epoch, epochs=cfg.epochs
            )
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
            model.train()
            self.train_graph, state = nnx.split((model, optimizer))
            model.eval()
            self.eval_graph, _ = nnx.split((model, optimizer))
            states.append(state)
        self.state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        self.keys = jnp.stack([step.augment_key(s) for s in seeds])
        self.options = step.StepOptions.from_config(config)
        self.images = jax.device_put(dataset.train.images)
        self.labels = jax.device_put(dataset.train.labels)
        start = time.perf_counter()
        self._compile(next(iter(dataset.val.batches(cfg.eval_batch_size))))
        self.compile_seconds = time.perf_counter() - start

    def _train_one(self, state, rows, key, step_index):
        return step.train_step(
            self.train_graph,
            state,
            self.images[rows],
            self.labels[rows],
            jax.random.fold_in(key, step_index),
            self.options,
        )

    def _compile(self, eval_batch: data.Batch) -> None:
        rows = jnp.zeros((len(self.seeds), self.batch_size), jnp.int32)
        vtrain = jax.vmap(self._train_one, in_axes=(0, 0, 0, None))
        self._train = (
            jax.jit(vtrain, donate_argnums=0)
            .lower(self.state, rows, self.keys, jnp.int32(0))
            .compile()
        )
        veval = jax.vmap(
            functools.partial(step.eval_step, self.eval_graph, options=self.options),
            in_axes=(0, None, None, None),
        )
        args = (self.state, *(jnp.asarray(a) for a in eval_batch))
        self._eval = jax.jit(veval).lower(*args).compile()

    def train_epoch(self, epoch: int) -> np.ndarray:
        """One epoch of every replica; [replicas, 3] sums (loss, correct, examples)."""
        n, size, per_epoch = len(self.images), self.batch_size, self.steps_per_epoch
        orders = np.stack(
            [
                np.asarray(data.epoch_permutation(seed, epoch, n))[
                    : per_epoch * size
                ].reshape(per_epoch, size)
                for seed in self.seeds
            ],
            axis=1,
        )  # [steps, replicas, batch]
        sums = jnp.zeros((len(self.seeds), 3), jnp.float32)
        for i in range(per_epoch):
            self.state, step_sums = self._train(
                self.state,
                jnp.asarray(orders[i]),
                self.keys,
                np.int32(epoch * per_epoch + i),
            )
            sums = sums + step_sums
        return np.asarray(sums)

    def evaluate(self, split, batch_size: int) -> np.ndarray:
        """[replicas, 3] sums (loss, correct, count) over every example of `split`."""
        totals = jnp.zeros((len(self.seeds), 3), jnp.float32)
        for batch in split.batches(batch_size):
            sums, _ = self._eval(self.state, *(jnp.asarray(a) for a in batch))
            totals = totals + sums
        return np.asarray(totals)


def fit_replicas(
    config: RunConfig,
    run_dir: str | pathlib.Path,
    num_replicas: int,
    *,
    dataset: data.Dataset | None = None,
    quiet: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Trains seeds config.train.seed .. + num_replicas - 1 together.

    Writes run_dir/seed<i>/{metrics.jsonl, summary.json} and returns, per replica,
    (summary dict, per-epoch history) with the fields `train.fit` reports.
    `on_epoch` sees replica 0's record (sweeps prune on it).
    """
    step.enable_compilation_cache()
    if dataset is None:
        input_shape = loop.resolve_spec(config).input_shape
        dataset = data.load_dataset(config.data, input_shape=input_shape)
    if not isinstance(dataset.train, data.Split):
        raise JaxcnnError(
            "replicas=vmap needs a dataset resident in memory; use sequential"
        )
    spec = loop.resolve_spec(config, dataset.num_classes)
    seeds = [config.train.seed + i for i in range(num_replicas)]
    replicas = _Replicas(config, spec, dataset, seeds)
    histories = _train(replicas, config, dataset, on_epoch)
    test = replicas.evaluate(dataset.test, config.train.eval_batch_size)
    out = []
    for i, seed in enumerate(seeds):
        history = histories[i]
        best = max(history, key=lambda r: r["val_accuracy"])
        summary = loop.summarize(
            spec,
            dataset,
            history,
            test=tuple(float(v) for v in test[i]),  # JSON: Optuna, results rows
            best_epoch=best["epoch"],
            compile_seconds=replicas.compile_seconds,
        )
        summary.update(seed=seed, replicas=num_replicas)
        seed_dir = rundir.RunDir(pathlib.Path(run_dir) / f"seed{i}")
        seed_dir.write_metrics(history)
        seed_dir.write_summary(summary)
        out.append((summary, history))
    return out


def _train(replicas: _Replicas, config: RunConfig, dataset, on_epoch) -> list[list]:
    """The epochs of all replicas; returns each replica's metrics history."""
    histories: list[list[dict]] = [[] for _ in replicas.seeds]
    for epoch in range(config.train.epochs):
        t0 = time.perf_counter()
        sums = replicas.train_epoch(epoch)
        seconds = time.perf_counter() - t0
        val = replicas.evaluate(dataset.val, config.train.eval_batch_size)
        step_count = (epoch + 1) * replicas.steps_per_epoch
        for i, seed in enumerate(replicas.seeds):
            loss, correct, count = (float(v) for v in sums[i])
            if not math.isfinite(loss):
                raise TrainingError(
                    f"replica {i} (seed {seed}): the training loss became {loss} in "
                    f"epoch {epoch + 1}; lower optim.lr (now {config.optim.lr})"
                )
            histories[i].append(
                {
                    "epoch": epoch + 1,
                    "step": step_count,
                    "train_loss": loss / count,
                    "train_accuracy": correct / count,
                    "val_loss": float(val[i, 0] / val[i, 2]),
                    "val_accuracy": float(val[i, 1] / val[i, 2]),
                    "lr": float(replicas.schedule(step_count)),
                    "epoch_seconds": seconds,
                    "images_per_second": count
                    * len(replicas.seeds)
                    / max(seconds, 1e-9),
                }
            )
        if on_epoch is not None:
            on_epoch(histories[0][-1])
    return histories
