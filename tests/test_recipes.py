"""Preset recipes: their data, how a run config applies them (precedence), the CLI's
--recipe and the summary listing, every error path, and the book's MNIST figure."""

import json

import pytest

from jaxcnn import cli, models, optim, recipes
from jaxcnn.errors import SpecError
from jaxcnn.spec import RunConfig, TrainConfig


def _train_config(*argv):
    args = cli.build_parser().parse_args(["train", *argv])
    return cli.train_config_from_args(args)


@pytest.mark.parametrize(
    "recipe", [r for by_name in recipes.RECIPES.values() for r in by_name.values()]
)
def test_every_recipe_belongs_to_a_preset_and_applies_cleanly(recipe):
    assert recipe.model in models.PRESETS
    assert recipes.RECIPES[recipe.model][recipe.name] is recipe
    assert recipe.source and recipe.reports
    config = RunConfig().with_overrides(
        {"model.name": recipe.model, "train.recipe": recipe.name}
    )
    for path, value in recipe.settings.items():
        section, _, field = path.partition(".")
        got = getattr(getattr(config, section), field)
        assert got == (tuple(value) if isinstance(value, list) else value), path
    # the schedule it describes can be built (step epochs inside the run, ...)
    optim.make_schedule(config.optim, steps_per_epoch=351, epochs=config.train.epochs)


def test_recipes_are_read_only():
    with pytest.raises(TypeError):
        recipes.KERAS_MNIST_BOOK.settings["optim.lr"] = 1.0


def test_the_book_recipe_is_the_books_training():
    config = _train_config("--model", "keras_mnist", "--recipe", "book")
    assert config.train.recipe == "book"
    assert (config.optim.optimizer, config.optim.lr) == ("rmsprop", 1e-3)
    assert config.optim.momentum is None and config.optim.epsilon is None  # Keras's
    assert (config.train.batch_size, config.train.epochs) == (64, 5)
    assert config.data.dataset == "mnist"
    assert config.data.val_split == "train[90%:]"  # all 60,000 images train
    assert not config.data.standardize and config.optim.schedule == "constant"


def test_the_resnet_paper_recipe_converts_iterations_to_epochs():
    recipe = recipes.lookup("resnet_cifar", "paper")
    steps = 45_000 // recipe.settings["train.batch_size"]
    assert steps == 351
    first, second = recipe.settings["optim.step_epochs"]
    # 32k, 48k and 64k iterations, each to the nearest epoch
    assert round(32_000 / steps) == first and round(48_000 / steps) == second
    assert round(64_000 / steps) == recipe.settings["train.epochs"]


