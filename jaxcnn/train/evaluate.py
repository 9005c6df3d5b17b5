"""A finished run's checkpoint on data: `evaluate` a split, `predict` image files."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import data, metrics, transfer
from jaxcnn.errors import DataError
from jaxcnn.spec import Precision
from jaxcnn.train import step


def evaluate(
    workdir: str | os.PathLike,
    split: str = "test",
    *,
    which: str | int = "best",
    precision: Precision | None = None,
) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix of a checkpoint on a split.

    `precision` ("float32", "bfloat16") evaluates in another precision than the run
    trained in (None: the run's).
    """
    run = transfer.restore(workdir, which, precision=precision)
    data_config = run.config.data
    if split not in ("train", "val"):
        data_config = dataclasses.replace(data_config, test_split=split)
    ds = data.load_dataset(data_config, input_shape=run.spec.input_shape)
    chosen = {"train": ds.train, "val": ds.val}.get(split, ds.test)
    steps = step.Steps(run.model, run.optimizer, run.config)
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
    probability}) or `error` for a file that could not be read (one bad file does not
    stop the others); `notes` when reading changed the image (16-bit, transparency).
    """
    run = transfer.restore(workdir, which)
    results, arrays, where = [], [], []
    for item in images:
        source, array, notes, error = _read_image(item)
        results.append({"source": source})
        if notes:
            results[-1]["notes"] = list(notes)
        if error is not None:
            results[-1]["error"] = error
            continue
        arrays.append(array)
        where.append(len(results) - 1)
    if not arrays:
        return results
    x = _model_input(arrays, run.spec.input_shape, run.dataset)
    probs = _probabilities(run.model, x, run.config.train.eval_batch_size)
    names, k = run.dataset["class_names"], min(top_k, probs.shape[1])
    for row, i in zip(probs, where, strict=True):
        results[i]["top"] = [
            {"class": int(c), "name": names[c], "probability": float(row[c])}
            for c in np.argsort(-row)[:k]
        ]
    return results


@nnx.jit
def _softmax(model: nnx.Module, images: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(images), axis=-1)


def _probabilities(model: nnx.Module, x: np.ndarray, chunk: int) -> np.ndarray:
    """softmax(model(x)), [n, num_classes], in chunks of at most `chunk` images.

    One compiled call serves every chunk (the last is padded to the same shape; the
    model is in eval mode, so padding rows change nothing else), and later calls with
    a model of the same structure reuse it: memory stays bounded and many images run
    at the compiled rate rather than op by op.
    """
    size = min(chunk, len(x))
    out = []
    for start in range(0, len(x), size):
        part = x[start : start + size]
        pad = size - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        out.append(np.asarray(_softmax(model, jnp.asarray(part)))[: size - pad])
    return np.concatenate(out)


def _read_image(item) -> tuple[str, np.ndarray | None, tuple[str, ...], str | None]:
    """(source name, HxWxC array or None, notes, error message or None) of one input."""
    if isinstance(item, np.ndarray):
        array = item[:, :, None] if item.ndim == 2 else item
        return "<array>", array, (), None
    try:
        array, notes = data.read_image(item)
    except DataError as e:
        return str(item), None, (), str(e).removeprefix(f"{item}: ")
    return str(item), array, notes, None


def _model_input(arrays, input_shape, record: dict) -> np.ndarray:
    """Images converted to the model's input and normalised as the run's data was."""
    x = np.stack(
        [data.convert_images(a[None], input_shape)[0][0] for a in arrays]
    ).astype(np.float32)
    if record.get("mean") is not None:
        x = (x - np.asarray(record["mean"], np.float32)) / np.asarray(
            record["std"], np.float32
        )
    return x
