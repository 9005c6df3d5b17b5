"""jaxcnn.spec: round trips through dict / JSON / TOML, every parse / validation error,
the choice tuples and the precedence rule (defaults < recipe < file < flags)."""

import json
import pathlib
import tempfile
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn import cli, models, recipes, spec
from jaxcnn.errors import SpecError
from jaxcnn.spec import (
    ConvSpec,
    DenseSpec,
    GlobalPoolSpec,
    ModelConfig,
    ModelSpec,
    NormSpec,
    OptimConfig,
    PoolSpec,
    ResidualSpec,
    RunConfig,
    TrainConfig,
    layer_from_dict,
    load_run_config,
    load_spec_file,
    parse_override,
)

KERAS_TOML = """
input_shape = [28, 28, 1]        # H, W, C
num_classes = 10
layers = [
  { type = "conv", filters = 32, kernel = 3, activation = "relu" },
  { type = "pool", pool = "max", window = 2 },
  { type = "conv", filters = 64, kernel = 3, activation = "relu" },
  { type = "pool", pool = "max", window = 2 },
  { type = "conv", filters = 64, kernel = 3, activation = "relu" },
  { type = "flatten" },
  { type = "dense", units = 64, activation = "relu" },
  { type = "dense", units = 10 },
]
"""


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    return repr(value)


def _to_toml(data):
    return "\n".join(f"{k} = {_toml_value(v)}" for k, v in data.items()) + "\n"


@pytest.mark.parametrize("name", [*models.PRESETS, "simple_cnn"])
def test_round_trip_dict_json_toml(name, tmp_path):
    spec = models.preset(name)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec.from_dict(json.loads(spec.to_json())) == spec
    (tmp_path / "m.json").write_text(spec.to_json())
    (tmp_path / "m.toml").write_text(_to_toml(spec.to_dict()))
    assert load_spec_file(tmp_path / "m.json") == spec
    assert load_spec_file(tmp_path / "m.toml") == spec


def test_design_doc_toml_is_keras_mnist(tmp_path):
    path = tmp_path / "keras.toml"
    path.write_text(KERAS_TOML)
    spec = load_spec_file(path)
    assert spec.name == "keras"  # the file stem when no name is given
    assert spec.layers == models.preset("keras_mnist").layers
    assert spec.layers[1].stride == (2, 2)  # stride defaults to the window