def test_precedence_defaults_recipe_file_flags_set(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "keras_mnist"\n[train]\nepochs = 2\n[optim]\nlr = 0.01\n')
    # the file beats the recipe; the recipe beats the defaults
    config = _train_config("--config", str(path), "--recipe", "book")
    assert (config.train.epochs, config.optim.lr) == (2, 0.01)
    assert (config.train.batch_size, config.optim.optimizer) == (64, "rmsprop")
    # flags beat the file and the recipe; --set beats the flags
    config = _train_config(
        "--config",
        str(path),
        "--set",
        "train.recipe=book",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--set",
        "train.batch_size=16",
    )
    assert (config.train.epochs, config.train.batch_size) == (3, 16)
    assert (config.optim.lr, config.data.dataset) == (0.01, "mnist")
    # a recipe named in the file: the same order
    path.write_text(
        '[model]\nname = "keras_mnist"\n[train]\nrecipe = "book"\nepochs = 2\n'
    )
    config = _train_config("--config", str(path), "--lr", "0.5")
    assert (config.train.epochs, config.optim.lr, config.train.batch_size) == (
        2,
        0.5,
        64,
    )


def test_a_recipe_named_on_the_command_line_follows_the_model_given_there(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "lenet5"\n')
    config = _train_config(
        "--config", str(path), "--model", "keras_mnist", "--recipe", "book"
    )
    assert (config.model.name, config.train.recipe) == ("keras_mnist", "book")
    assert config.train.batch_size == 64
    # the file may name the recipe of the model the command line names
    path.write_text('[train]\nrecipe = "book"\nepochs = 2\n')
    config = _train_config("--config", str(path), "--model", "keras_mnist")
    assert (config.train.recipe, config.train.epochs, config.train.batch_size) == (
        "book",
        2,
        64,
    )


def test_config_json_round_trip_keeps_the_recipe_and_the_values():
    config = _train_config(
        "--model", "keras_mnist", "--recipe", "book", "--epochs", "1"
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["train"]["recipe"] == "book"
    assert RunConfig.from_dict(data) == config  # the explicit epochs survive


def test_a_recipe_override_lies_over_the_config_and_under_its_sibling_overrides():
    base = RunConfig().with_overrides({"model.name": "keras_mnist", "optim.lr": 0.5})
    config = base.with_overrides({"optim.momentum": 0.5, "train.recipe": "book"})
    assert (config.optim.lr, config.optim.momentum) == (1e-3, 0.5)
    # a sweep point may switch model and recipe together
    config = config.with_overrides(
        {"model.name": "resnet_cifar", "train.recipe": "paper"}
    )
    assert (config.train.recipe, config.optim.lr) == ("paper", 0.1)
    # clearing the name keeps the values
    cleared = config.override("train.recipe", None)
    assert cleared.train.recipe is None and cleared.optim.lr == 0.1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"model.name": "keras_mnist", "train.recipe": "nope"},
            "train.recipe=\"nope\": preset 'keras_mnist' has no recipe 'nope'; its "
            "recipes are book",
        ),
        (
            {"model.name": "simple_cnn", "train.recipe": "book"},
            "train.recipe=\"book\": model 'simple_cnn' has no published recipes; "
            "recipes belong to presets, and the presets with recipes are keras_mnist: "
            "book; resnet_cifar: paper",
        ),
        (
            {"model.name": "lenet5", "train.recipe": "book"},
            "model 'lenet5' has no published recipes",
        ),
        (
            {"model.name": "my_net.toml", "train.recipe": "book"},
            "model 'my_net.toml' has no published recipes",
        ),
        (
            {"train.recipe": 3},
            "field 'recipe' must be a string or null (omit it), got 3",
        ),
    ],
)
def test_bad_recipes_say_what_is_valid(overrides, message):
    with pytest.raises(SpecError) as e:
        RunConfig().with_overrides(overrides)
    assert message in str(e.value)


def test_changing_the_model_under_a_recipe_is_an_error():
    config = RunConfig().with_overrides(
        {"model.name": "keras_mnist", "train.recipe": "book"}
    )
    with pytest.raises(SpecError, match="model 'lenet5' has no published recipes"):
        config.override("model.name", "lenet5")


def test_inline_specs_and_direct_construction_are_checked():
    spec = models.preset("keras_mnist").to_dict()
    with pytest.raises(SpecError, match="an inline model spec has no published"):
        RunConfig.from_dict(
            {
                "model": {"name": "keras_mnist", "spec": spec},
                "train": {"recipe": "book"},
            }
        )
    with pytest.raises(SpecError, match="model 'digits_cnn' has no published"):
        RunConfig(train=TrainConfig(recipe="book"))


