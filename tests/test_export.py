"""Export: StableHLO and ONNX files compute jaxcnn's logits and carry the contract.

The ONNX graphs run in onnxruntime, the StableHLO in a Python that never imports jaxcnn;
both are compared with the jaxcnn model (eval mode, XLA kernels, float32) on real MNIST
images brought to each preset's input, at batch sizes 1 and 7. "Within 1e-5 relative"
is max |exported - jaxcnn| <= 1e-5 * max |jaxcnn logits|: elementwise relative error
is meaningless for logits near zero.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import mnist_files  # tests/mnist_files.py
import numpy as np
import pytest
from flax import nnx

from jaxcnn import cli, export, models
from jaxcnn.errors import CheckpointError
from jaxcnn.spec import ModelSpec

onnx = pytest.importorskip("onnx", reason="pip install 'jaxcnn[export]'")
ort = pytest.importorskip("onnxruntime", reason="pip install 'jaxcnn[export]'")

REPO = pathlib.Path(__file__).resolve().parents[1]
RTOL = 1e-5
BATCHES = (1, 7)


@pytest.fixture(scope="module")
def mnist():
    batch = mnist_files.read_mnist(max(BATCHES))
    if batch is None:
        pytest.skip(f"raw MNIST files not found in {mnist_files.SHARED_DATA}")
    return batch[0]


def _to_input(images: np.ndarray, shape) -> np.ndarray:
    """28x28x1 MNIST digits as a model's [n, H, W, C] input: zero-padded to a larger
    size (LeNet's 32x32), resized (bilinear) to a smaller one, grey repeated to RGB."""
    height, width, channels = shape
    x = images
    if height >= 28 and width >= 28:
        top, left = (height - 28) // 2, (width - 28) // 2
        pads = ((0, 0), (top, height - 28 - top), (left, width - 28 - left), (0, 0))
        x = np.pad(x, pads)
    else:
        x = np.asarray(jax.image.resize(x, (len(x), height, width, 1), "bilinear"))
    return np.repeat(x, channels, axis=-1).astype(np.float32)


def _moved_batch_stats(model: nnx.Module, seed: int = 0) -> None:
    """Gives every batch norm running statistics and affine terms away from their init,
    so eval mode's use of them shows in the logits."""
    rng = np.random.default_rng(seed)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            n = node.mean.shape[0]
            node.mean.set_value(jnp.asarray(rng.normal(0, 0.2, n), jnp.float32))
            node.var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32))
            node.scale.set_value(jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32))
            node.bias.set_value(jnp.asarray(rng.normal(0, 0.2, n), jnp.float32))


def _reference(model: nnx.Module, x: np.ndarray, meta: dict) -> np.ndarray:
    """jaxcnn's logits for images in [0, 1]: normalised as the contract says, eval mode,
    XLA kernels (as the export)."""
    copy = nnx.clone(model)
    models.set_kernels(copy, "xla")
    copy.eval()
    norm = meta["input"]["normalization"]
    if norm is not None:
        x = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(
            norm["std"], np.float32
        )
    return np.asarray(nnx.jit(lambda m, v: m(v))(copy, jnp.asarray(x)))


