"""Branch blocks, residual projections with batch norm, relu6, explicit asymmetric
padding and depthwise convs: static inference, the real module, kernels."""

import contextlib
import io
import math
import pathlib
import re
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn import cli, layers, models, shapes
from jaxcnn import kernels as ops
from jaxcnn.kernels import plan as plan_lib
from jaxcnn.spec import BranchesSpec, ConvSpec, ModelSpec, layer_from_dict

HEAD = [{"type": "global_pool", "pool": "avg"}, {"type": "dense", "units": 3}]

INCEPTION_TOML = """
input_shape = [12, 12, 8]
num_classes = 3
layers = [
  { type = "branches", join = "concat", branches = [
      [ { type = "conv", filters = 4, kernel = 1, activation = "relu" } ],
      [ { type = "conv", filters = 2, kernel = 1, activation = "relu" },
        { type = "conv", filters = 6, kernel = 3, padding = 1, activation = "relu" } ],
      [ { type = "conv", filters = 2, kernel = 1, activation = "relu" },
        { type = "conv", filters = 3, kernel = 5, padding = 2, activation = "relu" } ],
      [ { type = "pool", pool = "max", window = 3, stride = 1, padding = 1 },
        { type = "conv", filters = 5, kernel = 1, activation = "relu" } ],
  ] },
  { type = "global_pool", pool = "avg" },
  { type = "dense", units = 3 },
]
"""


def _abstract(spec):
    """The model built abstractly (shapes only, nothing compiled)."""
    return nnx.eval_shape(lambda: models.build_model(spec))


def _param_count(model) -> int:
    return sum(math.prod(s) for s in models.param_paths(model).values())


def _spec(layers, input_shape=(12, 12, 8)):
    return ModelSpec(input_shape, 3, [*layers, *HEAD])


# --------------------------------------------------------------------------- branches
def test_inception_block_shapes_params_flops_and_receptive_field():
    spec = ModelSpec.from_dict(tomllib.loads(INCEPTION_TOML))
    summary = shapes.infer(spec)
    block = summary.row("0")
    assert block.output_shape == (12, 12, 4 + 6 + 3 + 5)
    assert block.params == 0 and block.flops == 0  # concatenation costs nothing
    # the 5x5 branch sees 5x5 pixels, the others less: the block sees the largest
    assert block.receptive_field == (5, 5)
    assert summary.row("0.b2.1").receptive_field == (5, 5)
    assert summary.row("0.b3.0").receptive_field == (3, 3)
    convs = {
        "0.b0.0": (1 * 8 + 1) * 4,
        "0.b1.0": (8 + 1) * 2,
        "0.b1.1": (9 * 2 + 1) * 6,
        "0.b2.0": (8 + 1) * 2,
        "0.b2.1": (25 * 2 + 1) * 3,
        "0.b3.1": (8 + 1) * 5,
    }
    for index, params in convs.items():
        assert summary.row(index).params == params, index
    assert summary.total_params == sum(convs.values()) + (18 + 1) * 3
    assert summary.row("0.b2.1").name == "branches_0/b2/conv_1"


def test_branch_parameter_paths_and_counts_match_the_real_module():
    spec = ModelSpec.from_dict(tomllib.loads(INCEPTION_TOML))
    model = _abstract(spec)
    paths = models.param_paths(model)
    assert paths["branches_0/b1/conv_1/kernel"] == (3, 3, 2, 6)
    assert paths["branches_0/b3/conv_1/bias"] == (5,)
    assert not any("pool" in p for p in paths)
    assert _param_count(model) == shapes.infer(spec).total_params
    out = jax.eval_shape(
        lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 12, 12, 8), jnp.float32)
    )
    assert out.shape == (2, 3)
    # the block's own output: the channels of every branch, in order
    features = jax.eval_shape(
        lambda m, x: m.features(x, ["branches_0"])["branches_0"],
        model,
        jax.ShapeDtypeStruct((2, 12, 12, 8), jnp.float32),
    )
    assert features.shape == (2, 12, 12, 18)


