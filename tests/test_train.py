"""Training for real: embedded digits, MNIST from raw files, exact resume, error paths."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from jaxcnn import rundir, train
from jaxcnn.errors import CheckpointError, DataError, TrainingError
from jaxcnn.spec import RunConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_cli(*args, cwd=None, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "jaxcnn", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _digits(**overrides) -> RunConfig:
    config = RunConfig().with_overrides({"train.epochs": 3, **overrides})
    return config


def _params(model) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_default_train_reaches_95_percent_on_embedded_digits(tmp_path):
    """`jaxcnn train` with no arguments: real data shipped in a package, >= 95% test."""
    result = _run_cli("train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (workdir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["dataset"] == "digits"
    assert summary["test_accuracy"] >= 0.95
    records = rundir.read_metrics(workdir)
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    for key in (
        "epoch",
        "step",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "epoch_seconds",
        "images_per_second",
    ):
        assert key in records[0]
    for key in (
        "test_accuracy",
        "test_loss",
        "best_val_accuracy",
        "epochs",
        "total_params",
        "train_seconds",
        "compile_seconds",
        "images_per_second",
        "dataset",
        "model",
        "num_devices",
        "backend",
    ):
        assert key in summary
    assert list((workdir / "tensorboard").iterdir()), "no TensorBoard event files"
    config = json.loads((workdir / "config.json").read_text())
    assert config["model_spec"]["name"] == "digits_cnn"


@pytest.mark.slow  # over 30 s in the default run on 2 cores
def test_mnist_keras_convnet_one_epoch_reaches_98_percent(
    tmp_path, tfds_dir, shared_data
):
    """The classic Keras MNIST convnet, one epoch on real MNIST built from raw files."""
    result = _run_cli(
        "train",
        "--model",
        "keras_mnist",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tfds_dir),
        "--manual-dir",
        str(shared_data / "mnist"),
        "--epochs",
        "1",
        # cosine decay clears the 98% line with a margin a constant lr lacks
        # (benchmarks/results/one_off.md)
        "--batch-size",
        "64",
        "--lr",
        "0.002",
        "--set",
        "optim.schedule=cosine",
        "--workdir",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["total_params"] == 93_322
    assert summary["test_accuracy"] >= 0.98


def test_no_recompilation_after_first_step_and_eval(tmp_path):
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: (
            compiles.append(event)
            if event == "/jax/core/compile/backend_compile_duration"
            else None
        )
    )
    counts = []
    train.fit(
        _digits(**{"train.epochs": 3}),
        tmp_path / "run",
        quiet=True,
        on_epoch=lambda record: counts.append(len(compiles)),
    )
    assert counts[0] > 0
    assert counts[1] == counts[0] == counts[2], "epochs after the first compiled again"


_CACHE_SCRIPT = textwrap.dedent(
    """
    import sys, jax, jax.numpy as jnp
    from jaxcnn import train
    train.enable_compilation_cache(sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
    """
)


def _compile_with_cache(cache: pathlib.Path) -> str:
    """Runs _CACHE_SCRIPT in a fresh process with its cache in `cache`; its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", _CACHE_SCRIPT, str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_compilation_cache_entries_are_zstandard_frames(tmp_path):
    """jaxcnn's dependencies let JAX compress cache entries with zstandard, far faster
    to write than its zlib fallback (benchmarks/results/cache_zstd.md, cache_zlib.md)."""
    cache = tmp_path / "xla"
    _compile_with_cache(cache)
    entries = [p for p in cache.iterdir() if p.name.startswith("jit_")]
    assert entries, sorted(p.name for p in cache.iterdir())
    for entry in entries:
        assert entry.read_bytes()[:4] == b"\x28\xb5\x2f\xfd", entry.name  # zstd magic


def test_truncated_compilation_cache_entry_is_removed_once_and_rewritten(tmp_path):
    """JAX warns about an unreadable entry on every run and never replaces it."""
    cache = tmp_path / "xla"
    _compile_with_cache(cache)
    entry = max(cache.glob("jit_*-cache"), key=lambda p: p.stat().st_size)
    size = entry.stat().st_size
    os.truncate(entry, size // 2)  # what a process killed while writing leaves
    err = _compile_with_cache(cache)
    assert f"removed the unreadable compilation cache entry {entry}" in err
    assert "Error reading persistent compilation cache" not in err
    assert entry.stat().st_size == size  # written again by that run's compile
    assert train.step.remove_unreadable_cache_entries(cache) == []  # good again


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    from jaxcnn import train
    from jaxcnn.spec import RunConfig
    config = RunConfig.from_dict({config})
    def on_epoch(record):
        if record["epoch"] == {kill_after}:
            # SIGKILL lands part-way through the next epoch.
            threading.Timer({delay}, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    train.fit(config, sys.argv[1], quiet=True, on_epoch=on_epoch)
    """
)


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_is_bit_identical(tmp_path, tfds_dir, shared_data):
    config = RunConfig().with_overrides(
        {
            "model.name": "keras_mnist",
            "data.dataset": "mnist",
            "data.data_dir": str(tfds_dir),
            "data.train_examples": 3072,
            "train.epochs": 4,
            "train.batch_size": 64,
        }
    )
    script = _KILL_SCRIPT.format(config=config.to_dict(), kill_after=2, delay=0.6)
    killed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    epochs_done = len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines())
    assert 2 <= epochs_done < 4
    resumed = train.fit(config, tmp_path / "a", quiet=True)
    fresh = train.fit(config, tmp_path / "b", quiet=True)
    a, b = _params(resumed.model), _params(fresh.model)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    ma = [
        json.loads(x)
        for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    mb = [
        json.loads(x)
        for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]

    def strip(r):
        return {
            k: v
            for k, v in r.items()
            if k not in ("epoch_seconds", "images_per_second")
        }

    assert [strip(r) for r in ma] == [strip(r) for r in mb]


def test_resume_in_process_is_exact_and_extends_epochs(tmp_path):
    """Train 2 epochs, then ask for 4 in the same workdir: equals 4 straight epochs."""
    two = train.fit(_digits(**{"train.epochs": 2}), tmp_path / "a", quiet=True)
    assert two.epochs == 2
    four = train.fit(_digits(**{"train.epochs": 4}), tmp_path / "a", quiet=True)
    straight = train.fit(_digits(**{"train.epochs": 4}), tmp_path / "b", quiet=True)
    assert four.epochs == 4
    jax.tree.map(
        np.testing.assert_array_equal, _params(four.model), _params(straight.model)
    )


@pytest.mark.parametrize(
    "kernels, streamed", [("auto", False), ("xla", False), ("auto", True)]
)
def test_steps_per_call_change_neither_the_steps_nor_the_metrics(
    tmp_path, kernels, streamed
):
    """k=4 per call (rolled loop, or unrolled for XLA convs on CPU) equals one per call.

    Digits has 42 batches an epoch: 10 calls of 4 steps and one of the last 2 (rolled:
    one step first, then 4s, then 1). Equal up to float rounding (other fusions).
    Streamed (data.device_limit_mb=0), the batches of a call are stacked and padded.
    """
    runs = {
        k: train.fit(
            _digits(
                **{
                    "train.epochs": 2,
                    "train.steps_per_dispatch": k,
                    "train.kernels": kernels,
                    **({"data.device_limit_mb": 0} if streamed else {}),
                }
            ),
            tmp_path / f"k{k}",
            quiet=True,
        )
        for k in (1, 4)
    }
    one, four = runs[1], runs[4]
    assert four.summary["steps_per_dispatch"] == 4
    assert [r["step"] for r in four.history] == [42, 84]
    # rolled, one train executable runs every count (1 first, 4s, the last 2), plus
    # eval; unrolled, the calls of 4 and of 1 are two
    rolled = train.rolls_steps(four.model)
    assert rolled == (kernels == "auto" or jax.default_backend() != "cpu")
    assert four.summary["executables"] == (2 if rolled else 3)
    assert one.summary["executables"] == 2
    for a, b in zip(one.history, four.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=1e-3)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-4),
        _params(one.model),
        _params(four.model),
    )


@pytest.mark.parametrize("kernels", ["auto", "xla"])
def test_steps_per_call_count_and_padding(kernels):
    from jaxcnn import models, optim

    config = _digits(**{"train.kernels": kernels})
    model = models.build_model(
        train.resolve_spec(config, 10), kernels=config.train.kernels
    )
    tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=10, epochs=1)
    steps = train.Steps(model, nnx.Optimizer(model, tx, wrt=nnx.Param), config, 4)
    rows = np.arange(6, dtype=np.int32).reshape(2, 3)
    if steps.rolled:
        assert [steps.count(10, first=True), steps.count(10), steps.count(3)] == [
            1,
            4,
            3,
        ]
        padded = steps.padded(rows)
        assert padded.shape == (4, 3) and padded.dtype == rows.dtype
        np.testing.assert_array_equal(padded[:2], rows)
        assert not padded[2:].any()
    else:  # XLA convs on CPU: each count compiles, so only 4 and 1
        assert [steps.count(10, first=True), steps.count(4), steps.count(3)] == [
            4,
            4,
            1,
        ]
        assert steps.padded(rows) is rows


def test_steps_memory_reports_the_compiled_train_call():
    from jaxcnn import models, optim

    def memory(batch):
        config = _digits()
        model = models.build_model(train.resolve_spec(config, 10))
        tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=10, epochs=1)
        steps = train.Steps(model, nnx.Optimizer(model, tx, wrt=nnx.Param), config, 1)
        assert steps.memory() == {}  # nothing compiled yet
        images = np.zeros((1, batch, 8, 8, 1), np.float32)
        steps.train(images, np.zeros((1, batch), np.int32), None, 0)
        return steps.memory()

    small, large = memory(8), memory(256)
    assert set(small) == {
        "temp_bytes",
        "argument_bytes",
        "output_bytes",
        "bytes_accessed",
    }
    # the batch's activations are temporaries and arguments: they grow with it
    assert 0 < small["temp_bytes"] < large["temp_bytes"]
    assert small["argument_bytes"] + 248 * 8 * 8 * 4 <= large["argument_bytes"]
    assert 0 < small["bytes_accessed"] < large["bytes_accessed"]


def test_workdir_with_different_config_is_refused(tmp_path):
    train.fit(_digits(**{"train.epochs": 1}), tmp_path / "a", quiet=True)
    with pytest.raises(Exception, match="different config.*optim.lr"):
        train.fit(
            _digits(**{"train.epochs": 1, "optim.lr": 0.01}), tmp_path / "a", quiet=True
        )
    # --restart discards the old run instead
    result = train.fit(
        _digits(**{"train.epochs": 1, "optim.lr": 0.01}),
        tmp_path / "a",
        quiet=True,
        restart=True,
    )
    assert result.epochs == 1


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    config = _digits(**{"train.epochs": 4, "optim.lr": 1e12, "optim.optimizer": "sgd"})
    with pytest.raises(TrainingError, match="became (nan|inf).*checkpoint"):
        train.fit(config, tmp_path / "run", quiet=True)


def test_nan_via_cli_exits_2_without_traceback(tmp_path):
    result = _run_cli(
        "train",
        "--workdir",
        str(tmp_path / "r"),
        "--epochs",
        "2",
        "--optimizer",
        "sgd",
        "--lr",
        "1e12",
    )
    assert result.returncode == 2
    assert "became" in result.stderr and "Traceback" not in result.stderr


def test_early_stopping_stops_before_epochs(tmp_path):
    # lr so small that validation accuracy cannot improve for long
    config = _digits(**{"train.epochs": 30, "train.patience": 2, "optim.lr": 1e-9})
    result = train.fit(config, tmp_path / "run", quiet=True)
    assert result.stopped_early
    assert result.epochs < 30


@pytest.mark.slow  # over 30 s in the default run on 2 cores
def test_eval_and_predict_commands(tmp_path):
    workdir = tmp_path / "run"
    train.fit(_digits(**{"train.epochs": 3}), workdir, quiet=True)
    result = _run_cli("eval", "--workdir", str(workdir), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["examples"] > 0
    confusion = np.array(report["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == report["examples"]
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert len(report["per_class_accuracy"]) == 10

    # predict: a real digit image saved as PNG (any size), and an unreadable file
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    image = Image.fromarray((digits.images[-1] * 255 / 16).astype(np.uint8)).resize(
        (64, 64)
    )
    image.save(tmp_path / "digit.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = train.predict(workdir, [tmp_path / "digit.png", tmp_path / "broken.png"])
    assert "error" in out[1] and "broken.png" in out[1]["source"]
    probs = [t["probability"] for t in out[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    result = _run_cli(
        "predict",
        "--workdir",
        str(workdir),
        str(tmp_path / "digit.png"),
        str(tmp_path / "broken.png"),
    )
    assert result.returncode == 2
    assert "broken.png" in result.stderr
    assert "digit.png" in result.stdout


def test_restore_into_different_architecture_fails_clearly(tmp_path):
    workdir = tmp_path / "run"
    train.fit(_digits(**{"train.epochs": 1}), workdir, quiet=True)
    record = json.loads((workdir / "config.json").read_text())
    record["model_spec"]["layers"][0]["filters"] *= 2
    (workdir / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="conv_0"):
        train.restore(workdir)
    result = _run_cli("eval", "--workdir", str(workdir))
    assert result.returncode == 2 and "conv_0" in result.stderr


def test_unknown_dataset_and_impossible_channels_exit_2(tmp_path):
    result = _run_cli("train", "--dataset", "mnistt", "--workdir", str(tmp_path / "r"))
    assert result.returncode == 2 and "mnist" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(DataError):
        train.fit(
            _digits(**{"model.input_shape": [8, 8, 2]}), tmp_path / "r2", quiet=True
        )


@pytest.mark.slow
def test_train_says_it_compiles_and_records_persistent_cache_hits(tmp_path):
    """`jaxcnn train` names each compile and its seconds before the first epoch line;
    summary.json counts the executables loaded from the persistent cache. A second run
    that differs only in its seed, and a third that differs only in its optimiser's
    numbers (learning rate, momentum, weight decay: traced values), load their train
    step from there. (Whether there is a weight decay at all is structure: it is
    present in all three.)"""
    env = {"JAXCNN_COMPILATION_CACHE": str(tmp_path / "xla")}
    runs = []
    optimiser = ["--set", "optim.optimizer=momentum", "--set", "optim.schedule=cosine"]
    for name, flags in (
        ("first", ["--seed", "1", "--lr", "0.01", "--set", "optim.weight_decay=1e-4"]),
        ("seed", ["--seed", "2", "--lr", "0.01", "--set", "optim.weight_decay=1e-4"]),
        (
            "numbers",
            ["--seed", "1", "--lr", "0.03", "--set", "optim.momentum=0.8"]
            + ["--set", "optim.weight_decay=1e-3"],
        ),
    ):
        workdir = tmp_path / name
        done = _run_cli(
            "train",
            "--epochs",
            "1",
            *optimiser,
            *flags,
            "--workdir",
            str(workdir),
            env=env,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads((workdir / "summary.json").read_text())
        runs.append((done.stderr.splitlines(), summary))
    (first_out, first), (second_out, second), (third_out, third) = runs
    compiling = [
        line for line in first_out if line.startswith("compiling the train step")
    ]
    assert compiling and re.fullmatch(
        r"compiling the train step \.\.\. \d+\.\d s", compiling[0]
    )
    assert first_out.index(compiling[0]) < next(
        i for i, line in enumerate(first_out) if line.startswith("epoch 1/1")
    )
    assert first["compile_cache_hits"] == 0 and first["compile_seconds"] > 0
    for out, summary in ((second_out, second), (third_out, third)):
        assert any(
            re.fullmatch(
                r"compiling the train step \.\.\. \d+\.\d s "
                r"\(from the persistent cache\)",
                line,
            )
            for line in out
        ), out
        assert summary["compile_cache_hits"] >= 1
    # the numbers did change the run: its training differs from the first one's
    metrics = [
        (tmp_path / name / "metrics.jsonl").read_text() for name in ("first", "numbers")
    ]
    assert metrics[0] != metrics[1]
