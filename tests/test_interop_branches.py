"""torchvision's ResNet, SqueezeNet, MobileNet v2, GoogLeNet, DenseNet and Inception v3
state dicts (and timm's ResNet-50, MobileNet v2, DenseNet and Inception v3 safetensors
files) imported into the branch-block presets, checked against the source framework.

Each network is built by torchvision with random weights and batch-norm statistics
moved away from their defaults, saved as a state dict (.pth), imported with
`import_weights` at a small input size (the presets end in a global pool, so the
weights are the same at any size; the ceil-mode pools are padded for that size) and
restored as `jaxcnn predict` restores it. Both compute logits of two real MNIST
digits in eval mode, jaxcnn with kernels="auto" (tests/test_architectures.py compares
"auto" with "xla"): within 1e-4 of the largest |logit|. DenseNet-201 is DenseNet-121's
builder and names with more layers: its file's import is checked, its logits are not. jaxcnn's input is normalised as the imported run's config.json says;
torchvision's GoogLeNet and Inception v3 are built with `transform_input=True`, as
torchvision builds them with their published weights, and take ImageNet-normalised
input.
"""

import json
import math
import sys

sys.modules.setdefault("triton", None)  # see tests/test_interop.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from jaxcnn import cli, data, models, transfer  # noqa: E402
from jaxcnn.errors import CheckpointError  # noqa: E402
from jaxcnn.interop import imagenet, importer, mapping  # noqa: E402

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from test_interop_oracle import _randomise_batch_norm, _read_mnist  # noqa: E402

CASES = [  # the sizes tests/test_architectures.py uses
    ("resnet18", 64),
    ("resnet34", 64),
    ("resnet50", 64),
    ("squeezenet1_1", 67),  # ceil-mode pools at an odd size
    ("mobilenet_v2", 64),
    ("googlenet", 67),
    ("densenet121", 64),
    ("inception_v3", 75),
]
TRANSFORMS_INPUT = {"googlenet", "inception_v3"}


def _pixels(size):
    """Two MNIST digits as [2, size, size, 3] RGB in [0, 1]."""
    images, _ = _read_mnist(2)
    x, _ = data.convert_images(images, (size, size, 3))
    return x


def _torchvision(name, folder):
    """The torchvision network (eval mode) and its state dict saved in `folder`."""
    torch.manual_seed(0)
    kwargs = {"transform_input": True} if name in TRANSFORMS_INPUT else {}
    net = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    _randomise_batch_norm(net)
    path = folder / f"{name}.pth"
    torch.save(net.state_dict(), path)
    return net, path


