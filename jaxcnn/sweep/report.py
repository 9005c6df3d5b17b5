"""`jaxcnn sweep report DIR`: the ranked table, report.md and the figures of a sweep.

Reads DIR/results.jsonl (so it works while the sweep runs) and writes, next to it:
  report.md                 the ranked table, ties, invalid / failed trials, figure list
  accuracy_vs_params.png    test accuracy vs parameters, Pareto front marked, per dataset
  accuracy_vs_flops.png     test accuracy vs forward FLOPs, Pareto front marked
  heatmap_<pool>.png        filters x stride test accuracy for each pooling kind
  effect_<axis>.png         mean test accuracy per value of each swept axis, with error
                            bars (std over the other axes, or the 95 % interval over seeds)
With seeds > 1 every accuracy is the mean over seeds with its 95 % interval: the table
shows mean ± half width and n, ranks by the mean within each dataset and marks the
trials whose interval overlaps the best's or the next rank's (`tied`); the trade-off
plots draw interval bars and the heatmaps write mean ± half width.
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
from jaxcnn.sweep.status import TrialStatus

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


def fmt(value: Any) -> str:
    """A result cell: "-" for none, a spec file by its name, numbers compact."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str) and value.endswith((".toml", ".json")):
        return pathlib.Path(value).name  # spec files: the name is enough
    if isinstance(value, dict) and "layers" in value:
        return str(value.get("name", "custom"))  # inline specs: their name
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        return f"{value:.3g}"  # learning rates, weight decay
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


