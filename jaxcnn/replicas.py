"""K seeds in one compiled program: vmap over a replica axis of independently built runs.

Replica i is exactly the run `train.fit` would do with train.seed = seed + i: its own
initialisation (`build_model(seed=seed + i)`), its own data order
(`data.epoch_permutation(seed + i, epoch, n)`) and its own dropout RNG state (part of the
model state). The K states are stacked leaf by leaf and one `jax.vmap`ped train step
updates all of them; the data stays shared and unbatched.

Limits (see also `sweep.default_replicas_mode`): resident datasets only, no augmentation,
one step per dispatch, no checkpoints (an interrupted vmapped trial restarts; the
sequential mode resumes per seed), test metrics of the final (not best-by-val) weights.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import data, metrics, models, optim, shapes
from jaxcnn.errors import JaxcnnError, TrainingError
from jaxcnn.spec import RunConfig


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _loss(model, images, labels, mask, label_smoothing):
    logits = model(images)
    per_example = optim.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, jnp.stack(
        [jnp.sum(per_example * mask), jnp.sum(correct * mask), jnp.sum(mask)]
    )


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
    from jaxcnn import train  # resolve_spec: the dataset's class count for the model

    if config.data.augment_crop or config.data.augment_flip:
        raise JaxcnnError("replicas=vmap does not support augmentation; use sequential")
    run_dir = pathlib.Path(run_dir)
    train.enable_compilation_cache()
    if dataset is None:
        dataset = data.load_dataset(
            config.data, input_shape=train.resolve_spec(config).input_shape
        )
    if not isinstance(dataset.train, data.Split):
        raise JaxcnnError(
            "replicas=vmap needs a dataset resident in memory; use sequential"
        )
    spec = train.resolve_spec(config, dataset.num_classes)
    cfg = config.train
    n = dataset.train.num_examples
    steps_per_epoch = n // cfg.batch_size
    seeds = [cfg.seed + i for i in range(num_replicas)]
    states = []
    graphs = None
    for seed in seeds:
        model = models.build_model(spec, seed=seed, kernels=cfg.kernels)
        tx, schedule = optim.make_optimizer(
            config.optim, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs
        )
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        model.train()
        train_graph, state = nnx.split((model, optimizer))
        model.eval()
        eval_graph, _ = nnx.split((model, optimizer))
        graphs = (train_graph, eval_graph)
        states.append(state)
    train_graph, eval_graph = graphs
    state = _stack(states)
    smoothing = config.optim.label_smoothing

    def train_step(state, images, labels, batch_indices):
        model, optimizer = nnx.merge(train_graph, state)
        x, y = images[batch_indices], labels[batch_indices]
        mask = jnp.ones(y.shape, jnp.float32)
        grads, sums = nnx.grad(lambda m: _loss(m, x, y, mask, smoothing), has_aux=True)(
            model
        )
        optimizer.update(model, grads)
        return nnx.split((model, optimizer))[1], sums

    def eval_batch(state, images, labels, mask):
        model, _ = nnx.merge(eval_graph, state)
        return _loss(model, images, labels, mask, smoothing)[1]

    start = time.perf_counter()
    images = jax.device_put(dataset.train.images)
    labels = jax.device_put(dataset.train.labels)
    order0 = jnp.zeros((num_replicas, cfg.batch_size), jnp.int32)
    vtrain = jax.jit(jax.vmap(train_step, in_axes=(0, None, None, 0)), donate_argnums=0)
    vtrain = vtrain.lower(state, images, labels, order0).compile()
    eval_args = next(iter(dataset.val.batches(cfg.eval_batch_size)))
    veval = jax.jit(jax.vmap(eval_batch, in_axes=(0, None, None, None)))
    veval = veval.lower(state, *(jnp.asarray(a) for a in eval_args)).compile()
    compile_seconds = time.perf_counter() - start

    def evaluate(split) -> np.ndarray:
        totals = jnp.zeros((num_replicas, 3), jnp.float32)
        for batch in split.batches(cfg.eval_batch_size):
            totals = totals + veval(
                state,
                jnp.asarray(batch.images),
                jnp.asarray(batch.labels),
                jnp.asarray(batch.mask),
            )
        return np.asarray(totals)

    histories: list[list[dict]] = [[] for _ in seeds]
    train_seconds = 0.0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        orders = np.stack(
            [
                np.asarray(data.epoch_permutation(s, epoch, n))[
                    : steps_per_epoch * cfg.batch_size
                ].reshape(steps_per_epoch, cfg.batch_size)
                for s in seeds
            ],
            axis=1,
        )  # [steps, replicas, batch]
        sums = jnp.zeros((num_replicas, 3), jnp.float32)
        for step in range(steps_per_epoch):
            state, step_sums = vtrain(state, images, labels, jnp.asarray(orders[step]))
            sums = sums + step_sums
        sums = np.asarray(sums)
        epoch_seconds = time.perf_counter() - t0
        val = evaluate(dataset.val)
        train_seconds += epoch_seconds
        for i in range(num_replicas):
            loss, correct, count = sums[i]
            if not math.isfinite(float(loss)):
                raise TrainingError(
                    f"replica {i} (seed {seeds[i]}): the training loss became {loss} in "
                    f"epoch {epoch + 1}; lower optim.lr (now {config.optim.lr})"
                )
            step = (epoch + 1) * steps_per_epoch
            histories[i].append(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": float(loss / count),
                    "train_accuracy": float(correct / count),
                    "val_loss": float(val[i, 0] / val[i, 2]),
                    "val_accuracy": float(val[i, 1] / val[i, 2]),
                    "lr": float(schedule(step)),
                    "epoch_seconds": epoch_seconds,
                    "images_per_second": float(count)
                    * num_replicas
                    / max(epoch_seconds, 1e-9),
                }
            )
        if on_epoch is not None:
            on_epoch(histories[0][-1])
    test = evaluate(dataset.test)
    static = shapes.infer(spec)
    out = []
    for i, seed in enumerate(seeds):
        history = histories[i]
        best = max(history, key=lambda r: r["val_accuracy"])
        summary = {
            "test_accuracy": float(test[i, 1] / test[i, 2]),
            "test_loss": float(test[i, 0] / test[i, 2]),
            "best_val_accuracy": best["val_accuracy"],
            "best_epoch": best["epoch"],
            "epochs": len(history),
            "seed": seed,
            "total_params": static.total_params,
            "total_flops": static.total_flops,
            "train_seconds": train_seconds,
            "compile_seconds": compile_seconds,
            "images_per_second": float(
                np.median([r["images_per_second"] for r in history])
            ),
            "dataset": dataset.name,
            "model": spec.name,
            "backend": jax.default_backend(),
            "replicas": num_replicas,
        }
        seed_dir = run_dir / f"seed{i}"
        metrics.write_text_atomic(
            seed_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history)
        )
        metrics.write_json_atomic(seed_dir / "summary.json", summary)
        out.append((summary, history))
    return out
