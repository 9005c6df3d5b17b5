"""The ImageNet architecture presets: torchvision's parameter counts and shapes, the
real module against the static summary, ceil-mode pooling as explicit padding."""

import contextlib
import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn import architectures, cli, models, shapes
from jaxcnn import kernels as ops
from jaxcnn.errors import SpecError

# torchvision's counts (weights.meta["num_params"]); GoogLeNet and Inception v3 without
# their auxiliary heads, which only train (Inception v3's published 27,161,264 includes
# its head's 3,326,696)
PUBLISHED = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "squeezenet1_1": 1_235_496,
    "mobilenet_v2": 3_504_872,
    "googlenet": 6_624_904,
    "densenet121": 7_978_856,
    "densenet201": 20_013_928,
    "inception_v3": 23_834_568,
}
# the feature map each network pools globally at its input size (torchvision's too)
LAST_MAP = {
    "resnet18": (7, 7, 512),
    "resnet34": (7, 7, 512),
    "resnet50": (7, 7, 2048),
    "squeezenet1_1": (13, 13, 1000),
    "mobilenet_v2": (7, 7, 1280),
    "googlenet": (7, 7, 1024),
    "densenet121": (7, 7, 1024),
    "densenet201": (7, 7, 1920),
    "inception_v3": (8, 8, 2048),  # at 299x299
}


def test_every_architecture_has_a_published_count():
    assert set(PUBLISHED) == set(architectures.PRESETS)
    assert set(architectures.PRESETS) <= set(models.PRESETS)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_equal_torchvision(name):
    summary = shapes.infer(models.preset(name))
    assert summary.total_params == PUBLISHED[name]
    assert summary.output_shape == (1000,)
    pooled = next(r for r in summary.layers if r.spec.type == "global_pool")
    assert pooled.input_shape == LAST_MAP[name]


def _torchvision_model(name):
    torchvision = pytest.importorskip("torchvision")
    without_aux = {"aux_logits": False, "init_weights": False}
    kwargs = without_aux if name in ("googlenet", "inception_v3") else {}
    return getattr(torchvision.models, name)(weights=None, **kwargs).eval()


@pytest.mark.parametrize(
    "name",
    [  # torchvision initialises DenseNets slowly (~10 s)
        pytest.param(n, marks=pytest.mark.slow)
        if n in ("densenet121", "densenet201", "inception_v3")
        else n
        for n in sorted(PUBLISHED)
    ],
)
def test_counts_and_pooled_map_equal_the_installed_torchvision(name):
    torch = pytest.importorskip("torch")
    model = _torchvision_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    # the map torchvision pools globally, from its own forward pass: the output of
    # the module holding it, or else the input of its avgpool
    holder = {
        "squeezenet1_1": lambda m: m.classifier[2],  # the ReLU after the class conv
        "mobilenet_v2": lambda m: m.features,
        "densenet121": lambda m: m.features,
        "densenet201": lambda m: m.features,
    }.get(name)
    seen = {}

    def pooled_input(module, inputs):
        seen["map"] = inputs[0]

    def output(module, inputs, out):
        seen["map"] = out

    if holder is None:
        model.avgpool.register_forward_pre_hook(pooled_input)
    else:
        holder(model).register_forward_hook(output)
    h, w, c = models.preset(name).input_shape
    with torch.no_grad():
        model(torch.zeros(1, c, h, w))
    n, c, h, w = seen["map"].shape
    assert (h, w, c) == LAST_MAP[name]


