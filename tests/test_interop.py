"""jaxcnn.interop: weight files of torchvision, timm and Keras read, mapped and checked.

The layouts are checked on small networks built in each framework (random weights,
batch-norm statistics that are not the defaults, maps that are not square, so a
transposed axis shows), against jaxcnn models of the same spec: equal logits in eval
mode. The full ImageNet networks at 224x224 are in tests/test_interop_oracle.py.
"""

import functools
import hashlib
import http.server
import os
import pathlib
import pickle
import socket
import sys
import threading

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # before keras is first imported
# torchvision imports triton (torch's GPU compiler) when it can, and triton's extension
# crashes the process when TensorFlow was loaded first (as it is in a whole test run).
# No test compiles for a GPU: hidden, torch and torchvision do without it.
sys.modules.setdefault("triton", None)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxcnn import cli, models  # noqa: E402
from jaxcnn.errors import CheckpointError, JaxcnnError  # noqa: E402
from jaxcnn.interop import (  # noqa: E402
    download,
    importer,
    keras_match,
    mapping,
    names,
    readers,
)
from jaxcnn.spec import (  # noqa: E402
    ActivationSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    FlattenSpec,
    ModelSpec,
    NormSpec,
    PoolSpec,
)

RNG = np.random.default_rng(0)


def _jaxcnn_logits(spec, arrays, x):
    model = models.build_model(spec)
    importer._assign(model, arrays)
    model.eval()
    return np.asarray(model(jnp.asarray(x)))


def _shapes(spec):
    return importer._weight_shapes(spec, importer.TrainConfig())


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


# --------------------------------------------------------------------------- torch
# A VGG-like net in torchvision's numbering, on a 12x10 input (the flattened map is
# 3x2x8, so a wrong flatten order changes the logits).
TORCH_SPEC = ModelSpec(
    (12, 10, 3),
    5,
    (
        ConvSpec(filters=6, kernel=3, padding=1, activation="relu"),
        PoolSpec(pool="max", window=2),
        ConvSpec(filters=8, kernel=3, padding=1),
        NormSpec(norm="batch", momentum=0.9, epsilon=1e-5),
        ActivationSpec("relu"),
        PoolSpec(pool="max", window=2),
        FlattenSpec(),
        DropoutSpec(rate=0.5),
        DenseSpec(units=16, activation="relu"),
        DropoutSpec(rate=0.5),
        DenseSpec(units=5),
    ),
    name="tiny_vgg",
)


def _torch_features():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    bn = features[4]
    with torch.no_grad():  # statistics far from the defaults (0 and 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return torch, nn, features


def _torch_logits(torch, net, x):
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def test_torchvision_layout_gives_torchs_logits(tmp_path):
    torch, nn, features = _torch_features()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features
            self.classifier = nn.Sequential(
                nn.Dropout(),
                nn.Linear(48, 16),
                nn.ReLU(),
                nn.Dropout(),
                nn.Linear(16, 5),
            )

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    net = Net()
    torch.save(net.state_dict(), tmp_path / "net.pth")
    tensors = readers.read_weights(tmp_path / "net.pth", "torchvision")
    assert "features.4.num_batches_tracked" in tensors  # read, then left out
    shapes_ = _shapes(TORCH_SPEC)
    entries = names.torchvision_sequential(TORCH_SPEC, shapes_)
    assert {e.source: e.path for e in entries}[
        "classifier.4.weight"
    ] == "dense_10/kernel"
    arrays = mapping.convert(
        entries, tensors, shapes_, file="net.pth", arch="tiny", source="torchvision"
    )
    x = RNG.random((3, 12, 10, 3), dtype=np.float32)
    _close(_jaxcnn_logits(TORCH_SPEC, arrays, x), _torch_logits(torch, net, x))


