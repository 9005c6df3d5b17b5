"""Static inference: hand-computed shapes, parameters, FLOPs, receptive fields and errors."""

import json
import subprocess
import sys

import pytest
from flax import nnx

from jaxcnn import footprint, models, shapes
from jaxcnn.errors import SpecError
from jaxcnn.layers import make_norm
from jaxcnn.spec import (
    ConvSpec,
    DenseSpec,
    FlattenSpec,
    GlobalPoolSpec,
    ModelSpec,
    NormSpec,
    PoolSpec,
    ResidualSpec,
)


def _model(input_shape, *layers, num_classes=None):
    """A spec of `layers` with a flatten + dense head sized to finish cleanly."""
    return ModelSpec(
        input_shape,
        num_classes or 10,
        (*layers, FlattenSpec(), DenseSpec(units=num_classes or 10)),
    )


def _first(input_shape, layer):
    return shapes.infer(_model(input_shape, layer)).layers[0]


def test_six_by_six_with_three_by_three_filter_gives_four_by_four():
    assert _first((6, 6, 1), ConvSpec(filters=1, kernel=3)).output_shape == (4, 4, 1)


def test_128x128x3_with_40_5x5_filters():
    info = _first((128, 128, 3), ConvSpec(filters=40, kernel=5))
    assert info.output_shape == (124, 124, 40)
    # ((M*N*D) + 1) * K
    assert info.params == (5 * 5 * 3 + 1) * 40 == 3040
    assert info.macs == 124 * 124 * 40 * 75
    assert info.flops == 2 * info.macs


