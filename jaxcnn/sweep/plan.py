"""Planning a grid sweep without JAX: each point's static shape check, its trial key, and
an order that keeps trials of one compiled program back to back.

Points whose shapes collapse (`shapes.infer`) are `invalid` with the reason and never
reach JAX. A point's key names what it changes: the overrides that alter the resolved run
(a value equal to the base's is left out), so a point written with or without an axis
that was added later at its old value is the same trial. Valid points are grouped by
compiled program (`program_key`: equal unless they differ only in seed or host-side
settings), so the persistent compilation cache serves the repeats.
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

# Config fields the compiled train / eval programs do not depend on: the seed reaches
# them as an argument, the rest act on the host. Every other field (lr, momentum,
# epsilon, weight_decay, l2, the schedule and epochs it spans, shapes, ...) is baked
# into the program, so points differing in it compile separately.
NOT_COMPILED = (
    "train.seed",
    "train.patience",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.init_from",
    "train.new_head",
    "data.data_dir",
    "data.manual_dir",
)


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


def resolved(run: RunConfig) -> dict[str, Any]:
    """The run as data, its model as the resolved layer spec (so a family knob given at
    its default value resolves to the same run as leaving it out).

    Raises:
      SpecError: the model does not resolve.
    """
    out = run.to_dict()
    out["model"] = models.load_spec(run.model).to_dict()
    return out


def effective_overrides(
    base: RunConfig, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The overrides whose removal would change the resolved run (all of them when the
    point does not resolve)."""
    try:
        full = resolved(base.with_overrides(overrides))
    except SpecError:
        return dict(overrides)
    out = {}
    for path, value in overrides.items():
        rest = {k: v for k, v in overrides.items() if k != path}
        try:
            same = resolved(base.with_overrides(rest)) == full
        except SpecError:
            same = False
        if not same:
            out[path] = value
    return out


def point_key(base: RunConfig, overrides: Mapping[str, Any]) -> str:
    """The trial key of the point `overrides` of a sweep over `base`."""
    return trial_key(effective_overrides(base, overrides))


def program_key(run: RunConfig) -> str:
    """Equal for runs that compile to the same programs (see NOT_COMPILED).

    Raises:
      SpecError: the model does not resolve.
    """
    data = resolved(run)
    for path in NOT_COMPILED:
        section, _, field = path.partition(".")
        data[section].pop(field, None)
    return json.dumps(data, sort_keys=True, default=str)


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
    key = point_key(base, overrides)
    try:
        run = base.with_overrides(overrides)
        summary = shapes.infer(models.load_spec(run.model))
        group = program_key(run)
    except SpecError as e:
        return TrialPlan(key, dict(overrides), str(e), group="invalid")
    return TrialPlan(
        key, dict(overrides), None, group, summary.total_params, summary.total_flops
    )


def plan_sweep(sweep: config.Sweep) -> list[TrialPlan]:
    """Checks every grid point and orders them: invalid first (they cost nothing), then
    valid points grouped by compiled program, groups in order of first appearance.

    Raises:
      SpecError: two points that describe the same run.
    """
    plans = [check_trial(sweep.base, p) for p in sweep.points]
    seen: dict[str, dict] = {}
    for p in plans:
        if p.key in seen:
            raise SpecError(
                f"sweep {sweep.name!r}: the points {seen[p.key]} and {p.overrides} "
                "describe the same run (a value equal to the base's changes nothing); "
                "list it once"
            )
        seen[p.key] = p.overrides
    first: dict[str, int] = {}
    for i, p in enumerate(plans):
        first.setdefault(p.group, i)
    return sorted(plans, key=lambda p: (p.error is None, first[p.group]))