def test_concat_stacks_branch_outputs_in_order_and_empty_branch_is_identity():
    block = BranchesSpec(
        branches=(
            (),
            (ConvSpec(filters=2, kernel=1, use_bias=False),),
        )
    )
    spec = _spec([block], input_shape=(4, 4, 3))
    model = models.build_model(spec)
    model.eval()
    conv = model.branches_0.b1.conv_0
    conv.kernel.set_value(jnp.ones((1, 1, 3, 2)))
    x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    y = model.features(x, ["branches_0"])["branches_0"]
    np.testing.assert_array_equal(np.asarray(y[..., :3]), np.asarray(x))
    summed = np.asarray(x).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(y[..., 3:]), np.repeat(summed, 2, -1), 1e-6)


def test_add_join_sums_and_applies_its_activation():
    block = layer_from_dict(
        {
            "type": "branches",
            "join": "add",
            "activation": "relu",
            "branches": [[{"type": "activation", "activation": "tanh"}], []],
        }
    )
    spec = _spec([block], input_shape=(3, 3, 2))
    summary = shapes.infer(spec)
    # one add and one ReLU per element; the tanh its own row
    assert summary.row("0").flops == 2 * 3 * 3 * 2
    model = models.build_model(spec)
    x = jax.random.normal(jax.random.key(1), (1, 3, 3, 2))
    y = model.features(x, ["branches_0"])["branches_0"]
    np.testing.assert_allclose(
        np.asarray(y), np.maximum(np.tanh(np.asarray(x)) + np.asarray(x), 0), 1e-6
    )


def test_branch_receptive_field_is_the_largest_and_jump_follows_strides():
    block = BranchesSpec(
        branches=(
            (ConvSpec(filters=2, kernel=3, stride=2, padding=1),),
            (ConvSpec(filters=2, kernel=7, stride=2, padding=3),),
        )
    )
    summary = shapes.infer(_spec([ConvSpec(filters=4, kernel=3, padding=1), block]))
    row = summary.row("1")
    assert row.output_shape == (6, 6, 4)
    # 3 after the first conv, then a 7-wide kernel at jump 1: 3 + 6 = 9
    assert row.receptive_field == (9, 9) and row.jump == (2, 2)


def test_branches_nest_inside_residual_blocks():
    spec = _spec(
        [
            {
                "type": "residual",
                "layers": [
                    {
                        "type": "branches",
                        "branches": [
                            [{"type": "conv", "filters": 4, "kernel": 1}],
                            [{"type": "conv", "filters": 6, "kernel": 3, "padding": 1}],
                        ],
                    }
                ],
            }
        ]
    )
    summary = shapes.infer(spec)
    assert summary.row("0.0.b1.0").name == "residual_0/branches_0/b1/conv_0"
    model = _abstract(spec)
    assert "residual_0/branches_0/b1/conv_0/kernel" in models.param_paths(model)
    # 4 + 6 channels from 8: the skip path projects
    assert models.param_paths(model)["residual_0/proj/kernel"] == (1, 1, 8, 10)
    assert _param_count(model) == summary.total_params


def test_branches_nest_inside_branches():
    """Inception v3's split: a branch ending in 1x3 || 3x1 convs, concatenated."""
    split = {
        "type": "branches",
        "branches": [
            [{"type": "conv", "filters": 3, "kernel": [1, 3], "padding": [0, 1]}],
            [{"type": "conv", "filters": 5, "kernel": [3, 1], "padding": [1, 0]}],
        ],
    }
    block = {
        "type": "branches",
        "branches": [[{"type": "conv", "filters": 2, "kernel": 1}, split], []],
    }
    spec = _spec([block], input_shape=(6, 6, 4))
    summary = shapes.infer(spec)
    assert summary.row("0.b0.1").output_shape == (6, 6, 8)
    assert summary.row("0").output_shape == (6, 6, 12)
    assert summary.row("0.b0.1.b1.0").name == "branches_0/b0/branches_1/b1/conv_0"
    model = models.build_model(spec)
    assert model.branches_0.b0.branches_1.b1.conv_0.kernel.shape == (3, 1, 2, 5)
    assert _param_count(model) == summary.total_params
    x = jax.random.uniform(jax.random.key(6), (1, 6, 6, 4))
    y = model.features(x, ["branches_0"])["branches_0"]
    assert y.shape == (1, 6, 6, 12)
    np.testing.assert_array_equal(np.asarray(y[..., 8:]), np.asarray(x))


