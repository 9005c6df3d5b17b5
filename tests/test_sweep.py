"""Sweep engine: grid expansion, static invalid detection, ordering, real sweeps on digits,
failure isolation, pruning, kill -9 resume and concurrent workers; the package's imports."""

import ast
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest

from jaxcnn import spec, sweep
from jaxcnn.errors import JaxcnnError, SpecError
from jaxcnn.sweep import report, storage

# A small simple_cnn on the embedded 8x8 digits: a trial trains in about a second.
BASE = spec.RunConfig.from_dict(
    {
        "model": {
            "name": "simple_cnn",
            "args": {
                "input_shape": [8, 8, 1],
                "filters": 8,
                "depth": 1,
                "padding": "same",
                "dense_units": 32,
            },
        },
        "train": {"epochs": 3, "batch_size": 32, "keep_checkpoints": 1},
        "optim": {"lr": 3e-3},
    }
)


def _sweep(points, name="t", **kwargs) -> sweep.Sweep:
    return sweep.Sweep(name=name, base=BASE, points=tuple(points), **kwargs)


def _complete_per_key(sweep_dir: pathlib.Path, name: str) -> dict[str, int]:
    study = optuna.load_study(
        study_name=name, storage=storage.open_storage(None, sweep_dir)
    )
    counts: dict[str, int] = {}
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        counts[t.user_attrs["key"]] = counts.get(t.user_attrs["key"], 0) + 1
    return counts


# --------------------------------------------------------------------------- static
def test_expand_grid_is_the_cartesian_product_last_axis_fastest():
    grid = sweep.expand_grid({"model.filters": [8, 16], "model.stride": [1, 2, 3]})
    assert len(grid) == 6
    assert grid[0] == {"model.filters": 8, "model.stride": 1}
    assert grid[1] == {"model.filters": 8, "model.stride": 2}
    assert grid[-1] == {"model.filters": 16, "model.stride": 3}
    with pytest.raises(SpecError, match="model.stride"):
        sweep.expand_grid({"model.stride": []})


def test_plan_marks_collapsing_shapes_invalid_and_orders_by_program():
    base = spec.RunConfig().with_overrides(
        {"model.name": "simple_cnn", "model.input_shape": [28, 28, 1]}
    )
    points = [
        {"model.filters": 8, "train.seed": 1},
        {"model.filters": 16, "train.seed": 1},
        {"model.filters": 8, "train.seed": 2},  # same program as the first point
        {"model.stride": 3, "model.pool": "max"},  # 28 -> 9 -> 4 -> 1: 1x1 < 2x2 window
        {"model.filters": 0},  # a bad value is invalid too, with the field named
    ]
    plans = sweep.plan_sweep(sweep.Sweep(name="p", base=base, points=tuple(points)))
    assert [p.error is not None for p in plans] == [True, True, False, False, False]
    assert "smaller than the 2x2 window" in plans[0].error + plans[1].error
    assert "filters must be >= 1" in plans[0].error + plans[1].error
    valid = [p.overrides for p in plans[2:]]
    # The two filters=8 points share shapes: they run back to back.
    assert valid[0]["model.filters"] == valid[1]["model.filters"] == 8
    assert plans[2].group == plans[3].group != plans[4].group
    # Every optimiser field is a constant of the compiled program; seed and patience not.
    first = sweep.check_trial(base, points[0]).group
    for path, value in [
        ("optim.lr", 1e-2),
        ("optim.momentum", 0.5),
        ("optim.epsilon", 1e-4),
        ("optim.weight_decay", 1e-4),
        ("optim.l2", 1e-4),
        ("optim.label_smoothing", 0.1),
        ("train.epochs", 7),
    ]:
        assert sweep.check_trial(base, {**points[0], path: value}).group != first, path
    for path, value in [("train.seed", 5), ("train.patience", 3)]:
        assert sweep.check_trial(base, {**points[0], path: value}).group == first, path
    # Static totals come from shapes.infer: conv(3x3x1x8) + ... matches summarize().
    assert plans[2].params == sweep.check_trial(base, points[0]).params > 0
    assert len({p.key for p in plans}) == 5


def test_load_sweep_from_toml_with_grid_search_and_smoke(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        """
[model]
name = "simple_cnn"
[train]
epochs = 5
[sweep]
pruner = "median"
[sweep.grid]
"model.filters" = [8, 16]
"model.pool" = ["max", "avg"]
[sweep.smoke]
"train.epochs" = 1
"""
    )
    s = sweep.load_sweep(path)
    assert s.name == "s" and s.sampler == "grid" and s.pruner == "median"
    assert len(s.points) == 4 and s.base.train.epochs == 5
    assert sweep.load_sweep(path, smoke=True).base.train.epochs == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\nsampler = "anneal"\n[sweep.grid]\n"model.filters" = [8]\n')
    with pytest.raises(SpecError, match="sampler must be one of grid, random, tpe"):
        sweep.load_sweep(bad)
    search = tmp_path / "search.toml"
    search.write_text(
        '[sweep]\nsampler = "tpe"\ntrials = 4\n[sweep.search]\n'
        '"optim.lr" = { low = 1e-4, high = 1e-2, log = true }\n"model.filters" = [8, 16]\n'
    )
    s = sweep.load_sweep(search)
    assert s.search["optim.lr"].log and s.search["model.filters"].choices == (8, 16)
    assert sweep.Sweep.from_dict(s.to_dict()) == s


