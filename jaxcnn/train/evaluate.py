"""A finished run's checkpoint on data: `evaluate` a split, `predict` image files."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
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
    Restores the checkpoint on every call: to classify batch after batch, build a
    `Predictor` once.
    """
    return Predictor(workdir, which)(images, top_k=top_k)


class Predictor:
    """A run's checkpoint, restored once, classifying images call after call.

    ``Predictor(workdir)(images)`` returns what `predict` returns. The forward pass
    compiles once per chunk size (the call's image count, at most
    `train.eval_batch_size`; a call's last chunk is padded to it), so calls of one size
    run at the compiled rate.
    """

    def __init__(self, workdir: str | os.PathLike, which: str | int = "best"):
        run = transfer.restore(workdir, which)
        self.spec, self.dataset = run.spec, run.dataset
        self.chunk = run.config.train.eval_batch_size
        graph, state = nnx.split(run.model)
        # the weights as a flat list: a call then flattens a list, not nnx's State
        self._leaves, treedef = jax.tree.flatten(state)

        @jax.jit
        def probabilities(leaves, images):
            model = nnx.merge(graph, jax.tree.unflatten(treedef, leaves))
            return jax.nn.softmax(model(images), axis=-1)

        self._probabilities = probabilities

    def __call__(
        self, images: Sequence[str | os.PathLike | np.ndarray], *, top_k: int = 3
    ) -> list[dict[str, Any]]:
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
        probs = self.probabilities(
            _model_input(arrays, self.spec.input_shape, self.dataset)
        )
        names, k = self.dataset["class_names"], min(top_k, probs.shape[1])
        for row, i in zip(probs, where, strict=True):
            results[i]["top"] = [
                {"class": int(c), "name": names[c], "probability": float(row[c])}
                for c in np.argsort(-row)[:k]
            ]
        return results

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """softmax(model(x)) of model inputs x [n, H, W, C] (already converted and
        normalised), [n, num_classes], in chunks of at most `train.eval_batch_size`."""
        size, out = min(len(x), self.chunk), []
        for start in range(0, len(x), size):
            part = x[start : start + size]
            pad = size - len(part)
            if pad:
                part = np.concatenate(
                    [part, np.zeros((pad, *part.shape[1:]), part.dtype)]
                )
            probs = self._probabilities(self._leaves, part)
            out.append(np.asarray(probs)[: size - pad])
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
