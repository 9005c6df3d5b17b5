"""One trial: `train.fit` in its run directory, or K seeds (one `fit` each, one after
another) aggregated into mean, std and 95 % interval.

Seed 0 trains in the trial's run directory and seed i > 0 in its `seed<i>/`. A seed
already trained to the end with the same config is read back, not retrained, so a trial
that gains seeds trains only the new ones.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from jaxcnn import metrics, rundir
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import RunConfig
from jaxcnn.sweep import results


def history_result(run_dir: pathlib.Path) -> dict[str, Any]:
    """The last epoch's metrics of a partly trained run (a pruned trial's result)."""
    history = rundir.read_metrics(run_dir)
    if not history:
        return {}
    last = history[-1]
    return {
        "epochs": last["epoch"],
        "train_accuracy": last["train_accuracy"],
        "train_loss": last["train_loss"],
        "val_accuracy": last["val_accuracy"],
        "val_loss": last["val_loss"],
        "best_val_accuracy": max(r["val_accuracy"] for r in history),
    }


def run_trial(
    config: RunConfig,
    run_dir: pathlib.Path,
    *,
    seeds: int = 1,
    quiet: bool = True,
    dataset: Any = None,
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Trains one trial (K seeds when seeds > 1) and returns its result record.

    With seeds = 1 this is `train.fit` in `run_dir`; the record holds the summary plus
    the last epoch's train / val metrics. With seeds = K each metric also gets
    `<metric>_mean`, `_std` and `_ci95` (95 % half width, Student t) over the seeds, and
    the plain metric is the mean.
    """
    records = []
    for i in range(seeds):
        seeded = (
            config if i == 0 else config.override("train.seed", config.train.seed + i)
        )
        seed_dir = run_dir if i == 0 else run_dir / f"seed{i}"
        done = finished_run(seeded, seed_dir)
        if done is None:
            from jaxcnn import train

            fitted = train.fit(
                seeded,
                seed_dir,
                quiet=quiet,
                dataset=dataset,
                on_epoch=on_epoch if i == 0 else None,
            )
            done = fitted.summary, fitted.history
        records.append(_record(*done))
    return records[0] if seeds == 1 else aggregate(records)


def finished_run(
    config: RunConfig, run_dir: pathlib.Path
) -> tuple[dict[str, Any], list[dict]] | None:
    """(summary, metrics history) of a run trained to the end with `config` in
    `run_dir`, or None."""
    saved = rundir.RunDir(run_dir)
    if not saved.summary_file.is_file():
        return None
    try:
        if saved.read().config.to_dict() != config.to_dict():
            return None
        return json.loads(saved.summary_file.read_text()), saved.metrics()
    except (JaxcnnError, OSError, ValueError):
        return None


def _record(
    summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    out = dict(summary)
    if history:
        last = history[-1]
        for name in ("train_accuracy", "train_loss", "val_accuracy", "val_loss"):
            out[name] = last[name]
    return out


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, std and 95 % half width of each numeric metric over seed records."""
    out: dict[str, Any] = dict(records[0])
    out["seeds"] = len(records)
    for name, value in records[0].items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        values = [float(r[name]) for r in records if r.get(name) is not None]
        if len(values) != len(records) or (
            isinstance(value, int) and len(set(values)) == 1
        ):
            continue  # missing somewhere, or a count all seeds share (params, epochs)
        mean, std, half = metrics.mean_confidence_interval(values)
        out[name] = mean
        if name in results.SEED_METRICS:
            out[f"{name}_mean"], out[f"{name}_std"], out[f"{name}_ci95"] = (
                mean,
                std,
                half,
            )
    return out