@pytest.mark.parametrize("size", range(5, 40))
@pytest.mark.parametrize("window", [2, 3])
def test_ceil_mode_pool_equals_pytorchs(size, window):
    torch = pytest.importorskip("torch")
    pool, out = architectures._ceil_pool(size, window, 2)
    x = np.random.default_rng(size).normal(size=(1, size, size, 2)).astype(np.float32)
    want = torch.nn.functional.max_pool2d(
        torch.from_numpy(x).permute(0, 3, 1, 2), window, 2, ceil_mode=True
    ).permute(0, 2, 3, 1)
    got = ops.pool2d(
        jnp.asarray(x),
        kind="max",
        window=pool.window,
        stride=pool.stride,
        padding=pool.padding,
        impl="xla",
    )
    assert got.shape[1] == out == want.shape[1]
    np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_summary_prints_resnet50s_count():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["summary", "resnet50"]) == 0
    assert "Trainable params: 25,557,032" in out.getvalue()
    # the v1.5 bottleneck: stride 2 on the 3x3 conv of the first block of stage 2
    summary = shapes.infer(models.preset("resnet50"))
    first = summary.row("7")  # stem conv, norm, relu, pool; 3 blocks of stage 1
    assert first.output_shape == (28, 28, 512)
    assert summary.row("7.0").spec.stride == (1, 1)
    assert summary.row("7.3").spec.stride == (2, 2)
    assert first.projection.stride == (2, 2) and not first.projection.use_bias
    assert first.params == 256 * 512 + 2 * 512  # 1x1 conv without bias, batch norm


KERAS_RESNET50 = {"stride_on": "1x1", "conv_bias": True, "epsilon": 1.001e-5}


def test_resnet50_at_keras_configuration_counts_keras_parameters():
    """keras.applications.ResNet50().count_params() (batch-norm statistics included):
    25,636,712. ResNet v1: stride 2 on the first 1x1 conv; convs and the projection
    with biases; batch norm's epsilon 1.001e-5 everywhere."""
    summary = shapes.infer(models.preset("resnet50", **KERAS_RESNET50))
    assert summary.total_params + summary.total_non_trainable_params == 25_636_712
    assert summary.output_shape == (1000,)
    first = summary.row("7")  # stem conv, norm, relu, pool; 3 blocks of stage 1
    assert first.output_shape == (28, 28, 512)
    shortcut, body = first.spec.branches
    assert [c.stride for c in body if c.type == "conv"] == [(2, 2), (1, 1), (1, 1)]
    assert shortcut[0].stride == (2, 2) and shortcut[0].use_bias
    convs = [c for b in first.spec.branches for c in b if c.type == "conv"]
    assert all(c.use_bias for c in convs)
    norms = [n for b in first.spec.branches for n in b if n.type == "norm"]
    assert all(n.epsilon == 1.001e-5 for n in norms)


def test_resnet50_defaults_are_torchvisions():
    assert models.preset("resnet50") == models.preset(
        "resnet50", stride_on="3x3", conv_bias=False, epsilon=1e-5
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ({"stride_on": "2x2"}, 'argument \'stride_on\' must be "1x1" | "3x3"'),
        ({"conv_bias": "maybe"}, "argument 'conv_bias' must be"),
        ({"epsilon": 0.0}, "epsilon"),
    ],
)
def test_resnet50_bad_arguments_are_spec_errors(args, message):
    with pytest.raises(SpecError, match=message):
        models.preset("resnet50", **args)


def test_resnet50_stride_on_is_checked_when_called_directly():
    with pytest.raises(SpecError, match="'stride_on' must be one of '1x1', '3x3'"):
        architectures.resnet50(stride_on="2x2")


KERAS_MOBILENET_V2 = {"padding": "same", "epsilon": 1e-3, "momentum": 0.999}


def test_mobilenet_v2_at_keras_configuration_counts_keras_parameters():
    """keras.applications.MobileNetV2().count_params() (alpha 1.0, batch-norm
    statistics included): 3,538,984. Its stride-2 3x3 convs pad the bottom and right
    only at even sizes (TF's "same", Keras's ZeroPadding2D(correct_pad)); its batch
    norms are epsilon 1e-3, momentum 0.999."""
    spec = models.preset("mobilenet_v2", **KERAS_MOBILENET_V2)
    summary = shapes.infer(spec)
    assert summary.total_params + summary.total_non_trainable_params == 3_538_984
    assert summary.output_shape == (1000,)
    torchvision = shapes.infer(models.preset("mobilenet_v2"))
    assert [r.output_shape for r in summary.layers] == [
        r.output_shape for r in torchvision.layers
    ]
    convs = [r.spec for r in summary.layers if r.spec.type == "conv"]
    assert all(c.padding == "same" for c in convs if c.kernel == (3, 3))
    assert shapes.resolve_padding("same", (224, 224), (3, 3), (2, 2), (1, 1)) == (
        (0, 1),
        (0, 1),
    )
    norms = [r.spec for r in summary.layers if r.spec.type == "norm"]
    assert len(norms) == 52
    assert all((n.epsilon, n.momentum) == (1e-3, 0.999) for n in norms)