def test_pareto_front():
    points = [(10, 0.5), (20, 0.7), (15, 0.4), (30, 0.69), (40, 0.9)]
    assert report.pareto_front(points) == [0, 1, 4]


def test_heatmap_panels_and_effect_series():
    rows = [
        {"trial": "a", "status": "ok", "model.filters": 8, "model.stride": 1,
         "model.pool": "max", "dataset": "digits", "test_accuracy": 0.9},
        {"trial": "b", "status": "invalid", "model.filters": 16, "model.stride": 2,
         "model.pool": "max", "dataset": "digits", "test_accuracy": None},
        {"trial": "c", "status": "ok", "model.filters": 16, "model.stride": 1,
         "model.pool": "max", "dataset": "digits", "test_accuracy": 0.7,
         "test_accuracy_ci95": 0.05},
        {"trial": "d", "status": "ok", "model.filters": 8, "model.stride": 2,
         "model.pool": "avg", "dataset": "digits", "test_accuracy": 0.5},
    ]  # fmt: skip
    ((title, grid, halves, marks),) = report.heatmap_panels(
        rows, "max", [8, 16], [1, 2]
    )
    assert title == "digits, pool=max" and marks == {(1, 1): "invalid"}
    assert grid[0].tolist() == [0.9, 0.7] and all(map(math.isnan, grid[1]))
    assert math.isnan(halves[0, 0]) and halves[0, 1] == 0.05
    ok = [r for r in rows if r["status"] == "ok"]
    means, errs = report.effect_series(ok, "model.filters", [8, 16, 32])["digits"]
    assert means[:2] == [pytest.approx(0.7), 0.7] and math.isnan(means[2])
    assert errs[0] == pytest.approx(0.28284, abs=1e-5)  # std of 0.9 and 0.5
    assert errs[1:] == [0.05, 0.0]  # one trial: its 95 % interval over seeds


def _seeded(trial, acc, half, dataset="mnist", seeds=3, **axes):
    return {
        "trial": trial, "status": "ok", "data.dataset": dataset, **axes,
        "test_accuracy": acc, "test_accuracy_mean": acc,
        "test_accuracy_ci95": half, "seeds": seeds,
    }  # fmt: skip


def test_tie_rule_on_hand_made_rows():
    # Intervals: a [0.88, 0.92], b [0.86, 0.885], c [0.70, 0.80], d [0.87, 0.89]
    rows = [
        _seeded("c", 0.75, 0.05, **{"model.filters": 4}),
        _seeded("a", 0.90, 0.02, **{"model.filters": 16}),
        _seeded("b", 0.8725, 0.0125, **{"model.filters": 8}),
        _seeded("d", 0.88, 0.01, dataset="fashion", **{"model.filters": 16}),
        {"trial": "e", "status": "invalid", "model.filters": 99, "error": "x"},
    ]
    assert report.tied((0.5, 0.25), (0.0, 0.25))  # touching counts as tied
    assert not report.tied((0.5, 0.125), (0.0, 0.25))
    assert report.tied((0.9, math.nan), (0.9, 0.01)) is None  # one seed: unknown
    ranked = sorted(rows[:3], key=lambda r: -r["test_accuracy"])
    assert report.tie_marks(ranked) == [(None, True), (True, False), (False, None)]

    lines = report.ranked_table(rows).splitlines()
    assert "| test acc (mean ± 95 %) | n | tied with #1 | tied with next |" in lines[0]
    # Ranked within each dataset by the mean; not-ok trials last, unranked.
    assert [line.split(" | ")[:3] for line in lines[2:]] == [
        ["| 1", "mnist", "16"],
        ["| 2", "mnist", "8"],
        ["| 3", "mnist", "4"],
        ["| 1", "fashion", "16"],
        ["| ", "-", "99"],
    ]
    assert "| 0.9000 ± 0.0200 | 3 |  | yes |" in lines[2]
    assert "| 0.8725 ± 0.0125 | 3 | yes | no |" in lines[3]
    assert "| 0.7500 ± 0.0500 | 3 | no |  |" in lines[4]
    assert "| 0.8800 ± 0.0100 | 3 |  |  |" in lines[5]
    (mnist, fashion) = report.ties_summary(rows)
    assert mnist == ("- mnist: #1 filters=16 (0.9000 ± 0.0200, n=3); tied with it: #2")
    assert fashion.endswith("tied with it: none")
    # A trial with one seed in a seeded sweep: no interval, so '?'.
    rows[2] = {**rows[2], "test_accuracy_ci95": None, "seeds": 1}
    line = report.ranked_table(rows).splitlines()[3]
    assert "| 0.8725 | 1 | ? | ? |" in line


