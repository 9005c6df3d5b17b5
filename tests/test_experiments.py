"""Every experiments/*.py builds: its docstring says how to run it, and every point of its
sweep (smoke and full) is a valid run config whose model spec is checked statically."""

import ast
import pathlib

import pytest

from jaxcnn import cli, models, shapes, sweep

EXPERIMENTS = sorted(
    p
    for p in (pathlib.Path(__file__).resolve().parents[1] / "experiments").glob("*.py")
    if not p.name.startswith("_")
)


def test_the_four_experiments_exist():
    assert {p.stem for p in EXPERIMENTS} >= {"filters", "stride", "pooling", "grid"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("smoke", [True, False], ids=["smoke", "full"])
def test_experiment_builds_every_spec(path, smoke):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert f"python experiments/{path.name}" in doc and "--smoke" in doc
    assert "min on 2 CPU cores" in doc and "Expect" in doc
    s = sweep.load_sweep(path, smoke=smoke)
    assert s.name == path.stem
    plans = sweep.plan_sweep(s)
    assert len(plans) == len(s.points) >= 2
    valid = [p for p in plans if p.error is None]
    assert len(valid) >= 2
    for p in valid:
        config = s.base.with_overrides(p.overrides)
        summary = shapes.infer(models.load_spec(config.model))
        assert summary.total_params == p.params > 0
        if smoke:
            assert config.data.dataset == "digits" and config.train.epochs == 1
    for p in plans:
        if p.error is not None:
            assert "smaller than" in p.error  # only collapsing shapes are invalid


TINY_EXPERIMENT = """
from jaxcnn import RunConfig

SETTINGS = {"name": "tiny"}


def base(smoke=False):
    args = {"input_shape": [8, 8, 1], "depth": 1, "padding": "same", "dense_units": 16}
    return RunConfig.from_dict(
        {
            "model": {"name": "simple_cnn", "args": args},
            "data": {"train_examples": 256},
            "train": {"epochs": 1, "batch_size": 64, "keep_checkpoints": 1},
        }
    )


def sweep(smoke=False):
    return [{"model.filters": 4}, {"model.kernel": 9, "model.padding": "valid"}]
"""


def test_experiment_main_runs_the_sweep_then_the_report(tmp_path, capsys):
    module = tmp_path / "tiny.py"
    module.write_text(TINY_EXPERIMENT)
    workdir = tmp_path / "out"
    argv = ["--workdir", str(workdir), "--quiet", "--smoke"]
    assert cli.experiment_main(str(module), argv) == 0
    assert "sweep out: 2 trials (1 invalid, 1 ok)" in capsys.readouterr().out
    assert (workdir / "report.md").is_file() and (workdir / "results.csv").is_file()

    assert cli.experiment_main(str(tmp_path / "missing.py"), argv) == 2
    assert "missing.py: no such file" in capsys.readouterr().err
    assert cli.experiment_main(str(module), ["--workers", "two"]) == 2
    assert "invalid int value" in capsys.readouterr().err