def test_array_of_tables_syntax(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text(
        'input_shape = [8, 8, 1]\nnum_classes = 2\n[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = 2\n'
    )
    assert [layer.type for layer in load_spec_file(path).layers] == ["flatten", "dense"]


def test_python_conveniences():
    conv = ConvSpec(filters=4, kernel=5, stride=[2, 1], padding=1)
    assert conv.kernel == (5, 5) and conv.stride == (2, 1) and conv.padding == (1, 1)
    spec = ModelSpec([8, 8, 1], 2, [{"type": "flatten"}, DenseSpec(units=2)])
    assert spec.input_shape == (8, 8, 1) and isinstance(spec.layers, tuple)
    hash(spec)  # usable as a static (jit) argument
    res = ResidualSpec(layers=[conv])
    assert isinstance(res.layers, tuple)


def test_residual_round_trip_and_inner_names():
    data = {
        "type": "residual",
        "activation": "relu",
        "layers": [{"type": "conv", "filters": 2, "padding": "same"}],
    }
    layer = layer_from_dict(data, "layer 3")
    assert layer_from_dict(layer.to_dict()) == layer
    with pytest.raises(
        SpecError, match=r"^layer 3\.1 \(conv\): field 'filters' must be >= 1, got 0"
    ):
        layer_from_dict(
            {
                "type": "residual",
                "layers": [{"type": "flatten"}, {"type": "conv", "filters": 0}],
            },
            "layer 3",
        )


def test_norm_scale_round_trips_and_defaults_to_a_scale():
    """`scale = false`: a norm without a learned scale (Keras's scale=False)."""
    assert NormSpec().scale is True
    layer = layer_from_dict({"type": "norm", "scale": False, "epsilon": 1e-3})
    assert layer == NormSpec(scale=False, epsilon=1e-3)
    assert layer.to_dict()["scale"] is False
    assert layer_from_dict(json.loads(json.dumps(layer.to_dict()))) == layer


LAYER_ERRORS = [
    (
        {"type": "conv", "filters": 8, "kernal": 3},
        "layer 2 (conv): unknown key 'kernal'; valid keys are filters, kernel",
    ),
    (
        {"type": "conv", "filters": "8"},
        "layer 2 (conv): field 'filters' must be an int, got \"8\"",
    ),
    (
        {"type": "conv", "filters": 8, "kernel": [3, 3, 3]},
        "layer 2 (conv): field 'kernel' must be an int or [h, w]",
    ),
    (
        {"type": "conv", "filters": 8, "padding": "full"},
        'layer 2 (conv): field \'padding\' must be "valid", "same"',
    ),
    (
        {"type": "conv", "filters": 8, "padding": -1},
        "layer 2 (conv): field 'padding' must be >= 0, got [-1, -1]",
    ),
    (
        {"type": "conv", "filters": 8, "stride": 0},
        "layer 2 (conv): field 'stride' must be >= 1, got [0, 0]",
    ),
    (
        {"type": "conv", "filters": 6, "groups": 4},
        "layer 2 (conv): field 'filters'=6 must be divisible by groups=4",
    ),
    (
        {"type": "conv", "filters": 8, "activation": "swish"},
        "layer 2 (conv): field 'activation' must be \"relu\"",
    ),
    (
        {"type": "conv", "filters": 8, "use_bias": 1},
        "layer 2 (conv): field 'use_bias' must be true/false, got 1",
    ),
    (
        {"type": "conv", "filters": 8, "layers": []},
        "layer 2 (conv): unknown key 'layers'",
    ),
    ({"type": "conv"}, "layer 2 (conv): missing required field 'filters'"),
    (
        {"type": "pool", "pool": "median"},
        'layer 2 (pool): field \'pool\' must be "max" | "avg"',
    ),
    (
        {"type": "pool", "window": 0},
        "layer 2 (pool): field 'window' must be >= 1, got [0, 0]",
    ),
    (
        {"type": "pool", "pool": "lp", "p": 0},
        "layer 2 (pool): field 'p' must be > 0, got 0.0",
    ),
    (
        {"type": "global_pool", "pool": "sum"},
        'layer 2 (global_pool): field \'pool\' must be "max" | "avg", got "sum"',
    ),
    ({"type": "norm", "norm": "instance"}, "layer 2 (norm): field 'norm' must be"),
    (
        {"type": "norm", "momentum": 1.0},
        "layer 2 (norm): field 'momentum' must be in [0, 1), got 1.0",
    ),
    (
        {"type": "norm", "scale": "no"},
        "layer 2 (norm): field 'scale' must be true/false",
    ),
    (
        {"type": "norm", "groups": 0},
        "layer 2 (norm): field 'groups' must be >= 1, got 0",
    ),
    (
        {"type": "dropout", "rate": 1.5},
        "layer 2 (dropout): field 'rate' must be in [0, 1), got 1.5",
    ),
    (
        {"type": "dense", "units": 0},
        "layer 2 (dense): field 'units' must be >= 1, got 0",
    ),
    ({"type": "dense"}, "layer 2 (dense): missing required field 'units'"),
    (
        {"type": "activation", "activation": "swish"},
        "layer 2 (activation): field 'activation' must be",
    ),
    (
        {"type": "residual", "layers": []},
        "layer 2 (residual): field 'layers' must hold at least one layer",
    ),
    (
        {"type": "residual", "layers": "conv"},
        "layer 2 (residual): field 'layers' must be a list of layer tables",
    ),
    (
        {"type": "convolution"},
        "layer 2: unknown layer type 'convolution'; valid types are conv, pool",
    ),
    ({"filters": 3}, "layer 2: missing required field 'type' (one of conv, pool,"),
    ({"type": 3}, "layer 2: field 'type' must be one of conv, pool,"),
    (
        {"type": ["conv"]},
        "layer 2: field 'type' must be one of conv, pool, global_pool, norm, dropout, activation, flatten, dense, residual, branches; got [\"conv\"]",
    ),
    ("conv", "layer 2: expected a table like"),
]


@pytest.mark.parametrize("data, message", LAYER_ERRORS)
def test_layer_errors_name_index_kind_field_and_value(data, message):
    spec = {
        "input_shape": [8, 8, 1],
        "num_classes": 2,
        "layers": [{"type": "flatten"}, {"type": "flatten"}, data],
    }
    with pytest.raises(SpecError) as excinfo:
        ModelSpec.from_dict(spec)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"num_classes": 2, "layers": []},
            "model spec: missing required key 'input_shape'",
        ),
        (
            {"input_shape": [8, 8], "num_classes": 2, "layers": []},
            "model spec: field 'input_shape' must be",
        ),
        (
            {
                "input_shape": [8, 0, 1],
                "num_classes": 2,
                "layers": [{"type": "flatten"}],
            },
            "input_shape must be [H, W, C] of positive ints, got [8, 0, 1]",
        ),
        (
            {
                "input_shape": [8, 8, 1],
                "num_classes": 1,
                "layers": [{"type": "flatten"}],
            },
            "num_classes must be >= 2, got 1",
        ),
        (
            {"input_shape": [8, 8, 1], "num_classes": 2, "layers": []},
            "a model needs at least one layer",
        ),
        (
            {"input_shape": [8, 8, 1], "num_classes": 2, "layers": "conv"},
            "'layers' must be a list of layer tables",
        ),
        (
            {"input_shape": [8, 8, 1], "num_classes": 2, "layers": [], "colour": 1},
            "model spec: unknown key 'colour'",
        ),
        ([1, 2], "a model spec must be a table/object, got list"),
    ],
)
def test_model_spec_errors(data, message):
    with pytest.raises(SpecError) as excinfo:
        ModelSpec.from_dict(data)
    assert message in str(excinfo.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'input_shape = [8, 8, 1]\nnum_classes = 2\nlayers = [{ type = "dense", units = "x" }]\n'
    )
    with pytest.raises(
        SpecError,
        match=r"bad\.toml: layer 0 \(dense\): field 'units' must be an int, got \"x\"",
    ):
        load_spec_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SpecError, match="broken.json: not valid JSON"):
        load_spec_file(broken)
    other = tmp_path / "spec.yaml"
    other.write_text("a: 1")
    with pytest.raises(
        SpecError, match="unknown file type '.yaml'; use .toml or .json"
    ):
        load_spec_file(other)