def test_effect_series_with_seeds_combines_the_intervals():
    ok = [
        _seeded("a", 0.9, 0.03, **{"model.pool": "max", "model.stride": 1}),
        _seeded("b", 0.7, 0.04, **{"model.pool": "max", "model.stride": 2}),
    ]
    means, errs = report.effect_series(ok, "model.pool", ["max"])["mnist"]
    assert means == [pytest.approx(0.8)] and errs == [pytest.approx(0.025)]


def test_without_seeds_the_table_has_no_intervals():
    rows = [
        {"trial": "a", "status": "ok", "model.filters": 4, "test_accuracy": 0.5},
        {"trial": "b", "status": "ok", "model.filters": 8, "test_accuracy": 0.7},
    ]
    text = report.ranked_table(rows)
    assert "±" not in text and "tied" not in text and "| test acc |" in text
    assert text.splitlines()[2].startswith("| 1 | - | 8 |")


# --------------------------------------------------------------------------- imports
SWEEP_DIR = pathlib.Path(sweep.__file__).parent
# Each module may import only those before it; results.py imports none of them.
SWEEP_ORDER = [
    "status",
    "optuna_api",
    "results",
    "config",
    "plan",
    "storage",
    "trial",
    "queueing",
    "identity",
    "liveness",
    "datasets",
    "execute",
    "worker",
    "run",
    "report",
    "compare",
]