def test_summary_table_names_the_branch_of_each_row():
    spec = ModelSpec.from_dict(tomllib.loads(INCEPTION_TOML))
    table = shapes.format_table(shapes.infer(spec))
    assert "b2/conv_1 (conv 5x5 pad [2, 2])" in table
    assert "branches_0 (4 branches, concat)" in table


def test_branch_spec_round_trips_through_dict():
    spec = ModelSpec.from_dict(tomllib.loads(INCEPTION_TOML))
    assert ModelSpec.from_dict(spec.to_dict()) == spec


# --------------------------------------------------------------------------- residual
def test_projection_norm_counts_and_paths():
    block = {
        "type": "residual",
        "activation": "relu",
        "projection_norm": True,
        "layers": [
            {
                "type": "conv",
                "filters": 16,
                "kernel": 3,
                "stride": 2,
                "padding": 1,
                "use_bias": False,
            },
            {"type": "norm", "norm": "batch"},
        ],
    }
    spec = _spec([block], input_shape=(8, 8, 4))
    summary = shapes.infer(spec)
    row = summary.row("0")
    assert row.projection == ConvSpec(filters=16, kernel=1, stride=2, use_bias=False)
    assert row.params == 4 * 16 + 2 * 16  # bias-free 1x1 conv, norm scale and bias
    assert row.non_trainable_params == 2 * 16
    model = _abstract(spec)
    paths = models.param_paths(model)
    assert paths["residual_0/proj/kernel"] == (1, 1, 4, 16)
    assert "residual_0/proj/bias" not in paths
    assert paths["residual_0/proj_norm/scale"] == (16,)
    assert _param_count(model) == summary.total_params
    stats = nnx.state(model, nnx.BatchStat)
    assert {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(stats)} >= {
        "residual_0/proj_norm/mean",
        "residual_0/proj_norm/var",
    }


def test_projection_norm_normalises_the_skip_path():
    block = {
        "type": "residual",
        "projection_norm": True,
        "layers": [{"type": "conv", "filters": 2, "kernel": 1, "use_bias": False}],
    }
    spec = _spec([block], input_shape=(3, 3, 1))
    model = models.build_model(spec)  # training mode: batch statistics
    model.residual_0.conv_0.kernel.set_value(jnp.zeros((1, 1, 1, 2)))
    x = 5.0 + jax.random.normal(jax.random.key(2), (4, 3, 3, 1))
    y = np.asarray(model.features(x, ["residual_0"])["residual_0"])
    # body is 0: the output is the batch-normalised projection, mean 0, variance 1
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1, rtol=1e-3)


# --------------------------------------------------------------------------- relu6, pads
def test_relu6_clips_at_0_and_6():
    x = jnp.array([-3.0, 0.0, 2.5, 6.0, 9.0])
    np.testing.assert_array_equal(
        np.asarray(layers.activate(x, "relu6")), [0, 0, 2.5, 6, 6]
    )
    spec = _spec([{"type": "activation", "activation": "relu6"}], input_shape=(2, 2, 1))
    assert shapes.infer(spec).row("0").flops == 4


