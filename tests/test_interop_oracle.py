"""The ImageNet presets against their source frameworks, on the source's own weights.

Each source model is built with random weights offline (torchvision, timm, Keras
applications), its batch-norm statistics set away from their defaults, its weights
saved in the source's file format, imported with `jaxcnn.interop.import_weights` into
a run directory and restored from there as `jaxcnn eval` / `predict` restore it. Both
compute the logits of two real MNIST digits (resized to 224x224, three channels,
normalised with the ImageNet statistics) in eval mode, jaxcnn with kernels="auto" and
"xla": the largest difference must stay within 1e-4 of the largest |logit|.

One imported AlexNet also serves `jaxcnn predict` (top-5 with ImageNet names) and
`jaxcnn train --init-from ... --freeze conv --new-head` on a folder of digits.
Everything here runs 224x224 networks of 60-140 M parameters: all slow.
"""

import ast
import gzip
import json
import os
import pathlib
import struct
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # before keras is first imported
sys.modules.setdefault("triton", None)  # see tests/test_interop.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from jaxcnn import cli, data, models, transfer  # noqa: E402
from jaxcnn.data.catalog import shared_data_dir  # noqa: E402
from jaxcnn.interop import imagenet, importer  # noqa: E402

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SHARED_DATA = shared_data_dir()


def _read_mnist(n: int, offset: int = 0):
    """MNIST test images [n, 28, 28, 1] uint8 from `offset`, and their labels."""
    folder = SHARED_DATA / "mnist"
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as f:
        magic, _, rows, cols = struct.unpack(">4i", f.read(16))
        assert magic == 2051
        f.read(offset * rows * cols)
        pixels = np.frombuffer(f.read(n * rows * cols), np.uint8)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
        f.read(8 + offset)
        labels = np.frombuffer(f.read(n), np.uint8)
    return pixels.reshape(n, rows, cols, 1), labels


@pytest.fixture(scope="module")
def batch():
    """Two real digits as the networks take them: [2, 224, 224, 3], normalised."""
    if not (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"raw MNIST files not found in {SHARED_DATA / 'mnist'}")
    images, _ = _read_mnist(2)
    x, _ = data.convert_images(images, (224, 224, 3))
    return data.normalize(x, imagenet.PREPROCESSING["torchvision"])


def _randomise_batch_norm(net):
    """Running statistics, scales and shifts away from 0 / 1, so each one matters."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) - 0.5)


def _torch_logits(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@nnx.jit
def _forward(model, x):
    return model(x)


def _check_run(workdir, reference, x):
    """The restored run's logits equal `reference` with both kernel choices."""
    run = transfer.restore(workdir)
    assert run.dataset["class_names"][:2] == ["tench", "goldfish"]
    scale = np.abs(reference).max()
    assert scale > 0
    for kernels in ("auto", "xla"):
        models.set_kernels(run.model, kernels)
        got = np.asarray(_forward(run.model, x))
        error = np.abs(got - reference).max() / scale
        assert error <= 1e-4, (kernels, error)


def _torchvision(name, folder):
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    _randomise_batch_norm(net)
    path = folder / f"{name}.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.fixture(scope="module")
def alexnet_run(tmp_path_factory, batch):
    folder = tmp_path_factory.mktemp("alexnet")
    net, path = _torchvision("alexnet", folder)
    done = importer.import_weights(path, "alexnet", folder / "run")
    assert done.values == 61_100_840
    return net, folder / "run"


def test_alexnet_from_torchvision(alexnet_run, batch):
    net, workdir = alexnet_run
    _check_run(workdir, _torch_logits(net, batch), batch)


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_vgg16_from_torchvision(name, tmp_path, batch):
    net, path = _torchvision(name, tmp_path)
    reference = _torch_logits(net, batch)
    del net
    code = cli.main(
        ["import", str(path), "--arch", name, "--workdir", str(tmp_path / "r")]
    )
    assert code == 0
    path.unlink()
    _check_run(tmp_path / "r", reference, batch)


def test_vgg16_from_timm(tmp_path, batch):
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    net = timm.create_model("vgg16", pretrained=False).eval()
    path = tmp_path / "vgg16.safetensors"
    safetensors_torch.save_file(net.state_dict(), str(path))
    reference = _torch_logits(net, batch)
    del net
    importer.import_weights(path, "vgg16", tmp_path / "r")
    path.unlink()
    _check_run(tmp_path / "r", reference, batch)


def test_vgg16_from_keras(tmp_path, batch):
    import keras

    keras.utils.set_random_seed(0)
    net = keras.applications.VGG16(weights=None, classifier_activation=None)
    path = tmp_path / "vgg16.weights.h5"
    net.save_weights(path)
    reference = np.asarray(net(batch, training=False))
    del net
    importer.import_weights(path, "vgg16", tmp_path / "r", source="keras")
    path.unlink()
    _check_run(tmp_path / "r", reference, batch)
    record = json.loads((tmp_path / "r" / "config.json").read_text())["dataset"]
    assert record["channels"] == "bgr"  # Keras's VGG16 takes caffe-style BGR input


