"""Every experiments/*.py builds: its docstring says how to run it, and every point of its
sweep (smoke and full) is a valid run config whose model spec is checked statically."""

import ast
import pathlib
import re

import pytest

from jaxcnn import cli, models, shapes, spec, sweep
from jaxcnn.errors import SpecError
from jaxcnn.sweep.config import load_module

EXPERIMENTS = sorted(
    p
    for p in (pathlib.Path(__file__).resolve().parents[1] / "experiments").glob("*.py")
    if not p.name.startswith("_")
)


def test_the_experiments_exist():
    assert {p.stem for p in EXPERIMENTS} >= {
        "filters",
        "stride",
        "pooling",
        "grid",
        "allconv",
        "transfer",
        "pretrained",
    }


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("smoke", [True, False], ids=["smoke", "full"])
def test_experiment_builds_every_spec(path, smoke):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert f"python -m experiments.{path.stem}" in doc and "--smoke" in doc
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
        if smoke:  # offline: the embedded digits or a folder of image files
            assert config.train.epochs == 1
            assert config.data.dataset == "digits" or spec.is_folder_dataset(
                config.data.dataset
            )
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


def _module(name: str):
    path = EXPERIMENTS[0].parent / f"{name}.py"
    return load_module(path)


@pytest.mark.parametrize(
    "name, short, long",
    [("grid", (2, 4000), (3, 12000)), ("allconv", (3, 12000), (6, 24000))],
)
def test_budgets_and_seeds(name, short, long, monkeypatch):
    s = sweep.load_sweep(EXPERIMENTS[0].parent / f"{name}.py")
    assert s.seeds == {"grid": 3, "allconv": 6}[name]
    assert (s.base.train.epochs, s.base.data.train_examples) == short
    monkeypatch.setenv("JAXCNN_BUDGET", "long")
    s = sweep.load_sweep(EXPERIMENTS[0].parent / f"{name}.py")
    assert (s.base.train.epochs, s.base.data.train_examples) == long
    if name == "grid":  # a third budget: the whole train split
        monkeypatch.setenv("JAXCNN_BUDGET", "full")
        s = sweep.load_sweep(EXPERIMENTS[0].parent / f"{name}.py")
        assert (s.base.train.epochs, s.base.data.train_examples) == (3, None)
    smoke = sweep.load_sweep(EXPERIMENTS[0].parent / f"{name}.py", smoke=True)
    assert smoke.base.train.epochs == 1  # smoke ignores the budget
    monkeypatch.setenv("JAXCNN_BUDGET", "huge")
    with pytest.raises(SpecError, match=r"JAXCNN_BUDGET='huge' is not a budget; use "):
        sweep.load_sweep(EXPERIMENTS[0].parent / f"{name}.py")


def test_allconv_variants_have_the_parameters_its_docstring_states():
    allconv = _module("allconv")
    stated = {}  # the table rows: variant, downsampler, conv layers, params
    for m in re.finditer(r"^ +([a-z-]+) .* (\d) +([\d,]+)$", allconv.__doc__, re.M):
        stated[m[1]] = (int(m[2]), int(m[3].replace(",", "")))
    assert set(stated) == set(allconv.VARIANTS)
    for variant, (convs, params) in stated.items():
        model = allconv.model_spec(variant, (28, 28, 1))
        assert sum(layer.type == "conv" for layer in model.layers) == convs
        assert shapes.infer(model).total_params == params
        # every variant ends at 7x7 before the global pool: only the downsampler differs
        assert shapes.infer(model).layers[-3].output_shape[:2] == (7, 7)
    assert stated["pool-max"][1] == stated["strided"][1]  # equal parameter budgets
    with pytest.raises(ValueError, match="unknown variant 'bogus'"):
        allconv.model_spec("bogus", (28, 28, 1))


def test_transfer_table_shows_intervals_and_ties():
    transfer = _module("transfer")

    def row(variant, acc, half):
        return {
            "trial": variant, "status": "ok", "data.train_examples": 100,
            "train.epochs": 1, **transfer.variant(variant, "/runs/pre"),
            "test_accuracy": acc, "test_accuracy_mean": acc,
            "test_accuracy_ci95": half, "seeds": 3, "best_val_accuracy": acc,
            "train_seconds": 1.0,
        }  # fmt: skip

    rows = [row("frozen", 0.70, 0.01), row("finetune", 0.80, 0.02),
            row("scratch", 0.79, 0.015)]  # fmt: skip
    pre = {"dataset": "digits", "model": "digits_cnn", "train_examples": 600,
           "epochs": 1, "test_accuracy": 0.9}  # fmt: skip
    lines = transfer.table(pre, rows, smoke=True).splitlines()
    body = {line.split(" | ")[2]: line for line in lines if line.startswith("| 100 ")}
    assert "| 0.7000 ± 0.0100 | 3 | no |" in body["frozen"]
    assert "| 0.8000 ± 0.0200 | 3 | best |" in body["finetune"]
    assert "| 0.7900 ± 0.0150 | 3 | yes |" in body["scratch"]
    assert any("tied with best" in line and "95 %" in line for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["allconv", "grid"])