@pytest.mark.parametrize("kind", ["conv", "pool"])
def test_asymmetric_padding_shapes_and_module(kind):
    pads = [[0, 2], [1, 0]]
    layer = (
        {"type": "conv", "filters": 2, "kernel": 3, "stride": 2, "padding": pads}
        if kind == "conv"
        else {"type": "pool", "pool": "max", "window": 3, "stride": 2, "padding": pads}
    )
    spec = _spec([layer], input_shape=(7, 8, 2))
    summary = shapes.infer(spec)
    # H: (7 + 2 - 3) // 2 + 1 = 4; W: (8 + 1 - 3) // 2 + 1 = 4
    assert summary.row("0").output_shape[:2] == (4, 4)
    assert shapes.resolve_padding(spec.layers[0].padding, (7, 8), (3, 3), (2, 2)) == (
        (0, 2),
        (1, 0),
    )
    model = models.build_model(spec)
    x = jax.random.uniform(jax.random.key(3), (1, 7, 8, 2))
    y = model.features(x, [f"{kind}_0"])[f"{kind}_0"]
    assert y.shape[1:3] == (4, 4)


def test_explicit_max_pool_padding_never_wins():
    """Max pooling pads with -inf, as PyTorch does: negative inputs stay negative."""
    x = -1.0 - jax.random.uniform(jax.random.key(4), (1, 5, 5, 1))
    for impl in ("xla", "fast"):
        y = ops.pool2d(
            x,
            kind="max",
            window=(3, 3),
            stride=(2, 2),
            padding=((0, 2), (0, 2)),
            impl=impl,
        )
        assert y.shape == (1, 3, 3, 1)
        assert float(y.max()) < -1.0, impl
        # the last window holds row/column 4 and two of padding: its max is x[4, 4]
        np.testing.assert_allclose(float(y[0, 2, 2, 0]), float(x[0, 4, 4, 0]))


def test_padding_coercion_accepts_int_pair_and_pairs():
    assert ConvSpec(filters=1, padding=1).padding == (1, 1)
    assert ConvSpec(filters=1, padding=[1, 2]).padding == (1, 2)
    assert ConvSpec(filters=1, padding=[[0, 1], [2, 3]]).padding == ((0, 1), (2, 3))
    assert ConvSpec(filters=1, padding=[[0, 1], [2, 3]]).describe() == (
        "conv 3x3 pad [[0, 1], [2, 3]]"
    )


# --------------------------------------------------------------------------- kernels
def test_depthwise_conv_is_planned_on_xla_and_counts_right():
    spec = _spec(
        [{"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "groups": 8}]
    )
    summary = shapes.infer(spec)
    assert summary.row("0").params == (9 + 1) * 8
    plan = plan_lib.model_plan(spec, spec.input_shape, plan_lib.KernelChoice(), "cpu")
    assert plan.layer("conv_0").conv == "xla"


@pytest.mark.slow  # compiles the forward and backward passes twice (~30 s on 2 cores)
def test_fast_kernels_match_xla_inside_branches():
    """Branch layers are planned like any other: im2col/Winograd and fast pooling by
    default on CPU (with the conv -> pool crop inside a branch); XLA's on request."""
    spec = _spec(
        [
            {"type": "conv", "filters": 16, "kernel": 3, "padding": [[1, 0], [0, 1]]},
            {
                "type": "branches",
                "join": "add",
                "branches": [
                    [
                        {
                            "type": "conv",
                            "filters": 8,
                            "kernel": 3,
                            "stride": 2,
                            "padding": 1,
                        },
                        {"type": "pool", "pool": "max", "window": 2, "stride": 1},
                    ],
                    [
                        {"type": "conv", "filters": 8, "kernel": 3, "padding": 1},
                        {"type": "pool", "pool": "max", "window": 3, "stride": 2},
                    ],
                ],
            },
        ],
        input_shape=(11, 11, 8),
    )
    fast = models.build_model(spec, kernels="auto")
    plan = fast.kernel_plan(backend="cpu")
    assert plan.layer("branches_1/b1/conv_0").conv == "winograd"
    assert plan.layer("branches_1/b1/pool_1").pool == "fast"
    assert plan.layer("branches_1/b0/conv_0").conv == "im2col"
    assert plan.layer("conv_0").conv == "im2col"
    slow = nnx.clone(fast)
    models.set_kernels(slow, "xla")
    x = jax.random.uniform(jax.random.key(5), (2, 11, 11, 8))

    def loss(model, x):
        return jnp.mean(model(x) ** 2)

    @nnx.jit
    def run(model, x):
        return model(x), nnx.state(nnx.grad(loss)(model, x), nnx.Param)

    for u, v in zip(
        jax.tree.leaves(run(fast, x)), jax.tree.leaves(run(slow, x)), strict=True
    ):
        scale = float(jnp.abs(v).max()) + 1e-12
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=2e-5 * scale)


def test_readme_block_example_runs(tmp_path):
    """The README's Inception-module + ResNet-block spec: `jaxcnn summary` takes it and
    the shapes are those its comments say."""
    readme = pathlib.Path(__file__).parent.parent / "README.md"
    blocks = re.findall(r"```toml\n(.*?)```", readme.read_text(), re.S)
    (text,) = [b for b in blocks if 'type = "branches"' in b]
    path = tmp_path / "blocks.toml"
    path.write_text(text)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["summary", str(path)]) == 0
    summary = shapes.infer(models.load_spec(str(path)))
    assert summary.row("3").output_shape == (32, 32, 48)
    block = summary.row("4")
    assert block.output_shape == (16, 16, 64)
    assert block.projection == ConvSpec(filters=64, kernel=1, stride=2, use_bias=False)
    assert "residual_4 (residual)" in out.getvalue()