def _assert_close(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert out.shape == ref.shape, what
    err = float(np.max(np.abs(out - ref)))
    scale = float(np.max(np.abs(ref)))
    assert err <= RTOL * scale, f"{what}: max error {err:.3g}, logits up to {scale:.3g}"


def _onnx_logits(proto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(["logits"], {"images": x})[0]


def _standardised_meta(spec: ModelSpec) -> dict:
    channels = spec.input_shape[-1]
    dataset = {
        "name": "mnist",
        "class_names": [f"class {i}" for i in range(spec.num_classes)],
        "mean": [0.13] * channels,
        "std": [0.31] * channels,
    }
    return export.contract(spec, dataset)


# --------------------------------------------------------------------------- presets
# ~10 s each on 2 cores, the ImageNet networks at 224x224 far more: CI's slow run
HEAVY = {"vgg_cifar", "resnet_cifar", *models.IMAGENET_PRESETS}
# the branch-block architectures at small inputs (ceil-mode pool padding recomputed),
# the first in the default run: concatenated branches, explicit pool padding
SMALL_ARCHITECTURES = {
    "squeezenet1_1": (64, 64, 3),
    "resnet18": (64, 64, 3),  # batch norm in the projection
    "mobilenet_v2": (64, 64, 3),  # relu6, depthwise convs, linear residuals
    "googlenet": (64, 64, 3),
    "densenet121": (64, 64, 3),
    "densenet201": (64, 64, 3),
    "inception_v3": (75, 75, 3),  # average pools that count their padding
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.slow] if name in HEAVY else [])
        for name in sorted(models.PRESETS)
        if name not in SMALL_ARCHITECTURES
    ],
)
def test_both_formats_match_jaxcnn_on_every_preset(name, mnist):
    _check_preset(models.preset(name), mnist)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[] if name == "squeezenet1_1" else [pytest.mark.slow])
        for name in SMALL_ARCHITECTURES
    ],
)
def test_both_formats_match_jaxcnn_on_the_branch_architectures(name, mnist):
    _check_preset(models.preset(name, input_shape=SMALL_ARCHITECTURES[name]), mnist)


def _check_preset(spec, mnist):
    name = spec.name
    model = models.build_model(spec, seed=1)
    _moved_batch_stats(model)
    meta = _standardised_meta(spec)
    proto = export.onnx_model(model, meta)
    exported = export.stablehlo(model, meta, platforms=("cpu",))
    images = _to_input(mnist, spec.input_shape)
    logits = _reference(model, images, meta)  # one compile; batch 1 is its first row
    for batch in BATCHES:
        x, ref = images[:batch], logits[:batch]
        _assert_close(_onnx_logits(proto, x), ref, f"{name} onnx batch {batch}")
        _assert_close(
            np.asarray(exported.call(jnp.asarray(x))),
            ref,
            f"{name} stablehlo batch {batch}",
        )
    assert model.kernel_choice.kernels == "auto"  # the model itself is left as it was