def test_seeded_experiment_smoke_runs_and_reports_intervals(name, tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "--quiet", "--smoke"]
    assert cli.experiment_main(str(EXPERIMENTS[0].parent / f"{name}.py"), argv) == 0
    md = (tmp_path / "report.md").read_text()
    assert "test acc (mean ± 95 %) | n | tied with #1" in md and "## Ties" in md
    ranked = [line for line in md.splitlines() if line.startswith("| 1 | digits")]
    seeds = _module(name).SETTINGS["seeds"]
    assert len(ranked) == 1 and " ± " in ranked[0] and f"| {seeds} |" in ranked[0]
    assert (tmp_path / "accuracy_vs_params.png").stat().st_size > 1000


@pytest.mark.slow
def test_transfer_smoke_runs_with_seeds(tmp_path, capsys):
    transfer = _module("transfer")
    assert transfer.main(["--smoke", "--quiet", "--workdir", str(tmp_path)]) == 0
    text = (tmp_path / "transfer.md").read_text()
    assert text.count("| best |") == 2  # one best variant per training-set size
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| 100 ") or line.startswith("| 300 ")
    ]
    assert len(rows) == 6 and all(" ± " in r and "| 6 |" in r for r in rows)


def test_a_sweep_file_in_a_package_folder_imports_its_siblings(tmp_path):
    """load_module imports a file of a package folder as a submodule (relative imports
    resolve, as under `python -m`), afresh each call, without touching sys.path."""
    import sys

    folder = tmp_path / "exps"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "_shared.py").write_text("EPOCHS = 3\n")
    (folder / "one.py").write_text("from . import _shared\n\nVALUE = _shared.EPOCHS\n")
    path_before = list(sys.path)
    first, second = load_module(folder / "one.py"), load_module(folder / "one.py")
    assert first.VALUE == second.VALUE == 3 and first is not second
    assert sys.path == path_before
    (tmp_path / "alone.py").write_text("from . import _shared\n")
    with pytest.raises(ImportError):  # no package folder: no parent to import from
        load_module(tmp_path / "alone.py")


def test_experiment_scripts_run_as_modules_of_the_experiments_package():
    import subprocess
    import sys

    repo = EXPERIMENTS[0].parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "experiments.grid", "--smoke", "--help"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: python -m experiments.grid" in done.stdout


@pytest.mark.slow
def test_pretrained_experiment_smoke(tmp_path, capsys):
    """experiments/pretrained.py --smoke on a folder of 200 real MNIST digits: a random
    torchvision resnet18 is saved, imported, pre-trained on Fashion-MNIST images and
    fine-tuned with a frozen base; every arm runs its 5 seeds, the frozen runs take
    the imported network's normalisation and keep the base's weights."""
    pytest.importorskip("torchvision")
    import json

    import numpy as np
    from mnist_files import read_mnist
    from test_folders import write_pngs

    from jaxcnn import rundir, train
    from jaxcnn.interop import imagenet

    loaded = read_mnist(200)
    if loaded is None:
        pytest.fail("raw MNIST files not found (JAXCNN_SHARED_DATA)")
    pixels, labels = loaded
    folder = tmp_path / "my_digits"
    digits = (pixels * 255).round().astype(np.uint8)
    write_pngs(folder, digits, labels, [str(d) for d in range(10)])
    module = load_module(EXPERIMENTS[0].parent / "pretrained.py")
    workdir = tmp_path / "out"
    argv = ["--smoke", "--images", str(folder), "--workdir", str(workdir), "--quiet"]
    assert module.main(argv) == 0
    assert "does not record which run wrote it" not in capsys.readouterr().err
    table = (workdir / "pretrained.md").read_text()
    rows = [json.loads(line) for line in open(workdir / "results.jsonl")]
    assert sorted(module.arm_of(r) for r in rows) == sorted(module.ARMS)
    for r in rows:
        assert r["status"] == "ok" and r["seeds"] == 5, r
        assert 0.0 <= r["test_accuracy_mean"] <= 1.0 and r["test_accuracy_ci95"] >= 0
    for name in module.ARMS:
        assert f"| {name} |" in table
    assert "| frozen | resnet18 | 5,130 |" in table
    assert "random weights" in table
    base = train.restore(workdir / "pretrain")
    assert base.config.train.init_from == str((workdir / "imported").resolve())
    mean = imagenet.PREPROCESSING["torchvision"]["mean"]
    frozen = next(r for r in rows if module.arm_of(r) == "frozen")
    trial = workdir / "trials" / frozen["trial"] / "seed1"
    saved = rundir.RunDir(trial).read()
    np.testing.assert_allclose(saved.dataset["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(saved.config.data.mean, mean, rtol=1e-6)
    tuned = train.restore(trial)
    for path, var in nnx_params(tuned.model).items():
        if not path.startswith("dense_13/"):
            np.testing.assert_array_equal(var, nnx_params(base.model)[path], path)


def nnx_params(model):
    import numpy as np
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    return {
        "/".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(state)
    }
