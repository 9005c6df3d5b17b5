"""`jaxcnn sweep compare A B`: does a sweep's ranking hold in a second sweep of the same grid?

A and B are two sweep directories over the same grid points, e.g. the same experiment
at two training budgets (`JAXCNN_BUDGET=long`) or with other seeds. Points are matched
by dataset and swept values; per dataset the comparison reports

- the rank correlation of the mean test accuracies (Spearman's rho, Kendall's tau);
- every pair of points that A *separates* (95 % intervals over seeds disjoint, the
  report's `tied` test) and what B says of it: the same order, separated again
  (*confirmed*), tied (*not confirmed*), or the opposite order, separated
  (*reversed*); and the same from B's side;
- per swept axis and pair of its values, over the points that differ only in that
  axis: how often each sweep finds one value better (intervals disjoint) or a tie;
- the points tied with the best in each sweep;
- a table of every matched point: mean ± half width and rank in A and in B.

A reading of the grid may rely on the confirmed pairs; a reversed pair means the
ranking depends on what differs between the sweeps (the budget). With one seed there
are no intervals, so no pair is separated and only the correlations are reported.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from jaxcnn import rundir
from jaxcnn.sweep import report, results
from jaxcnn.sweep.status import TrialStatus

Point = tuple[Any, ...]


def _key(row: dict[str, Any], axes: Sequence[str]) -> Point:
    return tuple(repr(row.get(a)) for a in axes)


def _label(row: dict[str, Any], axes: Sequence[str]) -> str:
    return ", ".join(
        f"{a.rpartition('.')[2]}={report.fmt(row.get(a))}"
        for a in axes
        if row.get(a) is not None
    )


def shared_axes(
    rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]]
) -> list[str]:
    """The swept config paths both sweeps have, in A's order."""
    in_b = set(report.axes_of(rows_b))
    return [a for a in report.axes_of(rows_a) if a in in_b]


def matched(
    rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]]
) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """{dataset: [(row in A, row in B)]} for the points ok in both sweeps."""
    axes = shared_axes(rows_a, rows_b)
    groups_b = report.group_by_dataset(_ok(rows_b))
    out: dict[str, list] = {}
    for dataset, group in report.group_by_dataset(_ok(rows_a)).items():
        by_key = {_key(r, axes): r for r in groups_b.get(dataset, [])}
        pairs = [(r, by_key[_key(r, axes)]) for r in group if _key(r, axes) in by_key]
        if pairs:
            out[dataset] = pairs
    return out


def _ok(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in rows
        if r["status"] == TrialStatus.OK and r.get(report.METRIC) is not None
    ]


def _separated(a, b) -> bool:
    return report.tied(a, b) is False


def pair_verdicts(
    spans_a: Sequence[tuple[float, float]], spans_b: Sequence[tuple[float, float]]
) -> dict[str, Any]:
    """For the pairs of points the first sweep separates: how many the second sweep
    confirms (same order, separated), leaves tied, or reverses (separated the other
    way), and the reversed pairs (i, j), i the better in the first sweep. Points are
    given as (mean, 95 % half width), in the same order in both."""
    counts: dict[str, Any] = {
        "separated": 0,
        "confirmed": 0,
        "not confirmed": 0,
        "reversed": 0,
        "reversed_pairs": [],
    }
    for i, j in combinations(range(len(spans_a)), 2):
        if not _separated(spans_a[i], spans_a[j]):
            continue
        counts["separated"] += 1
        if not _separated(spans_b[i], spans_b[j]):
            counts["not confirmed"] += 1
        elif (spans_a[i][0] > spans_a[j][0]) == (spans_b[i][0] > spans_b[j][0]):
            counts["confirmed"] += 1
        else:
            counts["reversed"] += 1
            better = (i, j) if spans_a[i][0] > spans_a[j][0] else (j, i)
            counts["reversed_pairs"].append(better)
    return counts


def _order(a: tuple[float, float], b: tuple[float, float]) -> str:
    """ ">" / "<" when the intervals are disjoint, "=" when they overlap, "?" unknown."""
    t = report.tied(a, b)
    return "?" if t is None else "=" if t else ">" if a[0] > b[0] else "<"


def axis_effects(
    pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], axes: Sequence[str]
) -> list[dict[str, Any]]:
    """Per axis and pair of its values (v, w): over the points that differ only in
    that axis, how often each sweep finds v better (intervals disjoint), tied, or w
    better. [{axis, values: (v, w), a: {">", "=", "<", "?"}: n, b: ...}]."""
    out = []
    for k, axis in enumerate(axes):
        others: dict[Point, dict[str, int]] = {}
        for n, (ra, _) in enumerate(pairs):
            rest = _key(ra, axes[:k] + axes[k + 1 :])
            others.setdefault(rest, {})[repr(ra.get(axis))] = n
        shown = {repr(ra.get(axis)): report.fmt(ra.get(axis)) for ra, _ in pairs}
        for v, w in combinations(shown, 2):
            found = [(g[v], g[w]) for g in others.values() if v in g and w in g]
            if not found:
                continue
            row = {"axis": axis, "values": (shown[v], shown[w]), "a": {}, "b": {}}
            for side, col in (("a", 0), ("b", 1)):
                for i, j in found:
                    o = _order(
                        report.interval(pairs[i][col]), report.interval(pairs[j][col])
                    )
                    row[side][o] = row[side].get(o, 0) + 1
            out.append(row)
    return out


