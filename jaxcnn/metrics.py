"""Result files, TensorBoard logging, progress display and classification metrics.

Files in a run directory are written so that a crash never leaves half a file behind:
whole files (`summary.json`, `config.json`, rewritten `metrics.jsonl`) go through a
temporary file in the same directory that is fsynced and then renamed over the target;
`metrics.jsonl` grows by one fsynced line per epoch, and an unfinished last line left by
a kill is dropped when the log is reopened.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import numpy as np

from jaxcnn.errors import DataError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


# -- atomic files ---------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    """json.dumps fallback: numpy / JAX scalars and arrays become Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {value!r}")


def _finite(obj: Any) -> Any:
    """NaN / Inf become null so every file is strict JSON (readable by jq, browsers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj: Any, **kwargs) -> str:
    # Round trip through the fallback first so numpy floats are checked for NaN as well.
    plain = json.loads(json.dumps(obj, default=_to_json))
    return json.dumps(_finite(plain), allow_nan=False, **kwargs)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` so readers see the old or the new file, never a mix.

    The text goes to a temporary file in the same directory, which is flushed, fsynced
    and renamed over `path` with `os.replace`.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Makes a rename durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically (see `write_text_atomic`)."""
    write_text_atomic(path, _dumps(obj, indent=2, sort_keys=False) + "\n")


# -- metrics.jsonl + TensorBoard ------------------------------------------------------------


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The epoch records of `workdir/metrics.jsonl` ([] if there is none).

    An unfinished last line (a run killed while appending) is ignored.
    """
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise DataError(f"{path} line {number} is not valid JSON: {e}") from e
    return records


def _tensorboard_tag(name: str) -> str:
    """train_loss -> train/loss, so TensorBoard groups the curves by split."""
    for split in ("train", "val", "test"):
        if name.startswith(split + "_"):
            return f"{split}/{name[len(split) + 1 :]}"
    return name


class MetricsLog:
    """Appends one record per epoch to `metrics.jsonl` and TensorBoard (`tensorboard/`).

    Opening the log truncates `metrics.jsonl` to the epochs <= `resume_epoch`, so a run
    resumed from the checkpoint of epoch N (or restarted from scratch, N = 0) never
    repeats an epoch; TensorBoard events after that point are purged the same way. Use
    `read_metrics` to only read a workdir.

    Args:
      workdir: the run directory (created if missing).
      resume_epoch: the epoch of the restored checkpoint, 0 for a fresh run.
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_epoch: int = 0):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, METRICS_FILE)
        os.makedirs(self.workdir, exist_ok=True)
        old = read_metrics(self.workdir)
        kept = [r for r in old if r.get("epoch", 0) <= resume_epoch]
        if os.path.exists(self.path):
            write_text_atomic(self.path, "".join(_dumps(r) + "\n" for r in kept))
        self._records = kept
        tensorboard = os.path.join(self.workdir, TENSORBOARD_DIR)
        self._purge_step = None
        if os.path.isdir(tensorboard) and os.listdir(tensorboard):
            self._purge_step = (kept[-1].get("step", -1) + 1) if kept else 0
        self._writer = None  # created on the first record, so opening writes no events

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Appends `record` (must hold ``epoch`` and ``step``) as one fsynced JSON line."""
        missing = {"epoch", "step"} - set(record)
        if missing:
            raise ValueError(
                f"metrics record needs {sorted(missing)}, got keys {sorted(record)}"
            )
        line = _dumps(dict(record))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records.append(json.loads(line))
        self._write_tensorboard(self._records[-1])

    def _write_tensorboard(self, record: dict) -> None:
        if self._writer is None:
            from tensorboardX import SummaryWriter  # no TensorFlow import

            self._writer = SummaryWriter(
                os.path.join(self.workdir, TENSORBOARD_DIR), purge_step=self._purge_step
            )
        step = int(record["step"])
        for name, value in record.items():
            if name in ("epoch", "step") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                self._writer.add_scalar(_tensorboard_tag(name), value, step)
        self._writer.flush()

    def read(self) -> list[dict]:
        """The records written so far, including those kept from before a resume."""
        return [dict(r) for r in self._records]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