def test_run_config_round_trip_and_overrides(tmp_path):
    config = RunConfig.from_dict(
        {
            "model": {"name": "simple_cnn", "args": {"filters": 16}},
            "optim": {"lr": 0.01, "step_epochs": [3, 6]},
            "train": {"epochs": 2, "kernels": "xla"},
        }
    )
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    changed = config.override("model.stride", 2).override("optim.lr", 0.5)
    assert (
        changed.model.args == {"filters": 16, "stride": 2} and changed.optim.lr == 0.5
    )
    assert models.load_spec(changed.model) == models.simple_cnn(filters=16, stride=2)
    inline = RunConfig(model=ModelConfig(name="mine", spec=models.preset("digits_cnn")))
    assert RunConfig.from_dict(inline.to_dict()) == inline
    path = tmp_path / "run.toml"
    path.write_text('[model]\nname = "keras_mnist"\n[train]\nepochs = 3\n')
    assert load_run_config(path).train.epochs == 3
    # optimiser fields left out stay None (the optimiser's own default) through JSON
    assert config.optim.momentum is config.optim.epsilon is None
    assert config.to_dict()["optim"]["weight_decay"] is None
    path.write_text(
        "[optim]\noptimizer = 'rmsprop'\nmomentum = 0.9\nweight_decay = 0\n"
    )
    optim = load_run_config(path).optim
    assert (optim.momentum, optim.weight_decay, optim.epsilon) == (0.9, 0.0, None)
    assert RunConfig().override("optim.epsilon", 1e-8).optim.epsilon == 1e-8
    assert parse_override("optim.lr=0.01") == ("optim.lr", 0.01)
    assert parse_override("model.pool=avg") == ("model.pool", "avg")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"optimizer": {}}, "unknown section 'optimizer'"),
        ({"optim": {"lr": -1}}, "optim.lr must be > 0, got -1"),
        ({"optim": {"momentum": 1.0}}, "optim.momentum must be in [0, 1), got 1.0"),
        ({"optim": {"epsilon": 0.0}}, "optim.epsilon must be > 0, got 0.0"),
        ({"optim": {"weight_decay": -1}}, "optim.weight_decay must be >= 0, got -1"),
        ({"optim": {"l2": -0.1}}, "optim.l2 must be >= 0, got -0.1"),
        ({"optim": {"momentum": "high"}}, "[optim]: field 'momentum' must be"),
        ({"train": {"epochs": 0}}, "train.epochs must be >= 1, got 0"),
        (
            {"train": {"kernels": "cuda"}},
            '[train]: field \'kernels\' must be "auto" | "xla" | "fast"',
        ),
        (
            {"data": {"val_fraction": 1.5}},
            "data.val_fraction must be in (0, 1), got 1.5",
        ),
        ({"model": 3}, "[model] must be a table"),
    ],
)
def test_run_config_errors(data, message):
    with pytest.raises(SpecError) as excinfo:
        RunConfig.from_dict(data)
    assert message in str(excinfo.value)


