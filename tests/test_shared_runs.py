"""A run directory shared by several processes: readers never harm the writer, and a
second writer is refused."""

import json
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from flax import nnx

from jaxcnn import rundir, train
from jaxcnn.errors import CheckpointError
from jaxcnn.spec import RunConfig

# A `jaxcnn train` that stops in the middle of its `pause_at`-th JSON item save (orbax's
# temporary directory exists, half written) until the file WORKDIR.go appears.
_PAUSED_TRAINER = """
    import pathlib, sys, time
    import orbax.checkpoint as ocp
    from jaxcnn import cli
    workdir, pause_at, checkpoint_steps = sys.argv[1:]
    paused, go = pathlib.Path(workdir + ".paused"), pathlib.Path(workdir + ".go")
    save = ocp.JsonCheckpointHandler.async_save
    calls = {"n": 0}
    async def paused_save(self, directory, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(pause_at):
            paused.write_text(str(directory))
            while not go.exists():
                time.sleep(0.02)
        return await save(self, directory, *args, **kwargs)
    ocp.JsonCheckpointHandler.async_save = paused_save
    sys.exit(cli.main([
        "train", "--workdir", workdir, "--epochs", "2", "--quiet",
        "--set", f"train.checkpoint_steps={checkpoint_steps}",
    ]))
"""


