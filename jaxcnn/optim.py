"""Optimisers, learning-rate schedules and the classification loss (the only optax user).

`make_optimizer` turns an `OptimConfig` into an optax transformation plus the schedule it
uses, so the trainer can log the learning rate of every step.

The optimiser's numbers (`traced_values`: the learning rate, both decays, the clipping
norm, SGD's momentum) can be handed to `make_optimizer` as arrays instead: a compiled step
that builds its transformation from arguments then does not bake them in as constants,
so runs that differ only in those numbers share one executable (and one entry of the
persistent compilation cache). Each number enters the same float32 arithmetic as the
Python float would (no Python-side arithmetic on it); as constants, XLA may fold several
of them together first (e.g. the decoupled weight decay times a constant learning rate),
so a configuration with more than one of them can differ in the last bits between the
two forms. Training always builds them as arguments, so a run repeats exactly.

The chain applied to the gradients of trainable parameters is, in order:

1. ``optax.clip_by_global_norm(clip_norm)`` when ``clip_norm`` is set; the norm covers the
   trainable parameters only.
2. ``l2``: coupled L2 regularisation, ``l2 * param`` added to the gradient
   (``optax.add_decayed_weights``), as PyTorch's ``weight_decay``.
3. The optimiser itself, scaled by the schedule, with Keras 3's defaults for every field
   the config leaves None (see the constants below and the README's "Optimisers").
4. ``weight_decay``: decoupled, as Keras's ``weight_decay`` on every optimiser and as
   AdamW: ``-lr * weight_decay * param`` is added to the update, outside the optimiser's
   moments (``optax.adamw`` for adamw, ``optax.add_decayed_weights`` scaled by the
   schedule otherwise).

Both decays skip parameters with ``ndim <= 1`` (biases, normalisation scales/offsets), as
is usual for CNNs; Keras and PyTorch decay every parameter unless told otherwise.

Frozen parameters (``trainable`` mask False) go through ``optax.set_to_zero`` inside an
``optax.multi_transform``: their update is exactly zero, so they stay bit-identical
(``p + 0.0 == p`` for every finite ``p`` except ``-0.0``, which becomes ``+0.0``), and the
optimiser keeps no state for them (``optax.MaskedNode`` placeholders).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcnn.errors import SpecError
from jaxcnn.spec import OptimConfig

PyTree = Any

_TRAIN, _FREEZE = "trainable", "frozen"

# Keras 3's defaults (keras.optimizers.SGD / Adam / AdamW / RMSprop), used for the
# OptimConfig fields left None. PyTorch's differ: eps 1e-8; RMSprop alpha 0.99 with eps
# outside the square root; AdamW weight_decay 0.01.
EPSILON = 1e-7  # Adam, AdamW, RMSprop (optax's own default: 1e-8)
ADAM_BETAS = (0.9, 0.999)
RMSPROP_RHO = 0.9
ADAMW_WEIGHT_DECAY = 0.004
# Keras's SGD has momentum 0; "momentum" and "nesterov" name SGD(momentum=0.9, ...).
SGD_MOMENTUM = 0.9


def _path_str(path: tuple) -> str:
    """`conv_0/kernel` for a JAX key path (nnx Variables' trailing `value` dropped)."""
    return jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")


def make_schedule(
    config: OptimConfig, *, steps_per_epoch: int, epochs: int, lr: Any = None
) -> optax.Schedule:
    """The learning rate as a function of the optimiser step.

    ``warmup_epochs`` means "epochs of linearly rising learning rate (from 0 to ``lr``)"
    for ``constant``, ``cosine``, ``warmup_cosine`` and ``step``; for ``onecycle`` it sets
    the rising phase (``pct_start``; 30 % of training when 0). ``step_epochs`` are epoch
    numbers: at the start of each, the rate is multiplied by ``step_factor``.

    ``lr`` (default ``config.lr``) may be a traced scalar, except for ``onecycle``, whose
    optax schedule does Python arithmetic on it (`traced_values` leaves it out there).

    Raises:
      SpecError: for combinations that cannot describe a schedule.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise SpecError(
            f"make_optimizer needs steps_per_epoch >= 1 and epochs >= 1, got "
            f"steps_per_epoch={steps_per_epoch}, epochs={epochs}"
        )
    name = config.schedule
    lr = config.lr if lr is None else lr
    total = steps_per_epoch * epochs
    # any positive warmup lasts at least one step (restores may build with steps_per_epoch=1)
    warmup = max(
        round(config.warmup_epochs * steps_per_epoch),
        1 if config.warmup_epochs > 0 else 0,
    )
    if config.warmup_epochs > 0 and config.warmup_epochs >= epochs:
        raise SpecError(
            f"optim.warmup_epochs={config.warmup_epochs} must be less than the number of "
            f"epochs ({epochs}), or the learning rate never leaves the warmup"
        )
    if config.step_epochs and name != "step":
        raise SpecError(
            f"optim.step_epochs={list(config.step_epochs)} only applies to schedule='step', "
            f"but schedule={name!r}; remove step_epochs or use schedule='step'"
        )

    if name == "onecycle":
        pct_start = config.warmup_epochs / epochs if config.warmup_epochs > 0 else 0.3
        return optax.cosine_onecycle_schedule(
            transition_steps=total, peak_value=lr, pct_start=pct_start
        )
    if name == "warmup_cosine" and warmup == 0:
        raise SpecError(
            f"optim.schedule='warmup_cosine' needs optim.warmup_epochs > 0, got "
            f"{config.warmup_epochs}; use schedule='cosine' for no warmup"
        )
    if name in ("cosine", "warmup_cosine"):
        if warmup == 0:
            return optax.cosine_decay_schedule(init_value=lr, decay_steps=total)
        # optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=lr, ...) with
        # its alpha = end_value / peak_value = 0.0 spelled out (it compares lr with 0.0)
        rise = optax.linear_schedule(
            init_value=0.0, end_value=lr, transition_steps=warmup
        )
        decay = optax.cosine_decay_schedule(
            init_value=lr, decay_steps=total - warmup, alpha=0.0
        )
        return optax.join_schedules([rise, decay], boundaries=[warmup])
    if name == "constant":
        after = optax.constant_schedule(lr)
    elif name == "step":
        after = _step_schedule(
            config, steps_per_epoch=steps_per_epoch, epochs=epochs, warmup=warmup, lr=lr
        )
    else:
        raise SpecError(
            f"optim.schedule={name!r} is not known; valid: constant, cosine, "
            f"warmup_cosine, step, onecycle"
        )
    if warmup == 0:
        return after
    rise = optax.linear_schedule(init_value=0.0, end_value=lr, transition_steps=warmup)
    return optax.join_schedules([rise, after], boundaries=[warmup])


def _step_schedule(
    config: OptimConfig, *, steps_per_epoch: int, epochs: int, warmup: int, lr: Any
) -> optax.Schedule:
    epochs_at = list(config.step_epochs)
    if not epochs_at:
        raise SpecError(
            "optim.schedule='step' needs optim.step_epochs, the epochs at which the learning "
            f"rate is multiplied by step_factor={config.step_factor}, e.g. step_epochs = "
            f"[{max(1, epochs // 2)}]"
        )
    if not config.step_factor > 0:
        raise SpecError(f"optim.step_factor must be > 0, got {config.step_factor}")
    if (
        epochs_at != sorted(set(epochs_at))
        or not 0 < epochs_at[0]
        or epochs_at[-1] >= epochs
    ):
        raise SpecError(
            f"optim.step_epochs={epochs_at} must be strictly increasing epoch numbers "
            f"between 1 and {epochs - 1} (training runs {epochs} epochs)"
        )
    if epochs_at[0] * steps_per_epoch <= warmup:
        raise SpecError(
            f"optim.step_epochs={epochs_at} starts inside the warmup "
            f"(warmup_epochs={config.warmup_epochs}); put the first step after it"
        )
    # join_schedules hands the second schedule the step count since the warmup ended.
    boundaries = {e * steps_per_epoch - warmup: config.step_factor for e in epochs_at}
    return optax.piecewise_constant_schedule(
        init_value=lr, boundaries_and_scales=boundaries
    )


def _decay_mask(params: PyTree) -> PyTree:
    """True for kernels (ndim > 1); biases and norm scales are not decayed."""
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) > 1, params)


def traced_values(config: OptimConfig) -> dict[str, float]:
    """The numbers of `config` that `make_optimizer` accepts as (traced) arrays.

    Only numbers that take part in the update: a decay of 0, a clipping norm of None or
    SGD's momentum of 0 change which transformations there are, so they stay in the
    structure. The one-cycle schedule keeps its learning rate a constant (optax divides
    it by 25 in Python, which a float32 array would round differently).
    """
    values = {} if config.schedule == "onecycle" else {"lr": config.lr}
    if config.clip_norm is not None:
        values["clip_norm"] = config.clip_norm
    if config.l2 > 0:
        values["l2"] = config.l2
    if _weight_decay(config) > 0:
        values["weight_decay"] = _weight_decay(config)
    if config.optimizer in ("momentum", "nesterov"):
        values["momentum"] = _momentum(config)
    return values


def _momentum(config: OptimConfig) -> float:
    return SGD_MOMENTUM if config.momentum is None else config.momentum


def _weight_decay(config: OptimConfig) -> float:
    if config.weight_decay is not None:
        return config.weight_decay
    return ADAMW_WEIGHT_DECAY if config.optimizer == "adamw" else 0.0


def _base_optimizer(
    config: OptimConfig, schedule: optax.Schedule, values: dict[str, Any]
) -> optax.GradientTransformation:
    name = config.optimizer
    eps = EPSILON if config.epsilon is None else config.epsilon
    if name == "sgd":
        return optax.sgd(schedule)
    if name in ("momentum", "nesterov"):
        return optax.sgd(
            schedule, momentum=values["momentum"], nesterov=name == "nesterov"
        )
    if name == "adam":
        return optax.adam(schedule, b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=eps)
    if name == "adamw":
        return optax.adamw(
            schedule,
            b1=ADAM_BETAS[0],
            b2=ADAM_BETAS[1],
            eps=eps,
            weight_decay=values.get("weight_decay", 0.0),
            mask=_decay_mask,
        )
    if name == "rmsprop":
        # eps inside the square root, zero initial accumulator, lr inside the momentum
        # buffer: Keras's RMSprop. No momentum buffer at all for momentum 0, as Keras.
        return optax.rmsprop(
            schedule,
            decay=RMSPROP_RHO,
            eps=eps,
            eps_in_sqrt=True,
            initial_scale=0.0,
            momentum=config.momentum or None,
        )
    raise SpecError(
        f"optim.optimizer={name!r} is not known; valid: sgd, momentum, nesterov, adam, "
        f"adamw, rmsprop"
    )


def _labels_fn(
    trainable: Callable[[PyTree], PyTree] | PyTree,
) -> Callable[[PyTree], PyTree]:
    """multi_transform labels aligned to the params by path (so a dict mask fits nnx.State)."""

    def labels(params: PyTree) -> PyTree:
        mask = trainable(params) if callable(trainable) else trainable
        flags = {
            _path_str(p): bool(v)
            for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]
        }

        def label(path, _):
            key = _path_str(path)
            if key not in flags:
                raise SpecError(
                    f"trainable mask has no entry for parameter {key}; the mask must have "
                    f"the parameters' structure (mask entries: {sorted(flags)[:8]})"
                )
            return _TRAIN if flags[key] else _FREEZE

        return jax.tree_util.tree_map_with_path(label, params)

    return labels


def make_optimizer(
    config: OptimConfig,
    *,
    steps_per_epoch: int,
    epochs: int,
    trainable: Callable[[PyTree], PyTree] | PyTree | None = None,
    values: dict[str, Any] | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimiser described by `config`.

    Args:
      config: the optimiser section of the run config.
      steps_per_epoch: optimiser steps per epoch (schedules are given in epochs).
      epochs: length of training in epochs (cosine / one-cycle end there).
      trainable: optional mask with the parameters' structure (or a function of the
        parameters returning one); False leaves are frozen: zero update, no state.
      values: arrays (scalars) for some of `traced_values(config)`'s numbers, used in
        their place; the transformation's structure and state are the same either way.

    Returns:
      (tx, schedule): the gradient transformation and ``schedule(step) -> lr``.

    Raises:
      SpecError: for an unknown optimiser/schedule or a combination that does not fit.
    """
    known = traced_values(config)
    if values is not None and set(values) - set(known):
        raise SpecError(
            f"make_optimizer got values for {sorted(set(values) - set(known))}, which "
            f"this optimiser does not take as values; it takes {sorted(known)}"
        )
    values = {**known, **(values or {})}
    schedule = make_schedule(
        config, steps_per_epoch=steps_per_epoch, epochs=epochs, lr=values.get("lr")
    )
    parts = []
    if config.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(values["clip_norm"]))
    if config.l2 > 0:
        parts.append(optax.add_decayed_weights(values["l2"], mask=_decay_mask))
    parts.append(_base_optimizer(config, schedule, values))
    weight_decay = values.get("weight_decay", 0.0)
    if config.optimizer != "adamw" and _weight_decay(config) > 0:  # adamw: in optax
        parts.append(
            optax.add_decayed_weights(
                lambda step: -weight_decay * schedule(step), mask=_decay_mask
            )
        )
    tx = parts[0] if len(parts) == 1 else optax.chain(*parts)
    if trainable is not None:
        tx = optax.multi_transform(
            {_TRAIN: tx, _FREEZE: optax.set_to_zero()}, _labels_fn(trainable)
        )
    return tx, schedule


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
    """Softmax cross-entropy per example.

    Args:
      logits: [batch, num_classes] unnormalised scores.
      labels: [batch] int class ids.
      label_smoothing: alpha; the target becomes (1 - alpha) * one_hot + alpha / num_classes.

    Returns:
      [batch] loss per example (average it yourself, e.g. with a mask for padding).
    """
    if label_smoothing == 0.0:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(
        jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing
    )
    return optax.softmax_cross_entropy(logits, targets)