def _effects_table(effects, names) -> list[str]:
    def counts(c):
        return " / ".join(str(c.get(o, 0)) for o in (">", "=", "<")) + (
            f" ({c['?']} unknown)" if c.get("?") else ""
        )

    lines = [
        f"| axis | v vs w | {names[0]}: v better / tied / w better | "
        f"{names[1]}: v better / tied / w better |",
        "|---|---|---|---|",
    ]
    for e in effects:
        v, w = e["values"]
        lines.append(
            f"| {e['axis'].rpartition('.')[2]} | {v} vs {w} | {counts(e['a'])} | "
            f"{counts(e['b'])} |"
        )
    return lines


def _ranks(means: Sequence[float]) -> list[int]:
    order = sorted(range(len(means)), key=lambda i: -means[i])
    ranks = [0] * len(means)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def _correlations(means_a, means_b) -> tuple[float, float]:
    from scipy import stats  # heavy import, only here

    if len(means_a) < 3:
        return math.nan, math.nan
    return (
        float(stats.spearmanr(means_a, means_b).statistic),
        float(stats.kendalltau(means_a, means_b).statistic),
    )


def _tied_with_best(spans, labels) -> list[str]:
    best = max(range(len(spans)), key=lambda i: spans[i][0])
    return [
        labels[i]
        for i in range(len(spans))
        if i == best or report.tied(spans[i], spans[best])
    ]


def compare_rows(
    rows_a: Sequence[dict[str, Any]],
    rows_b: Sequence[dict[str, Any]],
    names: tuple[str, str] = ("A", "B"),
) -> str:
    """The Markdown comparison of two sweeps' result rows (see the module docstring)."""
    axes = shared_axes(rows_a, rows_b)
    groups = matched(rows_a, rows_b)
    if not groups:
        return f"No grid point is ok in both {names[0]} and {names[1]}: nothing to compare."
    a, b = names
    lines = []
    for dataset, pairs in groups.items():
        spans_a = [report.interval(ra) for ra, _ in pairs]
        spans_b = [report.interval(rb) for _, rb in pairs]
        labels = [_label(ra, axes) for ra, _ in pairs]
        rho, tau = _correlations([s[0] for s in spans_a], [s[0] for s in spans_b])
        lines += [
            f"## {dataset}: {len(pairs)} points ok in both",
            "",
            f"Rank correlation of the means: Spearman {rho:.3f}, Kendall {tau:.3f}.",
            "",
            "| separated in | pairs | same order, separated in the other | tied in "
            "the other | opposite order, separated |",
            "|---|---:|---:|---:|---:|",
        ]
        verdicts = (pair_verdicts(spans_a, spans_b), pair_verdicts(spans_b, spans_a))
        for (first, second), v in zip(((a, b), (b, a)), verdicts, strict=True):
            lines.append(
                f"| {first} (checked in {second}) | {v['separated']} | {v['confirmed']} "
                f"| {v['not confirmed']} | {v['reversed']} |"
            )
        reversed_pairs = verdicts[0]["reversed_pairs"]
        if reversed_pairs:
            lines += ["", f"Reversed (better in {a} -> better in {b}):"]
            lines += [f"- {labels[i]} > {labels[j]}" for i, j in reversed_pairs]
        lines += [
            "",
            "Each swept axis, over the points that differ only in it (counts of "
            "points; better = 95 % intervals disjoint):",
            "",
            *_effects_table(axis_effects(pairs, axes), names),
        ]
        lines += [
            "",
            f"Tied with the best in {a}: "
            + "; ".join(_tied_with_best(spans_a, labels)),
            "",
            f"Tied with the best in {b}: "
            + "; ".join(_tied_with_best(spans_b, labels)),
            "",
            *_point_table(spans_a, spans_b, labels, names),
            "",
        ]
    return "\n".join(lines)


def _point_table(spans_a, spans_b, labels, names) -> list[str]:
    ranks_a = _ranks([s[0] for s in spans_a])
    ranks_b = _ranks([s[0] for s in spans_b])

    def cell(span, rank):
        half = "" if math.isnan(span[1]) else f" ± {span[1]:.4f}"
        return f"{span[0]:.4f}{half} (#{rank})"

    lines = [
        f"| point | {names[0]} test acc (rank) | {names[1]} test acc (rank) |",
        "|---|---|---|",
    ]
    for i in sorted(range(len(labels)), key=lambda i: ranks_b[i]):
        lines.append(
            f"| {labels[i]} | {cell(spans_a[i], ranks_a[i])} | "
            f"{cell(spans_b[i], ranks_b[i])} |"
        )
    return lines


def compare(
    dir_a: str | os.PathLike,
    dir_b: str | os.PathLike,
    out: str | os.PathLike | None = None,
) -> str:
    """Compares the sweeps in two directories; writes the Markdown to `out` too.

    Raises:
      JaxcnnError: a directory holds no readable results.jsonl.
    """
    names = (pathlib.Path(dir_a).name, pathlib.Path(dir_b).name)
    if names[0] == names[1]:
        names = (str(dir_a), str(dir_b))
    text = f"# {names[0]} vs {names[1]}\n\n" + compare_rows(
        results.read_results(dir_a), results.read_results(dir_b), names
    )
    if out is not None:
        rundir.write_text_atomic(pathlib.Path(out), text + "\n")
    return text