@pytest.mark.parametrize(
    "size, kernel, stride, dilation, expected_out, expected_pads",
    [
        (5, 3, 1, 1, 5, (1, 1)),  # even total: symmetric
        (4, 3, 2, 1, 2, (0, 1)),  # odd total 1: extra pixel bottom/right
        (6, 4, 1, 1, 6, (1, 2)),  # odd total 3
        (7, 3, 2, 1, 4, (1, 1)),
        (8, 1, 3, 1, 3, (0, 0)),  # total would be negative: clamped to 0
        (5, 3, 1, 2, 5, (2, 2)),  # dilated kernel covers 5
        (6, 2, 2, 1, 3, (0, 0)),
    ],
)
def test_same_padding_follows_tf(
    size, kernel, stride, dilation, expected_out, expected_pads
):
    pads = shapes.resolve_padding(
        "same", (size, size), (kernel, kernel), (stride, stride), (dilation, dilation)
    )
    assert pads == (expected_pads, expected_pads)
    conv = ConvSpec(
        filters=2, kernel=kernel, stride=stride, padding="same", dilation=dilation
    )
    assert _first((size, size, 1), conv).output_shape == (expected_out, expected_out, 2)
    # 'same' means ceil(W / S) outputs
    assert expected_out == -(-size // stride)


def test_padding_valid_and_explicit_and_rectangular():
    assert shapes.resolve_padding("valid", (9, 9), (3, 3), (1, 1)) == ((0, 0), (0, 0))
    assert shapes.resolve_padding((1, 2), (9, 9), (3, 3), (1, 1)) == ((1, 1), (2, 2))
    info = _first(
        (10, 7, 2), ConvSpec(filters=4, kernel=(3, 1), stride=(2, 1), padding=(1, 0))
    )
    # H: floor((10 + 2 - 3) / 2) + 1 = 5; W: floor((7 - 1) / 1) + 1 = 7
    assert info.output_shape == (5, 7, 4)


def test_stride_and_dilation_formula():
    # O = floor((W - D(K-1) - 1 + 2P) / S) + 1 = floor((20 - 4 - 1 + 2) / 3) + 1 = 6
    info = _first(
        (20, 20, 1), ConvSpec(filters=1, kernel=3, stride=3, dilation=2, padding=(1, 1))
    )
    assert info.output_shape == (6, 6, 1)
    assert info.receptive_field == (5, 5)
    assert info.jump == (3, 3)


def test_group_conv_params():
    info = _first((8, 8, 4), ConvSpec(filters=6, kernel=3, groups=2, use_bias=False))
    assert info.params == 3 * 3 * 2 * 6


def test_keras_mnist_shapes_params_and_receptive_field():
    summary = shapes.infer(models.preset("keras_mnist"))
    assert [info.output_shape for info in summary.layers] == [
        (26, 26, 32),
        (13, 13, 32),
        (11, 11, 64),
        (5, 5, 64),
        (3, 3, 64),
        (576,),
        (64,),
        (10,),
    ]
    assert [info.params for info in summary.layers] == [
        320,
        0,
        18496,
        0,
        36928,
        0,
        36928,
        650,
    ]
    assert summary.total_params == 93_322
    # conv3 r=3, pool2 r=4 j=2, conv3 r=8, pool2 r=10 j=4, conv3 r=18, flatten sees 3x3 map
    assert [info.receptive_field[0] for info in summary.layers] == [
        3,
        4,
        8,
        10,
        18,
        26,
        26,
        26,
    ]
    assert [info.jump[0] for info in summary.layers[:5]] == [1, 2, 2, 4, 4]
    # 16.8 MFLOP per train step (benchmarks/README.md) = 3 x forward conv/dense FLOPs
    conv_dense = sum(
        i.flops for i in summary.layers if i.spec.type in ("conv", "dense")
    )
    assert conv_dense == 2 * summary.total_macs == 5_588_480
    assert 3 * conv_dense / 1e6 == pytest.approx(16.8, abs=0.05)


def test_vgg_cifar_flops_match_perf_notes():
    summary = shapes.infer(models.preset("vgg_cifar"))
    assert summary.total_macs == 152_805_376
    conv_dense = sum(
        i.flops for i in summary.layers if i.spec.type in ("conv", "dense")
    )
    assert conv_dense == 305_610_752
    # 917 MFLOP per image per train step (forward + backward ~ 3x forward)
    assert 3 * conv_dense / 1e6 == pytest.approx(917, rel=0.001)
    assert summary.total_params == 1_186_378


def test_elementwise_flop_conventions():
    spec = ModelSpec(
        (4, 4, 3),
        2,
        (
            NormSpec(norm="batch"),
            PoolSpec(pool="avg", window=2),
            GlobalPoolSpec(pool="max"),
            DenseSpec(units=2, use_bias=False),
        ),
    )
    norm, pool, gpool, dense = shapes.infer(spec).layers
    assert norm.flops == 4 * 48 and norm.params == 6 and norm.non_trainable_params == 6
    assert pool.flops == 2 * 2 * 3 * 4 and pool.macs == 0
    assert gpool.flops == 12 and gpool.output_shape == (3,)
    assert dense.params == 6 and dense.flops == 12


def test_batch_norm_params_are_split_into_trainable_and_statistics():
    spec = models.preset("resnet_cifar", blocks_per_stage=1)
    summary = shapes.infer(spec)
    norms = [i for i in summary.layers if i.spec.type == "norm"]
    assert summary.total_non_trainable_params == sum(i.params for i in norms)
    assert summary.total_non_trainable_params > 0


@pytest.mark.parametrize("norm", ["batch", "layer", "group"])
def test_norm_without_scale_counts_its_bias_only(norm):
    layers_ = (NormSpec(norm=norm, groups=2, scale=False), GlobalPoolSpec())
    spec = ModelSpec((5, 5, 4), 4, (*layers_, DenseSpec(units=4)))
    row = shapes.infer(spec).row("0")
    assert row.params == 4  # the shift (beta); no scale (gamma)
    scaled = (NormSpec(norm=norm, groups=2), *spec.layers[1:])
    assert shapes.infer(ModelSpec((5, 5, 4), 4, scaled)).row("0").params == 8
    module = make_norm(layers_[0], 4, rngs=nnx.Rngs(0))
    assert module.scale is None and module.bias.value.shape == (4,)


def test_residual_rows_projection_and_names():
    block = ResidualSpec(
        layers=(
            ConvSpec(filters=8, kernel=3, stride=2, padding="same"),
            ConvSpec(filters=8, kernel=3, padding="same"),
        ),
        activation="relu",
    )
    same = ResidualSpec(layers=(ConvSpec(filters=4, kernel=3, padding="same"),))
    spec = ModelSpec((7, 7, 4), 3, (same, block, GlobalPoolSpec(), DenseSpec(units=3)))
    summary = shapes.infer(spec)
    labels = [(i.index, i.name) for i in summary.layers]
    assert labels[:6] == [
        ("0.0", "residual_0/conv_0"),
        ("0", "residual_0"),
        ("1.0", "residual_1/conv_0"),
        ("1.1", "residual_1/conv_1"),
        ("1", "residual_1"),
        ("2", "global_pool_2"),
    ]
    assert summary.row("0").projection is None and summary.row("0").params == 0
    res = summary.row("1")
    # 7 -> 4 with a 'same' stride-2 conv; a 1x1 stride-2 conv maps 7 -> 4 too
    assert res.output_shape == (4, 4, 8)
    assert res.projection.stride == (2, 2) and res.projection.filters == 8
    assert res.params == (4 + 1) * 8
    # block 0: r=3; stride-2 3x3: r=3+2*1=5, j=2; then 3x3: r=5+2*2=9
    assert res.receptive_field == (9, 9) and res.jump == (2, 2)
    assert summary.total_params == sum(i.params for i in summary.layers)


ERRORS = [
    (
        "conv kernel larger than input",
        ModelSpec(
            (28, 28, 1),
            10,
            (
                ConvSpec(filters=32, kernel=3),
                PoolSpec(window=2),
                ConvSpec(filters=64, kernel=3),
                PoolSpec(window=2),
                ConvSpec(filters=64, kernel=3),
                PoolSpec(window=2),
                ConvSpec(filters=64, kernel=3),
                FlattenSpec(),
                DenseSpec(units=10),
            ),
        ),
        "layer 6 (conv 3x3 valid): input 1x1x64 is smaller than the 3x3 kernel",
    ),
    (
        "pool window larger than input",
        _model((3, 3, 2), PoolSpec(window=4)),
        "layer 0 (max pool 4x4 valid): input 3x3x2 is smaller than the 4x4 window",
    ),
    (
        "dilated kernel",
        _model((4, 4, 1), ConvSpec(filters=1, kernel=3, dilation=2)),
        "is smaller than the 3x3 kernel (dilated to 5x5)",
    ),
    (
        "explicit padding",
        _model((2, 2, 1), ConvSpec(filters=1, kernel=5, padding=1)),
        "input 2x2x1 padded to 4x4 is smaller than the 5x5 kernel",
    ),
    (
        "dense on a feature map",
        ModelSpec((8, 8, 1), 10, (ConvSpec(filters=4), DenseSpec(units=10))),
        "layer 1 (dense): input 6x6x4 is not flat; add a flatten or global_pool before it",
    ),
    (
        "conv on a flat input",
        ModelSpec(
            (8, 8, 1), 10, (FlattenSpec(), ConvSpec(filters=4), DenseSpec(units=10))
        ),
        "layer 1 (conv 3x3 valid): input is flat (64 features)",
    ),
    (
        "global pool on a flat input",
        ModelSpec(
            (8, 8, 1), 10, (FlattenSpec(), GlobalPoolSpec(), DenseSpec(units=10))
        ),
        "layer 1 (global_pool): input is flat",
    ),
    (
        "group conv channels",
        _model((8, 8, 3), ConvSpec(filters=4, groups=2)),
        "layer 0 (conv 3x3 valid): input channels 3 are not divisible by groups=2",
    ),
    (
        "group norm channels",
        _model((8, 8, 6), NormSpec(norm="group", groups=4)),
        "layer 0 (norm): 6 channels are not divisible by groups=4",
    ),
    (
        "wrong number of outputs",
        ModelSpec((8, 8, 1), 10, (FlattenSpec(), DenseSpec(units=64))),
        "last layer outputs 64 features but num_classes=10; end with dense(units=10)",
    ),
    (
        "feature map output",
        ModelSpec((8, 8, 1), 10, (ConvSpec(filters=10),)),
        "the model outputs a 6x6x10 feature map but must output num_classes=10 logits",
    ),
    (
        "residual with no integer skip stride",
        _model((7, 7, 2), ResidualSpec(layers=(ConvSpec(filters=2, kernel=3),))),
        "layer 0 (residual): the block maps 7x7x2 to 5x5x2; no integer stride",
    ),
    (
        "residual that flattens",
        _model((4, 4, 2), ResidualSpec(layers=(FlattenSpec(),))),
        "a skip projection needs HxWxC feature maps on both sides",
    ),
    (
        "error inside a residual names the inner index",
        _model(
            (2, 2, 2),
            ResidualSpec(layers=(ConvSpec(filters=2, kernel=1), ConvSpec(filters=2))),
        ),
        "layer 0.1 (conv 3x3 valid): input 2x2x2 is smaller than the 3x3 kernel",
    ),
]


@pytest.mark.parametrize("case, spec, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_impossible_specs_fail_with_a_named_layer(case, spec, message):
    with pytest.raises(SpecError) as excinfo:
        shapes.infer(spec)
    assert message in str(excinfo.value)


def test_issue_example_message():
    layers = [ConvSpec(filters=64, kernel=3, padding="same")] * 6 + [
        ConvSpec(filters=64, kernel=3),
        FlattenSpec(),
        DenseSpec(units=10),
    ]
    layers[5] = PoolSpec(window=4)  # 8x8 -> 2x2 before layer 6
    spec = ModelSpec((8, 8, 64), 10, tuple(layers))
    with pytest.raises(
        SpecError,
        match=r"^layer 6 \(conv 3x3 valid\): input 2x2x64 is smaller than the 3x3 kernel",
    ):
        shapes.infer(spec)


def test_infer_rejects_non_spec():
    with pytest.raises(SpecError, match="expected a ModelSpec"):
        shapes.infer({"layers": []})


def test_format_table_and_to_dict():
    summary = shapes.summarize(models.preset("keras_mnist"))
    table = shapes.format_table(summary)
    assert "conv_0 (conv 3x3 valid)" in table
    assert "26x26x32" in table and "18,496" in table
    assert "Trainable params: 93,322" in table
    assert "Forward FLOPs per example: 5,616,512" in table
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["total_params"] == 93_322
    assert data["layers"][0]["name"] == "conv_0"
    assert data["layers"][0]["output_shape"] == [26, 26, 32]
    assert data["layers"][-1]["flops"] == 1280
    assert ModelSpec.from_dict(data["spec"]) == summary.spec


def test_shapes_does_not_import_jax():
    code = "import sys, jaxcnn.shapes, jaxcnn.models; print('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- memory
def _small():
    # input 8x8x1 (64) -> conv 6x6x4 (144; (9 + 1) * 4 = 40 params) -> flatten (no copy)
    # -> dense 10 ((144 + 1) * 10 = 1,450 params): 218 activations, 1,490 params per example
    return shapes.infer(_model((8, 8, 1), ConvSpec(filters=4, kernel=3)))


def test_memory_estimate_by_hand():
    # the largest activation: the conv's 144 values; its patches: 6 * 6 * (3 * 3 * 1)
    estimate = footprint.memory_estimate(_small(), 2)
    assert estimate == {
        "params": 1490 * 4,
        "gradients": 1490 * 4,
        "optimizer_state": 2 * 1490 * 4,
        "activations": 2 * 218 * 4,
        "backward": 2 * 2 * 144 * 4,
        "workspace": 2 * 324 * 4,
        "total": 4 * 1490 * 4 + 2 * 218 * 4 + 4 * 144 * 4 + 2 * 324 * 4,
    }
    sgd = footprint.memory_estimate(_small(), 3, optimizer_slots=0)
    assert sgd["optimizer_state"] == 0 and sgd["activations"] == 3 * 218 * 4


def test_eval_memory_estimate_by_hand():
    # live at once: the conv's input and output (64 + 144), then its patches (324)
    estimate = footprint.eval_memory_estimate(_small(), 5)
    assert estimate == {
        "params": 1490 * 4,
        "activations": 5 * 208 * 4,
        "workspace": 5 * 324 * 4,
        "total": 1490 * 4 + 5 * 208 * 4 + 5 * 324 * 4,
    }


def test_an_eval_batch_that_cannot_fit_names_the_largest_that_does():
    summary = _small()
    limit = footprint.eval_memory_estimate(summary, 100)["total"]
    assert footprint.check_eval_fits(summary, 100, limit)["total"] == limit
    with pytest.raises(
        SpecError, match=r"batch of 100,000 images .*eval_batch_size <= 100\b"
    ):
        footprint.check_eval_fits(summary, 100_000, limit)
    with pytest.raises(SpecError, match="parameters alone do not fit"):
        footprint.check_eval_fits(summary, 1, 1000)


def test_memory_estimate_counts_batch_norm_statistics_as_params_only():
    summary = shapes.infer(_model((4, 4, 2), NormSpec(norm="batch")))
    # norm: 4 trainable + 4 statistics; dense (32 + 1) * 10 = 330
    estimate = footprint.memory_estimate(summary, 1)
    assert estimate["params"] == (334 + 4) * 4
    assert estimate["gradients"] == 334 * 4


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, "8"])
def test_memory_estimate_rejects_bad_batch_sizes(batch_size):
    with pytest.raises(SpecError, match="batch_size must be an int >= 1"):
        footprint.memory_estimate(_small(), batch_size)


