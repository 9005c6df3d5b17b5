"""benchmarks/compile_bench.py runs end to end in its tiny mode (keras_mnist, batch 8)
and writes its table with the CPU named and XLA's own split of the compile."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compile_bench_tiny_writes_the_breakdown(tmp_path):
    out = tmp_path / "compile_breakdown.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compile_bench.py"), "--tiny"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CPU: " in out.read_text() and "| keras_mnist | auto" in out.read_text()
    (row,) = json.loads(out.with_suffix(".json").read_text())
    for step in ("train", "eval"):
        times = row[step]
        assert all(times[k] > 0 for k in ("trace_s", "lower_s", "compile_s"))
        # XLA's timers found the step's module, and they fit inside .compile()
        assert 0 < times["hlo_passes_s"] + times["codegen_s"] <= times["compile_s"]


@pytest.mark.slow
def test_compile_bench_times_the_eval_call_alone(tmp_path):
    out = tmp_path / "eval_kernels.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compile_bench.py"), "--tiny"]
        + ["--only", "eval", "--eval-batch", "16", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["train"] is None and row["eval"]["steady_run_s"] > 0
    assert 0 < row["eval"]["codegen_s"] <= row["eval"]["compile_s"]
    # keras_mnist's eval plan: XLA's conv for its 1- and 32-channel convs (not im2col,
    # not Winograd), Winograd for the 64-channel one
    assert row["eval_convs"] == {"xla": 2, "winograd": 1}
    assert "| keras_mnist | auto | eval |" in out.read_text()
