"""`jaxcnn sweep report DIR`: the ranked table, report.md and the figures of a sweep.

Reads DIR/results.jsonl (so it works while the sweep runs) and writes, next to it:
  report.md                 the ranked table, invalid / failed trials and the figure list
  accuracy_vs_params.png    test accuracy vs parameters, Pareto front marked, per dataset
  accuracy_vs_flops.png     test accuracy vs forward FLOPs, Pareto front marked
  heatmap_<pool>.png        filters x stride test accuracy for each pooling kind
  effect_<axis>.png         mean test accuracy per value of each swept axis, with error
                            bars (std over the other axes, or the 95 % interval over seeds)
This module shapes the data; viz.py draws it.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcnn import metrics, rundir
from jaxcnn.errors import JaxcnnError
from jaxcnn.sweep import results

DATA_AXES = ("data.dataset", "model.input_shape")
METRIC = "test_accuracy"


def axes_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The swept config paths (columns with a dot), dataset columns excluded."""
    out: list[str] = []
    for row in rows:
        out += [k for k in row if "." in k and k not in DATA_AXES and k not in out]
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower cost x, higher accuracy y),
    sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str) and value.endswith((".toml", ".json")):
        return pathlib.Path(value).name  # spec files: the name is enough
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def ranked_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: ok trials by test accuracy (best first), then the others."""
    axes = axes_of(rows)
    ok = sorted(
        (r for r in rows if r["status"] == "ok"), key=lambda r: -(r.get(METRIC) or 0.0)
    )
    rest = [r for r in rows if r["status"] != "ok"]
    seeds = any("test_accuracy_std" in r for r in rows)
    columns = [
        "rank",
        "dataset",
        *[a.rpartition(".")[2] for a in axes],
        "status",
        "params",
        "MFLOPs",
        "test acc",
        *(["± std"] if seeds else []),
        "best val acc",
        "train s",
        "compile s",
        "img/s",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for rank, row in enumerate(ok + rest, start=1):
        cells = [str(rank) if row["status"] == "ok" else "", _fmt(_dataset(row))]
        cells += [_fmt(row.get(a)) for a in axes]
        cells += [
            row["status"],
            _fmt(row.get("params")),
            _fmt(row["flops"] / 1e6) if row.get("flops") else "-",
            _fmt(row.get(METRIC)),
        ]
        if seeds:
            cells.append(_fmt(row.get("test_accuracy_std")))
        cells += [
            _fmt(row.get(name))
            for name in (
                "best_val_accuracy",
                "train_seconds",
                "compile_seconds",
                "images_per_second",
            )
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _dataset(row: dict[str, Any]) -> str | None:
    return row.get("data.dataset") or row.get("dataset")


def _by_dataset(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(str(_dataset(row) or "-"), []).append(row)
    return groups


# --------------------------------------------------------------------------- figures
def _tradeoffs(ok: Sequence[dict[str, Any]], out: pathlib.Path) -> list[pathlib.Path]:
    """Accuracy vs parameters and vs FLOPs, per dataset, Pareto fronts marked."""
    from jaxcnn import viz

    written = []
    for cost, label in (("params", "parameters"), ("flops", "forward FLOPs")):
        points = {
            dataset: [(float(r[cost]), float(r[METRIC])) for r in group]
            for dataset, group in _by_dataset(ok).items()
        }
        fronts = {dataset: pareto_front(pts) for dataset, pts in points.items()}
        path = out / f"accuracy_vs_{cost}.png"
        written.append(viz.plot_tradeoff(points, fronts, path, xlabel=label))
    return written


def heatmap_panels(
    rows: Sequence[dict[str, Any]], pool: str, filters: list, strides: list
) -> list[tuple[str, np.ndarray, dict[tuple[int, int], str]]]:
    """Per dataset: (title, [strides, filters] test accuracy with NaN where the trial is
    not ok, {(i, j): status} of those cells) for the trials with pooling `pool`."""
    panels = []
    for dataset, group in _by_dataset(rows).items():
        grid = np.full((len(strides), len(filters)), np.nan)
        marks = {}
        for r in group:
            if str(r.get("model.pool", "-")) != pool:
                continue
            i = strides.index(r["model.stride"])
            j = filters.index(r["model.filters"])
            if r["status"] == "ok":
                grid[i, j] = r[METRIC]
            else:
                marks[i, j] = r["status"]
        panels.append((f"{dataset}, pool={pool}", grid, marks))
    return panels


def _heatmaps(rows: Sequence[dict[str, Any]], out: pathlib.Path) -> list[pathlib.Path]:
    """filters x stride per pooling kind and dataset; trials not ok show their status."""
    if not {"model.filters", "model.stride"} <= set(axes_of(rows)):
        return []
    from jaxcnn import viz

    filters = sorted({r["model.filters"] for r in rows})
    strides = sorted({r["model.stride"] for r in rows})
    written = []
    for pool in sorted({str(r.get("model.pool", "-")) for r in rows}):
        written.append(
            viz.plot_heatmaps(
                heatmap_panels(rows, pool, filters, strides),
                out / f"heatmap_{pool}.png",
                xticks=filters,
                yticks=strides,
                xlabel="filters (first stage)",
                ylabel="stride",
            )
        )
    return written


def effect_series(
    ok: Sequence[dict[str, Any]], axis: str, values: Sequence[Any]
) -> dict[str, tuple[list[float], list[float]]]:
    """Per dataset: mean test accuracy and its error bar for each value of `axis`.

    The error bar is the std over the trials sharing the value, or the 95 % half width
    over seeds where one trial holds the value (0 without seeds); NaN where none does.
    """
    series = {}
    for dataset, group in _by_dataset(ok).items():
        means, errs = [], []
        for v in values:
            matching = [r for r in group if r.get(axis) == v]
            if not matching:
                mean, err = math.nan, 0.0
            elif len(matching) == 1:
                mean = matching[0][METRIC]
                err = matching[0].get("test_accuracy_ci95") or 0.0
            else:
                mean, err, _ = metrics.mean_confidence_interval(
                    [r[METRIC] for r in matching]
                )
            means.append(mean)
            errs.append(err)
        series[dataset] = (means, errs)
    return series


def _effects(ok: Sequence[dict[str, Any]], out: pathlib.Path) -> list[pathlib.Path]:
    """One figure per swept axis with at least two values."""
    from jaxcnn import viz

    written = []
    for axis in axes_of(ok):
        values = []
        for r in ok:
            if r.get(axis) not in values:
                values.append(r.get(axis))
        try:
            values.sort()
        except TypeError:
            values.sort(key=str)
        if len(values) < 2:
            continue
        path = out / f"effect_{axis.rpartition('.')[2]}.png"
        series = effect_series(ok, axis, values)
        written.append(viz.plot_effect(values, series, path, xlabel=axis))
    return written


def write_report(sweep_dir: str | os.PathLike, *, figures: bool = True) -> str:
    """Writes report.md and the figures into `sweep_dir`; returns the printed text.

    Raises:
      JaxcnnError: `sweep_dir` holds no readable results.jsonl, or is not writable.
    """
    sweep_dir = pathlib.Path(sweep_dir)
    rows = results.read_results(sweep_dir)
    try:
        return _write(sweep_dir, rows, figures)
    except OSError as e:
        raise JaxcnnError(
            f"cannot write the report into {sweep_dir} ({type(e).__name__}: {e}); "
            "the sweep directory must be writable"
        ) from None


def _write(sweep_dir: pathlib.Path, rows: list[dict[str, Any]], figures: bool) -> str:
    ok = [r for r in rows if r["status"] == "ok" and r.get(METRIC) is not None]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    written: list[pathlib.Path] = []
    if figures and ok:
        written += _tradeoffs(ok, sweep_dir)
        written += _heatmaps(rows, sweep_dir)
        written += _effects(ok, sweep_dir)
    header = (
        f"sweep {sweep_dir.name}: {len(rows)} trials ("
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + ")"
    )
    table = ranked_table(rows)
    invalid = [r for r in rows if r["status"] in ("invalid", "failed")]
    reasons = "\n".join(
        f"- `{r['trial']}` ({r['status']}): {r['error']}" for r in invalid
    )
    md = [f"# {header}", "", table, ""]
    if reasons:
        md += ["## Invalid and failed trials", "", reasons, ""]
    if written:
        md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in written] + [""]
    rundir.write_text_atomic(sweep_dir / "report.md", "\n".join(md))
    lines = [header, table]
    if written:
        lines.append("figures: " + ", ".join(str(p) for p in written))
    return "\n".join(lines)