# --------------------------------------------------------------------------- layer kinds
LAYER_KINDS = {
    "every pool kind, conv options and activations": {
        "input_shape": [28, 28, 1],
        "num_classes": 10,
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 3, "padding": "same"},
            {"type": "activation", "activation": "relu"},
            {
                "type": "pool",
                "pool": "max",
                "window": 3,
                "stride": 2,
                "padding": "same",
            },
            {
                "type": "conv",
                "filters": 8,
                "kernel": [3, 2],
                "stride": [1, 2],
                "dilation": [2, 1],
                "padding": [1, 1],
                "groups": 2,
                "use_bias": False,
                "activation": "elu",
            },
            {"type": "pool", "pool": "avg", "window": 2, "padding": "same"},
            {"type": "conv", "filters": 8, "kernel": 1, "activation": "leaky_relu"},
            {"type": "pool", "pool": "lp", "p": 3, "window": 2, "stride": 1},
            {"type": "conv", "filters": 8, "kernel": 1, "activation": "relu"},
            {"type": "pool", "pool": "geometric", "window": 2, "stride": 1},
            {"type": "conv", "filters": 8, "kernel": 1, "activation": "relu"},
            {"type": "pool", "pool": "harmonic", "window": 2, "padding": "same"},
            {"type": "conv", "filters": 8, "kernel": 1, "activation": "softplus"},
            {"type": "pool", "pool": "sum", "window": 2, "padding": "same"},
            {"type": "flatten"},
            {"type": "dense", "units": 16, "activation": "gelu"},
            {"type": "dense", "units": 16, "activation": "silu"},
            {"type": "dense", "units": 10},
        ],
    },
    "norms, residual blocks, global pools": {
        "input_shape": [28, 28, 1],
        "num_classes": 10,
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 3, "activation": "tanh"},
            {"type": "norm", "norm": "batch"},
            {"type": "norm", "norm": "group", "groups": 4},
            {
                "type": "residual",
                "activation": "relu",
                "layers": [
                    {"type": "conv", "filters": 8, "kernel": 3, "padding": "same"},
                    {"type": "norm", "norm": "layer"},
                    {"type": "dropout", "rate": 0.3},
                    {
                        "type": "conv",
                        "filters": 16,
                        "kernel": 3,
                        "stride": 2,
                        "padding": "same",
                        "activation": "sigmoid",
                    },
                ],
            },
            {
                "type": "residual",
                "layers": [{"type": "conv", "filters": 16, "kernel": 3, "padding": 1}],
            },
            {"type": "global_pool", "pool": "avg"},
            {"type": "dense", "units": 16, "activation": "relu"},
            {"type": "norm", "norm": "batch"},
            {"type": "norm", "norm": "layer"},
            {"type": "norm", "norm": "group", "groups": 4},
            {"type": "dropout", "rate": 0.5},
            {"type": "dense", "units": 10},
        ],
    },
    "branch blocks, relu6, explicit padding, projection norm": {
        "input_shape": [28, 28, 1],
        "num_classes": 10,
        "layers": [
            {
                "type": "conv",
                "filters": 8,
                "kernel": 3,
                "padding": [[0, 1], [1, 0]],
                "activation": "relu6",
            },
            {
                "type": "branches",
                "join": "concat",
                "branches": [
                    [{"type": "conv", "filters": 4, "kernel": 1}],
                    [
                        {"type": "conv", "filters": 4, "kernel": 3, "padding": "same"},
                        {
                            "type": "pool",
                            "pool": "avg",
                            "window": 3,
                            "stride": 1,
                            "padding": 1,
                            "count_padding": True,
                        },
                    ],
                    [],
                ],
            },
            {
                "type": "branches",
                "join": "add",
                "activation": "relu",
                "branches": [[{"type": "conv", "filters": 16, "kernel": 1}], []],
            },
            {
                "type": "pool",
                "pool": "max",
                "window": 3,
                "stride": 2,
                "padding": [[0, 1], [0, 1]],
            },
            {
                "type": "residual",
                "projection_norm": True,
                "layers": [
                    {
                        "type": "conv",
                        "filters": 32,
                        "kernel": 3,
                        "stride": 2,
                        "padding": "same",
                    }
                ],
            },
            {"type": "global_pool", "pool": "avg"},
            {"type": "dense", "units": 10},
        ],
    },
    "global max pool": {
        "input_shape": [28, 28, 1],
        "num_classes": 10,
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 5, "stride": 2},
            {"type": "global_pool", "pool": "max"},
            {"type": "dense", "units": 10},
        ],
    },
}


@pytest.mark.parametrize("what", sorted(LAYER_KINDS))
def test_every_layer_kind_matches_jaxcnn(what, mnist):
    spec = ModelSpec.from_dict(LAYER_KINDS[what])
    model = models.build_model(spec, seed=2)
    _moved_batch_stats(model, seed=3)
    meta = export.contract(spec)
    proto = export.onnx_model(model, meta)
    exported = export.stablehlo(model, meta, platforms=("cpu",))
    images = _to_input(mnist, spec.input_shape)
    logits = _reference(model, images, meta)
    for batch in BATCHES:
        x, ref = images[:batch], logits[:batch]
        _assert_close(_onnx_logits(proto, x), ref, f"{what} onnx batch {batch}")
        _assert_close(
            np.asarray(exported.call(jnp.asarray(x))), ref, f"{what} stablehlo"
        )


