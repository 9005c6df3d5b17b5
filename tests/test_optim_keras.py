"""jaxcnn's optimisers step for step against Keras 3's, on the same gradients.

Each case builds the optimiser through `optim.make_optimizer` (the code path training
uses) and the Keras optimiser a Keras user would write for the same config, feeds both
the same 5 gradients and compares the parameters after every step. Keras runs on the
TensorFlow backend, an implementation independent of optax.
"""

import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import optim
from jaxcnn.spec import OptimConfig

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402  (tensorflow-cpu, a dependency, installs it)

STEPS = 5
LR = 0.01
TOL = dict(rtol=1e-5, atol=1e-7)  # float32
SHAPES = {
    "conv_0/kernel": (3, 3, 1, 2),
    "conv_0/bias": (2,),
    "dense_1/kernel": (4, 3),
    "dense_1/bias": (3,),
}


def _initial_params():
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _gradients(scale=1.0):
    """STEPS gradient dicts: |g| in [0.1, 2] * scale, with exact zeros.

    The first bias unit never gets a gradient (a dead unit), and the dense kernel gets
    none at step 2 (its moments decay without new input).
    """
    rng = np.random.default_rng(1)
    out = []
    for step in range(STEPS):
        grads = {}
        for k, shape in SHAPES.items():
            g = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)
            grads[k] = (g * scale).astype(np.float32)
        grads["conv_0/bias"][0] = 0.0
        if step == 2:
            grads["dense_1/kernel"][:] = 0.0
        out.append(grads)
    return out


def _nested(flat):
    tree = {}
    for k, v in flat.items():
        layer, name = k.split("/")
        tree.setdefault(layer, {})[name] = jnp.asarray(v)
    return tree


def _flat(tree):
    return {
        f"{layer}/{n}": np.asarray(v) for layer, d in tree.items() for n, v in d.items()
    }


def _jaxcnn_trajectory(config, grads_seq):
    tx, _ = optim.make_optimizer(config, steps_per_epoch=STEPS, epochs=1)
    params = _nested(_initial_params())
    state = tx.init(params)
    out = []
    for grads in grads_seq:
        updates, state = tx.update(_nested(grads), state, params)
        params = optax.apply_updates(params, updates)
        out.append(_flat(params))
    return out


def _keras_trajectory(optimizer, grads_seq, l2=0.0):
    """Keras's optimiser on the same parameters; `l2` as a loss term's gradient.

    jaxcnn decays kernels only, so the biases are excluded from Keras's weight decay.
    """
    variables = {
        k: keras.Variable(v, name=k.replace("/", "_"))
        for k, v in _initial_params().items()
    }
    names = list(variables)
    optimizer.exclude_from_weight_decay(
        var_list=[variables[k] for k in names if k.endswith("bias")]
    )
    out = []
    for grads in grads_seq:
        grads = {
            k: g + l2 * np.asarray(variables[k]) if k.endswith("kernel") else g
            for k, g in grads.items()
        }
        optimizer.apply([grads[k] for k in names], [variables[k] for k in names])
        out.append({k: np.asarray(v) for k, v in variables.items()})
    return out


