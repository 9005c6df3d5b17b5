"""benchmarks/step_bench.py: forward rows are compared with forward rows only, and a
short real run of its workers writes both kinds of row."""

import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import step_bench  # noqa: E402


def _rows(rates: dict[str, list[float]]) -> dict:
    return {
        name: {
            "setup": {"first_step_s": 1.0, "since_start_s": 2.0},
            "windows": [{"images_per_s": r, "other_cores": 0.0} for r in rounds],
            "peak_rss_mb": 100.0,
        }
        for name, rounds in rates.items()
    }


def test_forward_rows_pair_with_forward_peers_only():
    rows = _rows(
        {
            "jaxcnn_k1": [100.0, 120.0],
            "jaxcnn_fwd": [300.0, 330.0],
            "torch_cl": [50.0, 60.0],
            "torch_cl_fwd": [150.0, 110.0],
            "keras_fwd": [100.0, 300.0],
        }
    )
    pairs = step_bench.paired_ratios(rows)
    assert set(pairs) == {
        "jaxcnn_k1/torch_cl",
        "jaxcnn_fwd/torch_cl_fwd",
        "jaxcnn_fwd/keras_fwd",
    }
    assert pairs["jaxcnn_fwd/torch_cl_fwd"]["ratios"] == [2.0, 3.0]
    assert pairs["jaxcnn_fwd/keras_fwd"]["median"] == pytest.approx((3.0 + 1.1) / 2)


def test_forward_rows_count_a_third_of_the_train_flops():
    peak = {"numpy_gflops": 100.0, "jax_gflops": 50.0}
    rows = step_bench.summarize(
        _rows({"jaxcnn_k1": [1000.0], "jaxcnn_fwd": [1000.0]}), 3_000_000, peak
    )
    assert rows["jaxcnn_k1"]["summary"]["gflops"] == pytest.approx(3.0)
    assert rows["jaxcnn_fwd"]["summary"]["gflops"] == pytest.approx(1.0)


def test_every_forward_row_has_a_forward_peer_or_is_jaxcnn():
    forward = [n for n in step_bench.FRAMEWORKS if step_bench.is_forward(n)]
    assert "jaxcnn_fwd" in forward
    assert all(n in step_bench.PEERS or n.startswith("jaxcnn") for n in forward)


@pytest.mark.slow
def test_a_short_run_times_train_and_forward_rows(tmp_path):
    step_bench.main(
        [
            "--models",
            "keras_mnist",
            "--only",
            "jaxcnn_k1,jaxcnn_fwd,keras_fwd",
            "--rounds",
            "1",
            "--window",
            "0.3",
            "--batch",
            "8",
            "--name",
            "short",
            "--python",
            sys.executable,
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "short.json").read_text())
    assert report["batch"] == 8
    rows = report["models"]["keras_mnist"]["frameworks"]
    assert {rows[n]["setup"]["mode"] for n in rows} == {"train", "forward"}
    assert rows["jaxcnn_fwd"]["setup"]["mode"] == "forward"
    for name in ("jaxcnn_k1", "jaxcnn_fwd", "keras_fwd"):
        assert rows[name]["summary"]["images_per_s_median"] > 0, name
    assert set(report["models"]["keras_mnist"]["paired"]) == {"jaxcnn_fwd/keras_fwd"}
    assert "| jaxcnn_fwd |" in (tmp_path / "short.md").read_text()


def test_a_worker_that_dies_is_recorded_and_the_others_go_on(tmp_path):
    """A worker killed mid-run (the OOM killer at 224x224) fails its row, not the run."""
    bench = REPO / "benchmarks"
    (tmp_path / "ok.py").write_text(
        f"import sys, time\nsys.path.insert(0, {str(bench)!r})\nimport bench_common\n"
        "bench_common.serve(lambda: (lambda n: time.sleep(0.001 * n), 1, 0.0, {}))\n"
    )
    (tmp_path / "dies.py").write_text(
        "import json, os, sys\n"
        'print(json.dumps({"ready": True, "first_step_s": 0.1}), flush=True)\n'
        "sys.stdin.readline()\nos._exit(9)\n"
    )
    table = {
        "ok": (str(tmp_path / "ok.py"), "-"),
        "dies": (str(tmp_path / "dies.py"), "-"),
    }
    results = step_bench.bench_model(
        sys.executable, "keras_mnist", ["ok", "dies"], table, 2, 0.05, env=None
    )
    assert "in round 1 of 2" in results["dies"]["error"]
    assert "windows" not in results["dies"]
    assert len(results["ok"]["windows"]) == 2
    assert results["ok"]["windows"][0]["images_per_s"] > 0
