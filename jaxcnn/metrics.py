"""Progress display and classification metrics (confusion matrix, intervals)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import numpy as np

from jaxcnn.errors import DataError

# -- progress display -----------------------------------------------------------------------


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return (
        f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        if hours
        else f"{rest // 60}:{rest % 60:02d}"
    )


def format_epoch(record: Mapping[str, Any], epochs: int) -> str:
    """One summary line for an epoch record, e.g. for `Progress.close`."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for split in ("train", "val"):
        loss, acc = record.get(f"{split}_loss"), record.get(f"{split}_accuracy")
        if loss is not None and acc is not None:
            parts.append(f"{split} loss {loss:.4f} acc {acc:.4f}")
    if record.get("lr") is not None:
        parts.append(f"lr {record['lr']:.3g}")
    if record.get("epoch_seconds") is not None:
        parts.append(f"{record['epoch_seconds']:.1f} s")
    if record.get("images_per_second") is not None:
        parts.append(f"{record['images_per_second']:,.0f} img/s")
    return "  ".join(parts)


class Progress:
    """Progress of one epoch.

    On a terminal, `update` redraws one line in place (``\\r``): steps, loss, accuracy,
    images/s and ETA; `close` replaces it with the final line. On anything else (a log
    file, a pipe) only the final line of each epoch is written.

    Args:
      total_steps: optimiser steps in the epoch.
      epoch: this epoch's number (1-based); epochs: how many there are.
      stream: where to write (default `sys.stderr`).
      quiet: write nothing at all.
      min_interval: seconds between redraws, so fast loops are not slowed by printing.
    """

    BAR_WIDTH = 20

    def __init__(
        self,
        total_steps: int,
        *,
        epoch: int,
        epochs: int,
        stream: TextIO | None = None,
        quiet: bool = False,
        min_interval: float = 0.1,
    ):
        self.total_steps, self.epoch, self.epochs = max(total_steps, 1), epoch, epochs
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.min_interval = min_interval
        self._start = time.monotonic()
        self._last_draw = -math.inf
        self._width = 0

    def line(
        self, steps_done: int, *, loss: float, accuracy: float, images_per_second: float
    ) -> str:
        """The bar text for `steps_done` steps."""
        done = min(max(steps_done, 0), self.total_steps)
        filled = round(self.BAR_WIDTH * done / self.total_steps)
        bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
        elapsed = time.monotonic() - self._start
        eta = elapsed / done * (self.total_steps - done) if done else math.nan
        eta_text = _clock(eta) if math.isfinite(eta) else "?"
        return (
            f"epoch {self.epoch}/{self.epochs} [{bar}] {done}/{self.total_steps} "
            f"loss {loss:.4f} acc {accuracy:.4f} {images_per_second:,.0f} img/s ETA {eta_text}"
        )

    def wants_update(self, steps_done: int) -> bool:
        """Whether `update` would draw now; callers skip computing (and syncing) otherwise."""
        if self.quiet or not self.tty:
            return False
        since = time.monotonic() - self._last_draw
        return steps_done >= self.total_steps or since >= self.min_interval

    def update(
        self, steps_done: int, *, loss: float, accuracy: float, images_per_second: float
    ) -> None:
        if not self.wants_update(steps_done):
            return
        self._last_draw = time.monotonic()
        self._draw(
            self.line(
                steps_done,
                loss=loss,
                accuracy=accuracy,
                images_per_second=images_per_second,
            )
        )

    def _draw(self, text: str, end: str = "") -> None:
        padding = " " * max(
            self._width - len(text), 0
        )  # erase the rest of a longer line
        self.stream.write("\r" + text + padding + end)
        self.stream.flush()
        self._width = 0 if end else len(text)

    def close(self, line: str) -> None:
        """Ends the epoch with `line` (e.g. `format_epoch(record, epochs)`)."""
        if self.quiet:
            return
        if self.tty:
            self._draw(line, end="\n")
        else:
            self.stream.write(line + "\n")
            self.stream.flush()


# -- classification metrics -----------------------------------------------------------------


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
    """Counts of (true class, predicted class).

    Args:
      labels: [n] int true classes in [0, num_classes).
      predictions: [n] int predicted classes in [0, num_classes).
      num_classes: C.

    Returns:
      [C, C] int64; row = true class, column = predicted class.
    """
    labels, predictions = (
        np.asarray(labels).reshape(-1),
        np.asarray(predictions).reshape(-1),
    )
    if labels.shape != predictions.shape:
        raise DataError(
            f"confusion_matrix: {labels.size} labels but {predictions.size} predictions"
        )
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise DataError(
                f"confusion_matrix: {name} range from {values.min()} to {values.max()}, "
                f"outside the {num_classes} classes [0, {num_classes - 1}]"
            )
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class: [C] float64, NaN for a class with no examples."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


def mean_confidence_interval(values: Iterable[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and 95 % half width (Student t) of `values`.

    With one value the spread is unknown: std and half width are NaN.
    """
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_confidence_interval needs at least one value")
    mean = float(values.mean())
    if values.size == 1:
        return mean, math.nan, math.nan
    from scipy import stats  # heavy import, only for sweep reports

    std = float(values.std(ddof=1))
    half_width = float(
        stats.t.ppf(0.975, values.size - 1) * std / math.sqrt(values.size)
    )
    return mean, std, half_width