def test_override_errors():
    with pytest.raises(SpecError, match="paths look like section.field"):
        RunConfig().override("lr", 0.1)
    with pytest.raises(SpecError, match="--set expects key=value"):
        parse_override("lr")


def test_pool_stride_defaults_to_window():
    assert PoolSpec(window=3).stride == (3, 3)
    assert PoolSpec(window=3, stride=1).stride == (1, 1)


# --------------------------------------------------------------------------- enums
@pytest.mark.parametrize(
    "cls, field, kinds",
    [
        (PoolSpec, "pool", spec.POOL_KINDS),
        (GlobalPoolSpec, "pool", spec.GLOBAL_POOL_KINDS),
        (NormSpec, "norm", spec.NORM_KINDS),
        (ConvSpec, "activation", spec.ACTIVATIONS),
        (ConvSpec, "init", spec.CONV_INITS),
        (OptimConfig, "optimizer", spec.OPTIMIZERS),
        (OptimConfig, "schedule", spec.SCHEDULES),
        (TrainConfig, "kernels", spec.KERNELS),
        (TrainConfig, "precision", spec.PRECISIONS),
    ],
)
def test_each_choice_tuple_is_its_fields_literal_type(cls, field, kinds):
    literal = typing.get_type_hints(cls)[field]
    assert typing.get_args(literal) == kinds
    # the error for a bad choice lists exactly these kinds
    with pytest.raises(SpecError) as e:
        cls(**({"filters": 1} if cls is ConvSpec else {}), **{field: "nope"})
    assert " | ".join(json.dumps(k) for k in kinds) in str(e.value)


def test_every_optimizer_has_its_state_slots():
    assert set(spec.OPTIMIZER_SLOTS) == set(spec.OPTIMIZERS)


# --------------------------------------------------------------------------- precedence
# Fields the property test sets, with values that differ from the defaults and from the
# keras_mnist "book" recipe where they can.
LAYER_VALUES = {
    "optim.lr": st.sampled_from([0.5, 0.01, 3e-4]),
    "optim.optimizer": st.sampled_from(["sgd", "adam", "nesterov"]),
    "train.epochs": st.integers(1, 9),
    "train.batch_size": st.sampled_from([8, 16, 128]),
    "train.seed": st.integers(0, 5),
    "data.standardize": st.booleans(),
    "data.dataset": st.sampled_from(["fashion_mnist", "digits"]),
}


def _nested(paths):
    table = {}
    for path, value in paths.items():
        section, _, field = path.partition(".")
        table.setdefault(section, {})[field] = value
    return table


@st.composite
def _layers(draw):
    """A config file (paths), flags (paths) and the recipe the layers name."""
    file = draw(st.dictionaries(st.sampled_from(list(LAYER_VALUES)), st.none()))
    flags = draw(st.dictionaries(st.sampled_from(list(LAYER_VALUES)), st.none()))
    file = {path: draw(LAYER_VALUES[path]) for path in file}
    flags = {path: draw(LAYER_VALUES[path]) for path in flags}
    # the model: in the file, in the flags, or both (the flags' one wins)
    model_in = draw(st.sampled_from(["file", "flags", "both"]))
    if model_in in ("file", "both"):
        file["model.name"] = "lenet5" if model_in == "both" else "keras_mnist"
    if model_in in ("flags", "both"):
        flags["model.name"] = "keras_mnist"
    recipe_in = draw(st.sampled_from(["none", "file", "flags", "both"]))
    if recipe_in in ("file", "both"):
        file["train.recipe"] = "book"
    if recipe_in in ("flags", "both"):
        flags["train.recipe"] = "book"
    return file, flags, recipe_in != "none"


def _expected(file, flags, recipe):
    """Each field from the highest layer that sets it: defaults < recipe < file < flags."""
    defaults = RunConfig().to_dict()
    values = {f"{s}.{f}": v for s, table in defaults.items() for f, v in table.items()}
    if recipe:
        values.update(recipes.lookup("keras_mnist", "book").settings)
    values.update(file)
    values.update(flags)
    return values