def test_frozen_convs_and_drawn_kernels_inside_branches():
    """Paths inside branches reach the freeze list and the filter figures."""
    from jaxcnn import transfer, viz

    block = {
        "type": "branches",
        "branches": [
            [{"type": "conv", "filters": 2, "kernel": 3, "padding": 1}],
            [{"type": "conv", "filters": 3, "kernel": 1, "trainable": False}],
        ],
    }
    spec = _spec([block], input_shape=(5, 5, 2))
    assert transfer.untrainable_prefixes(spec) == ["branches_0/b1/conv_0/"]
    model = _abstract(spec)
    frozen = transfer.frozen_paths(model, spec, ["b0/conv_0/bias"])
    assert set(frozen) == {
        "branches_0/b0/conv_0/bias",
        "branches_0/b1/conv_0/kernel",
        "branches_0/b1/conv_0/bias",
    }
    name, kernel = viz.conv_kernel(models.build_model(spec), "branches_0/b0/conv_0")
    assert name == "branches_0/b0/conv_0" and kernel.shape == (3, 3, 2, 2)


@pytest.mark.parametrize("impl", ["xla", "fast"])
def test_avg_pool_counting_padding_divides_by_the_window(impl):
    spec = _spec(
        [
            {
                "type": "pool",
                "pool": "avg",
                "window": 3,
                "stride": 1,
                "padding": 1,
                "count_padding": True,
            }
        ],
        input_shape=(4, 4, 1),
    )
    model = models.build_model(spec)
    models.set_kernels(model, pool=impl)
    x = jnp.ones((1, 4, 4, 1))
    y = np.asarray(model.features(x, ["pool_0"])["pool_0"])[0, :, :, 0]
    assert y[0, 0] == pytest.approx(4 / 9) and y[0, 1] == pytest.approx(6 / 9)
    assert y[1, 1] == pytest.approx(1.0)
    excluded = _spec([{**spec.layers[0].to_dict(), "count_padding": False}], (4, 4, 1))
    plain = models.build_model(excluded)
    assert float(plain.features(x, ["pool_0"])["pool_0"][0, 0, 0, 0]) == (
        pytest.approx(1.0)
    )


def test_avg_pool_counting_padding_equals_pytorchs():
    torch = pytest.importorskip("torch")
    pool = {"type": "pool", "pool": "avg", "window": 3, "stride": 1, "padding": 1}
    spec = _spec([{**pool, "count_padding": True}], input_shape=(6, 5, 2))
    model = models.build_model(spec)
    x = np.random.default_rng(7).normal(size=(2, 6, 5, 2)).astype(np.float32)
    got = np.asarray(model.features(jnp.asarray(x), ["pool_0"])["pool_0"])
    want = torch.nn.functional.avg_pool2d(
        torch.from_numpy(x).permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=True
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)