def test_predict_prints_top5_imagenet_names(alexnet_run, tmp_path, capsys):
    """A non-square image: resized to a shorter side of 256, centre-cropped to 224 and
    normalised as torchvision's preset transform does, then the top 5 by name."""
    from PIL import Image

    net, workdir = alexnet_run
    images, _ = _read_mnist(1, offset=7)
    pixels = np.asarray(
        Image.fromarray(images[0, :, :, 0]).convert("RGB").resize((300, 260))
    )
    photo = tmp_path / "digit.png"
    Image.fromarray(pixels).save(photo)
    assert (
        cli.main(["predict", "--workdir", str(workdir), str(photo), "--top-k", "5"])
        == 0
    )
    line = capsys.readouterr().out.strip()
    record = imagenet.PREPROCESSING["torchvision"]
    x = data.normalize(data.prepare(pixels, (224, 224, 3), record), record)[None]
    probs = torch.softmax(torch.from_numpy(_torch_logits(net, x)), -1).numpy()[0]
    top = np.argsort(-probs)[:5]
    names = imagenet.class_names()
    expected = ", ".join(f"{names[c]} ({probs[c]:.3f})" for c in top)
    assert line == f"{photo}: {expected}"


def _readme_blocks() -> tuple[list[str], str]:
    """The README's "Pre-trained ImageNet networks" section: its bash lines, its Python."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Pre-trained ImageNet networks\n", 1)[1].split("\n## ", 1)[
        0
    ]
    bash = section.split("```bash\n", 1)[1].split("```", 1)[0]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    return [line for line in bash.splitlines() if line.strip()], python


def test_readme_section_runs(alexnet_run, tmp_path, monkeypatch, capsys):
    """Every line of the README's section, in a folder holding the files it names:
    alexnet.pth (torchvision's format), photo.jpg, my_photos/ (two classes of digits);
    the published file is served on loopback under its real name and hash. The
    fine-tuned run keeps the imported convolutions bit for bit."""
    import hashlib
    import shlex
    import shutil

    from PIL import Image
    from test_interop import _Server

    from jaxcnn.interop import download

    net, workdir = alexnet_run
    pth = workdir.parent / "alexnet.pth"
    shutil.copy(pth, tmp_path / "alexnet.pth")
    images, labels = _read_mnist(200)
    Image.fromarray(images[3, :, :, 0]).convert("RGB").resize((240, 320)).save(
        tmp_path / "photo.jpg"
    )
    for digit in (0, 1):
        (tmp_path / "my_photos" / str(digit)).mkdir(parents=True)
        for i in np.flatnonzero(labels == digit)[:10]:
            Image.fromarray(images[i, :, :, 0]).save(
                tmp_path / "my_photos" / str(digit) / f"{i}.png"
            )
    body = pth.read_bytes()
    published = download.PUBLISHED["alexnet", "torchvision"]
    server = _Server({f"/{published.filename}": body})
    digest = hashlib.sha256(body).hexdigest()[:8]
    entry = download.Published(server.url(f"/{published.filename}"), "sha256", digest)
    monkeypatch.setitem(download.PUBLISHED, ("alexnet", "torchvision"), entry)
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    bash, python = _readme_blocks()
    try:
        for line in bash:
            args = shlex.split(line, comments=True)
            assert args[0] == "jaxcnn"
            assert cli.main(args[1:]) == 0, (line, capsys.readouterr().err)
            out = capsys.readouterr().out
            if args[1] == "predict":
                names = out.strip().split(": ", 1)[1].split(", ")
                assert len(names) == 5
                assert all(
                    n.rsplit(" (", 1)[0] in imagenet.class_names() for n in names
                )
    finally:
        server.close()
    assert (tmp_path / "cache" / "alexnet-owt-7be5be79.pth").read_bytes() == body
    exec(compile(python, "README.md", "exec"), {})
    printed = ast.literal_eval(capsys.readouterr().out)
    assert len(printed) == 5 and set(printed) <= set(imagenet.class_names())
    tuned = _params(transfer.restore(tmp_path / "runs" / "mine").model)
    base = _params(transfer.restore(workdir).model)
    assert tuned["dense_13/kernel"].shape == (4096, 2)  # the new head: 2 classes
    convs = [path for path in base if path.startswith("conv")]
    assert len(convs) == 10
    for path in convs:
        np.testing.assert_array_equal(tuned[path], base[path])
    assert not np.array_equal(tuned["dense_10/kernel"], base["dense_10/kernel"])
    published = _params(transfer.restore(tmp_path / "runs" / "alexnet-published").model)
    for path in base:
        np.testing.assert_array_equal(published[path], base[path])


def _params(model) -> dict[str, np.ndarray]:
    state = nnx.state(model, nnx.Param)
    return {
        "/".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(state)
    }


def test_readme_fine_tuning_block_runs(tmp_path, monkeypatch, capsys):
    """The README's "Fine-tuning an imported network" block, in a folder holding
    resnet18.pth (random torchvision weights) and my_photos/ (two classes of digits):
    the run takes the ImageNet mean and keeps the imported base bit for bit."""
    from PIL import Image

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    images, labels = _read_mnist(200)
    for digit in (0, 1):
        (tmp_path / "my_photos" / str(digit)).mkdir(parents=True)
        for i in np.flatnonzero(labels == digit)[:10]:
            Image.fromarray(images[i, :, :, 0]).save(
                tmp_path / "my_photos" / str(digit) / f"{i}.png"
            )
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Fine-tuning an imported network\n", 1)[1]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "README.md", "exec"), {})
    printed = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    np.testing.assert_allclose(printed, imagenet.IMAGENET_MEAN, rtol=1e-6)
    tuned = _params(transfer.restore(tmp_path / "runs" / "my-resnet18").model)
    base = _params(transfer.restore(tmp_path / "runs" / "resnet18-32").model)
    assert tuned["dense_13/kernel"].shape == (512, 2)
    for path in base:
        if not path.startswith("dense_13/"):
            np.testing.assert_array_equal(tuned[path], base[path], path)