def test_check_fits_returns_the_estimate_or_names_what_is_too_big():
    summary = _small()
    estimate = footprint.memory_estimate(summary, 2)
    assert footprint.check_fits(summary, 2, estimate["total"]) == estimate
    with pytest.raises(SpecError) as excinfo:
        footprint.check_fits(summary, 2, estimate["total"] - 1)
    message = str(excinfo.value)
    for text in (
        "model 'custom' needs about 29.8 KiB per training step at batch size 2",
        "params 5.8 KiB, gradients 5.8 KiB, optimizer state 11.6 KiB, activations 1.7 "
        "KiB, backward 2.2 KiB, workspace 2.5 KiB",
        "over the 29.8 KiB one device can hold",
        "the largest activation is layer 0 (conv 3x3 valid), 6x6x4 per example",
        "Use a smaller batch size",
    ):
        assert text in message


def test_absurd_sizes_within_the_bounds_do_not_fit_a_device():
    # 2**19 and 2**20 filters pass the size bound; the estimate says why training cannot run.
    spec = models.preset("simple_cnn", filters=2**19, depth=2)
    summary = shapes.infer(spec)
    estimate = footprint.memory_estimate(summary, 128)
    assert estimate["total"] > 2**40  # over a TiB
    with pytest.raises(SpecError, match=r"needs about .* TiB .* over the 80\.0 GiB"):
        footprint.check_fits(summary, 128, 80 * 2**30)


@pytest.mark.parametrize(
    "n, text",
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * 2**30, "3.0 GiB")],
)
def test_format_bytes(n, text):
    assert footprint.format_bytes(n) == text