def _start(body: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(body), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: pathlib.Path, process: subprocess.Popen, seconds=300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the trainer ended first: {process.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _records(workdir) -> list[dict]:
    timing = ("epoch_seconds", "images_per_second")
    return [
        {k: v for k, v in r.items() if k not in timing}
        for r in rundir.read_metrics(workdir)
    ]


def _params(workdir) -> dict:
    model = train.restore(workdir, "latest").model
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.slow
def test_eval_and_predict_while_training_leave_the_trainer_alone(tmp_path, capfd):
    """eval in another process during a save in progress, then eval and predict in a
    loop while the run saves every few steps: the trainer finishes exactly as an
    unwatched run, and every eval reports a complete checkpoint or names the ones it
    skipped."""
    watched = tmp_path / "watched"
    checkpoint_steps = 6
    trainer = _start(_PAUSED_TRAINER, watched, 4, checkpoint_steps)
    try:
        _wait_for(pathlib.Path(f"{watched}.paused"), trainer)
        unfinished = [
            p
            for p in (watched / "checkpoints").iterdir()
            if "orbax-checkpoint-tmp" in p.name
        ]
        assert unfinished, "the trainer should be inside a save"
        seen = subprocess.run(
            [
                sys.executable,
                "-m",
                "jaxcnn",
                "eval",
                "--workdir",
                str(watched),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert seen.returncode == 0, seen.stderr
        assert json.loads(seen.stdout)["step"] > 0
        assert all(p.exists() for p in unfinished)  # the save in progress is intact
        second = subprocess.run(
            [sys.executable, "-m", "jaxcnn", "train", "--workdir", str(watched)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr
        assert f"is being trained by process {trainer.pid} on host" in second.stderr
        pathlib.Path(f"{watched}.go").touch()

        image = np.zeros((8, 8, 1), np.uint8)
        reports, refusals = [], []
        while trainer.poll() is None:
            try:
                reports.append(train.evaluate(watched, which="latest"))
                train.predict(watched, [image], which="latest")
            except CheckpointError as e:  # every step it tried was replaced meanwhile
                refusals.append(str(e))
        out, err = trainer.communicate(timeout=300)
    finally:
        trainer.kill()
    assert trainer.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    for report in reports:
        assert report["step"] > 0 and 0.0 <= report["accuracy"] <= 1.0
    for refusal in refusals:
        assert (
            "removed while being read" in refusal and "run the command again" in refusal
        )
    skipped = capfd.readouterr().err
    for line in skipped.splitlines():
        if line.startswith("warning:"):
            assert re.match(r"warning: checkpoint step \d+ in .* is unusable \(", line)

    unwatched = tmp_path / "unwatched"
    config = RunConfig().with_overrides(
        {"train.epochs": 2, "train.checkpoint_steps": checkpoint_steps}
    )
    fresh = train.fit(config, unwatched, quiet=True)
    summary = json.loads((watched / "summary.json").read_text())
    assert summary["test_accuracy"] == fresh.test_accuracy
    assert _records(watched) == _records(unwatched)
    jax.tree.map(np.testing.assert_array_equal, _params(watched), _params(unwatched))


# --------------------------------------------------------------------------- identity
def _identity_case():
    from jaxcnn import models

    config = RunConfig().with_overrides({"train.epochs": 2})
    spec = models.load_spec(config.model)
    return config, spec


def test_identity_accepts_its_own_run_and_what_a_resume_may_change():
    from jaxcnn import rundir

    config, spec = _identity_case()
    meta = {rundir.IDENTITY: rundir.run_identity(config, spec)}
    more = config.with_overrides({"train.epochs": 9, "train.checkpoint_steps": 5})
    rundir.check_identity(meta, more, spec, where="step 1", missing_is_error=True)
    # a field added to the config since the checkpoint was written takes its default
    identity = meta[rundir.IDENTITY]
    del identity["run"]["train"]["patience"]
    record = {"run": identity["run"], "model_spec": identity["model_spec"]}
    identity["sha256"] = rundir._digest(record)
    rundir.check_identity(meta, config, spec, where="step 1", missing_is_error=True)


def test_identity_of_another_run_is_refused_naming_the_differences():
    import dataclasses

    from jaxcnn import rundir

    config, spec = _identity_case()
    meta = {rundir.IDENTITY: rundir.run_identity(config, spec)}
    other_seed = config.override("train.seed", 1)
    with pytest.raises(CheckpointError) as info:
        rundir.check_identity(
            meta, other_seed, spec, where="checkpoint step 9", missing_is_error=False
        )
    assert str(info.value).startswith(
        "checkpoint step 9 was written by another run (train.seed: 0 in the checkpoint "
        "vs 1 in this run): it was copied in from elsewhere"
    )
    layers = list(spec.layers)
    layers[0] = dataclasses.replace(layers[0], activation="tanh")
    other_spec = dataclasses.replace(spec, layers=tuple(layers))
    with pytest.raises(
        CheckpointError, match=r'model.layers\[0\].activation: "relu" in'
    ):
        rundir.check_identity(
            meta, config, other_spec, where="step 9", missing_is_error=False
        )


def test_identity_that_is_damaged_or_missing_is_not_trusted_silently(capsys):
    from jaxcnn import rundir

    config, spec = _identity_case()
    meta = {rundir.IDENTITY: rundir.run_identity(config, spec)}
    meta[rundir.IDENTITY]["run"]["train"]["seed"] = 5  # edited, digest left as it was
    with pytest.raises(CheckpointError, match="step 3 has a damaged run identity"):
        rundir.check_identity(
            meta, config, spec, where="step 3", missing_is_error=False
        )
    with pytest.raises(CheckpointError, match="step 3 does not record which run"):
        rundir.check_identity({}, config, spec, where="step 3", missing_is_error=True)
    rundir.check_identity({}, config, spec, where="step 3", missing_is_error=False)
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("warning: step 3 does not record which run wrote it")
    assert "\n" not in warning


def test_checkpoint_of_another_run_is_refused_on_resume_and_eval(tmp_path, capsys):
    import shutil

    from jaxcnn import cli

    config = RunConfig().with_overrides({"train.epochs": 1})
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    train.fit(config, ours, quiet=True)
    train.fit(config.override("train.seed", 1), theirs, quiet=True)
    (step,) = [p.name for p in (ours / "checkpoints").iterdir() if p.name.isdigit()]
    shutil.rmtree(ours / "checkpoints" / step)
    shutil.copytree(theirs / "checkpoints" / step, ours / "checkpoints" / step)

    more = config.override("train.epochs", 2)
    with pytest.raises(CheckpointError, match=r"train.seed: 1 in the checkpoint vs 0"):
        train.fit(more, ours, quiet=True)
    assert cli.main(["eval", "--workdir", str(ours)]) == 2
    err = capsys.readouterr().err
    assert (
        f"checkpoint step {step} in {ours / 'checkpoints'} was written by another"
        in err
    )

    meta_file = theirs / "checkpoints" / step / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["run_identity"]
    meta_file.write_text(json.dumps(meta))
    assert cli.main(["eval", "--workdir", str(theirs), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["step"] == int(step)
    assert "does not record which run wrote it" in err
    with pytest.raises(CheckpointError, match="does not record which run.*--restart"):
        train.fit(more.override("train.seed", 1), theirs, quiet=True)
