"""`jaxcnn summary`: table, JSON, overrides and every error path (exit 2, message)."""

import json
import subprocess
import sys

import pytest

from jaxcnn import cli


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_table(capsys):
    code, out, err = _run(capsys, "summary", "keras_mnist")
    assert code == 0 and err == ""
    for text in (
        "conv_0 (conv 3x3 valid)",
        "26x26x32",
        "dense_7",
        "Trainable params: 93,322",
        "18x18",
    ):
        assert text in out


def test_summary_json(capsys):
    code, out, _ = _run(capsys, "summary", "keras_mnist", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["total_params"] == 93_322
    assert data["total_flops"] == 5_616_512
    assert [layer["name"] for layer in data["layers"]][:2] == ["conv_0", "pool_1"]
    assert data["layers"][2]["output_shape"] == [11, 11, 64]
    assert data["layers"][2]["params"] == 18_496
    assert data["layers"][2]["flops"] == 2 * 11 * 11 * 64 * 288
    assert data["layers"][4]["receptive_field"] == [18, 18]


def test_summary_shows_the_training_memory_estimate(capsys):
    from jaxcnn import footprint, models, shapes

    summary = shapes.infer(models.preset("keras_mnist"))
    code, out, _ = _run(capsys, "summary", "keras_mnist")
    assert code == 0
    line = footprint.format_memory(footprint.memory_estimate(summary, 128), 128)
    assert line in out.splitlines()  # after the table, before the recipes
    assert line.startswith("Training memory at batch size 128 (estimate): 58.0 MiB")
    code, out, _ = _run(
        capsys, "summary", "keras_mnist", "--json", "--batch-size", "32"
    )
    assert code == 0
    assert json.loads(out)["memory"] == {
        "batch_size": 32,
        **footprint.memory_estimate(summary, 32),
    }
    code, _, err = _run(capsys, "summary", "keras_mnist", "--batch-size", "0")
    assert code == 2 and "batch_size must be an int >= 1, got 0" in err


def test_summary_overrides(capsys):
    code, out, _ = _run(
        capsys,
        "summary",
        "keras_mnist",
        "--input-shape",
        "32,32,3",
        "--classes",
        "5",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["input_shape"] == [32, 32, 3] and data["output_shape"] == [5]
    assert data["layers"][0]["params"] == (27 + 1) * 32


def test_summary_of_a_family_and_a_spec_file(tmp_path, capsys):
    path = tmp_path / "net.toml"
    path.write_text(
        "input_shape = [8, 8, 1]\nnum_classes = 3\nlayers = [\n"
        '  { type = "conv", filters = 4, kernel = 3, padding = "same", activation = "relu" },\n'
        '  { type = "residual", layers = [ { type = "conv", filters = 8, kernel = 3, stride = 2, padding = "same" } ] },\n'
        '  { type = "global_pool", pool = "avg" },\n'
        '  { type = "dense", units = 3 },\n]\n'
    )
    code, out, _ = _run(capsys, "summary", str(path), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "net"
    assert [layer["name"] for layer in data["layers"]] == [
        "conv_0",
        "residual_1/conv_0",
        "residual_1",
        "global_pool_2",
        "dense_3",
    ]
    assert data["layers"][2]["params"] == (4 + 1) * 8  # the skip projection
    code, out, _ = _run(capsys, "summary", "simple_cnn")
    assert code == 0 and 'Model: "simple_cnn"' in out


BAD_SPECS = [
    (
        [{"type": "conv", "filters": 8, "kernel": 3}] * 4
        + [{"type": "flatten"}, {"type": "dense", "units": 10}],
        [6, 6, 1],
        "layer 2 (conv 3x3 valid): input 2x2x8 is smaller than the 3x3 kernel",
    ),
    (
        [{"type": "conv", "filters": 8}, {"type": "dense", "units": 10}],
        [8, 8, 1],
        "add a flatten or global_pool before it",
    ),
    (
        [{"type": "flatten"}, {"type": "pool"}, {"type": "dense", "units": 10}],
        [8, 8, 1],
        "layer 1 (max pool 2x2 valid): input is flat (64 features)",
    ),
    (
        [
            {"type": "conv", "filters": 4, "groups": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
        [8, 8, 3],
        "input channels 3 are not divisible by groups=2",
    ),
    (
        [
            {"type": "norm", "norm": "group", "groups": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
        [8, 8, 3],
        "layer 0 (norm): 3 channels are not divisible by groups=2",
    ),
    (
        [{"type": "flatten"}, {"type": "dense", "units": 64}],
        [8, 8, 1],
        "last layer outputs 64 features but num_classes=10; end with dense(units=10)",
    ),
    (
        [
            {"type": "residual", "layers": [{"type": "conv", "filters": 2}]},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
        [7, 7, 2],
        "layer 0 (residual): the block maps 7x7x2 to 5x5x2",
    ),
    (
        [{"type": "conv", "filters": 0}],
        [8, 8, 1],
        "layer 0 (conv): field 'filters' must be >= 1, got 0",
    ),
    (
        [{"type": "conv", "filters": 4, "kernal": 3}],
        [8, 8, 1],
        "layer 0 (conv): unknown key 'kernal'",
    ),
    (
        [{"type": "pool", "pool": "median"}],
        [8, 8, 1],
        "layer 0 (pool): field 'pool' must be",
    ),
    ([{"type": "convolution"}], [8, 8, 1], "layer 0: unknown layer type 'convolution'"),
]


@pytest.mark.parametrize("layers, input_shape, message", BAD_SPECS)
def test_bad_spec_files_exit_2_with_the_message(
    tmp_path, capsys, layers, input_shape, message
):
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"input_shape": input_shape, "num_classes": 10, "layers": layers})
    )
    code, out, err = _run(capsys, "summary", str(path))
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["summary", "resnet99"],
            "error: unknown model 'resnet99'; presets are keras_mnist",
        ),
        (["summary", "nope.toml"], "error: nope.toml: no such file"),
        (
            ["summary", "keras_mnist", "--input-shape", "4,4,1"],
            "layer 2 (conv 3x3 valid): input 1x1x32 is smaller than the 3x3 kernel",
        ),
        (
            ["summary", "keras_mnist", "--classes", "1"],
            "num_classes must be >= 2, got 1",
        ),
    ],
)
def test_api_errors_exit_2(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2 and message in err


def test_invalid_toml_exits_2(tmp_path, capsys):
    path = tmp_path / "broken.toml"
    path.write_text("layers = [ {type = ")
    code, _, err = _run(capsys, "summary", str(path))
    assert code == 2 and "not valid TOML" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["summary", "keras_mnist", "--input-shape", "28,28"],
        ["summary", "keras_mnist", "--input-shape", "a,b,c"],
        ["summary", "keras_mnist", "--classes", "ten"],
        ["summary"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "usage: jaxcnn" in err


def test_debug_shows_the_traceback(capsys):
    code, _, err = _run(capsys, "summary", "resnet99", "--debug")
    assert code == 2 and "Traceback" in err and "error: unknown model" in err


def test_unexpected_exception_exits_1_with_traceback(capsys, monkeypatch):
    from jaxcnn import shapes

    def boom(spec):
        raise RuntimeError("boom")

    monkeypatch.setattr(shapes, "summarize", boom)
    code, _, err = _run(capsys, "summary", "keras_mnist")
    assert code == 1 and "Traceback" in err and "RuntimeError: boom" in err


def test_help_exits_0(capsys):
    code, out, _ = _run(capsys, "summary", "--help")
    assert code == 0 and "--input-shape" in out


def test_console_entry_point_without_jax():
    code = (
        "import sys; from jaxcnn import cli; rc = cli.main(['summary', 'digits_cnn']); "
        "print('JAX' if 'jax' in sys.modules else 'NOJAX'); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0
    assert "43,050" in out.stdout and out.stdout.strip().endswith("NOJAX")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcnn", "summary", "lenet5", "--input-shape", "3,3,1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "error: layer 2 (conv 5x5 valid): input 1x1x6 is smaller than the 5x5 kernel"
    )
