"""Sweeps: many training runs over a grid or a search space, coordinated by Optuna.

Modules, each importing only those above it in this list:
  status.py    TrialStatus, the one enum of trial statuses (the strings stored on disk)
  optuna_api.py  the private Optuna attributes the worker uses, checked in one place
  results.py   the result rows: columns, results.csv / results.jsonl, read_results
  config.py    Axis, Sweep, load_sweep (TOML/JSON, experiment modules, sweep dirs)
  plan.py      static checks of each point, trial keys, grouping by compiled program
  storage.py   Optuna storage (journal file or database URL), file locks, study -> rows
  trial.py     one trial: train.fit, or K seeds (one fit each) aggregated
  queueing.py  opening the study, growing its queue (points, seeds), popping a trial
  identity.py  a popped trial's key and overrides; duplicates and invalid samples
  liveness.py  trial locks, heartbeats, reclaiming dead workers' trials, giving back
  datasets.py  the datasets a worker keeps loaded between trials
  execute.py   training one trial and telling Optuna how it ended
  worker.py    the worker loop that ties these together
  run.py       run_sweep (N local workers) and work (one worker)
  report.py    the ranked table, report.md and the figures (drawn by viz.py)
  compare.py   two sweeps of one grid: does the first's ranking hold in the second?
"""

from jaxcnn.sweep.config import Axis, Sweep, expand_grid, load_sweep
from jaxcnn.sweep.plan import TrialPlan, check_trial, plan_sweep
from jaxcnn.sweep.report import write_report
from jaxcnn.sweep.results import read_results
from jaxcnn.sweep.run import run_sweep, work

__all__ = [
    "Axis",
    "Sweep",
    "TrialPlan",
    "check_trial",
    "expand_grid",
    "load_sweep",
    "plan_sweep",
    "read_results",
    "run_sweep",
    "work",
    "write_report",
]