def _imported_modules(path: pathlib.Path) -> set[str]:
    """The jaxcnn modules `path` imports, e.g. {"jaxcnn.metrics", "jaxcnn.sweep.config"}."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in out if name.startswith("jaxcnn")}


def test_sweep_modules_import_downward_only():
    found = sorted(p.stem for p in SWEEP_DIR.glob("*.py") if p.stem != "__init__")
    assert found == sorted(SWEEP_ORDER)
    modules = {f"jaxcnn.sweep.{name}" for name in SWEEP_ORDER}
    for i, name in enumerate(SWEEP_ORDER):
        imported = _imported_modules(SWEEP_DIR / f"{name}.py") & modules
        allowed = {f"jaxcnn.sweep.{n}" for n in SWEEP_ORDER[:i]}
        assert imported <= allowed, f"sweep/{name}.py imports {imported - allowed}"
    assert not any(
        m.startswith("jaxcnn.sweep")
        for m in _imported_modules(SWEEP_DIR / "results.py")
    )


def test_only_the_cli_imports_the_sweep_package():
    package = SWEEP_DIR.parent
    importers = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.parent != SWEEP_DIR
        and any(m.startswith("jaxcnn.sweep") for m in _imported_modules(path))
    }
    assert importers == {"cli/sweeps.py"}


@pytest.mark.parametrize("name", SWEEP_ORDER)
def test_each_sweep_module_imports_in_a_fresh_interpreter(name):
    code = f"import sys, jaxcnn.sweep.{name}; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_compile_share_counts_every_seed_and_skips_trials_without_times():
    rows = [
        {"status": "ok", "compile_seconds": 30.0, "train_seconds": 70.0},
        # means over 3 seeds: 3 x (10 + 90) s of which 3 x 10 s compiling
        {"status": "ok", "seeds": 3, "compile_seconds": 10.0, "train_seconds": 90.0},
        {"status": "failed", "error": "DataError"},  # never trained: no times
        {"status": "invalid", "compile_seconds": None, "train_seconds": None},
    ]
    assert report.compile_share(rows) == "compiling: 15% of 400 s of trial time"
    assert report.compile_share(rows[2:]) is None
    assert report.compile_share([]) is None


# --------------------------------------------------------------------------- real sweeps
def test_smoke_sweep_on_digits_end_to_end(tmp_path):
    s = _sweep(
        [
            {"model.filters": 8},
            {"model.filters": 16},
            {"model.kernel": 9, "model.padding": "valid"},
        ],
    )
    rows = sweep.run_sweep(s, tmp_path, quiet=True)
    by_status = {r["status"] for r in rows}
    assert by_status == {"ok", "invalid"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2
    for r in ok:
        assert r["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
        assert r["params"] > 0 and r["flops"] > 0 and r["compile_seconds"] > 0
        assert r["epochs"] == 3 and r["images_per_second"] > 0
        assert (tmp_path / "trials" / r["trial"] / "summary.json").is_file()
    invalid = next(r for r in rows if r["status"] == "invalid")
    assert "9x9 kernel" in invalid["error"]
    assert not (tmp_path / "trials" / invalid["trial"]).exists()  # cost nothing
    csv_text = (tmp_path / "results.csv").read_text().splitlines()
    header = csv_text[0].split(",")
    assert len(csv_text) == 4 and header[:3] == ["trial", "status", "error"]
    assert set(header[3:6]) == {"model.filters", "model.kernel", "model.padding"}
    # Running again changes nothing: completed trials are never re-run.
    before = (tmp_path / "trials" / ok[0]["trial"] / "metrics.jsonl").read_text()
    again = sweep.run_sweep(s, tmp_path, quiet=True)
    assert [r["status"] for r in again] == [r["status"] for r in rows]
    assert (
        tmp_path / "trials" / ok[0]["trial"] / "metrics.jsonl"
    ).read_text() == before
    text = report.write_report(tmp_path)
    assert "| 1 |" in text
    compiling = sum(r["compile_seconds"] for r in ok)
    total = compiling + sum(r["train_seconds"] for r in ok)
    assert (
        f"compiling: {compiling / total:.0%} of {total:.0f} s of trial time"
        in text.splitlines()
    )
    assert "compiling: " in (tmp_path / "report.md").read_text()
    for name in (
        "accuracy_vs_params.png",
        "accuracy_vs_flops.png",
        "effect_filters.png",
        "report.md",
    ):
        assert (tmp_path / name).stat().st_size > 1000 or name == "report.md"


def test_seeded_sweep_report_has_intervals_ties_and_figures(tmp_path):
    from PIL import Image

    base = BASE.with_overrides({"train.epochs": 2, "data.train_examples": 512})
    points = [
        {"model.filters": 8},
        {"model.filters": 8, "train.patience": 50},  # the same training: tied
        {"model.filters": 8, "optim.lr": 1e-6},  # barely trains: not tied
    ]
    s = sweep.Sweep(name="seeded", base=base, points=tuple(points), seeds=3)
    rows = sweep.run_sweep(s, tmp_path, quiet=True)
    assert [r["seeds"] for r in rows] == [3, 3, 3]
    text = report.write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "tied with #1 (95 % intervals overlap)" in text
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert "| test acc (mean ± 95 %) | n | tied with #1 | tied with next |" in lines[0]
    assert (
        lines[1].startswith("| 1 |")
        and "±" in lines[1]
        and "| 3 |  | yes |" in lines[1]
    )
    assert "| 3 | yes | no |" in lines[2]
    assert lines[3].startswith("| 3 |") and "| 3 | no |  |" in lines[3]
    assert "## Ties" in md and "tied with it: #2" in md
    for name in ("accuracy_vs_params", "accuracy_vs_flops", "effect_lr"):
        with Image.open(tmp_path / f"{name}.png") as img:
            pixels = np.asarray(img.convert("L"), np.float32)
        assert pixels.shape[0] >= 200 and pixels.std() > 8  # not blank
        assert f"![{name}]({name}.png)" in md


def test_a_failing_trial_does_not_stop_the_sweep(tmp_path):
    s = _sweep(
        [
            {"data.dataset": "no_such_dataset_xyz"},  # raises DataError while loading
            {"optim.optimizer": "sgd", "optim.lr": 1e12},  # the loss becomes NaN / Inf
            {"model.filters": 4},
        ]
    )
    rows = {r["trial"]: r for r in sweep.run_sweep(s, tmp_path, quiet=True)}
    statuses = sorted(r["status"] for r in rows.values())
    assert statuses == ["failed", "failed", "ok"]
    errors = " ".join(r["error"] for r in rows.values())
    assert "DataError" in errors and "no_such_dataset_xyz" in errors
    assert "TrainingError" in errors and "loss became" in errors
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert all(
        (tmp_path / "trials" / r["trial"] / "error.txt").is_file() for r in failed
    )


def test_random_search_and_pruning(tmp_path, monkeypatch):
    s = sweep.Sweep(
        name="search",
        base=BASE.override("train.epochs", 2),
        sampler="random",
        trials=3,
        pruner="median",
        search={
            "optim.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "model.filters": [4, 8],
        },
    )
    # A pruner that stops every trial after its first epoch makes the outcome certain.
    monkeypatch.setattr(
        storage, "pruner", lambda _: optuna.pruners.ThresholdPruner(lower=2.0)
    )
    rows = sweep.run_sweep(s, tmp_path, quiet=True)
    assert len(rows) == 3
    for r in rows:
        assert r["status"] == "pruned" and r["epochs"] == 1
        assert 1e-4 <= r["optim.lr"] <= 1e-2 and r["model.filters"] in (4, 8)


def test_seeds_report_mean_std_and_interval_and_grow_without_retraining(tmp_path):
    one = _sweep([{"model.filters": 4}])
    (first,) = sweep.run_sweep(one, tmp_path, quiet=True)
    trial_dir = tmp_path / "trials" / first["trial"]
    seed0 = (trial_dir / "metrics.jsonl").read_text()
    # The same sweep with two seeds trains only seed 1; seed 0 is read back.
    (row,) = sweep.run_sweep(
        _sweep([{"model.filters": 4}], seeds=2),
        tmp_path,
        quiet=True,
    )
    assert (
        row["status"] == "ok" and row["seeds"] == 2 and row["trial"] == first["trial"]
    )
    assert (trial_dir / "metrics.jsonl").read_text() == seed0
    assert row["epochs_this_attempt"] == 0  # seed 0's epochs: none trained again
    accs = [
        json.loads((d / "summary.json").read_text())["test_accuracy"]
        for d in (trial_dir, trial_dir / "seed1")
    ]
    assert accs[0] == first["test_accuracy"]
    assert row["test_accuracy_mean"] == pytest.approx(sum(accs) / 2)
    assert row["test_accuracy_std"] >= 0 and row["test_accuracy_ci95"] >= 0
    assert row["params"] == first["params"] and isinstance(row["params"], int)
    assert _complete_per_key(tmp_path, "t") == {row["trial"]: 2}


def _grid_file(
    tmp_path, grid: str, epochs: int = 1, name: str = "grow"
) -> pathlib.Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[model]
name = "simple_cnn"
args = {{ input_shape = [8, 8, 1], depth = 1, padding = "same", dense_units = 16 }}
[data]
train_examples = 256
[train]
epochs = {epochs}
batch_size = 32
keep_checkpoints = 1
[sweep]
name = "{name}"
[sweep.grid]
{grid}
"""
    )
    return path