def test_timm_layout_gives_torchs_logits(tmp_path):
    """timm's VGG head: a conv over the whole last map, a 1x1 conv, a linear layer."""
    torch, nn, features = _torch_features()
    safetensors_torch = pytest.importorskip("safetensors.torch")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features
            self.pre_logits = nn.Module()
            self.pre_logits.fc1 = nn.Conv2d(8, 16, (3, 2))
            self.pre_logits.fc2 = nn.Conv2d(16, 16, 1)
            self.head = nn.Module()
            self.head.fc = nn.Linear(16, 5)

        def forward(self, x):
            x = torch.relu(self.pre_logits.fc1(self.features(x)))
            x = torch.relu(self.pre_logits.fc2(x))
            return self.head.fc(torch.flatten(x, 1))

    net = Net()
    spec = ModelSpec(
        (12, 10, 3),
        5,
        (
            *TORCH_SPEC.layers[:6],
            FlattenSpec(),
            DenseSpec(units=16, activation="relu"),
            DenseSpec(units=16, activation="relu"),
            DenseSpec(units=5),
        ),
    )
    path = tmp_path / "net.safetensors"
    safetensors_torch.save_file(net.state_dict(), str(path))
    tensors = readers.read_weights(path, "timm")
    shapes_ = _shapes(spec)
    entries = names.timm_vgg(spec, shapes_)
    arrays = mapping.convert(
        entries, tensors, shapes_, file=str(path), arch="tiny", source="timm"
    )
    x = RNG.random((3, 12, 10, 3), dtype=np.float32)
    _close(_jaxcnn_logits(spec, arrays, x), _torch_logits(torch, net, x))


# --------------------------------------------------------------------------- keras
KERAS_SPEC = ModelSpec(
    (12, 10, 3),
    5,
    (
        ConvSpec(filters=6, kernel=3, padding="same", activation="relu"),
        PoolSpec(pool="max", window=2),
        ConvSpec(filters=8, kernel=3, padding="same"),
        NormSpec(norm="batch", epsilon=1e-3),
        ActivationSpec("relu"),
        PoolSpec(pool="max", window=2),
        FlattenSpec(),
        DenseSpec(units=16, activation="relu"),
        DenseSpec(units=5),
    ),
)


@functools.cache
def _keras_net():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 10, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    bn = keras.layers.BatchNormalization()
    x = keras.layers.ReLU()(bn(x))
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(5)(x)
    net = keras.Model(inputs, outputs)
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights(
        [
            RNG.uniform(0.5, 1.5, 8),
            RNG.uniform(-0.5, 0.5, 8),
            RNG.uniform(-1, 1, 8),
            RNG.uniform(0.5, 2, 8),
        ]
    )
    return net


@pytest.mark.parametrize("fmt", ["keras3", "keras2"])
def test_keras_weights_give_keras_logits(tmp_path, fmt):
    """Keras 3's .weights.h5 (layers named by class) and a Keras 2 .h5 weight file
    (layers by name, the format of Keras's published application weights)."""
    import h5py

    net = _keras_net()
    if fmt == "keras3":
        path = tmp_path / "net.weights.h5"
        net.save_weights(path)
    else:
        from keras.src.legacy.saving import legacy_h5_format

        path = tmp_path / "net.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, net)
    tensors = readers.read_weights(path, "keras")
    shapes_ = _shapes(KERAS_SPEC)
    entries = keras_match.keras_entries(KERAS_SPEC, shapes_, tensors)
    arrays = mapping.convert(
        entries, tensors, shapes_, file=str(path), arch="tiny", source="keras"
    )
    x = RNG.random((3, 12, 10, 3), dtype=np.float32)
    _close(_jaxcnn_logits(KERAS_SPEC, arrays, x), np.asarray(net(x, training=False)))


# --------------------------------------------------------------------------- refusals
def _alexnet_names(skip=(), shapes=None):
    """alexnet's torchvision tensor names, each a tiny tensor (or the given shape)."""
    torch = pytest.importorskip("torch")
    spec = models.preset("alexnet")
    entries = names.torchvision_sequential(spec, _shapes(spec))
    state = {}
    for e in entries:
        if e.source in skip:
            continue
        shape = (shapes or {}).get(e.source, e.source_shape())
        state[e.source] = torch.zeros(shape if shape != "tiny" else (1,))
    return torch, state