K = keras.optimizers
# (jaxcnn config fields, the Keras optimiser a Keras user writes for them)
CASES = {
    "sgd": (dict(optimizer="sgd"), lambda: K.SGD(LR)),
    "sgd-wd": (
        dict(optimizer="sgd", weight_decay=0.5),
        lambda: K.SGD(LR, weight_decay=0.5),
    ),
    "momentum": (dict(optimizer="momentum"), lambda: K.SGD(LR, momentum=0.9)),
    "momentum-0.5-wd": (
        dict(optimizer="momentum", momentum=0.5, weight_decay=0.5),
        lambda: K.SGD(LR, momentum=0.5, weight_decay=0.5),
    ),
    "nesterov": (
        dict(optimizer="nesterov"),
        lambda: K.SGD(LR, momentum=0.9, nesterov=True),
    ),
    "nesterov-0.8-wd": (
        dict(optimizer="nesterov", momentum=0.8, weight_decay=0.5),
        lambda: K.SGD(LR, momentum=0.8, nesterov=True, weight_decay=0.5),
    ),
    "adam": (dict(optimizer="adam"), lambda: K.Adam(LR)),
    "adam-wd": (
        dict(optimizer="adam", weight_decay=0.5),
        lambda: K.Adam(LR, weight_decay=0.5),
    ),
    "adamw": (dict(optimizer="adamw"), lambda: K.AdamW(LR)),
    "adamw-wd": (
        dict(optimizer="adamw", weight_decay=0.5),
        lambda: K.AdamW(LR, weight_decay=0.5),
    ),
    "rmsprop": (dict(optimizer="rmsprop"), lambda: K.RMSprop(LR)),
    "rmsprop-momentum": (
        dict(optimizer="rmsprop", momentum=0.9),
        lambda: K.RMSprop(LR, momentum=0.9),
    ),
    "rmsprop-momentum-wd-eps": (
        dict(optimizer="rmsprop", momentum=0.5, weight_decay=0.5, epsilon=1e-2),
        lambda: K.RMSprop(LR, momentum=0.5, weight_decay=0.5, epsilon=1e-2),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_matches_keras_step_by_step(case):
    fields, make_keras = CASES[case]
    grads = _gradients()
    ours = _jaxcnn_trajectory(OptimConfig(lr=LR, **fields), grads)
    theirs = _keras_trajectory(make_keras(), grads)
    start = _initial_params()
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for k in SHAPES:
            np.testing.assert_allclose(
                a[k], b[k], **TOL, err_msg=f"{case} step {step} {k}"
            )
    moved = max(float(np.max(np.abs(ours[-1][k] - start[k]))) for k in SHAPES)
    assert (
        moved > 100 * 1e-5
    )  # the comparison is not between two parameter sets at rest
    # the dead bias unit never moves (weight decay skips biases)
    assert ours[-1]["conv_0/bias"][0] == start["conv_0/bias"][0]


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "rmsprop"])
def test_l2_matches_keras_with_an_l2_loss_term(name):
    """`optim.l2` is a loss term l2/2 * |w|^2 on kernels (Keras: kernel_regularizer)."""
    fields, make_keras = CASES[name]
    grads = _gradients()
    ours = _jaxcnn_trajectory(OptimConfig(lr=LR, l2=0.5, **fields), grads)
    theirs = _keras_trajectory(make_keras(), grads, l2=0.5)
    no_l2 = _jaxcnn_trajectory(OptimConfig(lr=LR, **fields), grads)
    for k in SHAPES:
        np.testing.assert_allclose(ours[-1][k], theirs[-1][k], **TOL)
    assert not np.allclose(ours[-1]["dense_1/kernel"], no_l2[-1]["dense_1/kernel"])


def _adam_reference(grads_seq, eps, keras_form):
    """Adam in numpy: eps added to sqrt(v_hat) (optax, PyTorch, the paper's Algorithm 1)
    or, `keras_form`, to the uncorrected sqrt(v) (Keras/TF's "epsilon hat")."""
    b1, b2 = optim.ADAM_BETAS
    p = _initial_params()["dense_1/kernel"].astype(np.float64)
    m = v = np.zeros_like(p)
    out = []
    for t, grads in enumerate(grads_seq, start=1):
        g = grads["dense_1/kernel"].astype(np.float64)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        if keras_form:
            alpha = LR * np.sqrt(1 - b2**t) / (1 - b1**t)
            p = p - alpha * m / (np.sqrt(v) + eps)
        else:
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            p = p - LR * m_hat / (np.sqrt(v_hat) + eps)
        out.append(p)
    return out


def test_adam_epsilon_enters_as_in_pytorch_not_as_in_keras():
    """The one documented difference: with gradients near epsilon, Keras's Adam adds
    epsilon to sqrt(v) before bias correction, i.e. epsilon / sqrt(1 - b2^t) in optax's
    form (31x larger at step 1). optax has no option for that form."""
    grads = _gradients(scale=1e-6)
    ours = _jaxcnn_trajectory(OptimConfig(optimizer="adam", lr=LR), grads)
    theirs = _keras_trajectory(K.Adam(LR), grads)
    ref = _adam_reference(grads, optim.EPSILON, keras_form=False)
    keras_ref = _adam_reference(grads, optim.EPSILON, keras_form=True)
    for step in range(STEPS):
        np.testing.assert_allclose(ours[step]["dense_1/kernel"], ref[step], **TOL)
        np.testing.assert_allclose(
            theirs[step]["dense_1/kernel"], keras_ref[step], **TOL
        )
    gap = np.max(np.abs(ours[0]["dense_1/kernel"] - theirs[0]["dense_1/kernel"]))
    assert gap > 0.1 * LR  # most of a step here; float32 rounding (~1e-7) at |g| ~ 1


def test_rmsprop_epsilon_enters_inside_the_square_root():
    """Keras (and optax's eps_in_sqrt): g / sqrt(v + eps); PyTorch: g / (sqrt(v) + eps).
    A gradient of 1e-4 with epsilon 1e-7 tells them apart on the first step."""
    g = np.float64(1e-4)
    v = (1 - optim.RMSPROP_RHO) * g * g
    tx, _ = optim.make_optimizer(
        OptimConfig(optimizer="rmsprop", lr=1.0), steps_per_epoch=1, epochs=1
    )
    params = {"w": jnp.zeros((1, 1))}
    updates, _ = tx.update({"w": jnp.full((1, 1), g)}, tx.init(params), params)
    inside = -g / np.sqrt(v + optim.EPSILON)
    outside = -g / (np.sqrt(v) + optim.EPSILON)
    assert float(updates["w"][0, 0]) == pytest.approx(inside, rel=1e-5)
    assert abs(inside - outside) > 0.5 * abs(inside)
