"""Hand-set classic filters: the spec option, the conv init and the known step responses."""

import typing

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import filters, models, spec
from jaxcnn.errors import SpecError
from jaxcnn.spec import ConvSpec, DenseSpec, FlattenSpec, ModelSpec


def step_image(size=8, edge=4, vertical=True) -> np.ndarray:
    """0 left of (above) column (row) `edge`, 1 from there on: [size, size]."""
    image = np.zeros((size, size), np.float32)
    if vertical:
        image[:, edge:] = 1.0
    else:
        image[edge:, :] = 1.0
    return image


# Responses of a 3x3 valid cross-correlation along one row of the vertical step at
# column 4 of an 8-wide image (output columns 0..5 are windows centred on 1..6).
STEP_ROW = {
    "vertical_edge": [0, 0, 3, 3, 0, 0],
    "horizontal_edge": [0, 0, 0, 0, 0, 0],
    "sobel_x": [0, 0, 4, 4, 0, 0],
    "sobel_y": [0, 0, 0, 0, 0, 0],
    "laplacian": [0, 0, 1, -1, 0, 0],
    "box_blur": [0, 0, 1 / 3, 2 / 3, 1, 1],
    "sharpen": [0, 0, -1, 2, 1, 1],
}


def test_spec_names_match_the_kernel_table():
    assert typing.get_args(spec.ConvInit) == ("default", *filters.CLASSIC_NAMES)
    assert set(STEP_ROW) == set(filters.CLASSIC_NAMES)


def test_conv_spec_round_trip_and_validation():
    layer = ConvSpec(filters=2, init="laplacian", trainable=False)
    model = ModelSpec((8, 8, 1), 2, (layer, FlattenSpec(), DenseSpec(2)))
    assert ModelSpec.from_dict(model.to_dict()) == model
    assert model.to_dict()["layers"][0]["init"] == "laplacian"
    assert model.to_dict()["layers"][0]["trainable"] is False
    with pytest.raises(
        SpecError, match=r"field 'init'='sobel_x' is a classic 3x3.*\[5, 5\]"
    ):
        ConvSpec(filters=2, kernel=5, init="sobel_x")
    with pytest.raises(SpecError, match=r"layer 0 \(conv\): field 'init' must be"):
        ModelSpec.from_dict(
            {
                "input_shape": [8, 8, 1],
                "num_classes": 2,
                "layers": [{"type": "conv", "filters": 2, "init": "gabor"}],
            }
        )
    with pytest.raises(SpecError, match=r"layer 0 \(conv\): field 'trainable' must be"):
        ModelSpec.from_dict(
            {
                "input_shape": [8, 8, 1],
                "num_classes": 2,
                "layers": [{"type": "conv", "filters": 2, "trainable": "no"}],
            }
        )


@pytest.mark.parametrize("name", filters.CLASSIC_NAMES)
def test_conv_layer_init_gives_the_known_step_response(name):
    layer = ConvSpec(filters=2, init=name, use_bias=True)
    spec_ = ModelSpec((8, 8, 1), 2, (layer, FlattenSpec(), DenseSpec(2)))
    model = models.build_model(spec_)
    kernel = np.asarray(model.conv_0.kernel.get_value())
    np.testing.assert_array_equal(kernel[:, :, 0, 1], filters.CLASSIC_KERNELS[name])
    out = np.asarray(model.conv_0(jnp.asarray(step_image()[None, :, :, None])))
    assert out.shape == (1, 6, 6, 2)
    expected = np.tile(np.asarray(STEP_ROW[name], np.float32), (6, 1))
    np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-6)
    np.testing.assert_allclose(out[0, :, :, 1], expected, atol=1e-6)


def test_horizontal_kernels_see_horizontal_steps():
    layer = ConvSpec(filters=1, init="horizontal_edge")
    model = models.build_model(
        ModelSpec((8, 8, 1), 2, (layer, FlattenSpec(), DenseSpec(2)))
    )
    out = np.asarray(
        model.conv_0(jnp.asarray(step_image(vertical=False)[None, :, :, None]))
    )
    np.testing.assert_allclose(
        out[0, :, :, 0], np.tile([[0], [0], [3], [3], [0], [0]], (1, 6))
    )


def test_rgb_input_applies_the_kernel_to_the_channel_mean():
    layer = ConvSpec(filters=3, init="sobel_x")
    model = models.build_model(
        ModelSpec((8, 8, 3), 2, (layer, FlattenSpec(), DenseSpec(2)))
    )
    rgb = np.stack([step_image(), step_image() * 0.5, np.zeros((8, 8), np.float32)], -1)
    out = np.asarray(model.conv_0(jnp.asarray(rgb[None])))
    expected = np.tile(np.asarray(STEP_ROW["sobel_x"]) * 0.5, (6, 1))
    for f in range(3):
        np.testing.assert_allclose(out[0, :, :, f], expected, atol=1e-6)


def test_default_init_is_unchanged_by_the_new_fields():
    base = ModelSpec((8, 8, 1), 2, (ConvSpec(filters=2), FlattenSpec(), DenseSpec(2)))
    a = models.build_model(base)
    hand = ModelSpec(
        (8, 8, 1), 2, (ConvSpec(filters=2, init="sobel_y"), FlattenSpec(), DenseSpec(2))
    )
    b = models.build_model(hand)
    # later layers draw the same random keys whether or not a kernel is hand-set
    np.testing.assert_array_equal(
        np.asarray(a.dense_2.kernel.get_value()),
        np.asarray(b.dense_2.kernel.get_value()),
    )
