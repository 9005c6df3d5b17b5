"""One process of a multi-process test job (started by tests/test_distributed.py).

  python tests/dist_worker.py '{"mode": "steps" | "fit", "out": ..., "coordinator":
      "127.0.0.1:PORT", "num_processes": 2, "process_id": 0, ...}'

mode "steps": builds digits_cnn and the trainer's compiled steps, trains `steps` steps on a
fixed synthetic resident set (no TensorFlow import, so it starts in seconds) and records
this process's copy of the parameters after every step.
mode "fit": `train.fit` of the embedded digits default for `epochs` in `workdir`; records
the metrics history this process computed and its final parameters.

Writes `out` (.npz): `meta` (JSON: process index/count, devices, history) and one array
per (step, parameter) -- this process's copy of the replicated value.
"""

import json
import sys


def main() -> None:
    args = json.loads(sys.argv[1])
    from jaxcnn import distributed

    distributed.initialize(
        args.get("coordinator"),
        args.get("num_processes"),
        args.get("process_id"),
        heartbeat_timeout=args.get("heartbeat_timeout"),
        init_timeout=args.get("init_timeout", 60),
        verbose=False,
    )
    import jax
    import numpy as np
    from flax import nnx

    from jaxcnn import models, optim, spec, train
    from jaxcnn.train import sharding

    def params(model) -> dict[str, np.ndarray]:
        tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return {
            jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }

    meta = {
        "process_id": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
    }
    arrays = {}
    if args["mode"] == "fit":
        config = spec.RunConfig().with_overrides(
            {"train.epochs": args["epochs"], **args.get("overrides", {})}
        )
        result = train.fit(config, args["workdir"], quiet=True)
        meta["history"] = result.history
        for name, value in params(result.model).items():
            arrays[f"final{name}"] = value
    else:
        config = spec.RunConfig()
        model_spec = train.resolve_spec(config, 10)
        model = models.build_model(model_spec, seed=0)
        tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=10, epochs=1)
        steps = train.Steps(model, nnx.Optimizer(model, tx, wrt=nnx.Param), config)
        rng = np.random.default_rng(0)  # same data on every process
        images = rng.random((256, *model_spec.input_shape), dtype=np.float32)
        labels = rng.integers(0, 10, 256).astype(np.int32)
        images_dev, labels_dev = sharding.put((images, labels), steps.layout.replicated)
        losses = []
        for step in range(args["steps"]):
            order = rng.permutation(256)[None, :32]  # [1 step, batch 32]
            sums = steps.train(
                images_dev,
                labels_dev,
                sharding.put(order, steps.layout.by_step_batch),
                step,
            )
            losses.append(float(sharding.host(sums)[0]))
            for name, value in params(steps.model()).items():
                arrays[f"{step}{name}"] = value
        meta["losses"] = losses
    np.savez(args["out"], meta=np.array(json.dumps(meta)), **arrays)


if __name__ == "__main__":
    main()
