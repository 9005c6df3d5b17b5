"""Bad spec files, run configs and --set values: a clear JaxcnnError, never a traceback.

Explicit cases check each message; hypothesis fuzzes every field of a spec file and of a
run config with wrong JSON types, huge sizes, deep nesting and random garbage.
"""

import contextlib
import copy
import io
import json
import pathlib
import tempfile

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from jaxcnn import cli, footprint, models, shapes, spec
from jaxcnn.errors import JaxcnnError, SpecError
from jaxcnn.spec import (
    MAX_NESTING,
    ConvSpec,
    DataConfig,
    ModelSpec,
    ResidualSpec,
    RunConfig,
    load_run_config,
    parse_override,
)

HEAD = [{"type": "flatten"}, {"type": "dense", "units": 10}]


def _spec(layers, input_shape=(8, 8, 1), **extra):
    return {
        "input_shape": list(input_shape)
        if isinstance(input_shape, tuple)
        else input_shape,
        "num_classes": 10,
        "layers": layers,
        **extra,
    }


def _cli(*argv):
    """cli.main in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _summary_of(path):
    """`jaxcnn summary FILE`; a failure must be exit 2 with a one-paragraph message."""
    code, out, err = _cli("summary", str(path))
    assert code in (0, 2), err
    if code == 2:
        assert out == "" and err.startswith("error: ") and "Traceback" not in err
        assert err.count("\n") == 1, err  # one paragraph
    return code, err


# --------------------------------------------------------------------------- wrong types
WRONG_TYPES = [
    (
        _spec([{"type": 3}, *HEAD]),
        "layer 0: field 'type' must be one of conv, pool, global_pool, norm, dropout, "
        "activation, flatten, dense, residual, branches; got 3",
    ),
    (_spec([{"type": {}}, *HEAD]), "layer 0: field 'type' must be one of conv"),
    (_spec([{}, *HEAD]), "layer 0: missing required field 'type' (one of conv, pool"),
    (
        _spec([{"type": "conv", "filters": "32"}, *HEAD]),
        "layer 0 (conv): field 'filters' must be an int, got \"32\"",
    ),
    (
        _spec([{"type": "conv", "filters": 4, "kernel": [3]}, *HEAD]),
        "layer 0 (conv): field 'kernel' must be an int or [h, w] pair of ints, got [3]",
    ),
    (
        _spec({}),
        "model spec: field 'layers' must be a list of layer tables, got {}",
    ),
    (
        _spec(HEAD, input_shape="28"),
        "model spec: field 'input_shape' must be a list of 3 ints, got \"28\"",
    ),
    (
        _spec(HEAD, input_shape=[8, None, 1]),
        "field 'input_shape' must be a list of 3 ints, got [8, null, 1]",
    ),
    (
        _spec([{"type": "conv", "filters": None}, *HEAD]),
        "layer 0 (conv): field 'filters' must be an int, got null",
    ),
    (
        _spec([{"type": "conv", "filters": True}, *HEAD]),
        "layer 0 (conv): field 'filters' must be an int, got true",
    ),
    (
        _spec([{"type": "conv", "filters": 3.5}, *HEAD]),
        "layer 0 (conv): field 'filters' must be an int, got 3.5",
    ),
    (
        _spec([{"type": "pool", "window": False}, *HEAD]),
        "layer 0 (pool): field 'window' must be an int or [h, w] pair of ints, got false",
    ),
    (
        _spec([{"type": "dropout", "rate": "0.5"}, *HEAD]),
        "layer 0 (dropout): field 'rate' must be a finite number, got \"0.5\"",
    ),
    (
        _spec([{"type": "pool", "pool": "lp", "p": float("inf")}, *HEAD]),
        "layer 0 (pool): field 'p' must be a finite number, got Infinity",
    ),
    (
        _spec([{"type": "norm", "momentum": float("nan")}, *HEAD]),
        "layer 0 (norm): field 'momentum' must be a finite number, got NaN",
    ),
    (
        _spec([{"type": "residual", "layers": None}, *HEAD]),
        "layer 0 (residual): field 'layers' must be a list of layer tables, got null",
    ),
    (
        _spec([{"type": "residual", "layers": [[{"type": "flatten"}]]}, *HEAD]),
        'layer 0.0: expected a table like {type = "conv", ...}, got [{"type": "flatten"}]',
    ),
    (_spec(HEAD, name=["x"]), "model spec: field 'name' must be a string, got [\"x\"]"),
    ({**_spec(HEAD), "num_classes": "10"}, "field 'num_classes' must be an int"),
    ([_spec(HEAD)], "a model spec must be a table/object, got list"),
    (None, "a model spec must be a table/object, got NoneType"),
]


@pytest.mark.parametrize("data, message", WRONG_TYPES)
def test_wrong_json_types_are_spec_errors(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    code, err = _summary_of(path)
    assert code == 2 and message in err


def test_long_garbage_values_are_cut_in_messages():
    data = _spec([{"type": "conv", "filters": "x" * 10_000}, *HEAD])
    with pytest.raises(SpecError) as excinfo:
        ModelSpec.from_dict(data)
    assert len(str(excinfo.value)) < 200 and str(excinfo.value).endswith("xxx...")


def test_python_callers_get_the_same_checks():
    with pytest.raises(SpecError, match="field 'filters' must be an int, got \"32\""):
        ConvSpec(filters="32")
    with pytest.raises(SpecError, match="field 'input_shape' must be a list of 3 ints"):
        ModelSpec(input_shape=28, num_classes=10, layers=HEAD)
    with pytest.raises(SpecError, match="field 'dataset' must be a string, got 3"):
        DataConfig(dataset=3)
    # ints of any integral type and lists are normalised, as from a file
    conv = ConvSpec(filters=np.int64(4), kernel=[3, 3], padding=1)
    assert conv.filters == 4 and type(conv.filters) is int
    assert conv.kernel == (3, 3) and conv.padding == (1, 1)
    spec = ModelSpec([8, 8, 1], 10, HEAD)
    assert spec.input_shape == (8, 8, 1)


# --------------------------------------------------------------------------- blocks
CONV1 = {"type": "conv", "filters": 2, "kernel": 1}
BLOCK_ERRORS = [
    (
        [{"type": "branches", "branches": [[CONV1], [{**CONV1, "stride": 2}]]}],
        "layer 0 (2 branches, concat): branch 1 outputs 4x4x2 but branch 0 outputs "
        "8x8x2 (branch 0 8x8x2, branch 1 4x4x2); concatenation needs the same height "
        "and width in every branch",
    ),
    (
        [
            {
                "type": "branches",
                "join": "add",
                "branches": [[CONV1], [], [{**CONV1, "filters": 3}]],
            }
        ],
        "layer 0 (3 branches, add): branch 1 outputs 8x8x1 but branch 0 outputs 8x8x2 "
        "(branch 0 8x8x2, branch 1 8x8x1, branch 2 8x8x3); addition needs the same "
        "shape in every branch",
    ),
    (
        [{"type": "branches", "branches": [[CONV1]]}],
        "layer 0 (branches): field 'branches' must hold at least 2 branches (lists of "
        "layers), got 1",
    ),
    (
        [{"type": "branches", "branches": {"a": [CONV1]}}],
        "layer 0 (branches): field 'branches' must be a list of branches, each a list "
        'of layer tables, got {"a":',
    ),
    (
        [{"type": "branches", "branches": [CONV1, [CONV1]]}],
        "layer 0 (branches) branch 0: field 'layers' must be a list of layer tables, "
        'got {"type": "conv"',
    ),
    (
        [{"type": "branches", "branches": [[{"type": "conv", "filters": 0}], []]}],
        "layer 0.b0.0 (conv): field 'filters' must be >= 1, got 0",
    ),
    (
        [{"type": "branches", "join": "stack", "branches": [[], []]}],
        'layer 0 (branches): field \'join\' must be "concat" | "add", got "stack"',
    ),
    (
        [{"type": "branches", "branches": [[], []], "layers": []}],
        "layer 0 (branches): unknown key 'layers'; valid keys are join, activation",
    ),
    (
        [{"type": "flatten"}, {"type": "branches", "branches": [[], []]}],
        "layer 1 (2 branches, concat): input is flat (64 features) but branches need "
        "an HxWxC feature map",
    ),
    (
        [
            {
                "type": "branches",
                "branches": [[{"type": "flatten"}], [{"type": "flatten"}]],
            }
        ],
        "layer 0 (2 branches, concat): branch 0 outputs 64 features, but a branch must "
        "output an HxWxC feature map to concat",
    ),
    (
        [
            {
                "type": "residual",
                "projection_norm": True,
                "layers": [CONV1 | {"filters": 1}],
            }
        ],
        "layer 0 (residual): projection_norm = true, but the block keeps its input "
        "shape 8x8x1, so its skip path is the identity with no projection to "
        "normalise; remove projection_norm",
    ),
    (
        [{"type": "conv", "filters": 2, "padding": [[0, -1], [0, 0]]}],
        "layer 0 (conv): field 'padding' must be >= 0, got [0, -1, 0, 0]",
    ),
    (
        [{"type": "pool", "padding": [[0, 1], [0]]}],
        'layer 0 (pool): field \'padding\' must be "valid", "same", an int, an [h, w] '
        "pair of ints or [[top, bottom], [left, right]] of ints, got [[0, 1], [0]]",
    ),
    (
        [{"type": "pool", "pool": "max", "count_padding": True}],
        "layer 0 (pool): field 'count_padding' applies to avg pooling only, not 'max'; "
        "remove it",
    ),
    (
        [{"type": "activation", "activation": "relu7"}],
        'layer 0 (activation): field \'activation\' must be "relu" | "relu6" |',
    ),
]


@pytest.mark.parametrize("layers, message", BLOCK_ERRORS)
def test_bad_blocks_and_padding_name_the_layer(tmp_path, layers, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_spec([*layers, *HEAD])))
    code, err = _summary_of(path)
    assert code == 2 and message in err, err


def test_branch_nesting_counts_toward_the_limit():
    layer = {"type": "activation"}
    for i in range(MAX_NESTING + 1):
        kind = "residual" if i % 2 else "branches"
        layer = (
            {"type": "residual", "layers": [layer]}
            if kind == "residual"
            else {"type": "branches", "join": "add", "branches": [[layer], []]}
        )
    with pytest.raises(SpecError, match="blocks nest more than 32 deep"):
        ModelSpec.from_dict(_spec([layer, *HEAD]))


# --------------------------------------------------------------------------- nesting
def _nested(levels):
    layer = {"type": "activation", "activation": "relu"}
    for _ in range(levels):
        layer = {"type": "residual", "layers": [layer]}
    return _spec([layer, *HEAD])


def test_residual_nesting_up_to_the_limit_works(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(_nested(MAX_NESTING)))
    assert _summary_of(path)[0] == 0


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 300])
def test_deeper_residual_nesting_is_refused(tmp_path, levels):
    path = tmp_path / "deep.json"
    # json.dumps would itself recurse too deep for 300 levels: write the text directly
    text = '{"type": "activation"}'
    for _ in range(levels):
        text = f'{{"type": "residual", "layers": [{text}]}}'
    path.write_text(json.dumps(_spec(["LAYER", *HEAD])).replace('"LAYER"', text))
    code, err = _summary_of(path)
    assert code == 2
    assert "blocks nest more than 32 deep; at most 32 levels" in err


def test_python_built_nesting_is_refused_too():
    layer = ResidualSpec(layers=(ConvSpec(filters=1, padding="same"),))
    for _ in range(MAX_NESTING - 1):
        layer = ResidualSpec(layers=(layer,))
    with pytest.raises(SpecError, match="blocks nest more than 32 deep"):
        ResidualSpec(layers=(layer,))


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_files_nested_too_deeply_to_parse(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    deep = "[" * 5000 + "]" * 5000
    path.write_text(deep if suffix == ".json" else f"layers = {deep}\n")
    code, err = _summary_of(path)
    assert code == 2 and "lists/tables nest too deeply to read" in err
    assert "residual blocks may nest at most 32 levels" in err


def test_integers_too_long_to_parse(tmp_path):
    path = tmp_path / "long.json"
    path.write_text('{"num_classes": ' + "1" * 5000 + "}")
    code, err = _summary_of(path)
    assert code == 2 and "not valid JSON" in err


# --------------------------------------------------------------------------- sizes
BOUND = "must be <= 1,048,576 (2**20)"
HUGE = [
    ({"type": "conv", "filters": "HUGE"}, f"layer 0 (conv): field 'filters' {BOUND}"),
    (
        {"type": "conv", "filters": 4, "kernel": "HUGE", "padding": "same"},
        f"layer 0 (conv): field 'kernel' {BOUND}",
    ),
    ({"type": "conv", "filters": 4, "stride": "HUGE"}, f"field 'stride' {BOUND}"),
    ({"type": "conv", "filters": 4, "padding": "HUGE"}, f"field 'padding' {BOUND}"),
    ({"type": "conv", "filters": 4, "dilation": "HUGE"}, f"field 'dilation' {BOUND}"),
    ({"type": "conv", "filters": 4, "groups": "HUGE"}, f"field 'groups' {BOUND}"),
    ({"type": "pool", "window": "HUGE"}, f"layer 0 (pool): field 'window' {BOUND}"),
    ({"type": "norm", "groups": "HUGE"}, f"layer 0 (norm): field 'groups' {BOUND}"),
    ({"type": "dense", "units": "HUGE"}, f"layer 0 (dense): field 'units' {BOUND}"),
]


@pytest.mark.parametrize("huge", [10**30, 1e30, 10**9, 2**20 + 1])
@pytest.mark.parametrize("layer, message", HUGE)
def test_huge_layer_sizes_name_the_bound(tmp_path, huge, layer, message):
    layer = {k: huge if v == "HUGE" else v for k, v in layer.items()}
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(_spec([layer, *HEAD])))
    code, err = _summary_of(path)
    assert code == 2 and message in err


@pytest.mark.parametrize("huge", [10**30, 1e30, 2**20 + 1])
def test_huge_input_shape_and_classes_name_the_bound(tmp_path, huge):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(_spec(HEAD, input_shape=[8, huge, 1])))
    code, err = _summary_of(path)
    assert code == 2 and "input_shape must be at most 1,048,576 (2**20) per axis" in err
    path.write_text(json.dumps({**_spec(HEAD), "num_classes": huge}))
    code, err = _summary_of(path)
    assert code == 2 and "num_classes must be <= 1,048,576 (2**20)" in err


def test_sizes_at_the_bound_are_accepted():
    conv = ConvSpec(filters=2**20, kernel=(1, 2**20), padding=(2**20, 0))
    assert conv.filters == 2**20


def test_family_and_preset_arguments_are_bounded_before_building():
    with pytest.raises(SpecError, match=r"depth=1000000000 stages .* over the limit"):
        models.preset("simple_cnn", depth=10**9)
    with pytest.raises(SpecError, match=r"blocks_per_stage must be in 1\.\.1000"):
        models.preset("resnet_cifar", blocks_per_stage=10**9)
    with pytest.raises(SpecError, match="'width_multiplier' must be a finite number"):
        models.preset("simple_cnn", width_multiplier=float("inf"))


# --------------------------------------------------------------------------- run configs
RUN_CONFIG_ERRORS = [
    ('[train]\nepochs = "3"\n', "[train]: field 'epochs' must be an int, got \"3\""),
    ("[train]\nepoch = 3\n", "[train]: unknown key 'epoch'; valid keys are epochs"),
    (
        "[optim]\nlr = inf\n",
        "[optim]: field 'lr' must be a finite number, got Infinity",
    ),
    ("[optim]\nstep_epochs = 3\n", "field 'step_epochs' must be a list of ints, got 3"),
    ('[train]\nfreeze = "conv"\n', "field 'freeze' must be a list of strings"),
    ("[train]\nseed = " + "1" + "0" * 30 + "\n", "train.seed must fit in 64 bits"),
    ("[train]\nbatch_size = 1e30\n", "train.batch_size must fit in 64 bits"),
    ("[model]\nargs = 3\n", "[model]: field 'args' must be a table, got 3"),
    ("[model]\nspec = 3\n", "[model] spec: a model spec must be a table/object"),
    (
        "[model]\nspec = { input_shape = [8, 8], num_classes = 2, layers = [] }\n",
        "[model] spec: model spec: field 'input_shape' must be a list of 3 ints",
    ),
    ("optim = [1]\n", "run config: [optim] must be a table, got [1]"),
    ("[optimizer]\nlr = 1\n", "unknown section 'optimizer'"),
    ('[data]\ndataset = "huggingface:mnist"\n', "set data.allow_community = true"),
    ('[data]\ndataset = "mnist/foo=1"\n', "is not a TFDS dataset name"),
]


@pytest.mark.parametrize("text, message", RUN_CONFIG_ERRORS)
def test_run_config_file_errors(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as excinfo:
        load_run_config(path)
    assert str(excinfo.value).startswith(f"{path}: ") and message in str(excinfo.value)


def test_run_config_json_that_is_not_a_table(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("[1, 2]")
    with pytest.raises(
        SpecError, match=r"a run config must be a table .* got \[1, 2\]"
    ):
        load_run_config(path)


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.epochs=abc", "[train]: field 'epochs' must be an int, got \"abc\""),
        ("train.epochs=3.5", "[train]: field 'epochs' must be an int, got 3.5"),
        ("optim.lr=[1]", "[optim]: field 'lr' must be a finite number, got [1]"),
        ("optim.lr=nan", "[optim]: field 'lr' must be a finite number, got NaN"),
        ("train.batch_size=1e30", "train.batch_size must fit in 64 bits"),
        ("data.allow_community=yes", "field 'allow_community' must be true/false"),
        ("model.filters=x", "model 'simple_cnn': argument 'filters' must be an int"),
        ("model.filters=1e9", "simple_cnn: the last of depth=2 stages would have"),
        ("train.epochs=" + "[" * 3000, "field 'epochs' must be an int, got \"[[["),
    ],
)
def test_set_values_of_the_wrong_type(item, message):
    config = RunConfig().override("model.name", "simple_cnn")
    with pytest.raises(SpecError) as excinfo:
        config = config.override(*parse_override(item))
        models.load_spec(config.model)
    assert message in str(excinfo.value)


def test_train_command_with_a_bad_config_exits_2(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nepochs = [1]\n")
    code, out, err = _cli("train", "--config", str(path), "--quiet")
    assert code == 2 and "Traceback" not in err
    assert "[train]: field 'epochs' must be an int, got [1]" in err


def test_an_error_of_the_file_names_it_whatever_the_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[optim]\nlr = -1\n")
    code, out, err = _cli("train", "--config", str(path), "--epochs", "2", "--quiet")
    assert code == 2 and "Traceback" not in err
    assert f"{path}: [optim]: optim.lr must be > 0, got -1" in err


# --------------------------------------------------------------------------- datasets
@pytest.mark.parametrize(
    "name",
    [
        "digits",
        "mnist",
        "emnist/balanced",
        "mnist:3.0.1",
        "mnist:3.*.*",
        "cifar10_corrupted/brightness_1:3.0.0",
        "imagenet2012_subset/1pct",
    ],
)
def test_tfds_dataset_names(name):
    assert DataConfig(dataset=name).dataset == name


@pytest.mark.parametrize("name", ["mnist/foo=1", "", "mnist:3", "1mnist", "a b"])
def test_names_tfds_would_not_read_as_a_dataset(name):
    with pytest.raises(SpecError, match="is not a TFDS dataset name or a folder"):
        DataConfig(dataset=name)


@pytest.mark.parametrize("name", ["../mnist", "mnist/", "./images", "~/data/x"])
def test_paths_are_folder_datasets_not_tfds_names(name):
    assert spec.is_folder_dataset(name)
    assert DataConfig(dataset=name).dataset == name  # checked when loaded


def test_community_datasets_need_allow_community():
    with pytest.raises(
        SpecError,
        match=r'"huggingface:mnist" is a community dataset \(namespace \'huggingface\'\)'
        r".*set data.allow_community = true",
    ):
        DataConfig(dataset="huggingface:mnist")
    config = DataConfig(dataset="huggingface:mnist", allow_community=True)
    assert config.dataset == "huggingface:mnist"


# --------------------------------------------------------------------------- fuzz
HUGE_INTS = st.sampled_from([0, -1, 2**20, 2**20 + 1, 10**9, 2**63, 10**30, -(10**30)])
ODD_FLOATS = st.sampled_from([3.5, 1e30, -0.0, float("nan"), float("inf"), 1e-300])
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-5, 40)
    | HUGE_INTS
    | ODD_FLOATS
    | st.sampled_from(["32", "same", "valid", "conv", "residual", "relu", "max", ""])
    | st.text(max_size=6)
)
GARBAGE = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["type", "layers", "x", "filters"]), inner)
    ),
    max_leaves=6,
)


def _paths(value, path=()):
    """Every place in a JSON document: (), ("layers",), ("layers", 0), ..."""
    yield path
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        yield from _paths(item, (*path, key))


def _mutate(data, document):
    """A copy of `document` with one place replaced, deleted or given an extra key."""
    document = copy.deepcopy(document)
    path = data.draw(st.sampled_from(list(_paths(document))))
    if not path:
        return data.draw(GARBAGE)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "replace", "delete", "extra"]))
    if action == "delete":
        del parent[path[-1]]
    elif action == "extra" and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(["kernal", "x", "type"]))] = data.draw(GARBAGE)
    else:
        parent[path[-1]] = data.draw(GARBAGE)
    return document


SPEC_BASES = [
    models.preset("keras_mnist").to_dict(),
    models.preset("resnet_cifar", blocks_per_stage=1).to_dict(),
    _nested(3),
    # branch blocks, explicit asymmetric pool padding
    models.preset("squeezenet1_1", input_shape=(32, 32, 3), num_classes=10).to_dict(),
]
FUZZ = hypothesis.settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


@FUZZ
@hypothesis.given(data=st.data())
def test_fuzzed_spec_files_fail_only_with_jaxcnn_errors(data):
    document = _mutate(data, data.draw(st.sampled_from(SPEC_BASES)))
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "fuzz.json"
        path.write_text(json.dumps(document))
        try:
            summary = shapes.infer(models.load_spec(str(path)))
            footprint.memory_estimate(summary, 128)
        except JaxcnnError:
            pass
        _summary_of(path)


RUN_BASES = [
    RunConfig().to_dict(),
    RunConfig.from_dict(
        {
            "model": {"name": "simple_cnn", "args": {"filters": 8, "depth": 2}},
            "optim": {"step_epochs": [3, 6], "clip_norm": 1.0},
            "train": {"freeze": ["conv"], "init_from": "runs/x"},
        }
    ).to_dict(),
    RunConfig.from_dict(
        {"model": {"name": "mine", "spec": models.preset("digits_cnn").to_dict()}}
    ).to_dict(),
]


@FUZZ
@hypothesis.given(data=st.data())
def test_fuzzed_run_configs_fail_only_with_jaxcnn_errors(data):
    document = _mutate(data, data.draw(st.sampled_from(RUN_BASES)))
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "run.json"
        path.write_text(json.dumps(document))
        args = cli.build_parser().parse_args(["train", "--config", str(path)])
        try:
            config = cli.train_config_from_args(args)
            shapes.infer(models.load_spec(config.model))
        except JaxcnnError as e:
            assert "\n" not in str(e)


SET_KEYS = [
    f"{section}.{name}"
    for section, table in RunConfig().to_dict().items()
    for name in table
] + ["model.filters", "model.depth", "model.input_shape", "model.args.kernel", "x"]
SET_VALUES = st.sampled_from(
    ["3", "-1", "1e30", "nan", "inf", "[1, 2]", "{a = 1}", "true", '"s"', "[", ""]
) | st.text(max_size=8)


@FUZZ
@hypothesis.given(
    base=st.sampled_from(["digits_cnn", "simple_cnn"]),
    key=st.sampled_from(SET_KEYS),
    value=SET_VALUES,
)
def test_fuzzed_set_items_fail_only_with_jaxcnn_errors(base, key, value):
    config = RunConfig().override("model.name", base)
    try:
        config = config.override(*parse_override(f"{key}={value}"))
        shapes.infer(models.load_spec(config.model))
    except JaxcnnError:
        pass


def test_messages_name_a_bounded_list_and_count_the_rest():
    from jaxcnn.errors import listing

    assert listing(["a", "b"], 5) == "a, b"
    assert listing(["a", "b", "c", "d"], 2) == "a, b and 2 more"
    assert listing(["x: bad", "y: bad", "z: bad"], 1, sep="; ") == "x: bad; and 2 more"
