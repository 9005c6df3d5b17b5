"""Planning a grid sweep without JAX: each point's static shape check, its trial key, and
an order that keeps trials of one compiled program back to back.

Points whose shapes collapse (`shapes.infer`) are `invalid` with the reason and never
reach JAX. Valid points are grouped by compiled program (same model, data and batch
shapes; other lr or seed), so the persistent compilation cache serves the repeats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from jaxcnn import models, shapes
from jaxcnn.errors import SpecError
from jaxcnn.spec import RunConfig
from jaxcnn.sweep import config


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """One grid point after static checking.

    Attributes:
      key: stable name of the trial and of its run directory (trials/<key>).
      overrides: the swept values.
      error: why the point is invalid (shapes collapse, bad value), else None.
      group: trials with equal groups compile to the same programs.
      params / flops: static totals of the model (None when invalid).
    """

    key: str
    overrides: dict[str, Any]
    error: str | None
    group: str
    params: int | None = None
    flops: int | None = None


def trial_key(overrides: Mapping[str, Any]) -> str:
    """A readable, stable directory name: 'filters-16_stride-2_pool-max-1a2b3c4d'."""
    parts = []
    for path, value in overrides.items():
        short = path.rpartition(".")[2]
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"{short}-{text}")
    slug = re.sub(r"[^A-Za-z0-9._-]", "", "_".join(parts))[:60]
    digest = hashlib.sha1(_canonical(overrides).encode()).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def _canonical(overrides: Mapping[str, Any]) -> str:
    return json.dumps(dict(sorted(overrides.items())), sort_keys=True, default=str)


def check_trial(base: RunConfig, overrides: Mapping[str, Any]) -> TrialPlan:
    """Applies `overrides` and checks the model statically (no JAX)."""
    key = trial_key(overrides)
    try:
        config = base.with_overrides(overrides)
        spec = models.load_spec(config.model)
        summary = shapes.infer(spec)
    except SpecError as e:
        return TrialPlan(key, dict(overrides), str(e), group="invalid")
    group = json.dumps(
        {
            "spec": spec.to_dict()["layers"],
            "input": list(spec.input_shape),
            "data": config.to_dict()["data"],
            "batch": [config.train.batch_size, config.train.eval_batch_size],
            "train": [config.train.steps_per_dispatch, config.train.kernels],
            "optim": [
                config.optim.optimizer,
                config.optim.schedule,
                config.optim.clip_norm,
            ],
        },
        sort_keys=True,
    )
    return TrialPlan(
        key, dict(overrides), None, group, summary.total_params, summary.total_flops
    )


def plan_sweep(sweep: config.Sweep) -> list[TrialPlan]:
    """Checks every grid point and orders them: invalid first (they cost nothing), then
    valid points grouped by compiled program, groups in order of first appearance.

    Raises:
      SpecError: two points with the same overrides.
    """
    plans = [check_trial(sweep.base, p) for p in sweep.points]
    seen: dict[str, dict] = {}
    for p in plans:
        if p.key in seen:
            raise SpecError(
                f"sweep {sweep.name!r}: the point {p.overrides} is listed twice"
            )
        seen[p.key] = p.overrides
    first: dict[str, int] = {}
    for i, p in enumerate(plans):
        first.setdefault(p.group, i)
    return sorted(plans, key=lambda p: (p.error is None, first[p.group]))
