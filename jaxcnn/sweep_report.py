"""`jaxcnn sweep report DIR`: the ranked table and figures of a sweep directory.

Reads DIR/results.jsonl (so it works while the sweep runs) and writes, next to it:
  report.md                 the ranked table, counts by status and the figure list
  accuracy_vs_params.png    test accuracy vs parameters, Pareto front marked, per dataset
  accuracy_vs_flops.png     test accuracy vs forward FLOPs, Pareto front marked
  heatmap_<pool>.png        filters x stride test accuracy for each pooling kind
  effect_<axis>.png         mean test accuracy per value of each swept axis, with error
                            bars (std over the other axes, or the 95 % interval over seeds)

Matplotlib is imported lazily with the Agg backend (no display needed); viz.py owns the
per-run figures, this module the sweep figures.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from jaxcnn import metrics, rundir
from jaxcnn.sweep import read_results

DATA_AXES = ("data.dataset", "model.input_shape")
METRIC = "test_accuracy"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
        cells = [
            str(rank) if row["status"] == "ok" else "",
            _fmt(row.get("data.dataset") or row.get("dataset")),
        ]
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
            _fmt(row.get("best_val_accuracy")),
            _fmt(row.get("train_seconds")),
            _fmt(row.get("compile_seconds")),
            _fmt(row.get("images_per_second")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _by_dataset(rows):
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(
            str(row.get("data.dataset") or row.get("dataset") or "-"), []
        ).append(row)
    return groups


def _scatter(rows, cost: str, label: str, path: pathlib.Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    for dataset, group in _by_dataset(rows).items():
        pts = [(float(r[cost]), float(r[METRIC])) for r in group]
        (dots,) = ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], "o", alpha=0.6, label=dataset
        )
        front = [pts[i] for i in pareto_front(pts)]
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            "-",
            color=dots.get_color(),
            drawstyle="steps-post",
            linewidth=1.5,
        )
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            "*",
            color=dots.get_color(),
            markersize=11,
        )
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"accuracy vs {label} (stars/line: Pareto front)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _heatmaps(rows, all_rows, out: pathlib.Path) -> list[pathlib.Path]:
    """filters x stride per pooling kind and dataset; invalid cells marked 'x'."""
    if not {"model.filters", "model.stride"} <= set(axes_of(all_rows)):
        return []
    import numpy as np

    plt = _plt()
    pools = sorted({str(r.get("model.pool", "-")) for r in all_rows})
    datasets = list(_by_dataset(all_rows))
    filters = sorted({r["model.filters"] for r in all_rows})
    strides = sorted({r["model.stride"] for r in all_rows})
    written = []
    for pool in pools:
        fig, axes = plt.subplots(
            1, len(datasets), figsize=(3.6 * len(datasets), 3.2), dpi=90, squeeze=False
        )
        for ax, dataset in zip(axes[0], datasets, strict=True):
            grid = np.full((len(strides), len(filters)), np.nan)
            marks = {}
            for r in all_rows:
                if (
                    str(r.get("model.pool", "-")) != pool
                    or str(r.get("data.dataset") or r.get("dataset") or "-") != dataset
                ):
                    continue
                i, j = (
                    strides.index(r["model.stride"]),
                    filters.index(r["model.filters"]),
                )
                if r["status"] == "ok":
                    grid[i, j] = r[METRIC]
                else:
                    marks[i, j] = r["status"]
            image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
            for i in range(len(strides)):
                for j in range(len(filters)):
                    text = (
                        f"{grid[i, j]:.3f}"
                        if not np.isnan(grid[i, j])
                        else marks.get((i, j), "")
                    )
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if not np.isnan(grid[i, j]) else "black",
                    )
            ax.set_xticks(range(len(filters)), [str(f) for f in filters])
            ax.set_yticks(range(len(strides)), [str(s) for s in strides])
            ax.set_xlabel("filters (first stage)")
            ax.set_ylabel("stride")
            ax.set_title(f"{dataset}, pool={pool}", fontsize=9)
            fig.colorbar(image, ax=ax, shrink=0.8)
        fig.tight_layout()
        path = out / f"heatmap_{pool}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _effects(rows, out: pathlib.Path) -> list[pathlib.Path]:
    """Mean test accuracy per value of each axis, per dataset, with error bars."""
    plt = _plt()
    written = []
    for axis in axes_of(rows):
        values = []
        for r in rows:
            if r.get(axis) not in values:
                values.append(r.get(axis))
        try:
            values.sort()
        except TypeError:
            values.sort(key=str)
        if len(values) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=90)
        for dataset, group in _by_dataset(rows).items():
            means, errs = [], []
            for v in values:
                accs = [r[METRIC] for r in group if r.get(axis) == v]
                if not accs:
                    means.append(math.nan)
                    errs.append(0.0)
                    continue
                if len(accs) == 1:
                    ci = next(
                        (
                            r.get("test_accuracy_ci95")
                            for r in group
                            if r.get(axis) == v
                        ),
                        None,
                    )
                    means.append(accs[0])
                    errs.append(ci or 0.0)
                    continue
                mean, std, _ = metrics.mean_confidence_interval(accs)
                means.append(mean)
                errs.append(std)
            ax.errorbar(
                range(len(values)),
                means,
                yerr=errs,
                marker="o",
                capsize=4,
                label=dataset,
            )
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(axis)
        ax.set_ylabel("test accuracy (mean ± std)")
        ax.set_title(f"effect of {axis}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"effect_{axis.rpartition('.')[2]}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def report(sweep_dir: str | os.PathLike, *, figures: bool = True) -> str:
    """Writes report.md and the figures into `sweep_dir`; returns the printed text."""
    sweep_dir = pathlib.Path(sweep_dir)
    rows = read_results(sweep_dir)
    ok = [r for r in rows if r["status"] == "ok" and r.get(METRIC) is not None]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    written: list[pathlib.Path] = []
    if figures and ok:
        for cost, label, name in (
            ("params", "parameters", "accuracy_vs_params.png"),
            ("flops", "forward FLOPs", "accuracy_vs_flops.png"),
        ):
            _scatter(ok, cost, label, sweep_dir / name)
            written.append(sweep_dir / name)
        written += _heatmaps(ok, rows, sweep_dir)
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