def _mtimes(workdir: pathlib.Path) -> dict[str, int]:
    return {
        p.parent.name: p.stat().st_mtime_ns
        for p in (workdir / "trials").glob("*/metrics.jsonl")
    }


def test_a_sweep_grows_by_new_values_and_axes_running_only_new_points(tmp_path):
    workdir = tmp_path / "sweep"
    two = _grid_file(tmp_path, '"model.filters" = [4, 8]')
    rows = sweep.run_sweep(two, workdir, quiet=True)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    before = _mtimes(workdir)
    # One more value on the axis: only that point trains.
    three = _grid_file(tmp_path, '"model.filters" = [4, 8, 12]')
    rows = sweep.run_sweep(three, workdir, quiet=True)
    assert [r["model.filters"] for r in rows] == [4, 8, 12]
    assert {r["status"] for r in rows} == {"ok"}
    after = _mtimes(workdir)
    assert {k: after[k] for k in before} == before and len(after) == 3
    # A new axis whose first value is the family's default (simple_cnn pools "max"):
    # the old points are its max points; only the avg points train.
    pools = _grid_file(
        tmp_path, '"model.filters" = [4, 8, 12]\n"model.pool" = ["max", "avg"]'
    )
    rows = sweep.run_sweep(pools, workdir, quiet=True)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    assert sorted((r["model.filters"], r["model.pool"]) for r in rows) == sorted(
        (f, p) for f in (4, 8, 12) for p in ("max", "avg")
    )
    assert {k: _mtimes(workdir)[k] for k in after} == after
    assert set(_complete_per_key(workdir, "grow").values()) == {1}
    # The original file still runs (nothing left to do); its rows cover every point.
    rows = sweep.run_sweep(two, workdir, quiet=True)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    assert sweep.read_results(workdir) == rows
    assert "6 trials (6 ok)" in report.write_report(workdir, figures=False)


def test_a_changed_base_is_refused_with_what_changed_and_restart_starts_afresh(
    tmp_path, capsys
):
    from jaxcnn import cli

    workdir = tmp_path / "sweep"
    first = _grid_file(tmp_path, '"model.filters" = [4]')
    args = ["sweep", str(first), "--workdir", str(workdir), "--quiet"]
    assert cli.main(args) == 0
    changed = _grid_file(tmp_path, '"model.filters" = [4]', epochs=2)
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "train.epochs: 1 there, 2 now" in err and "--restart" in err
    assert "--workdir" in err and "Traceback" not in err
    # The study refuses it too (another workdir sharing one storage).
    journal = str(workdir / storage.JOURNAL)
    other = ["sweep", str(changed), "--workdir", str(tmp_path / "b"), "--quiet"]
    assert cli.main([*other, "--storage", journal]) == 2
    assert "train.epochs: 1 there, 2 now" in capsys.readouterr().err
    assert cli.main([*args, "--restart"]) == 0
    (row,) = sweep.read_results(workdir)
    assert row["status"] == "ok" and row["epochs"] == 2 and row["attempts"] == 1
    assert _complete_per_key(workdir, "grow") == {row["trial"]: 1}


def test_a_failure_while_setting_up_leaves_no_trial_running(tmp_path, monkeypatch):
    from jaxcnn.sweep import queueing

    s = _sweep([{"model.filters": 4}], name="setup")
    real = storage.flock

    def broken(path, blocking=True):
        if path.name == ".lock" and "trials" in path.parts:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, blocking=blocking)

    monkeypatch.setattr(storage, "flock", broken)
    with pytest.raises(JaxcnnError, match="cannot set up a trial.*back to the queue"):
        sweep.run_sweep(s, tmp_path, quiet=True)
    study = optuna.load_study(
        study_name="setup", storage=storage.open_storage(None, tmp_path)
    )
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states
    assert optuna.trial.TrialState.WAITING in states
    monkeypatch.setattr(storage, "flock", real)
    (row,) = sweep.run_sweep(s, tmp_path, quiet=True)
    assert row["status"] == "ok"
    assert queueing.trial_seeds(study.get_trials()[-1]) == 1


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["../../x", "a/b", "/abs/x", ".hidden", "", "a b"])
def test_sweep_names_that_could_leave_the_runs_folder_are_refused(name):
    with pytest.raises(SpecError, match="only letters, digits"):
        _sweep([{"model.filters": 4}], name=name)