def test_the_layer_kinds_cover_every_kind_onnx_writes():
    kinds = set()

    def walk(layer_list):
        for layer in layer_list:
            kinds.add((layer["type"], layer.get("pool") or layer.get("norm")))
            walk(layer.get("layers", []))
            for branch in layer.get("branches", []):
                walk(branch)

    for spec in LAYER_KINDS.values():
        walk(spec["layers"])
    assert {kind for kind, _ in kinds} == set(export._ONNX_WRITERS)
    pools = {sub for kind, sub in kinds if kind == "pool"}
    assert pools == {"max", "avg", "sum", "lp", "geometric", "harmonic"}
    assert {sub for kind, sub in kinds if kind == "norm"} == {"batch", "layer", "group"}


def test_a_layer_kind_without_an_onnx_form_is_refused_by_name(monkeypatch):
    monkeypatch.delitem(export._ONNX_WRITERS, "norm")
    model = models.build_model(models.preset("resnet_cifar"))
    with pytest.raises(export.ExportError) as info:
        export.onnx_model(model)
    message = str(info.value)
    assert "'norm'" in message and "residual_3/norm_1 (norm)" in message
    assert "--format stablehlo" in message


def test_a_backbone_is_refused():
    model = models.build_model("keras_mnist", upto="flatten_5")
    with pytest.raises(export.ExportError, match="backbone"):
        export.stablehlo(model)


# --------------------------------------------------------------------------- runs
def _digits_images(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    pixels = load_digits().images[:n]  # 0..16
    return np.round(pixels * (255 / 16)).astype(np.uint8)[..., None]


def test_cli_exports_a_run_that_predicts_as_jaxcnn_does(
    digits_run, tmp_path, capsys, snapshot
):
    from jaxcnn import train

    before = snapshot(digits_run)
    out_onnx, out_hlo = tmp_path / "digits.onnx", tmp_path / "digits.stablehlo"
    base = ["export", "--workdir", str(digits_run)]
    assert cli.main([*base, "--format", "onnx", "-o", str(out_onnx)]) == 0
    assert cli.main([*base, "--format", "stablehlo", "-o", str(out_hlo)]) == 0
    assert f"wrote {out_hlo}, {out_hlo}.json" in capsys.readouterr().out
    assert snapshot(digits_run) == before  # a reader of the run directory

    proto = onnx.load(out_onnx)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["jaxcnn"])
    record = json.loads((digits_run / "config.json").read_text())["dataset"]
    assert json.loads(props["class_names"]) == record["class_names"]
    assert json.loads(props["input_shape"]) == ["batch", 8, 8, 1]
    assert props["input_dtype"] == "float32"
    assert json.loads(props["input_range"]) == [0.0, 1.0]
    assert json.loads(props["normalization"])["mean"] == pytest.approx(record["mean"])
    assert meta["source"]["checkpoint_step"] > 0
    sidecar = json.loads(pathlib.Path(f"{out_hlo}.json").read_text())
    assert sidecar == meta  # one contract, both formats

    images = _digits_images(7)
    expected = train.predict(digits_run, list(images), top_k=10)
    x = images.astype(np.float32) / 255  # the contract: [0, 1], normalised inside
    logits = _onnx_logits(proto, x)
    hlo = jax.export.deserialize(out_hlo.read_bytes())
    assert hlo.in_avals[0].dtype == np.float32
    for got in (logits, np.asarray(hlo.call(jnp.asarray(x)))):
        probs = np.asarray(jax.nn.softmax(got, axis=-1))
        for row, result in zip(probs, expected, strict=True):
            by_class = {t["class"]: t["probability"] for t in result["top"]}
            assert np.allclose(row, [by_class[c] for c in range(10)], atol=1e-5)


