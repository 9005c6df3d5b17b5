"""Optimisers, schedules, frozen masks and the loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcnn import optim
from jaxcnn.errors import SpecError
from jaxcnn.spec import OptimConfig

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"]
SCHEDULES = [
    dict(schedule="constant"),
    dict(schedule="constant", warmup_epochs=1),
    dict(schedule="cosine"),
    dict(schedule="warmup_cosine", warmup_epochs=1),
    dict(schedule="step", step_epochs=(2, 3)),
    dict(schedule="onecycle"),
]


def _quadratic_params():
    return {"w": jnp.array([[2.0, -1.5], [0.5, 3.0]]), "b": jnp.array([1.0, -2.0])}


def _loss(params):
    return jnp.sum(params["w"] ** 2) + jnp.sum((params["b"] - 0.5) ** 2)


def _run(tx, params, steps):
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(_loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


# every optimiser with warmup+cosine, every schedule with momentum and adamw
CASES = [(name, SCHEDULES[3]) for name in OPTIMIZERS] + [
    (name, sched)
    for name in ("momentum", "adamw")
    for sched in SCHEDULES
    if sched is not SCHEDULES[3]
]


@pytest.mark.parametrize(
    "name, sched",
    CASES,
    ids=[f"{n}-{s['schedule']}{s.get('warmup_epochs', '')}" for n, s in CASES],
)
def test_every_optimizer_and_schedule_reduces_a_quadratic(name, sched):
    config = OptimConfig(
        optimizer=name, lr=0.05, weight_decay=1e-3, clip_norm=5.0, **sched
    )
    tx, schedule = optim.make_optimizer(config, steps_per_epoch=10, epochs=4)
    params = _quadratic_params()
    new_params, _ = _run(tx, params, 40)
    assert float(_loss(new_params)) < 0.7 * float(_loss(params))
    assert all(
        bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(new_params)
    )
    assert float(schedule(0)) >= 0.0


def _run_traced(config, params, steps, values):
    """`_run` with the transformation built inside the step from `values` arguments."""
    build = lambda v=None: optim.make_optimizer(  # noqa: E731
        config, steps_per_epoch=10, epochs=4, values=v
    )[0]
    state = build().init(params)

    def step(params, state, values):
        grads = jax.grad(_loss)(params)
        updates, state = build(values).update(grads, state, params)
        return optax.apply_updates(params, updates), state

    values = {k: jnp.float32(v) for k, v in values.items()}
    jitted = jax.jit(step)
    for _ in range(steps):
        params, state = jitted(params, state, values)
    return params, state, jitted.lower(params, state, values).as_text()


@pytest.mark.parametrize(
    "name, sched",
    CASES,
    ids=[f"{n}-{s['schedule']}{s.get('warmup_epochs', '')}" for n, s in CASES],
)
def test_traced_values_give_the_same_updates_and_one_program_for_any_value(name, sched):
    """The optimiser's numbers as arguments: the parameters and state of the numbers
    as constants, to float32 rounding (XLA folds constants together where it can, in
    another order), and one compiled program for other numbers."""
    config = OptimConfig(
        optimizer=name, lr=0.05, weight_decay=1e-3, l2=1e-4, clip_norm=5.0, **sched
    )
    values = optim.traced_values(config)
    assert ("lr" in values) == (sched["schedule"] != "onecycle")
    assert {"clip_norm", "l2", "weight_decay"} <= set(values)
    tx, _ = optim.make_optimizer(config, steps_per_epoch=10, epochs=4)
    params, state = _run(tx, _quadratic_params(), 12)
    traced, traced_state, program = _run_traced(config, _quadratic_params(), 12, values)
    for a, b in zip(
        jax.tree.leaves((params, state)),
        jax.tree.leaves((traced, traced_state)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert jax.tree.structure(state) == jax.tree.structure(traced_state)
    other = {k: v * 0.5 for k, v in values.items()}
    *_, other_program = _run_traced(config, _quadratic_params(), 1, other)
    assert other_program == program


def test_values_the_optimiser_does_not_take_are_refused():
    config = OptimConfig(optimizer="adam", lr=0.1)
    assert optim.traced_values(config) == {"lr": 0.1}
    with pytest.raises(SpecError, match=r"\['momentum'\].*takes \['lr'\]"):
        optim.make_optimizer(
            config, steps_per_epoch=10, epochs=1, values={"momentum": 0.9}
        )


def _cfg(**kw):
    return OptimConfig(lr=0.1, **kw)


def test_schedule_values_at_known_steps():
    spe, epochs = 10, 5
    sched = optim.make_schedule(
        _cfg(schedule="constant"), steps_per_epoch=spe, epochs=epochs
    )
    assert float(sched(0)) == pytest.approx(0.1) and float(sched(49)) == pytest.approx(
        0.1
    )

    sched = optim.make_schedule(
        _cfg(schedule="cosine"), steps_per_epoch=spe, epochs=epochs
    )
    assert float(sched(0)) == pytest.approx(0.1)
    assert float(sched(25)) == pytest.approx(0.05, rel=1e-5)  # halfway down the cosine
    assert float(sched(50)) == pytest.approx(0.0, abs=1e-7)

    sched = optim.make_schedule(
        _cfg(schedule="warmup_cosine", warmup_epochs=1),
        steps_per_epoch=spe,
        epochs=epochs,
    )
    assert float(sched(0)) == pytest.approx(0.0, abs=1e-7)
    assert float(sched(5)) == pytest.approx(0.05, rel=1e-5)
    assert float(sched(10)) == pytest.approx(0.1, rel=1e-5)  # warmup end = peak
    assert float(sched(30)) == pytest.approx(
        0.05, rel=1e-5
    )  # halfway through the decay
    assert float(sched(50)) == pytest.approx(0.0, abs=1e-7)

    sched = optim.make_schedule(
        _cfg(schedule="step", step_epochs=(2, 4), step_factor=0.5),
        steps_per_epoch=spe,
        epochs=epochs,
    )
    assert [float(sched(s)) for s in (0, 19, 20, 39, 40, 49)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    )

    sched = optim.make_schedule(
        _cfg(schedule="step", step_epochs=(3,), warmup_epochs=1),
        steps_per_epoch=spe,
        epochs=epochs,
    )
    assert [float(sched(s)) for s in (0, 5, 10, 29, 30)] == pytest.approx(
        [0.0, 0.05, 0.1, 0.1, 0.01]
    )

    sched = optim.make_schedule(
        _cfg(schedule="constant", warmup_epochs=0.5), steps_per_epoch=spe, epochs=epochs
    )
    assert [float(sched(s)) for s in (0, 5, 20)] == pytest.approx([0.0, 0.1, 0.1])

    sched = optim.make_schedule(
        _cfg(schedule="onecycle"), steps_per_epoch=spe, epochs=epochs
    )
    assert float(sched(15)) == pytest.approx(0.1, rel=1e-5)  # peak at pct_start=0.3
    assert float(sched(0)) == pytest.approx(0.1 / 25, rel=1e-5)
    assert float(sched(50)) < 1e-5


def test_short_warmup_lasts_at_least_one_step():
    config = _cfg(schedule="warmup_cosine", warmup_epochs=0.2)
    sched = optim.make_schedule(config, steps_per_epoch=1, epochs=10)
    assert float(sched(0)) == 0.0 and float(sched(1)) == pytest.approx(0.1)


def test_make_optimizer_returns_the_schedule_it_uses():
    config = OptimConfig(
        optimizer="sgd", lr=0.1, schedule="step", step_epochs=(1,), step_factor=0.1
    )
    tx, sched = optim.make_optimizer(config, steps_per_epoch=2, epochs=2)
    params = {"x": jnp.array(0.0)}
    state = tx.init(params)
    grads = {"x": jnp.array(1.0)}
    moves = []
    for _ in range(4):
        updates, state = tx.update(grads, state, params)
        moves.append(float(updates["x"]))
    assert moves == pytest.approx([-0.1, -0.1, -0.01, -0.01])
    assert float(sched(2)) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule="step"), "needs optim.step_epochs"),
        (dict(schedule="step", step_epochs=(3, 2)), "strictly increasing"),
        (dict(schedule="step", step_epochs=(5,)), "between 1 and 4"),
        (dict(schedule="cosine", step_epochs=(2,)), "only applies to schedule='step'"),
        (dict(schedule="warmup_cosine"), "needs optim.warmup_epochs > 0"),
        (
            dict(schedule="cosine", warmup_epochs=5),
            "must be less than the number of epochs",
        ),
        (dict(schedule="step", step_epochs=(1,), warmup_epochs=2), "inside the warmup"),
        (
            dict(schedule="step", step_epochs=(1,), step_factor=0.0),
            "step_factor must be > 0",
        ),
    ],
)
def test_bad_combinations_raise_spec_error(kwargs, match):
    with pytest.raises(SpecError, match=match):
        optim.make_optimizer(OptimConfig(**kwargs), steps_per_epoch=10, epochs=5)


def test_unknown_optimizer_raises_spec_error():
    config = OptimConfig.__new__(OptimConfig)
    object.__setattr__(
        config, "__dict__", {**OptimConfig().__dict__, "optimizer": "lion"}
    )
    with pytest.raises(SpecError, match="optimizer='lion' is not known"):
        optim.make_optimizer(config, steps_per_epoch=1, epochs=1)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_is_decoupled_and_skips_biases(name):
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    tx, _ = optim.make_optimizer(
        OptimConfig(optimizer=name, lr=0.1, weight_decay=0.5),
        steps_per_epoch=1,
        epochs=1,
    )
    updates, _ = tx.update(zero, tx.init(params), params)
    # zero gradient: only weight decay moves the kernel (-lr * wd * w); the bias stays.
    # Coupled L2 would go through Adam / RMSprop's normalisation and move it by ~lr.
    np.testing.assert_allclose(updates["w"], -0.05 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], np.zeros(2))


def test_decoupled_weight_decay_follows_the_schedule():
    # Keras decays by the current learning rate: -lr_t * wd * w
    config = OptimConfig(
        optimizer="momentum",
        lr=0.1,
        weight_decay=0.5,
        schedule="step",
        step_epochs=(1,),
    )
    tx, _ = optim.make_optimizer(config, steps_per_epoch=2, epochs=2)
    params = {"w": jnp.ones((1, 1))}
    state = tx.init(params)
    moves = []
    for _ in range(4):
        updates, state = tx.update({"w": jnp.zeros((1, 1))}, state, params)
        moves.append(float(updates["w"][0, 0]))
    assert moves == pytest.approx([-0.05, -0.05, -0.005, -0.005], rel=1e-6)


def test_weight_decay_defaults_to_keras_adamw_and_zero_elsewhere():
    params = {"w": jnp.ones((2, 2))}
    zero = {"w": jnp.zeros((2, 2))}

    def update(**kw):
        tx, _ = optim.make_optimizer(
            OptimConfig(lr=0.1, **kw), steps_per_epoch=1, epochs=1
        )
        return np.asarray(tx.update(zero, tx.init(params), params)[0]["w"])

    np.testing.assert_allclose(
        update(optimizer="adamw"), -0.1 * optim.ADAMW_WEIGHT_DECAY, rtol=1e-6
    )
    # an explicit 0 is 0, not optax's adamw default (1e-4)
    np.testing.assert_array_equal(update(optimizer="adamw", weight_decay=0.0), 0.0)
    for name in ("sgd", "momentum", "nesterov", "adam", "rmsprop"):
        np.testing.assert_array_equal(update(optimizer=name), 0.0)


def test_l2_is_added_to_the_gradient_before_the_optimizer():
    # momentum 0.5, zero loss gradient, w = 1: the L2 term 0.2 enters the velocity,
    # so the second step moves by lr * (0.2 + 0.5 * 0.2), not by lr * 0.2 again.
    params = {"w": jnp.ones((1, 1))}
    config = OptimConfig(optimizer="momentum", lr=0.1, momentum=0.5, l2=0.2)
    tx, _ = optim.make_optimizer(config, steps_per_epoch=1, epochs=1)
    state = tx.init(params)
    moves = []
    for _ in range(2):
        updates, state = tx.update({"w": jnp.zeros((1, 1))}, state, params)
        moves.append(float(updates["w"][0, 0]))
    assert moves == pytest.approx([-0.02, -0.03], rel=1e-6)


def test_clip_norm_bounds_the_update():
    config = OptimConfig(optimizer="sgd", lr=1.0, clip_norm=1.0)
    tx, _ = optim.make_optimizer(config, steps_per_epoch=1, epochs=1)
    params = {"x": jnp.zeros(2)}
    updates, _ = tx.update({"x": jnp.array([30.0, 40.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["x"], [-0.6, -0.8], rtol=1e-6)


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        self.conv_0 = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.dense_1 = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.dense_1(nnx.relu(self.conv_0(x)).mean(axis=(1, 2)))


@pytest.mark.parametrize("mask_kind", ["tree", "callable"])
def test_frozen_leaves_stay_bit_identical_and_have_no_state(mask_kind):
    model = _Tiny(nnx.Rngs(0))
    frozen_before = jax.tree_util.tree_map(
        np.array, nnx.to_pure_dict(nnx.state(model.conv_0))
    )
    dense_before = np.array(model.dense_1.kernel[...])
    if mask_kind == "tree":
        trainable = {
            "conv_0": {"kernel": False, "bias": False},
            "dense_1": {"kernel": True, "bias": True},
        }
    else:

        def trainable(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: not optim._path_str(path).startswith("conv"), params
            )

    config = OptimConfig(optimizer="adamw", lr=0.05, weight_decay=0.1, clip_norm=1.0)
    tx, _ = optim.make_optimizer(
        config, steps_per_epoch=5, epochs=1, trainable=trainable
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    x = jax.random.normal(jax.random.key(1), (4, 6, 6, 1))
    y = jnp.array([0, 1, 0, 1])

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return optim.cross_entropy(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
    after = nnx.to_pure_dict(nnx.state(model.conv_0))
    for name in ("kernel", "bias"):
        assert np.array_equal(np.asarray(after[name]), frozen_before[name])
        assert np.asarray(after[name]).tobytes() == frozen_before[name].tobytes()
    assert not np.array_equal(np.asarray(model.dense_1.kernel[...]), dense_before)

    # the optimiser state holds arrays for the 2 dense leaves only (mu and nu each), plus counts
    state_leaves = jax.tree_util.tree_flatten_with_path(
        nnx.to_pure_dict(nnx.state(optimizer))
    )[0]
    paths = [optim._path_str(p) for p, _ in state_leaves]
    assert not any("conv_0" in p for p in paths), paths
    assert sum("dense_1" in p for p in paths) == 4, paths


def test_mask_missing_a_parameter_names_it():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    tx, _ = optim.make_optimizer(
        OptimConfig(), steps_per_epoch=1, epochs=1, trainable={"a": True}
    )
    with pytest.raises(SpecError, match="no entry for parameter b"):
        tx.init(params)


def test_cross_entropy_hand_computed():
    logits = jnp.array([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    labels = jnp.array([1], dtype=jnp.int32)
    loss = optim.cross_entropy(logits, labels)
    assert loss.shape == (1,)
    assert float(loss[0]) == pytest.approx(-math.log(0.75), rel=1e-6)
    # alpha=0.2, 2 classes: target = [0.1, 0.9]
    smoothed = optim.cross_entropy(logits, labels, label_smoothing=0.2)
    expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
    assert float(smoothed[0]) == pytest.approx(expected, rel=1e-6)