def test_names_from_files_and_the_default_workdir_stay_under_runs(
    tmp_path, monkeypatch, capsys
):
    from jaxcnn import cli
    from jaxcnn.sweep import run

    monkeypatch.chdir(tmp_path)
    path = _grid_file(tmp_path, '"model.filters" = [4]')
    text = path.read_text().replace('name = "grow"', 'name = "../../escaped"')
    path.write_text(text)
    with pytest.raises(SpecError, match="'../../escaped' is not valid"):
        sweep.load_sweep(path)
    (tmp_path / "...py").write_text("")  # its stem is ".."
    assert cli.experiment_main(str(tmp_path / "...py"), ["--no-report"]) == 2
    assert "sweep name '..' is not valid" in capsys.readouterr().err
    s = _sweep([{"model.filters": 4}], name="fine.name-1")
    assert run.prepare_dir(s, None) == pathlib.Path("runs/sweeps/fine.name-1")
    assert not list(tmp_path.parent.glob("escaped*"))


def _cli_error(capsys, *args: str) -> str:
    """Runs `jaxcnn sweep ARGS`; asserts exit status 2, one paragraph and no traceback."""
    from jaxcnn import cli

    capsys.readouterr()
    assert cli.main(["sweep", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> pathlib.Path:
    """A finished one-point sweep directory (copy it before damaging it)."""
    tmp = tmp_path_factory.mktemp("finished")
    sweep.run_sweep(_grid_file(tmp, '"model.filters" = [4]'), tmp / "sweep", quiet=True)
    return tmp / "sweep"


def test_garbage_in_a_sweep_dir_is_a_clear_error(tmp_path, capsys, finished_sweep):
    import shutil

    workdir = tmp_path / "sweep"
    shutil.copytree(finished_sweep, workdir)
    (workdir / "results.jsonl").write_text("not json\n")
    err = _cli_error(capsys, "report", str(workdir))
    assert "results.jsonl line 1 is not JSON" in err and "rerun" in err
    (workdir / "results.jsonl").write_text('[1, 2]\n{"trial": "x"}\n')
    assert "line 1 is not a result row" in _cli_error(capsys, "report", str(workdir))
    # Resuming rewrites results.jsonl from the storage.
    assert sweep.run_sweep(workdir, quiet=True)[0]["status"] == "ok"
    assert "1 trials (1 ok)" in report.write_report(workdir, figures=False)
    (workdir / "sweep.json").write_text("{garbage")
    for args in (
        [str(workdir)],
        [str(_grid_file(tmp_path, "")), "--workdir", str(workdir)],
    ):
        err = _cli_error(capsys, *args, "--quiet")
        assert "sweep.json does not hold a readable sweep (JSONDecodeError" in err
        assert "--restart" in err
    (workdir / "sweep.json").write_text('{"name": "grow", "bogus": 1}')
    assert "TypeError" in _cli_error(capsys, str(workdir), "--quiet")
    shutil.copy(finished_sweep / "sweep.json", workdir / "sweep.json")
    (workdir / storage.JOURNAL).write_text("garbage\n")
    err = _cli_error(capsys, str(workdir), "--quiet")
    assert "optuna.journal" in err and "--restart" in err


def test_bad_storage_and_workdir_are_clear_errors(tmp_path, capsys):
    config = str(_grid_file(tmp_path, '"model.filters" = [4]'))
    workdir = str(tmp_path / "sweep")
    err = _cli_error(capsys, config, "--workdir", workdir, "--storage", "bogus://x/y")
    assert "unknown scheme 'bogus'" in err
    assert "sqlite://, postgresql://, mysql://" in err
    missing = f"sqlite:///{tmp_path}/no/such/folder/s.db"
    err = _cli_error(capsys, config, "--workdir", workdir, "--storage", missing)
    assert (
        f"the folder {tmp_path}/no/such/folder of the SQLite file does not exist" in err
    )
    refused = "postgresql://user:secret@127.0.0.1:1/db"
    err = _cli_error(capsys, config, "--workdir", workdir, "--storage", refused)
    assert "cannot open the Optuna storage" in err and "secret" not in err
    (tmp_path / "file").write_text("")
    err = _cli_error(capsys, config, "--workdir", str(tmp_path / "file"))
    assert "is a file; pass a folder as --workdir" in err
    err = _cli_error(capsys, config, "--workdir", str(tmp_path / "file" / "sub"))
    assert "cannot write to the sweep directory" in err
    err = _cli_error(capsys, "worker", config, "--restart")
    assert "--restart applies to `jaxcnn sweep CONFIG`" in err


def test_a_read_only_sweep_dir_is_a_clear_error(finished_sweep, as_nobody):
    import shutil
    import tempfile

    as_user = as_nobody
    root = pathlib.Path(tempfile.mkdtemp(prefix="jaxcnn-ro-"))
    try:
        workdir = root / "sweep"
        shutil.copytree(finished_sweep, workdir)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        repo = pathlib.Path(__file__).resolve().parents[1]
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(repo)}
        for args in ([str(workdir)], ["report", str(workdir)]):
            done = subprocess.run(
                [*as_user, sys.executable, "-m", "jaxcnn", "sweep", *args, "--quiet"],
                capture_output=True,
                text=True,
                env=env,
                cwd=root,
                timeout=120,
            )
            assert done.returncode == 2, done.stderr
            assert "error: cannot write" in done.stderr and "writable" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755)
        shutil.rmtree(root)