def test_default_output_is_the_run_name_in_the_current_folder(
    digits_run, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    written = export.export_run(digits_run, "stablehlo")
    assert written == [
        pathlib.Path(f"{digits_run.name}.stablehlo"),
        pathlib.Path(f"{digits_run.name}.stablehlo.json"),
    ]
    assert all((tmp_path / p).is_file() for p in written)


STABLEHLO_RUNNER = """
import sys

class _NoJaxcnn:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "jaxcnn":
            raise ImportError("this process must not import jaxcnn")

sys.meta_path.insert(0, _NoJaxcnn())
import jax, numpy as np

exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
for i, path in enumerate(sys.argv[2:]):
    x = np.load(path)
    np.save(f"{path}.out.npy", np.asarray(exported.call(x)))
print("platforms", ",".join(exported.platforms))
assert not [m for m in sys.modules if m.startswith("jaxcnn")]
"""


def test_stablehlo_runs_with_jax_alone(tmp_path, mnist):
    spec = models.preset("keras_mnist")
    model = models.build_model(spec, seed=4)
    meta = _standardised_meta(spec)
    path = tmp_path / "model.stablehlo"
    path.write_bytes(export.stablehlo(model, meta).serialize())
    inputs = []
    for batch in BATCHES:
        inputs.append(tmp_path / f"x{batch}.npy")
        np.save(inputs[-1], _to_input(mnist[:batch], spec.input_shape))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", STABLEHLO_RUNNER, str(path), *map(str, inputs)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "platforms cpu,cuda" in done.stdout  # one file for CPU and NVIDIA GPUs
    for batch, x_path in zip(BATCHES, inputs, strict=True):
        ref = _reference(model, np.load(x_path), meta)
        got = np.load(f"{x_path}.out.npy")
        _assert_close(got, ref, f"stablehlo without jaxcnn, batch {batch}")


# --------------------------------------------------------------------------- errors
def test_cli_errors_exit_2_with_a_message(digits_run, tmp_path, capsys):
    base = ["export", "--workdir", str(digits_run)]
    assert cli.main([*base, "--format", "tflite"]) == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err

    missing = tmp_path / "nowhere" / "m.onnx"
    assert cli.main([*base, "--format", "onnx", "-o", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"the folder {missing.parent} does not exist" in err
    assert "Traceback" not in err

    assert cli.main([*base, "--format", "onnx", "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err

    not_a_run = ["export", "--workdir", str(tmp_path), "--format", "stablehlo"]
    assert cli.main(not_a_run) == 2
    assert "is not a jaxcnn run directory" in capsys.readouterr().err


def test_function_errors(digits_run, tmp_path, monkeypatch):
    with pytest.raises(export.ExportError, match="one of stablehlo, onnx; got 'tf'"):
        export.export_run(digits_run, "tf")
    with pytest.raises(CheckpointError, match="not a jaxcnn run directory"):
        export.export_run(tmp_path, "onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were missing
    with pytest.raises(export.ExportError, match=re.escape("jaxcnn[export]")):
        export.export_run(digits_run, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_contract_refuses_class_names_that_do_not_fit():
    spec = models.preset("keras_mnist")
    with pytest.raises(export.ExportError, match="names 3 classes .* 10 outputs"):
        export.contract(spec, {"class_names": ["a", "b", "c"]})


# --------------------------------------------------------------------------- README
def _readme_blocks(heading: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks in README.md's section `heading`."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else None]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def _run_blocks(blocks, cwd: pathlib.Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    bindir = pathlib.Path(sys.executable).parent  # the `jaxcnn` script of this Python
    env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
    for language, code in blocks:
        command = ["bash", "-euc", code] if language == "bash" else [sys.executable]
        done = subprocess.run(
            command,
            input=None if language == "bash" else code,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{language} block:\n{code}\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_readme_export_section_runs(tmp_path):
    blocks = _readme_blocks("## Export")
    assert [language for language, _ in blocks] == ["bash", "python"]
    _run_blocks(blocks, tmp_path)
    meta = json.loads((tmp_path / "digits.stablehlo.json").read_text())
    assert meta["input"]["normalization"] is not None  # data.standardize=true
    assert (tmp_path / "digits.onnx").is_file()


def test_readme_gpu_section_runs(tmp_path):
    blocks = _readme_blocks("## Running on a GPU")
    assert [language for language, _ in blocks] == ["bash", "python"]
    _run_blocks(blocks, tmp_path)
