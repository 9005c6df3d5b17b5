"""Figures: real PNGs with content, and the arrays behind them equal to manual computations."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcnn import filters, models, viz
from jaxcnn.errors import DataError, JaxcnnError, SpecError
from jaxcnn.spec import ConvSpec, DenseSpec, FlattenSpec, ModelSpec, PoolSpec


def small_spec(filters_=4) -> ModelSpec:
    return ModelSpec(
        input_shape=(12, 12, 1),
        num_classes=3,
        layers=(
            ConvSpec(filters=filters_, kernel=3, activation="relu"),
            PoolSpec(window=2),
            ConvSpec(filters=6, kernel=3, padding="same"),
            {"type": "activation", "activation": "tanh"},
            FlattenSpec(),
            DenseSpec(units=3),
        ),
    )


def check_png(path, *, min_std=8.0) -> np.ndarray:
    """Opens `path` as a PNG, checks it is not blank; returns the grayscale pixels."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width >= 200 and img.height >= 200
        pixels = np.asarray(img.convert("L"), np.float32)
    assert pixels.std() > min_std, f"{path} looks blank (pixel std {pixels.std():.2f})"
    return pixels


def image_panels(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


# --------------------------------------------------------------------------- feature maps
def test_feature_maps_equal_a_manual_forward_pass():
    spec = small_spec()
    model = models.build_model(spec)
    image = np.random.default_rng(0).random((12, 12, 1), np.float32)
    maps = viz.feature_maps(model, spec, image)
    assert [name for name, _ in maps] == [
        "input",
        "conv_0",
        "pool_1",
        "conv_2",
        "activation_3",
    ]
    x = jnp.asarray(image[None])
    expected = []
    for name in ("conv_0", "pool_1", "conv_2", "activation_3"):
        x = getattr(model, name)(x)
        expected.append(np.asarray(x[0]))
    np.testing.assert_array_equal(maps[0][1], image)
    for (_, got), want in zip(maps[1:], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert maps[1][1].shape == (10, 10, 4) and maps[4][1].shape == (5, 5, 6)


def test_feature_maps_reject_a_wrong_shape():
    spec = small_spec()
    with pytest.raises(
        DataError, match=r"input shape \[12, 12, 1\].*got shape \[28, 28\]"
    ):
        viz.feature_maps(models.build_model(spec), spec, np.zeros((28, 28)))


def test_plot_feature_maps_png_panels_and_channel_cap(tmp_path):
    spec = small_spec()
    model = models.build_model(spec)
    image = np.zeros((12, 12, 1), np.float32)
    image[3:9, 4:8] = 1.0
    maps = viz.feature_maps(model, spec, image)
    path = viz.plot_feature_maps(maps, tmp_path / "maps.png", notes=["a note"])
    check_png(path)
    fig = viz._feature_maps_figure(maps, max_channels=64)
    panels = image_panels(fig)
    assert len(panels) == len(maps) == 5
    assert panels[1].get_title() == "conv_0  10x10x4"

    wide = [("input", image), ("conv_0", np.random.default_rng(1).random((4, 4, 512)))]
    fig = viz._feature_maps_figure(wide, max_channels=64)
    assert "first 64 of 512 channels shown" in image_panels(fig)[1].get_title()
    full = viz.plot_feature_maps(wide, tmp_path / "full.png", max_channels=512)
    check_png(full)
    one = [("conv_0", np.random.default_rng(2).random((6, 6, 1)))]
    check_png(viz.plot_feature_maps(one, tmp_path / "one.png"), min_std=3.0)
    with pytest.raises(SpecError, match=r"max_channels must be between 1 and 512"):
        viz.plot_feature_maps(maps, tmp_path / "x.png", max_channels=513)


def test_mosaic_tiles_and_normalizes():
    maps = np.stack([np.full((2, 2), 5.0), np.array([[0, 1], [2, 4.0]])], -1)
    tiles = viz.mosaic(maps)
    assert tiles.shape == (2, 5)  # two 2x2 tiles side by side with one separator column
    np.testing.assert_array_equal(tiles[:, :2], 0.0)  # constant channel -> 0
    np.testing.assert_allclose(tiles[:, 3:], [[0, 0.25], [0.5, 1.0]])
    assert np.isnan(tiles[:, 2]).all()


def test_load_image_converts_any_size_and_states_it(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (50, 40, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg")
    image, notes = viz.load_image(tmp_path / "photo.jpg", (28, 28, 1))
    assert image.shape == (28, 28, 1) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert notes[0].endswith("photo.jpg: image 50x40, 3 channels")
    assert (
        "RGB->grayscale (luminance)" in notes
        and "resized 50x40 -> 28x28 (bilinear)" in notes
    )
    gray, notes = viz.load_image(tmp_path / "photo.jpg")
    assert gray.shape == (50, 40) and notes[1:] == ["RGB->grayscale (luminance)"]
    Image.fromarray(np.zeros((1000, 600), np.uint8)).save(tmp_path / "large.png")
    small, notes = viz.load_image(tmp_path / "large.png")
    assert small.shape == (viz.EDGE_MAX_SIDE, round(600 * viz.EDGE_MAX_SIDE / 1000))
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(DataError, match=r"bad.png: cannot read image"):
        viz.load_image(tmp_path / "bad.png", (28, 28, 1))


def test_viz_and_predict_decode_16_bit_and_transparent_images_alike(
    tmp_path, digits_run
):
    """A 16-bit PNG at half scale and a half-transparent RGBA PNG: viz shows what
    predict classifies (one decoder, data.read_image), values and notes alike."""
    from jaxcnn import data, train

    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(tmp_path / "deep.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # red at half opacity
    rgba[0, 0, 1] = 1  # not a uniform colour, so it is composited on black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    record = json.loads((digits_run / "config.json").read_text())["dataset"]
    predicted = train.predict(
        digits_run, [tmp_path / "deep.png", tmp_path / "clear.png"]
    )
    for name, value, note in (
        ("deep.png", 32768 / 65535, "16-bit image (I;16) scaled by 1/65535"),
        ("clear.png", 200 * 128 / 255 / 255, "transparent image composited on black"),
    ):
        path = tmp_path / name
        pixels, read_notes = data.read_image(path)
        seen, notes = viz.load_image(path, (8, 8, 1), record)
        np.testing.assert_array_equal(seen, data.prepare(pixels, (8, 8, 1), record))
        assert note in notes and note in read_notes
        assert "top" in predicted[["deep.png", "clear.png"].index(name)]
        gray, _ = viz.load_image(path)  # `viz edges`: grayscale at full size
        if name == "deep.png":
            np.testing.assert_allclose(seen, value, rtol=1e-6)
            np.testing.assert_allclose(gray, value, rtol=1e-6)
        else:  # luminance of the composited red: 0.2989 of its value
            np.testing.assert_allclose(gray[1:, 1:], 0.2989 * value, rtol=2e-2)
    assert predicted[0]["notes"] == ["16-bit image (I;16) scaled by 1/65535"]
    assert predicted[1]["notes"] == ["transparent image composited on black"]


# --------------------------------------------------------------------------- filters
def test_plot_filters_first_and_named_layer(tmp_path):
    spec = small_spec()
    model = models.build_model(spec)
    name, kernel = viz.conv_kernel(model)
    assert name == "conv_0" and kernel.shape == (3, 3, 1, 4)
    name, kernel = viz.conv_kernel(model, "conv_2")
    np.testing.assert_array_equal(kernel, np.asarray(model.conv_2.kernel.get_value()))
    check_png(viz.plot_filters(model, tmp_path / "f.png"))
    check_png(viz.plot_filters(model, tmp_path / "f2.png", layer="conv_2"))
    fig = viz._filters_figure(name, kernel)
    panels = image_panels(fig)
    assert len(panels) == 4  # one per input channel of conv_2
    assert len({p.images[0].get_clim() for p in panels}) == 1  # shared colour scale
    with pytest.raises(
        SpecError, match=r"no conv layer 'dense_5'; conv layers are conv_0, conv_2"
    ):
        viz.plot_filters(model, tmp_path / "x.png", layer="dense_5")


def test_conv_kernel_finds_residual_convs():
    body = (
        ConvSpec(filters=6, kernel=3, padding="same"),
        ConvSpec(filters=6, kernel=1),
    )
    spec = ModelSpec(
        (6, 6, 2),
        2,
        (
            ConvSpec(filters=4, kernel=3, padding="same"),
            {"type": "residual", "layers": [c.to_dict() for c in body]},
            {"type": "global_pool"},
            DenseSpec(units=2),
        ),
    )
    model = models.build_model(spec)
    name, kernel = viz.conv_kernel(model, "residual_1/proj")
    assert kernel.shape == (1, 1, 4, 6)
    assert viz.conv_kernel(model, "residual_1/conv_0")[1].shape == (3, 3, 4, 6)
    assert viz.conv_kernel(model, "residual_1/conv_1")[1].shape == (1, 1, 6, 6)


# --------------------------------------------------------------------------- edges
def test_edge_responses_on_a_step_image_match_the_conv_layer():
    image = np.zeros((10, 10), np.float32)
    image[:, 5:] = 1.0
    responses = viz.edge_responses(image)
    assert set(responses) == set(filters.CLASSIC_NAMES)
    np.testing.assert_allclose(responses["vertical_edge"][0], [0, 0, 0, 3, 3, 0, 0, 0])
    np.testing.assert_allclose(responses["sobel_x"][4], [0, 0, 0, 4, 4, 0, 0, 0])
    np.testing.assert_allclose(responses["horizontal_edge"], 0.0)
    np.testing.assert_allclose(responses["sobel_y"], 0.0)
    np.testing.assert_allclose(responses["laplacian"][2], [0, 0, 0, 1, -1, 0, 0, 0])
    for name in filters.CLASSIC_NAMES:  # same numbers as a conv layer with init=name
        spec = ModelSpec(
            (10, 10, 1),
            2,
            (ConvSpec(filters=1, init=name), FlattenSpec(), DenseSpec(2)),
        )
        out = models.build_model(spec).conv_0(jnp.asarray(image[None, :, :, None]))
        np.testing.assert_allclose(
            responses[name], np.asarray(out[0, :, :, 0]), atol=1e-6
        )


def test_plot_edges_png(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    image = ((xx > 20) & (yy > 30)).astype(np.float32)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "step.png")
    path, notes = viz.edges_for_image(tmp_path / "step.png", tmp_path / "edges.png")
    check_png(path)
    fig = viz._edges_figure(image, viz.edge_responses(image))
    assert len(image_panels(fig)) == 1 + len(filters.CLASSIC_NAMES)


# --------------------------------------------------------------------------- curves / confusion
def fake_metrics(run_dir, epochs=4, offset=0.0):
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            record = {
                "epoch": e,
                "train_loss": 2.0 / e + offset,
                "train_accuracy": 1 - 0.5 / e,
                "val_loss": 2.2 / e + offset,
                "val_accuracy": 1 - 0.6 / e,
            }
            f.write(json.dumps(record) + "\n")


def test_plot_curves_overlays_runs(tmp_path):
    fake_metrics(tmp_path / "a")
    fake_metrics(tmp_path / "b", epochs=6, offset=0.3)
    path = viz.plot_curves([tmp_path / "a", tmp_path / "b"], tmp_path / "curves.png")
    check_png(path, min_std=5.0)
    fig = viz._curves_figure({"a": viz.read_metrics(tmp_path / "a")})
    assert [len(ax.lines) for ax in fig.axes[:2]] == [2, 2]
    with pytest.raises(JaxcnnError, match=r"has no metrics.jsonl"):
        viz.plot_curves([tmp_path / "a", tmp_path / "missing"], tmp_path / "x.png")


def test_plot_confusion_counts_and_normalised(tmp_path):
    confusion = np.array([[50, 2, 0], [5, 40, 5], [0, 10, 30]])
    names = ["cat", "dog", "bird"]
    check_png(viz.plot_confusion(confusion, names, tmp_path / "c.png"))
    fig = viz._confusion_figure(confusion, names, "t")
    panels = image_panels(fig)
    assert len(panels) == 2
    np.testing.assert_allclose(panels[1].images[0].get_array()[1], [0.1, 0.8, 0.1])
    assert [t.get_text() for t in panels[0].get_yticklabels()] == names
    with pytest.raises(DataError, match=r"does not match 2 class names"):
        viz.plot_confusion(confusion, names[:2], tmp_path / "x.png")


def test_sweep_figures(tmp_path):
    points = {"mnist": [(1e3, 0.9), (1e4, 0.95), (5e3, 0.8)], "digits": [(2e3, 0.7)]}
    fronts = {"mnist": [0, 1], "digits": [0]}
    check_png(viz.plot_tradeoff(points, fronts, tmp_path / "t.png", xlabel="params"))
    grid = np.array([[0.9, np.nan], [0.8, 0.85]])
    panels = [
        ("mnist", grid, None, {(0, 1): "invalid"}),
        ("digits", grid * 0.9, None, {}),
    ]
    path = viz.plot_heatmaps(
        panels,
        tmp_path / "h.png",
        xticks=[8, 16],
        yticks=[1, 2],
        xlabel="filters",
        ylabel="stride",
    )
    check_png(path)
    series = {"mnist": ([0.9, 0.95, np.nan], [0.01, 0.0, 0.0])}
    check_png(viz.plot_effect(["a", "b", "c"], series, tmp_path / "e.png", xlabel="x"))


def test_sweep_figures_draw_intervals(tmp_path):
    """With seeds: error bars on the trade-off, mean ± half width in the heatmap."""
    points = {"mnist": [(1e3, 0.9), (1e4, 0.95)]}
    errors = {"mnist": [0.02, 0.01]}
    captured = {}
    real_save = viz._save

    def keep(fig, path):
        captured[pathlib.Path(path).stem] = fig
        return real_save(fig, path)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(viz, "_save", keep)
        path = viz.plot_tradeoff(
            points, {"mnist": [0, 1]}, tmp_path / "t.png", xlabel="p", errors=errors
        )
        check_png(path)
        grid = np.array([[0.9, np.nan], [0.8, 0.85]])
        halves = np.array([[0.012, np.nan], [np.nan, 0.004]])
        panels = [("mnist", grid, halves, {(0, 1): "invalid"})]
        check_png(
            viz.plot_heatmaps(
                panels, tmp_path / "h.png", xticks=[8, 16], yticks=[1, 2],
                xlabel="filters", ylabel="stride",
            )
        )  # fmt: skip
    (ax,) = captured["t"].axes
    (container,) = [c for c in ax.containers if c.has_yerr]
    segments = container.lines[2][0].get_segments()  # the vertical bars
    assert [s[:, 1].tolist() for s in segments] == [
        pytest.approx([0.88, 0.92]),
        pytest.approx([0.94, 0.96]),
    ]
    texts = sorted(t.get_text() for t in captured["h"].axes[0].texts)
    assert texts == ["0.800", "0.850\n±0.004", "0.900\n±0.012", "invalid"]


def test_no_temp_files_left_behind(tmp_path):
    fake_metrics(tmp_path / "a")
    viz.plot_curves([tmp_path / "a"], tmp_path / "out" / "curves.png")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["curves.png"]


# --------------------------------------------------------------------------- command line
def test_cli_viz_errors_exit_2(tmp_path, capsys):
    from jaxcnn import cli

    out = ["-o", str(tmp_path / "x.png")]
    assert cli.main(["viz", "curves", str(tmp_path), *out]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
    assert cli.main(["viz", "filters", "--workdir", str(tmp_path), *out]) == 2
    assert "not a jaxcnn run directory" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert cli.main(["viz", "edges", str(tmp_path / "bad.png"), *out]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert cli.main(["viz", "edges", str(tmp_path / "bad.png")]) == 2  # -o is required
    assert not (tmp_path / "x.png").exists()


def test_cli_viz_edges(tmp_path, capsys):
    from jaxcnn import cli

    rgb = np.zeros((700, 300, 3), np.uint8)
    rgb[200:500, 100:200] = (200, 120, 40)
    Image.fromarray(rgb).save(tmp_path / "box.jpg")
    assert (
        cli.main(
            ["viz", "edges", str(tmp_path / "box.jpg"), "-o", str(tmp_path / "e.png")]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "RGB->grayscale (luminance)" in printed
    assert "resized 700x300 -> 512x219" in printed  # height x width, longest side 512
    check_png(tmp_path / "e.png")


@pytest.mark.slow
def test_cli_viz_figures_of_a_trained_run(digits_run, tmp_path, capsys):
    from jaxcnn import cli, train

    digit = np.zeros((64, 48), np.uint8)
    digit[10:54, 20:28] = 255  # a "1", larger than the 8x8 model input
    Image.fromarray(digit).save(tmp_path / "one.png")
    run = str(digits_run)
    commands = {
        "fm.png": ["featuremaps", "--workdir", run, str(tmp_path / "one.png")],
        "filters.png": ["filters", "--workdir", run],
        "filters2.png": ["filters", "--workdir", run, "--layer", "conv_1"],
        "curves.png": ["curves", run, run],
        "confusion.png": ["confusion", "--workdir", run],
    }
    for name, command in commands.items():
        assert cli.main(["viz", *command, "-o", str(tmp_path / name)]) == 0, name
        check_png(tmp_path / name, min_std=5.0)
    printed = capsys.readouterr().out
    assert "resized 64x48 -> 8x8" in printed
    assert (
        cli.main(
            [
                "viz",
                "filters",
                "--workdir",
                run,
                "--layer",
                "conv_9",
                "-o",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    assert "conv layers are conv_0, conv_1" in capsys.readouterr().err
    restored = train.restore(digits_run)
    maps = viz.feature_maps(
        restored.model, restored.spec, np.zeros((8, 8, 1), np.float32)
    )
    assert [n for n, _ in maps] == ["input", "conv_0", "conv_1", "pool_2"]