def test_mismatched_file_is_refused_naming_the_tensor_and_both_shapes(tmp_path):
    torch, state = _alexnet_names(
        skip={"classifier.6.bias"},
        shapes={"features.0.weight": (64, 3, 3, 3), "classifier.6.weight": "tiny"},
    )
    state["fc.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        importer.import_weights(tmp_path / "bad.pth", "alexnet", tmp_path / "run")
    message = str(e.value)
    assert "'features.0.weight' has shape (64, 3, 3, 3) in the file" in message
    assert "alexnet needs (64, 3, 11, 11) (jaxcnn's conv_0/kernel (11, 11, 3, 64))" in (
        message
    )
    assert "lacks 'classifier.6.bias'" in message
    assert "no place for: 'fc.weight'" in message
    assert not (tmp_path / "run").exists()  # nothing written for a refused file


def test_cli_import_errors_exit_2(tmp_path, capsys):
    torch, state = _alexnet_names(shapes={"classifier.6.weight": (10, 4096)})
    torch.save(state, tmp_path / "ten.pth")
    cases = [
        (
            ["ten.pth", "--arch", "alexnet"],  # the README's example
            "ten.pth does not match architecture 'alexnet' in torchvision's names and "
            "layout: tensor 'classifier.6.weight' has shape (10, 4096) in the file but "
            "alexnet needs (1000, 4096) (jaxcnn's dense_13/kernel (4096, 1000))",
        ),
        (["ten.pth", "--arch", "lenet5"], "no torchvision layout for architecture"),
        (["ten.pth", "--arch", "nope"], "unknown architecture 'nope'"),
        (["ten.pth", "--arch", "alexnet", "--pretrained", "torchvision"], "one of"),
        (["--arch", "alexnet"], "either a weight FILE or --pretrained"),
        (["ten.weights", "--arch", "alexnet"], "cannot tell which framework"),
        (["missing.pth", "--arch", "alexnet"], "missing.pth does not exist"),
        (["--arch", "lenet5", "--pretrained", "torchvision"], "no published"),
    ]
    for args, expected in cases:
        code = cli.main(
            ["import", *[str(tmp_path / a) if "." in a else a for a in args]]
            + ["--workdir", str(tmp_path / "run")]
        )
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert expected in err, (args, err)
        assert "Traceback" not in err


def test_pickled_code_is_never_run(tmp_path):
    """A .pth whose pickle would call a function is refused by the weights-only loader."""
    pytest.importorskip("torch")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"features.0.weight": Payload()}))
    with pytest.raises(CheckpointError, match="never code from a pickle"):
        readers.read_weights(path, "torchvision")
    assert not marker.exists()


def test_missing_library_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(JaxcnnError, match=r"pip install 'jaxcnn\[interop\]'"):
        readers.read_weights(tmp_path / "w.pth", "torchvision")


def test_not_a_keras_file_is_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(CheckpointError, match="not a Keras weights file"):
        readers.read_weights(tmp_path / "x.h5", "keras")
    (tmp_path / "y.h5").write_text("not hdf5")
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        readers.read_weights(tmp_path / "y.h5", "keras")


