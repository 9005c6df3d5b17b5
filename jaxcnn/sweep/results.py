"""A sweep's result rows: their columns, results.csv / results.jsonl, and reading them back.

One row per trial: trial key, status, error, the swept config paths, then the metrics
(RESULT_COLUMNS, and with seeds > 1 the SEED_METRICS' mean, std and 95 % half width).
This module is a leaf of the sweep package: it imports nothing from jaxcnn.sweep.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from jaxcnn import rundir
from jaxcnn.errors import JaxcnnError

RESULT_COLUMNS = (
    "dataset",
    "params",
    "flops",
    "train_accuracy",
    "train_loss",
    "val_accuracy",
    "val_loss",
    "best_val_accuracy",
    "test_accuracy",
    "test_loss",
    "epochs",
    "compile_seconds",
    "train_seconds",
    "images_per_second",
)
# Metrics averaged over seeds (mean, std and 95 % half width) when seeds > 1.
SEED_METRICS = (
    "test_accuracy",
    "test_loss",
    "best_val_accuracy",
    "val_accuracy",
    "train_accuracy",
)


def write_results(
    sweep_dir: pathlib.Path, rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Rewrites results.csv and results.jsonl atomically; returns `rows` as a list."""
    rows = list(rows)
    # trial, status, error, then every swept path, then the metrics.
    columns = ["trial", "status", "error"]
    for row in rows:
        columns += [c for c in row if "." in c and c not in columns]
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    rundir.write_text_atomic(sweep_dir / "results.csv", buffer.getvalue())
    lines = "".join(rundir.dumps(row) + "\n" for row in rows)
    rundir.write_text_atomic(sweep_dir / "results.jsonl", lines)
    return rows


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def read_results(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of `sweep_dir/results.jsonl`.

    Raises:
      JaxcnnError: `sweep_dir` holds no readable results.jsonl, or a line of it is not
        a result row (a JSON object with a trial key and a status).
    """
    path = pathlib.Path(sweep_dir) / "results.jsonl"
    if not path.is_file():
        raise JaxcnnError(
            f"{path} not found: {sweep_dir} is not a sweep directory (run `jaxcnn sweep` first)"
        )
    fix = (
        "the sweep rewrites this file from its Optuna storage: rerun `jaxcnn sweep "
        f"{sweep_dir}` to restore it"
    )
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise JaxcnnError(
            f"cannot read {path} ({type(e).__name__}: {e}); {fix}"
        ) from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise JaxcnnError(
                f"{path} line {number} is not JSON ({e}); {fix}"
            ) from None
        if not isinstance(row, dict) or not {"trial", "status"} <= set(row):
            raise JaxcnnError(
                f"{path} line {number} is not a result row (a JSON object with "
                f"'trial' and 'status'): {line[:80]!r}; {fix}"
            )
        rows.append(row)
    return rows
