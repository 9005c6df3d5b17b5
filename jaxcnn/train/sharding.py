"""Where a run's arrays live: a 1-D data mesh over every device of every process.

Parameters and optimiser state are replicated; every batch is split along its batch axis;
XLA inserts the gradient all-reduce. On one device this is the plain single-device
program. Arrays enter through `put` / `put_local`, which build global arrays from what
each process holds, so one process and many run the same code.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class Layout:
    """The mesh and the three shardings a run uses."""

    mesh: Mesh
    replicated: NamedSharding  # parameters, optimiser state, scalars
    by_batch: NamedSharding  # [batch, ...]
    by_step_batch: NamedSharding  # [steps, batch, ...]

    @classmethod
    def over_all_devices(cls) -> Layout:
        mesh = Mesh(np.array(jax.devices()), ("data",))
        return cls(
            mesh,
            NamedSharding(mesh, P()),
            NamedSharding(mesh, P("data")),
            NamedSharding(mesh, P(None, "data")),
        )


def put(tree, sharding: NamedSharding):
    """Global arrays with `sharding` from values every process holds in full.

    Each process builds only the shards of its own devices (`make_array_from_callback`),
    so this works for one process and for many (where `jax.device_put` of a committed
    array onto other processes' devices is refused). Typed PRNG keys travel as key data.
    """

    def one(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                one(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        host_value = np.asarray(x)
        return jax.make_array_from_callback(
            host_value.shape, sharding, lambda i: host_value[i]
        )

    return jax.tree_util.tree_map(one, tree)


def put_local(tree, sharding: NamedSharding, global_batch: int, axis: int):
    """Global arrays from this process's part of a batch (its rows along `axis`)."""

    def one(x):
        shape = list(x.shape)
        shape[axis] = global_batch
        return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

    return jax.tree_util.tree_map(one, tree)


def host(x) -> np.ndarray:
    """A replicated array's value on the host (this process's copy)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)