# --------------------------------------------------------------------------- seeds
def seeded(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether any trial trained more than one seed (its metrics are means)."""
    return any((r.get("seeds") or 1) > 1 for r in rows)


def interval(row: dict[str, Any]) -> tuple[float, float]:
    """(mean test accuracy, 95 % half width over seeds); the half width is NaN when
    the trial has one seed."""
    mean = row.get(f"{METRIC}_mean", row.get(METRIC))
    half = row.get(f"{METRIC}_ci95")
    return float(mean), math.nan if half is None else float(half)


def tied(a: tuple[float, float], b: tuple[float, float]) -> bool | None:
    """Whether two (mean, half width) 95 % intervals overlap; None when a half width
    is unknown (NaN)."""
    if math.isnan(a[1]) or math.isnan(b[1]):
        return None
    return abs(a[0] - b[0]) <= a[1] + b[1]


def tie_marks(
    ranked: Sequence[dict[str, Any]],
) -> list[tuple[bool | None, bool | None]]:
    """For the ok trials of one dataset, best first: (tied with #1, tied with the next
    rank) per trial, by `tied`; None where there is no such rank (#1's first mark, the
    last trial's second) or an interval is unknown."""
    spans = [interval(r) for r in ranked]
    return [
        (
            None if i == 0 else tied(span, spans[0]),
            None if i + 1 == len(spans) else tied(span, spans[i + 1]),
        )
        for i, span in enumerate(spans)
    ]


def _ranked(rows: Sequence[dict[str, Any]], by_dataset: bool) -> list[list[dict]]:
    """The ok trials best first (by mean test accuracy), in one list or one per
    dataset."""
    ok = [
        r for r in rows if r["status"] == TrialStatus.OK and r.get(METRIC) is not None
    ]
    groups = group_by_dataset(ok).values() if by_dataset else [ok]
    return [sorted(g, key=lambda r: -interval(r)[0]) for g in groups]


TIES_TEXT = (
    "Test accuracy is the mean over n seeds ± the half width of its 95 % confidence "
    "interval (Student t over the seeds). Trials are ranked by that mean within each "
    "dataset. *tied with #1*: the trial's 95 % interval overlaps the interval of the "
    "dataset's best trial (rank 1), so these seeds cannot tell the two apart; *tied "
    "with next*: its interval overlaps the next rank's. Overlap is the cautious "
    "reading: intervals that do not overlap differ significantly, overlapping ones "
    "may still differ with more seeds. '?' marks a trial with one seed (no interval)."
)


def _mark_texts(ranked: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The two tie cells per trial: yes / no, '?' when unknown, blank for #1's first
    and the last trial's second."""
    texts = []
    marks = tie_marks(ranked)
    for i, pair in enumerate(marks):
        blank = (i == 0, i + 1 == len(marks))
        texts.append(
            tuple(
                "" if skip else "?" if m is None else "yes" if m else "no"
                for m, skip in zip(pair, blank, strict=True)
            )
        )
    return texts


def ties_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One Markdown line per dataset: its best trial and the ranks tied with it."""
    axes = axes_of(rows)
    lines = []
    for ranked in _ranked(rows, by_dataset=True):
        best = ranked[0]
        mean, half = interval(best)
        setting = ", ".join(
            f"{a.rpartition('.')[2]}={fmt(best[a])}"
            for a in axes
            if best.get(a) is not None
        )
        marks = tie_marks(ranked)
        with_best = [str(i + 1) for i, (m, _) in enumerate(marks) if m]
        shown = f"{mean:.4f}" + ("" if math.isnan(half) else f" ± {half:.4f}")
        lines.append(
            f"- {fmt(_dataset(best))}: #1 {setting or best['trial']} "
            f"({shown}, n={best.get('seeds', 1)}); tied with it: "
            + (", ".join(f"#{r}" for r in with_best) if with_best else "none")
        )
    return lines


# --------------------------------------------------------------------------- table
def _columns(axes: Sequence[str], seeds: bool) -> list[str]:
    return [
        "rank",
        "dataset",
        *[a.rpartition(".")[2] for a in axes],
        "status",
        "params",
        "MFLOPs",
        *(
            ["test acc (mean ± 95 %)", "n", "tied with #1", "tied with next"]
            if seeds
            else ["test acc"]
        ),
        "best val acc",
        "train s",
        "compile s",
        "img/s",
    ]


def _cells(
    row: dict[str, Any],
    rank: int | None,
    axes: Sequence[str],
    marks: tuple[str, str] | None,
) -> list[str]:
    """One table row; `marks` (the tie cells) only in a seeded table."""
    cells = ["" if rank is None else str(rank), fmt(_dataset(row))]
    cells += [fmt(row.get(a)) for a in axes]
    cells += [
        row["status"],
        fmt(row.get("params")),
        fmt(row["flops"] / 1e6) if row.get("flops") else "-",
    ]
    if marks is None:
        cells.append(fmt(row.get(METRIC)))
    elif rank is None:
        cells += [fmt(row.get(METRIC)), fmt(row.get("seeds")), "", ""]
    else:
        mean, half = interval(row)
        shown = f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"
        cells += [shown, str(row.get("seeds", 1)), *marks]
    cells += [
        fmt(row.get(name))
        for name in (
            "best_val_accuracy",
            "train_seconds",
            "compile_seconds",
            "images_per_second",
        )
    ]
    return cells


def ranked_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: ok trials by test accuracy (best first), then the others.

    With seeds > 1 the ok trials are ranked within each dataset by their mean, shown
    with its 95 % half width, the seed count and the tie marks (`tie_marks`).
    """
    axes = axes_of(rows)
    seeds = seeded(rows)
    columns = _columns(axes, seeds)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for ranked in _ranked(rows, by_dataset=seeds):
        marks = _mark_texts(ranked) if seeds else [None] * len(ranked)
        for rank, (row, mark) in enumerate(zip(ranked, marks, strict=True), start=1):
            lines.append("| " + " | ".join(_cells(row, rank, axes, mark)) + " |")
    done = {id(r) for group in _ranked(rows, by_dataset=False) for r in group}
    for row in rows:
        if id(row) not in done:
            cells = _cells(row, None, axes, ("", "") if seeds else None)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _dataset(row: dict[str, Any]) -> str | None:
    return row.get("data.dataset") or row.get("dataset")


def group_by_dataset(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows grouped by dataset ("-" when a row names none), in first-seen order."""
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(str(_dataset(row) or "-"), []).append(row)
    return groups


# --------------------------------------------------------------------------- figures
def _tradeoffs(ok: Sequence[dict[str, Any]], out: pathlib.Path) -> list[pathlib.Path]:
    """Accuracy vs parameters and vs FLOPs, per dataset, Pareto fronts (of the means)
    marked; with seeds, 95 % interval bars."""
    from jaxcnn import viz

    groups = group_by_dataset(ok)
    errors = None
    if seeded(ok):
        errors = {
            dataset: [_half_or_zero(r) for r in group]
            for dataset, group in groups.items()
        }
    written = []
    for cost, label in (("params", "parameters"), ("flops", "forward FLOPs")):
        points = {
            dataset: [(float(r[cost]), interval(r)[0]) for r in group]
            for dataset, group in groups.items()
        }
        fronts = {dataset: pareto_front(pts) for dataset, pts in points.items()}
        path = out / f"accuracy_vs_{cost}.png"
        written.append(
            viz.plot_tradeoff(points, fronts, path, xlabel=label, errors=errors)
        )
    return written


def _half_or_zero(row: dict[str, Any]) -> float:
    half = interval(row)[1]
    return 0.0 if math.isnan(half) else half


def heatmap_panels(
    rows: Sequence[dict[str, Any]], pool: str, filters: list, strides: list
) -> list[tuple[str, np.ndarray, np.ndarray, dict[tuple[int, int], str]]]:
    """Per dataset: (title, [strides, filters] mean test accuracy with NaN where the
    trial is not ok, the 95 % half widths over seeds (NaN without seeds), {(i, j):
    status} of the cells not ok) for the trials with pooling `pool`."""
    panels = []
    for dataset, group in group_by_dataset(rows).items():
        grid = np.full((len(strides), len(filters)), np.nan)
        halves = np.full_like(grid, np.nan)
        marks = {}
        for r in group:
            if str(r.get("model.pool", "-")) != pool:
                continue
            i = strides.index(r["model.stride"])
            j = filters.index(r["model.filters"])
            if r["status"] == TrialStatus.OK and r.get(METRIC) is not None:
                grid[i, j], halves[i, j] = interval(r)
            else:
                marks[i, j] = r["status"]
        panels.append((f"{dataset}, pool={pool}", grid, halves, marks))
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

    The mean is over the trials holding the value (each trial's mean over seeds). The
    error bar is the 95 % half width of that mean over seeds where every such trial
    has one (sqrt(sum of squared half widths) / count: the seeds of different trials
    are independent), else the std over the trials holding the value (0 for one
    trial); NaN means where no trial holds the value.
    """
    series = {}
    for dataset, group in group_by_dataset(ok).items():
        means, errs = [], []
        for v in values:
            spans = [interval(r) for r in group if r.get(axis) == v]
            if not spans:
                mean, err = math.nan, 0.0
            elif not any(math.isnan(h) for _, h in spans):
                mean = sum(m for m, _ in spans) / len(spans)
                err = math.sqrt(sum(h * h for _, h in spans)) / len(spans)
            elif len(spans) == 1:
                mean, err = spans[0][0], 0.0
            else:
                mean, err, _ = metrics.mean_confidence_interval(m for m, _ in spans)
            means.append(mean)
            errs.append(err)
        series[dataset] = (means, errs)
    return series


def _effects(ok: Sequence[dict[str, Any]], out: pathlib.Path) -> list[pathlib.Path]:
    """One figure per swept axis with at least two values."""
    from jaxcnn import viz

    # without seeds the bars are the spread over the other axes (`effect_series`)
    ylabel = "test accuracy (mean ± 95 % CI)" if seeded(ok) else None
    written = []
    for axis in axes_of(ok):
        values = []
        for r in ok:
            if r.get(axis) not in values:
                values.append(r.get(axis))
        try:
            values.sort()
        except TypeError:
            values.sort(key=fmt)
        if len(values) < 2:
            continue
        path = out / f"effect_{axis.rpartition('.')[2]}.png"
        series = effect_series(ok, axis, values)
        labels = [v if isinstance(v, int | float) else fmt(v) for v in values]
        kwargs = {} if ylabel is None else {"ylabel": ylabel}
        written.append(viz.plot_effect(labels, series, path, xlabel=axis, **kwargs))
    return written


def compile_share(rows: Sequence[dict[str, Any]]) -> str | None:
    """ "compiling: 38% of 412 s of trial time": the share of the trials' time (compile
    plus training seconds of every seed, from their summaries) spent compiling; None
    when no trial has recorded both."""
    compiling = total = 0.0
    for row in rows:
        seconds = row.get("compile_seconds"), row.get("train_seconds")
        if not all(isinstance(v, int | float) for v in seconds):
            continue
        runs = row.get("seeds") or 1  # with seeds, both are means over the seeds
        compiling += seconds[0] * runs
        total += (seconds[0] + seconds[1]) * runs
    if total <= 0:
        return None
    return f"compiling: {compiling / total:.0%} of {total:.0f} s of trial time"


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
    ok = [
        r for r in rows if r["status"] == TrialStatus.OK and r.get(METRIC) is not None
    ]
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
    invalid = [
        r for r in rows if r["status"] in (TrialStatus.INVALID, TrialStatus.FAILED)
    ]
    reasons = "\n".join(
        f"- `{r['trial']}` ({r['status']}): {r['error']}" for r in invalid
    )
    share = compile_share(rows)
    md = [f"# {header}", "", table, ""]
    if share:
        md += [f"{share} (compile and training seconds of the trials' summaries)", ""]
    if seeded(rows) and ok:
        md += ["## Ties", "", TIES_TEXT, "", *ties_summary(rows), ""]
    if reasons:
        md += ["## Invalid and failed trials", "", reasons, ""]
    if written:
        md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in written] + [""]
    rundir.write_text_atomic(sweep_dir / "report.md", "\n".join(md))
    lines = [header, table] + ([share] if share else [])
    if seeded(rows) and ok:
        lines += ["tied with #1 (95 % intervals overlap):", *ties_summary(rows)]
    if written:
        lines.append("figures: " + ", ".join(str(p) for p in written))
    return "\n".join(lines)
