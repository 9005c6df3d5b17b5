"""benchmarks/device_check.py runs end to end on the CPU (--dry-run), so that the first
GPU it meets runs it as prepared. Its timing of PyTorch is skipped where torch does not
import (the device check then records why); the train step is timed for keras_mnist
only here (vgg_cifar and resnet_cifar compile for minutes on 2 CPU cores)."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_dry_run_writes_every_section(tmp_path, shared_data):
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "device_check.py"),
            str(tmp_path / "out"),
            "--dry-run",
            "--data",
            str(shared_data),
            "--models",
            "keras_mnist",
            "--budget",
            "3600",  # a busy 2-core machine must not skip the one model
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    sections = report["sections"]
    assert set(sections) == {"install", "devices", "tests", "train", "peak", "steps"}
    devices = sections["devices"]["report"]
    assert devices["backend"] == "cpu" and devices["devices"]
    plan = devices["presets"]["keras_mnist"]["kernel_plan"]
    assert {row["name"] for row in plan["bfloat16"]} >= {"conv_0", "dense_7"}
    assert sections["tests"]["status"] == 0, sections["tests"]["output_tail"]
    train = sections["train"]["report"]
    assert train["resume_exact"], train["resume_differing_parameters"]
    assert train["one_epoch"]["test_accuracy"] > 0.5  # 2,000 images, one epoch
    assert sections["peak"]["report"]["jax_bf16_gflops"] > 0
    rows = sections["steps"]["models"]["keras_mnist"]["frameworks"]
    for name in ("jaxcnn_fp32", "jaxcnn_bf16"):
        assert rows[name]["summary"]["images_per_s_median"] > 0, name
    torch_rows = [name for name in rows if name.startswith("torch")]
    if devices["torch"]["available"]:
        assert torch_rows
        assert sections["steps"]["models"]["keras_mnist"]["paired"]
    else:
        assert not torch_rows and "not installed" in sections["steps"]["torch"]
