"""A finished run's checkpoint on data: `evaluate` a split, `predict` image files."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import data, metrics, transfer
from jaxcnn.errors import DataError
from jaxcnn.spec import Precision
from jaxcnn.train import batches, step


def evaluate(
    workdir: str | os.PathLike,
    split: str = "test",
    *,
    which: str | int = "best",
    precision: Precision | None = None,
) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix of a checkpoint on a split.

    `precision` ("float32", "bfloat16") evaluates in another precision than the run
    trained in (None: the run's). A folder dataset is read from the absolute path the
    run recorded, and a warning on stderr says when its files changed since.
    """
    run = transfer.restore(workdir, which, precision=precision)
    data_config = run.config.data
    folder = run.dataset.get("folder")
    if folder:  # the folder the run trained on, whatever the working directory now
        data_config = dataclasses.replace(data_config, dataset=folder)
    if split not in ("train", "val"):
        data_config = dataclasses.replace(data_config, test_split=split)
    ds = data.load_dataset(data_config, input_shape=run.spec.input_shape)
    saved = run.dataset.get("fingerprint")
    if saved is not None and saved != ds.fingerprint:
        print(
            f"warning: the images of folder {folder or data_config.dataset} changed "
            f"since the run trained on them (a file was added, removed or modified): "
            f"the splits may differ from the run's, and this evaluation is of the "
            f"files as they are now",
            file=sys.stderr,
        )
    chosen = {"train": ds.train, "val": ds.val}.get(split, ds.test)
    steps = step.Steps(run.model, run.optimizer, run.config)
    (loss, correct, count), labels, predictions = steps.evaluate(
        chosen.batches(batches.eval_batch_size(run.config.train, chosen))
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
    """Images converted to the model's input and normalised as the run's data was
    (an imported network: its source's resize, crop, channel order and statistics)."""
    x = np.stack([data.prepare(a, input_shape, record) for a in arrays])
    return data.normalize(x, record)