def test_mobilenet_v2_defaults_are_torchvisions():
    assert models.preset("mobilenet_v2") == models.preset(
        "mobilenet_v2", padding="symmetric", epsilon=1e-5, momentum=0.99
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ({"padding": "valid"}, 'argument \'padding\' must be "symmetric" | "same"'),
        ({"epsilon": 0.0}, "epsilon"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_mobilenet_v2_bad_arguments_are_spec_errors(args, message):
    with pytest.raises(SpecError, match=message):
        models.preset("mobilenet_v2", **args)


def test_mobilenet_v2_padding_is_checked_when_called_directly():
    with pytest.raises(SpecError, match="'padding' must be one of 'symmetric', 'same'"):
        architectures.mobilenet_v2(padding="valid")


KERAS_INCEPTION_V3 = {"bn_scale": False, "count_padding": False}


def test_inception_v3_at_keras_configuration_counts_keras_parameters():
    """keras.applications.InceptionV3().count_params() (batch-norm statistics
    included): 23,851,784. Its batch norms have no scale (gamma) and its average pools
    (3x3, stride 1, "same") leave the padding out of the mean; otherwise it is
    torchvision's network without the auxiliary head."""
    spec = models.preset("inception_v3", **KERAS_INCEPTION_V3)
    summary = shapes.infer(spec)
    assert summary.total_params + summary.total_non_trainable_params == 23_851_784
    assert summary.total_non_trainable_params == 34_432  # 94 batch norms' statistics
    assert summary.output_shape == (1000,)
    torchvision = shapes.infer(models.preset("inception_v3"))
    assert torchvision.total_params - summary.total_params == 34_432 // 2  # gammas
    assert [r.output_shape for r in summary.layers if "." not in r.index] == [
        r.output_shape for r in torchvision.layers if "." not in r.index
    ]
    norms = [r.spec for r in summary.layers if r.spec.type == "norm"]
    assert len(norms) == 94 and not any(n.scale for n in norms)
    assert all(n.epsilon == 1e-3 for n in norms)
    pools = [r.spec for r in summary.layers if r.spec.type == "pool"]
    averages = [p for p in pools if p.pool == "avg"]
    assert len(averages) == 9 and not any(p.count_padding for p in averages)


def test_inception_v3_defaults_are_torchvisions():
    assert models.preset("inception_v3") == models.preset(
        "inception_v3", bn_scale=True, count_padding=True
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ({"bn_scale": "no"}, "argument 'bn_scale' must be true/false"),
        ({"count_padding": 2}, "argument 'count_padding' must be true/false"),
        (
            {"bn_skale": False},
            "unknown argument 'bn_skale'; valid arguments are input_shape, "
            "num_classes, bn_scale, count_padding",
        ),
    ],
)
def test_inception_v3_bad_arguments_are_spec_errors(args, message):
    with pytest.raises(SpecError, match=message):
        models.preset("inception_v3", **args)


@pytest.mark.parametrize(
    "name",
    [
        n
        if n in ("resnet18", "squeezenet1_1")
        else pytest.param(n, marks=pytest.mark.slow)
        for n in sorted(PUBLISHED)
    ],
)
def test_the_real_module_agrees_with_the_summary(name):
    """Built abstractly (nothing compiled): the parameter tree and the traced output
    shape are the summary's."""
    spec = models.preset(name)
    model = nnx.eval_shape(lambda: models.build_model(spec))
    counted = sum(math.prod(s) for s in models.param_paths(model).values())
    assert counted == PUBLISHED[name]
    out = jax.eval_shape(
        lambda m, x: m(x),
        model,
        jax.ShapeDtypeStruct((2, *spec.input_shape), jnp.float32),
    )
    assert out.shape == (2, 1000)


@pytest.mark.slow
# one of each kind of block: residual with projection norm, fire (concat), depthwise
# inverted residual, four-branch inception with a pool branch and ceil-mode pools
# (DenseNet and Inception v3 add no kind and take minutes to compile on 2 cores)
@pytest.mark.parametrize(
    "name", ["resnet18", "squeezenet1_1", "mobilenet_v2", "googlenet"]
)
def test_architectures_run_small(name):
    """Each network built for 64x64 inputs and 10 classes runs one training-mode
    forward and backward pass (one compile): finite logits and gradients."""
    spec = models.preset(name, input_shape=(64, 64, 3), num_classes=10)
    model = models.build_model(spec)
    x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))

    @nnx.jit
    def step(model, x):
        def loss(model):
            logits = model(x)
            return jnp.mean(logits**2), logits

        grads, logits = nnx.grad(loss, has_aux=True)(model)
        return logits, nnx.state(grads, nnx.Param)

    logits, grads = step(model, x)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    flat = nnx.to_flat_state(grads)
    assert len(flat) == len(models.param_paths(model))
    assert all(bool(jnp.all(jnp.isfinite(g))) for _, g in flat)