def test_a_file_with_an_unknown_recipe_names_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "keras_mnist"\n[train]\nrecipe = "paper"\n')
    with pytest.raises(SpecError) as e:
        _train_config("--config", str(path))
    assert str(e.value).startswith(
        f"{path}: train.recipe=\"paper\": preset 'keras_mnist'"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--model", "keras_mnist", "--recipe", "nope"],
            "error: train.recipe=\"nope\": preset 'keras_mnist' has no recipe 'nope'; "
            "its recipes are book\n",
        ),
        (
            ["--model", "simple_cnn", "--recipe", "book"],
            "error: train.recipe=\"book\": model 'simple_cnn' has no published recipes",
        ),
        (
            ["--model", "vgg_cifar", "--set", "train.recipe=book"],
            "error: train.recipe=\"book\": model 'vgg_cifar' has no published recipes",
        ),
    ],
)
def test_cli_recipe_errors_exit_2(capsys, argv, message):
    assert cli.main(["train", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and "Traceback" not in err


def test_summary_lists_the_recipes(capsys):
    assert cli.main(["summary", "keras_mnist"]) == 0
    out = capsys.readouterr().out
    assert "Recipes (jaxcnn train --model keras_mnist --recipe NAME):" in out
    assert "  book: F. Chollet, Deep Learning with Python, 1st ed." in out
    assert "    reports: test accuracy 0.991" in out
    assert 'optim.optimizer="rmsprop"' in out and "train.batch_size=64" in out
    assert cli.main(["summary", "keras_mnist", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipes"] == [recipes.KERAS_MNIST_BOOK.to_dict()]
    assert data["recipes"][0]["settings"]["train.epochs"] == 5


@pytest.mark.parametrize("model", ["lenet5", "simple_cnn"])
def test_summary_of_a_model_without_recipes(capsys, model):
    assert cli.main(["summary", model]) == 0
    assert "Recipes" not in capsys.readouterr().out
    assert cli.main(["summary", model, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipes"] == []


@pytest.mark.slow
def test_the_book_recipe_reaches_the_books_test_accuracy(tmp_path, tfds_dir):
    """keras_mnist on MNIST with --recipe book: 5 epochs, >= 0.990 test accuracy."""
    workdir = tmp_path / "book"
    argv = ["train", "--model", "keras_mnist", "--dataset", "mnist", "--recipe", "book"]
    argv += ["--data-dir", str(tfds_dir), "--workdir", str(workdir), "--quiet"]
    assert cli.main(argv) == 0
    record = json.loads((workdir / "config.json").read_text())
    assert record["run"]["train"]["recipe"] == "book"
    assert record["dataset"]["train_examples"] == 60_000  # as the book: no carve-out
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["epochs"] == 5
    assert summary["test_accuracy"] >= 0.990, summary


def test_a_sweep_base_and_a_sweep_axis_apply_recipes(tmp_path):
    from jaxcnn.sweep import config as sweep_config
    from jaxcnn.sweep import plan

    path = tmp_path / "sweep.toml"
    path.write_text(
        'model = "keras_mnist"\n[train]\nrecipe = "book"\nepochs = 1\n'
        '[sweep.grid]\n"optim.lr" = [0.01, 0.001]\n'
    )
    sweep = sweep_config.load_sweep(path)
    base = sweep.base
    assert (base.train.recipe, base.train.epochs, base.train.batch_size) == (
        "book",
        1,
        64,
    )
    trial = base.with_overrides(sweep.points[0])
    assert (trial.optim.lr, trial.optim.optimizer) == (0.01, "rmsprop")
    plain = RunConfig().with_overrides({"model.name": "keras_mnist"})
    assert plan.check_trial(plain, {"train.recipe": "book"}).error is None
    bad = plan.check_trial(plain, {"train.recipe": "paper"})
    assert "preset 'keras_mnist' has no recipe 'paper'" in bad.error


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"model.filters": 8}, "setting 'model.filters' must be data.X, optim.X or"),
        ({"lr": 0.1}, "setting 'lr' must be data.X, optim.X or train.X"),
        ({"train.recipe": "x"}, "a recipe cannot name a recipe"),
    ],
)
def test_a_recipe_sets_only_run_settings(settings, message):
    with pytest.raises(SpecError, match=message):
        recipes.Recipe("x", "keras_mnist", "a source", "a figure", settings)
