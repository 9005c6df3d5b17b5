"""`jaxcnn sweep compare`: matching points, pair verdicts, per-axis effects, the CLI."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn import cli
from jaxcnn.sweep import compare, results


def _row(filters, pool, mean, half, dataset="mnist", status="ok"):
    return {
        "trial": f"{dataset}-{filters}-{pool}",
        "status": status,
        "error": None,
        "data.dataset": dataset,
        "model.filters": filters,
        "model.pool": pool,
        "test_accuracy": mean,
        "test_accuracy_mean": mean,
        "test_accuracy_ci95": half,
        "seeds": 3,
    }


def _grid(values):
    """{(filters, pool): (mean, half)} -> rows."""
    return [_row(f, p, m, h) for (f, p), (m, h) in values.items()]


SHORT = {
    (8, "max"): (0.90, 0.01),
    (8, "avg"): (0.85, 0.01),
    (16, "max"): (0.93, 0.01),
    (16, "avg"): (0.915, 0.01),
}


def test_identical_sweeps_confirm_every_separated_pair():
    text = compare.compare_rows(_grid(SHORT), _grid(SHORT), ("short", "long"))
    assert "Spearman 1.000, Kendall 1.000" in text
    # half widths 0.01: disjoint when > 0.02 apart; 4 of the 6 pairs are
    assert "| short (checked in long) | 4 | 4 | 0 | 0 |" in text
    assert "Reversed" not in text
    assert "| pool | max vs avg | 1 / 1 / 0 | 1 / 1 / 0 |" in text
    assert "| filters | 8 vs 16 | 0 / 0 / 2 | 0 / 0 / 2 |" in text


def test_reversed_and_unconfirmed_pairs_are_named():
    long = dict(SHORT)
    long[(8, "avg")] = (0.95, 0.01)  # from worst to best
    long[(16, "max")] = (0.91, 0.02)  # now tied with 8/max
    text = compare.compare_rows(_grid(SHORT), _grid(long), ("short", "long"))
    v = compare.pair_verdicts(
        [compare.report.interval(r) for r in _grid(SHORT)],
        [compare.report.interval(r) for r in _grid(long)],
    )
    assert (v["separated"], v["confirmed"], v["not confirmed"], v["reversed"]) == (
        4,
        0,
        1,
        3,
    )
    assert "- filters=8, pool=max > filters=8, pool=avg" in text
    assert "| pool | max vs avg | 1 / 1 / 0 | 0 / 1 / 1 |" in text


def test_points_match_by_dataset_and_values_and_skip_failed_ones():
    a = _grid(SHORT) + [_row(8, "max", 0.7, 0.01, dataset="fashion_mnist")]
    b = list(reversed(_grid(SHORT)))
    b[0] = {**b[0], "status": "failed", "test_accuracy": None}
    groups = compare.matched(a, b)
    assert list(groups) == ["mnist"] and len(groups["mnist"]) == 3
    for ra, rb in groups["mnist"]:
        assert (ra["model.filters"], ra["model.pool"]) == (
            rb["model.filters"],
            rb["model.pool"],
        )
    assert "nothing to compare" in compare.compare_rows(a[-1:], b)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0.001, 0.2)), min_size=2, max_size=8),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0.001, 0.2)), min_size=8, max_size=8),
)
def test_pair_verdicts_partition_the_separated_pairs(spans_a, spans_b):
    spans_b = spans_b[: len(spans_a)]
    v = compare.pair_verdicts(spans_a, spans_b)
    assert v["confirmed"] + v["not confirmed"] + v["reversed"] == v["separated"]
    assert len(v["reversed_pairs"]) == v["reversed"]
    assert compare.pair_verdicts(spans_a, spans_a)["confirmed"] == v["separated"]


def test_cli_compare_prints_and_writes(tmp_path, capsys):
    for name, grid in (("short", SHORT), ("long", SHORT)):
        (tmp_path / name).mkdir()
        results.write_results(tmp_path / name, _grid(grid))
    out = tmp_path / "cmp.md"
    assert cli.main(["sweep", "compare", str(tmp_path / "short"), str(tmp_path / "long"),
                     "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith("# short vs long") and out.read_text() == printed
    assert cli.main(["sweep", "compare", str(tmp_path / "short")]) == 2
    assert "usage: jaxcnn sweep compare" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["a", "b"])
def test_cli_compare_names_a_directory_without_results(tmp_path, capsys, missing):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    present = "b" if missing == "a" else "a"
    results.write_results(tmp_path / present, _grid(SHORT))
    assert cli.main(["sweep", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / missing / "results.jsonl") in err and "Traceback" not in err