def _modules_in_order(module):
    """jaxcnn's conv, batch-norm and dense modules in the order torchvision registers
    its own: a block's body, then its projection; branches in order."""
    from jaxcnn import layers

    out = []
    for _, sub in module.named_layers():
        if isinstance(sub, layers.Residual):
            out += _modules_in_order(sub)
            out += [m for m in (sub.proj, sub.proj_norm) if m is not None]
        elif isinstance(sub, layers.Branches):
            for b in sub.branch_names:
                out += _modules_in_order(getattr(sub, b))
        elif isinstance(sub, layers.Conv | layers.Dense | nnx.BatchNorm):
            out.append(sub)
    return out


def _copy_torchvision_weights(source, model, torch):
    """Copies `source`'s weights (and random batch-norm statistics) into `model`,
    module by module in registration order."""
    from jaxcnn import layers

    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)
    theirs = [m for m in source.modules() if isinstance(m, kinds)]
    ours = _modules_in_order(model)
    assert len(theirs) == len(ours)
    gen = torch.Generator().manual_seed(0)
    for t, j in zip(theirs, ours, strict=True):
        if isinstance(t, torch.nn.BatchNorm2d):
            assert isinstance(j, nnx.BatchNorm) and j.epsilon == t.eps
            with torch.no_grad():  # statistics that matter
                t.running_mean.normal_(0, 0.1, generator=gen)
                t.running_var.uniform_(0.5, 1.5, generator=gen)
                t.weight.uniform_(0.5, 1.5, generator=gen)
                t.bias.normal_(0, 0.1, generator=gen)
            for ours_name, theirs_name in (
                ("scale", "weight"),
                ("bias", "bias"),
                ("mean", "running_mean"),
                ("var", "running_var"),
            ):
                getattr(j, ours_name).set_value(
                    jnp.asarray(getattr(t, theirs_name).detach().numpy())
                )
            continue
        weight = t.weight.detach().numpy()
        if isinstance(t, torch.nn.Conv2d):
            assert isinstance(j, layers.Conv)
            weight = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        else:
            assert isinstance(j, layers.Dense)
            weight = weight.T
        assert j.kernel.shape == weight.shape
        j.kernel.set_value(jnp.asarray(weight))
        if t.bias is not None:
            j.bias.set_value(jnp.asarray(t.bias.detach().numpy()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, size",
    [
        ("resnet50", 64),  # bottleneck v1.5, projection with batch norm
        ("squeezenet1_1", 67),  # fire modules; ceil-mode pools at odd sizes
        ("mobilenet_v2", 64),  # depthwise convs, relu6, linear bottlenecks
        ("googlenet", 67),  # inception modules with pool branches, ceil-mode pools
        ("inception_v3", 75),  # nested splits, avg pools counting padding
        ("densenet121", 64),  # concatenation with the identity branch
    ],
)
def test_logits_equal_torchvision_with_its_weights(name, size):
    """The preset computes what torchvision's network computes, given its weights:
    eval mode, random weights and batch-norm statistics, at a small input size."""
    torch = pytest.importorskip("torch")
    source = _torchvision_model(name)
    model = models.build_model(
        models.preset(name, input_shape=(size, size, 3)), kernels="xla"
    )
    _copy_torchvision_weights(source, model, torch)
    model.eval()
    source.eval()
    x = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        want = source(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x)))
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