# --------------------------------------------------------------------------- fault tolerance
def _write_sweep_file(
    tmp_path, epochs: int, filters: list[int], name: str = "kill"
) -> pathlib.Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[model]
name = "simple_cnn"
args = {{ input_shape = [8, 8, 1], depth = 1, padding = "same", dense_units = 32 }}
[train]
epochs = {epochs}
batch_size = 16
keep_checkpoints = 1
[sweep]
name = "{name}"
[sweep.grid]
"model.filters" = {filters}
"""
    )
    return path


@pytest.mark.slow
def test_kill_9_mid_trial_then_restart_resumes_from_checkpoint(tmp_path):
    epochs = 8
    config = _write_sweep_file(tmp_path, epochs, [8, 16, 24])
    workdir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "jaxcnn",
        "sweep",
        str(config),
        "--workdir",
        str(workdir),
        "--quiet",
    ]
    proc = subprocess.Popen(command, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    plans = sweep.plan_sweep(sweep.load_sweep(config))
    victim = workdir / "trials" / plans[1].key / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # wait for two finished epochs of the second trial
        if victim.is_file() and len(victim.read_text().splitlines()) >= 2:
            break
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    else:
        pytest.fail("the second trial never reached epoch 2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(victim.read_text().splitlines())
    assert done_before < epochs

    subprocess.run(command, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    rows = {r["trial"]: r for r in sweep.read_results(workdir)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert _complete_per_key(workdir, "kill") == {p.key: 1 for p in plans}
    first, killed, last = (rows[p.key] for p in plans)
    assert (
        first["attempts"] == 1 and first["epochs_this_attempt"] == epochs
    )  # never re-run
    assert killed["attempts"] == 2
    assert killed["resumed_from_epoch"] >= 1  # from its checkpoint, not from scratch
    assert killed["epochs_this_attempt"] == epochs - killed["resumed_from_epoch"]
    assert killed["resumed_from_epoch"] <= done_before
    records = [json.loads(line) for line in victim.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    steps_per_epoch = records[0]["step"]
    assert [r["step"] for r in records] == [
        steps_per_epoch * e for e in range(1, epochs + 1)
    ]
    assert last["attempts"] == 1 and last["resumed_from_epoch"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_a_sweep_with_one_line_and_143_then_resumes(tmp_path, workers):
    epochs = 6
    config = _write_sweep_file(tmp_path, epochs, [8, 16], name="term")
    workdir = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "jaxcnn", "sweep", str(config), "--workdir",
        str(workdir), "--quiet", "--workers", str(workers),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    plans = sweep.plan_sweep(sweep.load_sweep(config))
    logs = [workdir / "trials" / p.key / "metrics.jsonl" for p in plans]
    deadline = time.time() + 300
    while not any(f.is_file() and f.read_text().strip() for f in logs):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "no trial finished an epoch"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    # one line; with several workers, one per worker (where it stopped) and the summary
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == (1 if workers == 1 else workers + 1), err
    for line in errors:
        assert line.startswith("error: SIGTERM received: ")
        assert line.endswith("run the same command again to resume")
    if workers > 1:
        assert f"the {workers} workers of sweep 'term' stopped" in errors[-1]

    subprocess.run(command, check=True, timeout=600)
    rows = sweep.read_results(workdir)
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 2
    assert _complete_per_key(workdir, "term") == {p.key: 1 for p in plans}
    assert any(r["resumed_from_epoch"] >= 1 for r in rows)  # from a checkpoint
    for log in logs:
        assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == list(
            range(1, epochs + 1)
        )


@pytest.mark.slow
def test_three_concurrent_workers_run_every_trial_once(tmp_path):
    epochs = 2
    config = _write_sweep_file(tmp_path, epochs, [4, 6, 8, 10, 12, 14])
    workdir = tmp_path / "sweep"
    rows = sweep.run_sweep(config, workdir, workers=3, quiet=True)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    assert set(_complete_per_key(workdir, "kill").values()) == {1}
    for r in rows:
        assert r["epochs_this_attempt"] == epochs and r["attempts"] == 1
        lines = (
            (workdir / "trials" / r["trial"] / "metrics.jsonl").read_text().splitlines()
        )
        assert len(lines) == epochs


def test_every_seed_of_a_trial_is_one_fit_of_the_training_loop(tmp_path, monkeypatch):
    from jaxcnn import train

    real, fitted = train.fit, []

    def spy(config, workdir, **kwargs):
        fitted.append((config.train.seed, pathlib.Path(workdir)))
        return real(config, workdir, **kwargs)

    monkeypatch.setattr(train, "fit", spy)
    s = sweep.Sweep(
        name="seeds",
        base=BASE.override("train.epochs", 1),
        points=({"model.filters": 4},),
        seeds=2,
    )
    (row,) = sweep.run_sweep(s, tmp_path, quiet=True)  # Optuna stores it as JSON
    assert row["status"] == "ok" and row["seeds"] == 2, row.get("error")
    trial_dir = tmp_path / "trials" / row["trial"]
    assert fitted == [(0, trial_dir), (1, trial_dir / "seed1")]
    summaries = [
        json.loads((d / "summary.json").read_text())
        for d in (trial_dir, trial_dir / "seed1")
    ]
    assert [x["best_epoch"] for x in summaries] == [1, 1]
    accs = [x["test_accuracy"] for x in summaries]
    assert row["test_accuracy_mean"] == pytest.approx(sum(accs) / 2)
    assert type(row["test_accuracy_mean"]) is float and row["test_accuracy_ci95"] >= 0
    assert "replicas" not in row


def test_sweep_files_that_name_replicas_still_load(tmp_path):
    saved = sorted(
        (pathlib.Path(__file__).parents[1] / "experiments" / "results").rglob(
            "sweep.json"
        )
    )
    assert saved, "the committed sweep results hold sweep.json files"
    old_files = [p for p in saved if "replicas" in json.loads(p.read_text())]
    assert old_files, "some were written while sweeps had `replicas`"
    for path in saved:  # old and new ones load alike
        assert sweep.load_sweep(path.parent).seeds >= 1
    old = {**_sweep([{"model.filters": 4}], name="old").to_dict(), "replicas": "vmap"}
    (tmp_path / "sweep.json").write_text(json.dumps(old))
    loaded = sweep.load_sweep(tmp_path)
    assert loaded == _sweep([{"model.filters": 4}], name="old")
    assert "replicas" not in loaded.to_dict()


def test_a_sweep_that_sets_replicas_is_told_it_was_removed(tmp_path, capsys):
    path = _grid_file(tmp_path, '"model.filters" = [4]')
    path.write_text(
        path.read_text().replace("[sweep]\n", '[sweep]\nreplicas = "vmap"\n')
    )
    with pytest.raises(SpecError, match=r"\[sweep\]: the setting 'replicas'.*removed"):
        sweep.load_sweep(path)
    err = _cli_error(capsys, str(path), "--workdir", str(tmp_path / "w"))
    assert "seeds of a trial always run one after another" in err
    assert "delete the setting" in err
    module = tmp_path / "exp.py"
    module.write_text(
        "from jaxcnn import spec\n"
        "SETTINGS = {'seeds': 2, 'replicas': 'auto'}\n"
        "def base(smoke=False):\n    return spec.RunConfig()\n"
        "def sweep():\n    return [{'model.filters': 4}]\n"
    )
    with pytest.raises(SpecError, match="experiment 'exp': SETTINGS: the setting"):
        sweep.load_sweep(module)
    with pytest.raises(TypeError, match="replicas"):
        sweep.Sweep(
            name="x", base=BASE, points=({"model.filters": 4},), replicas="vmap"
        )


def _journal_with_trials(sweep_dir: pathlib.Path, trials: int) -> pathlib.Path:
    study = optuna.create_study(
        study_name="j", storage=storage.open_storage(None, sweep_dir)
    )
    for i in range(trials):
        study.enqueue_trial({}, user_attrs={"key": f"t{i}"})
    return sweep_dir / storage.JOURNAL


def _keys(sweep_dir: pathlib.Path) -> list[str]:
    study = optuna.load_study(
        study_name="j", storage=storage.open_storage(None, sweep_dir)
    )
    return [t.user_attrs["key"] for t in study.get_trials()]


def test_a_cut_last_journal_line_is_dropped_and_the_sweep_goes_on(tmp_path, capsys):
    journal = _journal_with_trials(tmp_path, 3)
    data = journal.read_bytes()
    journal.write_bytes(data[:-25])  # the last trial's line, cut by a kill
    assert _keys(tmp_path) == ["t0", "t1"]
    err = capsys.readouterr().err
    assert f"warning: the last line of {journal} was cut (" in err
    assert err.count("\n") == 1
    study = optuna.load_study(
        study_name="j", storage=storage.open_storage(None, tmp_path)
    )
    study.enqueue_trial({}, user_attrs={"key": "t3"})  # appends after a whole line
    assert _keys(tmp_path) == ["t0", "t1", "t3"]
    assert journal.read_bytes().endswith(b"\n")


def test_a_damaged_journal_line_says_how_to_keep_the_intact_part(tmp_path):
    import subprocess

    journal = _journal_with_trials(tmp_path, 3)
    lines = journal.read_bytes().splitlines(keepends=True)
    bad = len(lines) - 1  # the line of trial t1, now garbage
    journal.write_bytes(b"".join([*lines[: bad - 1], b"{garbage\n", lines[-1]]))
    with pytest.raises(JaxcnnError) as info:
        storage.open_storage(None, tmp_path)
    message = str(info.value)
    assert f"line {bad} of the Optuna journal {journal} is not valid JSON" in message
    assert "--restart" in message and "Traceback" not in message
    command = message.split("`")[1]  # truncate -s BYTES PATH
    subprocess.run(command.split(), check=True)
    assert _keys(tmp_path) == ["t0"]
