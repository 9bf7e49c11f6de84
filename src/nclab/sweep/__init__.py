"""Sweeps: spec -> run configs (hash = identity), executors, the driver, search, the study."""

from nclab.sweep.executors import EXECUTORS, Executor, InlineExecutor, LocalExecutor, RayExecutor, make_executor
from nclab.sweep.runner import SweepEvent, SweepSummary, resolve_run_fn, run_sweep
from nclab.sweep.spec import (
    RandomParam,
    RandomSpec,
    RunSpec,
    SweepSpec,
    canonical_json,
    config_hash,
    expand,
    load_spec,
)

__all__ = [
    "EXECUTORS",
    "Executor",
    "InlineExecutor",
    "LocalExecutor",
    "RayExecutor",
    "RandomParam",
    "RandomSpec",
    "RunSpec",
    "SweepEvent",
    "SweepSpec",
    "SweepSummary",
    "canonical_json",
    "config_hash",
    "expand",
    "load_spec",
    "make_executor",
    "resolve_run_fn",
    "run_sweep",
]
