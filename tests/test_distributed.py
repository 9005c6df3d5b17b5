"""Multi-process training: local processes on 127.0.0.1 joined by jax.distributed (gloo).

Each process is a subprocess with its own fake CPU devices (XLA_FLAGS); tests/dist_worker.py
is the program they run when the test needs to look inside them.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxcnn import cli, distributed, rundir
from jaxcnn.errors import JaxcnnError

WORKER = pathlib.Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _worker(args: dict, devices: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(args)],
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_METRICS = ("step", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


def _job(tmp_path, name: str, processes: int, devices: int, **args) -> list[dict]:
    """Runs `processes` workers of one job; returns their outputs (meta + arrays)."""
    port = _free_port()
    procs = []
    for i in range(processes):
        job = {"out": str(tmp_path / f"{name}{i}.npz"), "heartbeat_timeout": 20, **args}
        if processes > 1:
            job |= {
                "coordinator": f"127.0.0.1:{port}",
                "num_processes": processes,
                "process_id": i,
            }
        procs.append(_worker(job, devices))
    outputs = []
    for i, proc in enumerate(procs):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"process {i}: {err[-3000:]}"
        with np.load(tmp_path / f"{name}{i}.npz") as f:
            arrays = {k: f[k] for k in f.files if k != "meta"}
            outputs.append({"meta": json.loads(str(f["meta"])), "arrays": arrays})
    return outputs


def test_two_processes_agree_after_every_step_and_match_one_process(tmp_path):
    # 2 processes x 1 device and 1 process x 2 devices: the same global batch of 32 on
    # the same 2-device mesh, run concurrently to keep the test short.
    port = _free_port()
    jobs = [
        _worker(
            {
                "mode": "steps",
                "steps": 4,
                "out": str(tmp_path / f"p{i}.npz"),
                "coordinator": f"127.0.0.1:{port}",
                "num_processes": 2,
                "process_id": i,
                "heartbeat_timeout": 20,
            },
            devices=1,
        )
        for i in range(2)
    ]
    jobs.append(
        _worker({"mode": "steps", "steps": 4, "out": str(tmp_path / "ref.npz")}, 2)
    )
    for proc in jobs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    p0, p1, ref = (np.load(tmp_path / f"{n}.npz") for n in ("p0", "p1", "ref"))
    meta0, meta1 = json.loads(str(p0["meta"])), json.loads(str(p1["meta"]))
    assert (meta0["process_count"], meta0["devices"], meta0["local_devices"]) == (
        2,
        2,
        1,
    )
    assert meta1["process_id"] == 1
    names = [k for k in p0.files if k != "meta"]
    assert len(names) == 4 * 8  # 4 steps x (4 conv/dense layers x kernel, bias)
    for name in names:  # every step: bitwise the same parameters in both processes
        np.testing.assert_array_equal(p0[name], p1[name], err_msg=name)
        np.testing.assert_allclose(p0[name], ref[name], rtol=1e-6, atol=1e-7)
    assert meta0["losses"] == meta1["losses"]
    np.testing.assert_allclose(
        meta0["losses"], json.loads(str(ref["meta"]))["losses"], rtol=1e-6
    )
    assert not np.allclose(p0[names[0]], p0[names[-8]])  # the steps did train


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_two_processes_train_digits_like_one_process(tmp_path, devices):
    workdir = tmp_path / "run"
    procs = _job(tmp_path, "p", 2, devices, mode="fit", epochs=2, workdir=str(workdir))
    (ref,) = _job(
        tmp_path,
        "ref",
        1,
        2 * devices,
        mode="fit",
        epochs=2,
        workdir=str(tmp_path / "r"),
    )
    curve = [
        [r[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")]
        for r in ref["meta"]["history"]
    ]
    for out in procs:
        assert out["meta"]["devices"] == 2 * devices
        mine = [
            [r[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")]
            for r in out["meta"]["history"]
        ]
        # Gradient sums cross processes (gloo) in another order than inside one
        # process; with the hand-written CPU kernels Adam amplifies that in 84 steps.
        np.testing.assert_allclose(mine, curve, rtol=5e-3)
        for name, value in out["arrays"].items():
            np.testing.assert_array_equal(value, procs[0]["arrays"][name], err_msg=name)
    assert curve[-1][3] > 0.8  # it learned

    # Only process 0 wrote the run files; the checkpoint restores in one process.
    assert [r["epoch"] for r in rundir.read_metrics(workdir)] == [1, 2]
    summary = json.loads((workdir / "summary.json").read_text())
    assert (summary["num_processes"], summary["num_devices"]) == (2, 2 * devices)
    from flax import nnx

    from jaxcnn import train

    restored = train.restore(workdir, "latest")
    tree = nnx.to_pure_dict(nnx.state(restored.model, nnx.Param))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = "final" + jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(leaf), procs[0]["arrays"][name])

    # ... and the 2-process run goes on in one process (3rd epoch), like any run
    more = subprocess.run(
        [sys.executable, "-m", "jaxcnn", "train", "--workdir", str(workdir), "--quiet",
         "--epochs", "3"],
        env=_env(1), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    assert [r["epoch"] for r in rundir.read_metrics(workdir)] == [1, 2, 3]


@pytest.mark.slow
def test_two_processes_stream_their_own_shards(tmp_path):
    # data.device_limit_mb=0 streams the digits from TFDS: each process reads half of
    # the training split and contributes 16 rows to every global batch of 32.
    procs = _job(
        tmp_path, "p", 2, 1, mode="fit", epochs=2, workdir=str(tmp_path / "run"),
        overrides={"data.device_limit_mb": 0},
    )  # fmt: skip
    history = procs[0]["meta"]["history"]
    for a, b in zip(history, procs[1]["meta"]["history"], strict=True):
        assert {k: a[k] for k in _METRICS} == {k: b[k] for k in _METRICS}
    assert [r["step"] for r in history] == [42, 84]  # 1350 // 2 // 16 steps per epoch
    assert history[-1]["val_accuracy"] > 0.8
    for name, value in procs[0]["arrays"].items():
        np.testing.assert_array_equal(value, procs[1]["arrays"][name], err_msg=name)


def test_stream_shards_are_disjoint_and_equal():
    from jaxcnn import data, spec

    config = spec.RunConfig().with_overrides({"data.device_limit_mb": 0}).data
    split = data.load_dataset(config, input_shape=(8, 8, 1)).train
    assert isinstance(split, data.StreamSplit)
    assert split.shard(0, 1) is split
    seen = []
    for index in range(3):
        part = split.shard(index, 3)
        assert part.num_examples == split.num_examples // 3
        rows = [
            image.tobytes() + label.tobytes()
            for batch in part.batches(64)
            for image, label, keep in zip(*batch, strict=True)
            if keep
        ]
        assert len(rows) == part.num_examples
        seen.append(set(rows))
    everything = {
        image.tobytes() + label.tobytes()
        for batch in split.batches(64)
        for image, label, keep in zip(*batch, strict=True)
        if keep
    }
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])
    assert seen[0] | seen[1] | seen[2] <= everything


def _train_cmd(workdir, port, process_id, epochs, *extra) -> list[str]:
    return [
        sys.executable, "-m", "jaxcnn", "train", "--workdir", str(workdir),
        "--epochs", str(epochs), "--coordinator", f"127.0.0.1:{port}",
        "--num-processes", "2", "--process-id", str(process_id), *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"]
)
def test_lost_process_stops_the_other_and_rerun_resumes(tmp_path, how):
    """A dead peer breaks the next collective; a hung one misses its heartbeats (5 s)."""
    workdir = tmp_path / "run"
    port = _free_port()
    procs = [
        subprocess.Popen(
            _train_cmd(workdir, port, i, 200, "--heartbeat-timeout", "5", "--quiet"),
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    metrics_file = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 2:
            break
        assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("no epoch finished in 180 s")
    procs[1].send_signal(how)
    killed_at = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    procs[1].kill()
    procs[1].communicate()
    waited = time.monotonic() - killed_at
    assert procs[0].returncode != 0
    assert waited < 60, f"the surviving process took {waited:.0f} s to stop"
    # Either XLA's heartbeat check or a failed collective stops it, whichever is first.
    assert (
        "another task died" in err or "error: lost contact with another process" in err
    ), err[-3000:]

    before = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    done = before[-1]["epoch"]
    port = _free_port()
    procs = [
        subprocess.Popen(
            _train_cmd(workdir, port, i, done + 2, "--quiet"),
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    after = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [r["epoch"] for r in after] == list(range(1, done + 3))
    # the epochs before the kill were resumed from the checkpoint, not trained again
    assert after[: done - 1] == before[: done - 1]


def test_a_process_alone_gives_up_after_the_init_timeout(tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        _train_cmd(tmp_path / "run", _free_port(), 1, 1, "--init-timeout", "2"),
        env=_env(1),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert time.monotonic() - start < 60
    assert "process 1 of 2 joining 127.0.0.1:" in result.stderr
    assert "waits up to 2 s" in result.stderr
    assert "DEADLINE_EXCEEDED" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
            "--process-id 2 is out of range for --num-processes 2; use 0..1",
        ),
        (
            ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
            "--coordinator must be HOST:PORT",
        ),
        (
            ["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "0"],
            "has port '99999'; use a free TCP port in 1..65535",
        ),
        (["--num-processes", "2", "--process-id", "0"], "missing --coordinator"),
        (["--num-processes", "0"], "--num-processes must be >= 1, got 0"),
        (
            ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "-1"],
            "--process-id must be >= 0",
        ),
        (
            ["--num-processes", "2", "--process-id", "0", "--coordinator", "h:1",
             "--heartbeat-timeout", "0"],
            "--heartbeat-timeout (or JAXCNN_HEARTBEAT_TIMEOUT) must be >= 1 second, got 0",
        ),
    ],
)  # fmt: skip
def test_bad_process_flags_are_usage_errors(capsys, monkeypatch, flags, message):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert cli.main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not jax.distributed.is_initialized()


def test_parse_address():
    assert distributed.parse_address("10.0.0.1:1234") == ("10.0.0.1", 1234)
    assert distributed.parse_address("[::1]:80") == ("[::1]", 80)
    for bad in ("", ":80", "host:", "host:x", "host:0"):
        with pytest.raises(JaxcnnError):
            distributed.parse_address(bad)


def test_cluster_detection_needs_more_than_one_task(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_")) or name == "JAX_COORDINATOR_ADDRESS":
            monkeypatch.delenv(name)
    assert distributed._cluster_detected() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-2]")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed._cluster_detected() is None  # `jaxcnn train` inside salloc
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed._cluster_detected() == "SLURM"
    # one process without a launcher: nothing to join, no runtime started
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.initialize() == distributed.ProcessInfo(0, 1, None)
    assert distributed.initialize(num_processes=1) == distributed.ProcessInfo(
        0, 1, None
    )
    assert not jax.distributed.is_initialized()


def test_initialize_after_jax_started_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    jax.devices()  # the backend is up now
    with pytest.raises(JaxcnnError, match="must run before anything uses JAX devices"):
        distributed.initialize("127.0.0.1:1234", 2, 0)
    assert distributed.is_primary() and distributed.process_count() == 1