def _torch_logits(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@nnx.jit
def _forward(model, x):
    return model(x)


def _check_run(workdir, net, pixels, theirs=imagenet.PREPROCESSING["torchvision"]):
    """The restored run's logits against `net`'s, which takes input normalised as
    `theirs` says."""
    run = transfer.restore(workdir)
    theirs = data.normalize(pixels, theirs)
    reference = _torch_logits(net, theirs)
    x = data.normalize(pixels, run.dataset)
    scale = np.abs(reference).max()
    assert scale > 0
    got = np.asarray(_forward(run.model, x))  # kernels="auto", as predict runs it
    error = np.abs(got - reference).max() / scale
    assert error <= 1e-4, error


@pytest.mark.slow  # 25-200 s each on 2 shared cores, most of it compiling
@pytest.mark.parametrize("name, size", CASES)
def test_logits_equal_torchvisions(name, size, tmp_path):
    net, path = _torchvision(name, tmp_path)
    done = importer.import_weights(
        path, name, tmp_path / "run", input_shape=(size, size, 3)
    )
    assert done.values == sum(
        v.numel()
        for k, v in net.state_dict().items()
        if "num_batches" not in k and k not in done.left_out
    )
    record = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    if name in TRANSFORMS_INPUT:  # the auxiliary heads are left out, and noted
        assert done.left_out and all(
            n.startswith(("aux1.", "aux2.", "AuxLogits.")) for n in done.left_out
        )
        assert any("auxiliary heads" in note for note in record["notes"])
        assert record["mean"] == [0.5] * 3 and record["std"] == [0.5] * 3
    else:
        assert done.left_out == ()
        assert record["mean"] == list(imagenet.IMAGENET_MEAN)
    _check_run(tmp_path / "run", net, _pixels(size))


@pytest.mark.slow
def test_cli_imports_resnet18_at_224(tmp_path):
    net, path = _torchvision("resnet18", tmp_path)
    code = cli.main(
        ["import", str(path), "--arch", "resnet18", "--workdir", str(tmp_path / "r")]
    )
    assert code == 0
    _check_run(tmp_path / "r", net, _pixels(224))


@pytest.mark.slow
def test_cli_imports_at_another_input_shape(tmp_path, capsys):
    """--input-shape builds the preset for small images with the same weights; a
    network that flattens a map refuses the file at a size its dense layer does not fit."""
    net, path = _torchvision("resnet18", tmp_path)
    args = ["import", str(path), "--arch", "resnet18", "--input-shape", "32,32,3"]
    assert cli.main([*args, "--workdir", str(tmp_path / "r")]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["run"]["model"]["args"]["input_shape"] == [32, 32, 3]
    assert config["model_spec"]["input_shape"] == [32, 32, 3]
    _check_run(tmp_path / "r", net, _pixels(32))
    torch.save(
        torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "a.pth"
    )
    code = cli.main(
        ["import", str(tmp_path / "a.pth"), "--arch", "alexnet"]
        + ["--input-shape", "64,64,3", "--workdir", str(tmp_path / "a")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "tensor 'classifier.1.weight' has shape (4096, 9216) in the file" in err
    assert "alexnet needs (4096, 256)" in err
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_cli_says_it_left_out_googlenets_auxiliary_heads(tmp_path, capsys):
    _, path = _torchvision("googlenet", tmp_path)
    workdir = tmp_path / "r"
    assert (
        cli.main(
            ["import", str(path), "--arch", "googlenet", "--workdir", str(workdir)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "left out the file's 20 tensors of the auxiliary heads (aux1, aux2)" in out


TIMM_CASES = [  # (preset, timm model, input size)
    ("resnet50", "resnet50", 64),
    ("mobilenet_v2", "mobilenetv2_100", 64),
    ("densenet121", "densenet121", 64),
    ("inception_v3", "inception_v3", 75),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, timm_name, size", TIMM_CASES)
def test_logits_equal_timms_from_safetensors(name, timm_name, size, tmp_path):
    """timm's model (random weights) saved as safetensors, imported: the same logits,
    and the run records timm's own preprocessing (its pretrained_cfg)."""
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    net = timm.create_model(timm_name, pretrained=False).eval()
    _randomise_batch_norm(net)
    path = tmp_path / f"{timm_name}.safetensors"
    safetensors_torch.save_file(net.state_dict(), str(path))
    done = importer.import_weights(
        path, name, tmp_path / "r", input_shape=(size, size, 3)
    )
    assert done.values == sum(
        v.numel() for k, v in net.state_dict().items() if "num_batches" not in k
    )
    record = json.loads((tmp_path / "r" / "config.json").read_text())["dataset"]
    config = net.pretrained_cfg
    side = config["input_size"][1]
    assert record["resize"] == math.floor(side / config["crop_pct"])
    assert tuple(record["mean"]) == config["mean"]
    assert tuple(record["std"]) == config["std"]
    _check_run(tmp_path / "r", net, _pixels(size), theirs=record)


@pytest.mark.slow
def test_densenet201_from_timm_imports_every_tensor(tmp_path):
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    net = timm.create_model("densenet201", pretrained=False)
    path = tmp_path / "densenet201.safetensors"
    safetensors_torch.save_file(net.state_dict(), str(path))
    done = importer.import_weights(
        path, "densenet201", tmp_path / "run", input_shape=(64, 64, 3)
    )
    assert done.values == sum(
        v.numel() for k, v in net.state_dict().items() if "num_batches" not in k
    )


@pytest.mark.slow
def test_densenet201_file_imports_every_tensor(tmp_path):
    net, path = _torchvision("densenet201", tmp_path)
    done = importer.import_weights(
        path, "densenet201", tmp_path / "run", input_shape=(64, 64, 3)
    )
    assert done.left_out == ()
    assert done.values == sum(
        v.numel() for k, v in net.state_dict().items() if "num_batches" not in k
    )


def _check_keras_run(workdir, net, preprocess_input, size):
    """The restored run's logits on real digits against the Keras network's, which
    takes `preprocess_input` of 0-255 pixels."""
    run = transfer.restore(workdir)
    pixels = _pixels(size)
    reference = np.asarray(net(preprocess_input(pixels * 255), training=False))
    got = np.asarray(_forward(run.model, data.normalize(pixels, run.dataset)))
    scale = np.abs(reference).max()
    assert scale > 0 and np.abs(got - reference).max() / scale <= 1e-4


def _keras_net(name, size):
    """Keras's DenseNet, ResNet50, InceptionV3 or MobileNetV2 (random weights, logits out) with
    batch-norm statistics, scales (where they have one) and shifts moved away from
    their defaults."""
    import keras

    keras.utils.set_random_seed(0)
    build = {"densenet121": keras.applications.DenseNet121}
    build["densenet201"] = keras.applications.DenseNet201
    build["resnet50"] = keras.applications.ResNet50
    build["inception_v3"] = keras.applications.InceptionV3
    build["mobilenet_v2"] = keras.applications.MobileNetV2
    net = build[name](
        weights=None, input_shape=(size, size, 3), classifier_activation=None
    )
    rng = np.random.default_rng(1)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.beta.shape[0]
            scale = [rng.uniform(0.5, 1.5, c)] if layer.scale else []
            layer.set_weights(
                [
                    *scale,
                    rng.uniform(-0.5, 0.5, c),
                    rng.uniform(-0.5, 0.5, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )
    return net


def _save_keras(net, path, fmt):
    """Keras 3's .weights.h5, or the Keras 2 .h5 layout of Keras's published files."""
    if fmt == "keras3":
        net.save_weights(path)
        return
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, net)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras3", "keras2"])
def test_densenet121_from_keras_gives_keras_logits(tmp_path, fmt):
    """Keras's DenseNet121 (batch norm's epsilon 1.001e-5, "torch"-mode input: RGB
    normalised with the ImageNet mean and std after a plain resize)."""
    net = _keras_net("densenet121", 64)
    path = tmp_path / ("d.weights.h5" if fmt == "keras3" else "d.h5")
    _save_keras(net, path, fmt)
    done = importer.import_weights(
        path, "densenet121", tmp_path / "r", source="keras", input_shape=(64, 64, 3)
    )
    assert done.values == sum(int(np.prod(w.shape)) for w in net.weights)
    run = transfer.restore(tmp_path / "r")
    norms = [n for n in run.spec.layers if type(n).__name__ == "NormSpec"]
    assert norms and all(n.epsilon == 1.001e-5 for n in norms)
    record = json.loads((tmp_path / "r" / "config.json").read_text())["dataset"]
    assert record["resize"] is None and record["channels"] == "rgb"
    assert tuple(record["mean"]) == imagenet.IMAGENET_MEAN
    x = data.normalize(_pixels(64), run.dataset)
    reference = np.asarray(net(x, training=False))
    got = np.asarray(_forward(run.model, x))
    scale = np.abs(reference).max()
    assert scale > 0 and np.abs(got - reference).max() / scale <= 1e-4


# Keras's variants of three networks: preset arguments its runs record, input size (the
# smallest Keras builds them at, or near it) and channel order of its preprocessing.
KERAS_VARIANTS = {
    # ResNet v1: stride on a stage's first 1x1 conv, convs with biases, batch norm's
    # epsilon 1.001e-5, the projection's layers between the body's in the file;
    # "caffe"-mode input (BGR, 0..255 minus the ImageNet means)
    "resnet50": (
        64,
        {"stride_on": "1x1", "conv_bias": True, "epsilon": 1.001e-5},
        "bgr",
    ),
    # batch norms without a scale, average pools that leave the padding out of the
    # mean, the nested splits' convs before the 1x1 and pool branches' in the file;
    # "tf"-mode input (RGB, x / 127.5 - 1)
    "inception_v3": (75, {"bn_scale": False, "count_padding": False}, "rgb"),
    # alpha 1.0: stride-2 convs padded at the bottom and right only (TF's "same";
    # ZeroPadding2D(correct_pad) before its depthwise convs), batch norm's epsilon 1e-3,
    # depthwise kernels [3, 3, C, 1] numbered apart from the convs in Keras 3 files;
    # "tf"-mode input
    "mobilenet_v2": (
        96,
        {"padding": "same", "epsilon": 1e-3, "momentum": 0.999},
        "rgb",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["keras3", "keras2"])
@pytest.mark.parametrize("arch", list(KERAS_VARIANTS))
def test_keras_variant_from_keras_gives_keras_logits(tmp_path, arch, fmt):
    """Keras's ResNet50, InceptionV3 and MobileNetV2 files (Keras 3 and Keras 2 formats)
    import into the preset built as Keras's variant, and give Keras's logits."""
    import importlib

    size, args, channels = KERAS_VARIANTS[arch]
    application = importlib.import_module(f"keras.applications.{arch}")
    net = _keras_net(arch, size)
    path = tmp_path / ("w.weights.h5" if fmt == "keras3" else "w.h5")
    _save_keras(net, path, fmt)
    done = importer.import_weights(
        path, arch, tmp_path / "run", source="keras", input_shape=(size, size, 3)
    )
    assert done.values == sum(int(np.prod(w.shape)) for w in net.weights)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["run"]["model"]["args"] == {**args, "input_shape": [size, size, 3]}
    record = config["dataset"]
    assert record["resize"] is None and record["channels"] == channels
    _check_keras_run(tmp_path / "run", net, application.preprocess_input, size)


@pytest.mark.slow
def test_densenet201_from_keras_imports_every_tensor(tmp_path):
    net = _keras_net("densenet201", 64)
    net.save_weights(tmp_path / "d.weights.h5")
    done = importer.import_weights(
        tmp_path / "d.weights.h5",
        "densenet201",
        tmp_path / "r",
        input_shape=(64, 64, 3),
    )
    assert done.values == sum(int(np.prod(w.shape)) for w in net.weights)


def test_inception_v3_predicts_as_torchvision_prepares():
    record = imagenet.preprocessing("inception_v3", "torchvision")
    assert record["resize"] == 342 and record["channels"] == "rgb"
    weights = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1
    transform = weights.transforms()
    assert (transform.resize_size, transform.crop_size) == ([342], [299])
    assert models.preset("inception_v3").input_shape == (299, 299, 3)


def test_a_mismatched_file_names_the_tensor_and_both_shapes(tmp_path):
    """A ResNet-50 file is no ResNet-18: its first bottleneck conv is 1x1, not 3x3."""
    torch.manual_seed(0)
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        importer.import_weights(path, "resnet18", tmp_path / "run")
    message = str(caught.value)
    assert (
        "tensor 'layer1.0.conv1.weight' has shape (64, 64, 1, 1) in the file but "
        "resnet18 needs (64, 64, 3, 3) (jaxcnn's residual_4/conv_0/kernel "
        "(3, 3, 64, 64))" in message
    )
    assert "'layer1.0.conv3.weight'" in message  # left over
    assert not (tmp_path / "run").exists()


def test_resnet34_file_as_resnet18_lists_the_extra_blocks(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="has no place for: 'layer1.2.conv1"):
        importer.import_weights(path, "resnet18", tmp_path / "run")


def test_densenet_published_names_are_renamed_as_torchvision_does(tmp_path):
    """torchvision's published DenseNet files say `norm.1`, `conv.2` in dense layers."""
    import re

    torch.manual_seed(0)
    state = {  # the published files predate num_batches_tracked
        k: v
        for k, v in torchvision.models.densenet121(weights=None).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    old = {
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
        for k, v in state.items()
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    renamed, left_out = mapping.prepare(
        "densenet121", "torchvision", {k: v.numpy() for k, v in old.items()}
    )
    assert left_out == [] and list(renamed) == list(state)
    spec = models.preset("densenet121", input_shape=(64, 64, 3))
    shapes_ = importer._weight_shapes(spec, importer.TrainConfig())
    entries = mapping.entries_for(spec, "densenet121", "torchvision", shapes_, renamed)
    arrays = mapping.convert(
        entries, renamed, shapes_, file="f", arch="densenet121", source="torchvision"
    )
    assert len(arrays) == len(shapes_)


def test_every_imagenet_preset_imports_from_torchvision():
    for name in models.IMAGENET_PRESETS:
        assert (name, "torchvision") in mapping.LAYOUTS, name


def test_readme_table_names_every_layout():
    """The README's table of presets and sources is `mapping.LAYOUTS`, row by row."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Pre-trained ImageNet networks\n", 1)[1].split("\n## ", 1)[
        0
    ]
    rows = [line for line in section.splitlines() if re.match(r"\| `\w+` \|", line)]
    table = set()
    for row in rows:
        preset, _, sources = (c.strip() for c in row.strip("|").split("|"))
        for source in ("torchvision", "timm", "Keras"):
            if f"{source} `" in sources:
                table.add((preset.strip("`"), source.lower()))
    assert table == set(mapping.LAYOUTS)
    assert {p for p, _ in table} == set(models.IMAGENET_PRESETS)