def _check_layers(config, expected):
    table = config.to_dict()
    for path, value in expected.items():
        section, _, field = path.partition(".")
        assert table[section][field] == value, path


@settings(max_examples=60, deadline=None, derandomize=True)
@given(_layers())
def test_resolve_takes_each_field_from_the_highest_layer(layers):
    file, flags, recipe = layers
    config = spec.resolve(_nested(file), flags)
    _check_layers(config, _expected(file, flags, recipe))
    # a file alone is from_dict; flags naming no recipe are overrides on its config
    file_alone = "train.recipe" not in file or file.get("model.name") == "keras_mnist"
    if "train.recipe" not in flags and file_alone:
        assert RunConfig.from_dict(_nested(file)).with_overrides(flags) == config


@settings(max_examples=25, deadline=None, derandomize=True)
@given(_layers())
def test_the_command_line_follows_the_same_rule(layers):
    file, flags, recipe = layers
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp, "run.toml")
        path.write_text(
            "".join(
                f"[{section}]\n{_to_toml(table)}"
                for section, table in _nested(file).items()
            )
        )
        argv = ["train", "--config", str(path)]
        for key, value in flags.items():
            argv += ["--set", f"{key}={_toml_value(value)}"]
        args = cli.build_parser().parse_args(argv)
        config = cli.train_config_from_args(args)
    assert config == spec.resolve(_nested(file), flags)
    _check_layers(config, _expected(file, flags, recipe))


def test_a_base_config_stands_where_the_defaults_stand():
    base = spec.resolve({"model": "keras_mnist", "optim": {"lr": 0.5}})
    # a recipe named over a base lies over its values and under the other flags
    config = spec.resolve(flags={"train.recipe": "book", "train.epochs": 2}, base=base)
    assert (config.optim.lr, config.train.epochs, config.train.batch_size) == (
        1e-3,
        2,
        64,
    )
    # a recipe only the base names is not applied again over the flags
    again = spec.resolve(flags={"train.batch_size": 8}, base=config)
    assert (again.train.recipe, again.train.batch_size, again.train.epochs) == (
        "book",
        8,
        2,
    )
    # clearing the recipe keeps its values; a file over a base overrides it field by field
    cleared = spec.resolve({"train": {"recipe": None}}, base=config)
    assert cleared.train.recipe is None and cleared.optim.optimizer == "rmsprop"
    assert spec.resolve({"optim": {"lr": 0.2}}, base=config).optim.lr == 0.2
    # model knobs that are no ModelConfig field go to model.args, later flags win
    family = spec.resolve(
        {"model": {"name": "simple_cnn", "args": {"filters": 8, "depth": 2}}},
        {"model.filters": 16, "model.args.stride": 2},
    )
    assert family.model.args == {"filters": 16, "depth": 2, "stride": 2}


def test_a_sweep_file_and_its_smoke_settings_follow_the_rule(tmp_path):
    from jaxcnn import sweep  # Optuna: only this test needs it

    path = tmp_path / "sweep.toml"
    path.write_text(
        'model = "keras_mnist"\n[train]\nrecipe = "book"\nepochs = 3\n'
        "[sweep.smoke]\n'train.epochs' = 1\n'optim.lr' = 0.5\n"
        "[sweep.grid]\n'train.seed' = [0, 1]\n"
    )
    table = {"model": "keras_mnist", "train": {"recipe": "book", "epochs": 3}}
    assert sweep.load_sweep(path).base == spec.resolve(table)
    smoke = sweep.load_sweep(path, smoke=True).base
    assert smoke == spec.resolve(table, {"train.epochs": 1, "optim.lr": 0.5})
    assert (smoke.train.epochs, smoke.optim.lr, smoke.train.batch_size) == (1, 0.5, 64)


@pytest.mark.parametrize(
    "file, flags, message",
    [
        ({}, {"lr": 0.1}, "cannot set 'lr': paths look like section.field"),
        ({"optim": 3}, {"optim.lr": 0.1}, "run config: [optim] must be a table, got 3"),
        ([1], {}, "a run config must be a table with [model]"),
        ({"optim": {"lr": 0.1}}, {"optim.lr": "fast"}, "[optim]: field 'lr' must be"),
        (
            {"model": "lenet5"},
            {"train.recipe": "book"},
            "model 'lenet5' has no published recipes",
        ),
    ],
)
def test_resolve_errors_name_the_layer_field(file, flags, message):
    with pytest.raises(SpecError) as e:
        spec.resolve(file, flags)
    assert message in str(e.value)