# --------------------------------------------------------------------------- download
class _Server:
    """A loopback HTTP server in a thread, serving `files` {path: bytes}; a path in
    `short` announces more bytes than it sends, then closes the connection."""

    def __init__(self, files, short=()):
        outer = self
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                length = len(body) * 2 if self.path in short else len(body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server():
    body = RNG.bytes(3 * (1 << 20) + 17)  # several read chunks
    srv = _Server({"/w-good.pth": body, "/w-short.pth": body}, short={"/w-short.pth"})
    yield srv, body
    srv.close()


def _publish(monkeypatch, url, digest, algorithm="sha256"):
    entry = download.Published(url, algorithm, digest)
    monkeypatch.setitem(download.PUBLISHED, ("alexnet", "torchvision"), entry)
    return entry


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_checks_the_hash_caches_and_reuses(server, tmp_path, monkeypatch):
    srv, body = server
    sha = hashlib.sha256(body).hexdigest()
    _publish(monkeypatch, srv.url("/w-good.pth"), sha[:8])
    path = download.pretrained_file("alexnet", "torchvision", cache=tmp_path)
    assert path == tmp_path / "w-good.pth" and path.read_bytes() == body
    assert _leftovers(tmp_path) == ["w-good.pth"]  # no temporary file left
    srv.close()  # the cached file is used without the network
    assert download.pretrained_file("alexnet", "torchvision", cache=tmp_path) == path
    assert srv.hits == 1
    path.write_bytes(body[:-1] + b"!")  # damaged in the cache: fetched again, and
    with pytest.raises(JaxcnnError, match="cannot download"):  # the server is gone
        download.pretrained_file("alexnet", "torchvision", cache=tmp_path)
    assert _leftovers(tmp_path) == []  # the damaged file is not kept for use


def test_download_with_a_wrong_hash_keeps_nothing(server, tmp_path, monkeypatch):
    srv, body = server
    _publish(monkeypatch, srv.url("/w-good.pth"), "00000000")
    with pytest.raises(CheckpointError) as e:
        download.pretrained_file("alexnet", "torchvision", cache=tmp_path)
    assert "it is not the published file" in str(e.value)
    assert hashlib.sha256(body).hexdigest() in str(e.value)
    assert _leftovers(tmp_path) == []


def test_truncated_download_keeps_nothing(server, tmp_path, monkeypatch):
    srv, body = server
    _publish(monkeypatch, srv.url("/w-short.pth"), hashlib.sha256(body).hexdigest()[:8])
    with pytest.raises(CheckpointError, match="broke off|ended after"):
        download.pretrained_file("alexnet", "torchvision", cache=tmp_path)
    assert _leftovers(tmp_path) == []


def test_without_network_the_error_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/alexnet-owt-7be5be79.pth"
    _publish(monkeypatch, url, "7be5be79")
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    code = cli.main(
        ["import", "--arch", "alexnet", "--pretrained", "torchvision"]
        + ["--workdir", str(tmp_path / "run")]
    )
    assert code == 2
    assert not (tmp_path / "run" / "config.json").exists()
    assert _leftovers(tmp_path / "cache") == []


def test_offline_message(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/alexnet-owt-7be5be79.pth"
    _publish(monkeypatch, url, "7be5be79")
    code = cli.main(
        ["import", "--arch", "alexnet", "--pretrained", "torchvision"]
        + ["--workdir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"cannot download {url}" in err
    assert f"put it at {tmp_path / 'c' / 'alexnet-owt-7be5be79.pth'}" in err
    assert "sha256 starts with 7be5be79" in err


def test_published_files_are_torchvisions_and_keras():
    """The addresses and hashes are the sources' own (torchvision's weight enums)."""
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models
    for arch, weights in [
        ("vgg16", tv.VGG16_Weights.IMAGENET1K_V1),
        ("vgg16_bn", tv.VGG16_BN_Weights.IMAGENET1K_V1),
        ("alexnet", tv.AlexNet_Weights.IMAGENET1K_V1),
        ("resnet18", tv.ResNet18_Weights.IMAGENET1K_V1),
        ("resnet34", tv.ResNet34_Weights.IMAGENET1K_V1),
        ("resnet50", tv.ResNet50_Weights.IMAGENET1K_V1),
        ("squeezenet1_1", tv.SqueezeNet1_1_Weights.IMAGENET1K_V1),
        ("mobilenet_v2", tv.MobileNet_V2_Weights.IMAGENET1K_V1),
        ("googlenet", tv.GoogLeNet_Weights.IMAGENET1K_V1),
        ("densenet121", tv.DenseNet121_Weights.IMAGENET1K_V1),
        ("densenet201", tv.DenseNet201_Weights.IMAGENET1K_V1),
        ("inception_v3", tv.Inception_V3_Weights.IMAGENET1K_V1),
    ]:
        entry = download.PUBLISHED[arch, "torchvision"]
        assert entry.url == weights.url
        assert entry.filename.rsplit("-", 1)[1] == f"{entry.digest}.pth"
    from keras.src.applications import vgg16

    assert download.PUBLISHED["vgg16", "keras"].url == vgg16.WEIGHTS_PATH
    from keras.src.applications import densenet

    assert download.PUBLISHED["densenet121", "keras"].url == (
        densenet.DENSENET121_WEIGHT_PATH
    )
    assert download.PUBLISHED["densenet201", "keras"].url == (
        densenet.DENSENET201_WEIGHT_PATH
    )
    from keras.src.applications import resnet

    entry = download.PUBLISHED["resnet50", "keras"]
    assert entry.url == (
        f"{resnet.BASE_WEIGHTS_PATH}resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    )
    assert (entry.algorithm, entry.digest) == (
        "md5",
        resnet.WEIGHTS_HASHES["resnet50"][0],
    )
    from keras.src.applications import inception_v3

    entry = download.PUBLISHED["inception_v3", "keras"]
    assert entry.url == inception_v3.WEIGHTS_PATH
    source = pathlib.Path(inception_v3.__file__).read_text()
    assert entry.algorithm == "md5" and f'file_hash="{entry.digest}"' in source
    # Keras loads its MobileNetV2 files without a hash: none to check one against
    from keras.src.applications import mobilenet_v2

    assert "file_hash" not in pathlib.Path(mobilenet_v2.__file__).read_text()
    assert ("mobilenet_v2", "keras") not in download.PUBLISHED


def test_imagenet_class_names_are_torchvisions():
    from jaxcnn.interop import imagenet

    meta = pytest.importorskip("torchvision.models._meta")
    assert imagenet.class_names() == tuple(meta._IMAGENET_CATEGORIES)


@pytest.mark.parametrize("size", [(300, 400), (500, 380), (180, 260)])
def test_predict_resize_and_crop_is_torchvisions(size):
    """An imported torchvision run's preprocessing against torchvision's own transform
    (Resize(256) + CenterCrop(224) on a PIL image): equal up to PIL's rounding to 8 bits."""
    pytest.importorskip("torchvision")
    from PIL import Image
    from torchvision.transforms import v2

    from jaxcnn import data
    from jaxcnn.interop import imagenet

    noise = RNG.integers(0, 256, (30, 40, 3), np.uint8)
    image = Image.fromarray(noise).resize((size[1], size[0]), Image.BICUBIC)
    transform = v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.PILToTensor()])
    want = transform(image).numpy().transpose(1, 2, 0) / 255
    record = imagenet.PREPROCESSING["torchvision"]
    got = data.prepare(np.asarray(image), (224, 224, 3), record)
    assert got.shape == (224, 224, 3)
    assert np.abs(got - want).max() < 2 / 255
    normalised = data.normalize(got, record)
    np.testing.assert_allclose(
        normalised[..., 0], (got[..., 0] - 0.485) / 0.229, rtol=1e-6, atol=1e-6
    )


def test_keras_preprocessing_is_caffe_style():
    """keras.applications.vgg16.preprocess_input: RGB -> BGR, minus the BGR means."""
    from keras.applications import vgg16

    from jaxcnn import data
    from jaxcnn.interop import imagenet

    pixels = RNG.integers(0, 256, (2, 5, 4, 3)).astype(np.float32)
    want = vgg16.preprocess_input(pixels.copy())
    got = data.normalize(pixels / 255, imagenet.PREPROCESSING["keras"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    "arch, channels, atol",
    [
        ("resnet50", "bgr", 1e-3),
        ("inception_v3", "rgb", 1e-5),
        ("mobilenet_v2", "rgb", 1e-5),
    ],
)
def test_keras_preprocessing_is_keras_applications_own(arch, channels, atol):
    """keras.applications' preprocess_input: "caffe" mode for ResNet50 (RGB -> BGR,
    minus the BGR means), "tf" mode for InceptionV3 and MobileNetV2 (x / 127.5 - 1,
    RGB); no resize of its own."""
    import importlib

    from jaxcnn import data
    from jaxcnn.interop import imagenet

    keras_module = importlib.import_module(f"keras.applications.{arch}")
    pixels = RNG.integers(0, 256, (2, 5, 4, 3)).astype(np.float32)
    want = keras_module.preprocess_input(pixels.copy())
    prep = imagenet.preprocessing(arch, "keras")
    assert prep["resize"] is None and prep["channels"] == channels
    got = data.normalize(pixels / 255, prep)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)


def test_keras_depthwise_kernels_are_their_own_kind():
    """Keras 3 numbers DepthwiseConv2D layers apart from Conv2D's, so depthwise
    kernels are matched among themselves, [kh, kw, C, 1] becoming [kh, kw, 1, C]."""
    from jaxcnn import models
    from jaxcnn.interop import keras_match, mapping
    from jaxcnn.interop.names import Entry

    assert keras_match._is_depthwise("layers/depthwise_conv2d_3/vars/0")
    assert not keras_match._is_depthwise("layers/conv2d_3/vars/0")
    assert keras_match._is_depthwise("block_1_depthwise/block_1_depthwise/kernel")
    assert keras_match._is_depthwise("d/d/depthwise_kernel:0")
    assert not keras_match._is_depthwise("block_1_expand/block_1_expand/kernel")
    spec = models.preset(
        "mobilenet_v2",
        input_shape=(32, 32, 3),
        **mapping.PRESET_ARGS["mobilenet_v2", "keras"],
    )
    paths = keras_match._depthwise_paths(spec.layers)
    assert len(paths) == 17 and "conv_3" in paths and "residual_16/conv_3" in paths
    kernel = RNG.normal(size=(3, 3, 4, 1)).astype(np.float32)
    entry = Entry("k", "conv_3/kernel", "depthwise", (3, 3, 1, 4))
    assert entry.source_shape() == (3, 3, 4, 1)
    np.testing.assert_array_equal(entry.convert(kernel)[:, :, 0, 2], kernel[:, :, 2, 0])


def test_keras_inception_v3_layers_are_matched_in_keras_order():
    """Keras's functional InceptionV3 lists a mixed9/mixed10 block's convs farthest
    from the join first: the nested splits' 1x3 and 3x1 convs come before the 1x1
    branch's conv and the pool branch's."""
    from jaxcnn import models
    from jaxcnn.interop import importer, keras_match, mapping
    from jaxcnn.spec import TrainConfig

    spec = models.preset(
        "inception_v3",
        input_shape=(75, 75, 3),
        **mapping.PRESET_ARGS["inception_v3", "keras"],
    )
    shapes_ = importer._weight_shapes(spec, TrainConfig())
    units = keras_match._keras_units(spec.layers, "", shapes_)
    convs = [u.path for u in units if u.kind == "conv"]
    assert len(convs) == 94 and len(units) == 94 + 94 + 1
    assert convs[-9:] == [
        "branches_27/b2/conv_0",
        "branches_27/b1/conv_0",
        "branches_27/b2/conv_3",
        "branches_27/b1/branches_3/b0/conv_0",
        "branches_27/b1/branches_3/b1/conv_0",
        "branches_27/b2/branches_6/b0/conv_0",
        "branches_27/b2/branches_6/b1/conv_0",
        "branches_27/b0/conv_0",
        "branches_27/b3/conv_1",
    ]
    assert "branches_27/b0/norm_1/scale" not in shapes_


def test_keras_resnet50_layers_are_matched_in_keras_order():
    """Keras's functional ResNet50 lists a projection block's layers 1_conv, 1_bn,
    2_conv, 2_bn, 0_conv (the shortcut), 3_conv, 0_bn, 3_bn; an identity block's in
    its own order."""
    from jaxcnn import models
    from jaxcnn.interop import importer, keras_match, mapping
    from jaxcnn.spec import TrainConfig

    spec = models.preset(
        "resnet50", input_shape=(64, 64, 3), **mapping.PRESET_ARGS["resnet50", "keras"]
    )
    shapes_ = importer._weight_shapes(spec, TrainConfig())
    units = [u.path for u in keras_match._keras_units(spec.layers, "", shapes_)]
    assert units[:12] == [
        "conv_0",
        "norm_1",
        "branches_4/b1/conv_0",
        "branches_4/b1/norm_1",
        "branches_4/b1/conv_3",
        "branches_4/b1/norm_4",
        "branches_4/b0/conv_0",
        "branches_4/b1/conv_6",
        "branches_4/b0/norm_1",
        "branches_4/b1/norm_7",
        "residual_5/conv_0",
        "residual_5/norm_1",
    ]
    assert len(units) == 53 + 53 + 1  # convs, batch norms, the dense layer


@pytest.mark.parametrize(
    "name, total, macs",
    [
        ("vgg16", "138,357,544", "15,470,264,320"),
        ("vgg16_bn", "138,374,440", "15,470,264,320"),
        ("alexnet", "61,100,840", "714,188,480"),
    ],
)
def test_summary_shows_the_imagenet_presets(name, total, macs, capsys):
    """Published MACs: VGG-16 15.47 G, AlexNet (torchvision's) 0.71 G per 224x224 image."""
    assert cli.main(["summary", name]) == 0
    out = capsys.readouterr().out
    assert f"Total params: {total}" in out
    assert f"Forward MACs per example: {macs}" in out
