"""Hyperparameter search: Optuna ask-and-tell over the sweep executors and the run store.

The paper's protocol is the preset ``"paper"``: 20 random trials over
``optim.lr ~ logU[1e-5, 0.5]``, ``schedule.gamma ~ {0.01, 0.1, 0.5}`` and (for label
smoothing / relaxation only) ``loss.alpha ~ U[0.01, 0.25]``. Each trial trains for
``round(0.8 * epochs)`` epochs with ``dataset.val_fraction = 0.2`` (80% of the *noisy*
training set) and is scored by ``val_acc_noisy``, the accuracy on the held-out 20% against
their noisy labels; the best trial's parameters are retrained on all data for all epochs.

Resumable: the Optuna study lives in ``sqlite:///STORE/optuna.sqlite`` (or any RDB URL,
so several machines can share one search) and every trial is an ordinary store run (its
config hash is its identity). Trial ``n`` is drawn by a sampler seeded with
``derive_seed(seed, f"search/{n}")``, so an interrupted search continues with the same
draws it would have made. A trial asked by a driver that died (same host, pid gone) is
re-run on resume; trials other live drivers hold are left to them.
"""

from __future__ import annotations

import copy
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from nclab.config import OptionError, StrictModel, set_dotted
from nclab.store.index import RunStore, pid_alive, pid_start_time
from nclab.sweep.executors import Executor, RunFn
from nclab.sweep.runner import SweepEvent, run_sweep
from nclab.sweep.spec import MAX_RUNS, RandomParam, RunSpec, config_hash, default_resolver, get_dotted

__all__ = ["SearchPreset", "SearchResult", "PRESETS", "get_preset", "trial_config", "run_search"]


class SearchPreset(StrictModel):
    """A search protocol: space, trial count, sampler, trial budget and score."""

    name: str
    trials: int = Field(20, ge=1, le=MAX_RUNS)
    sampler: Literal["random", "tpe"] = "random"
    space: dict[str, RandomParam]
    #: params searched only when the config's ``loss.name`` is in the list
    only_for_loss: dict[str, list[str]] = Field(default_factory=dict)
    epoch_fraction: float = Field(0.8, gt=0, le=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    metric: str = "val_acc_noisy"
    direction: Literal["maximize", "minimize"] = "maximize"


PRESETS: dict[str, SearchPreset] = {
    "paper": SearchPreset(
        name="paper",
        trials=20,
        sampler="random",
        space={
            "optim.lr": RandomParam(dist="loguniform", low=1e-5, high=0.5),
            "schedule.gamma": RandomParam(dist="choice", values=[0.01, 0.1, 0.5]),
            "loss.alpha": RandomParam(dist="uniform", low=0.01, high=0.25),
        },
        only_for_loss={"loss.alpha": ["ls", "lr"]},
    )
}


def get_preset(name: str) -> SearchPreset:
    """A named preset (``paper``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown search preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class SearchResult:
    """Outcome of :func:`run_search`."""

    study_name: str
    storage: str
    n_trials: int
    n_complete: int
    best_params: dict[str, Any]
    best_value: float | None
    best_config: dict[str, Any]
    retrain_hash: str | None = None
    retrain_final: dict[str, Any] | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    metric: str = ""  # the preset's score, a key of each run's final record
    direction: str = "maximize"

    def describe(self) -> str:
        lines = [f"study {self.study_name} ({self.storage}): {self.n_complete}/{self.n_trials} trials complete"]
        best = "none (no trial completed)" if self.best_value is None else f"{self.best_value:.4g}"
        lines.append(f"best {self.metric or 'value'} ({self.direction}) {best} with " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.best_params.items()))
        if self.retrain_hash:
            lines.append(f"retrained on all data: run {self.retrain_hash}")
        return "\n".join(lines)


def active_space(preset: SearchPreset, base: dict[str, Any]) -> dict[str, RandomParam]:
    """The preset's space minus params that do not apply to ``base`` (e.g. alpha for CE)."""
    loss = get_dotted(base, "loss.name", "ce")
    return {k: p for k, p in preset.space.items() if k not in preset.only_for_loss or loss in preset.only_for_loss[k]}


def trial_config(base: dict[str, Any], params: dict[str, Any], preset: SearchPreset) -> dict[str, Any]:
    """A trial's config: ``base`` + ``params``, ``epochs -> max(1, round(f * epochs))``,
    ``dataset.val_fraction -> preset.val_fraction``."""
    cfg = copy.deepcopy(base)
    for k, v in params.items():
        set_dotted(cfg, k, v)
    epochs = int(cfg.get("epochs", 1))
    cfg["epochs"] = max(1, int(round(preset.epoch_fraction * epochs)))
    set_dotted(cfg, "dataset.val_fraction", preset.val_fraction)
    return cfg


def _distribution(p: RandomParam):
    import optuna  # noqa: PLC0415

    if p.dist == "loguniform":
        return optuna.distributions.FloatDistribution(p.low, p.high, log=True)
    if p.dist == "uniform":
        return optuna.distributions.FloatDistribution(p.low, p.high)
    if p.dist == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high))
    return optuna.distributions.CategoricalDistribution(list(p.values or []))


def _sampler(kind: str, seed: int, n: int):
    import optuna  # noqa: PLC0415

    from nclab.seeding import derive_seed  # noqa: PLC0415

    s = derive_seed(seed, f"search/{n}") % (2**32)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=s)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=s)
    raise ValueError(f"unknown sampler {kind!r}; random or tpe")


def run_search(
    base: dict[str, Any],
    *,
    store: RunStore,
    preset: SearchPreset | str = "paper",
    trials: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    executor: Executor,
    run_fn: RunFn,
    retrain: bool = True,
    resolve: Callable[[dict], dict] | None | Literal["auto"] = "auto",
    on_event: Callable[[SweepEvent], None] | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Search ``preset``'s space around ``base`` (see module doc); returns the best trial and,
    with ``retrain``, the store run of the best parameters trained on all data.

    ``on_trial`` (progress) gets one dict per finished trial: ``number``, ``state``
    (``COMPLETE``/``FAIL``), ``value``, ``metric``, ``direction``, ``params``, ``finished``
    (trials finished so far, this session's and earlier ones), ``total`` and ``best`` (best value so far)."""
    import optuna  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if isinstance(preset, str):
        preset = get_preset(preset)
    if resolve == "auto":
        resolve = default_resolver()
    n_target = preset.trials if trials is None else int(trials)
    kind = sampler or preset.sampler
    if kind not in ("random", "tpe"):
        raise OptionError("unknown {sampler} {kind!r}; valid: random, tpe", options=("sampler",), kind=kind)
    if not 1 <= n_target <= MAX_RUNS:
        raise OptionError("{trials} must lie in [1, {most}]; got {got}", options=("trials",), most=MAX_RUNS, got=n_target)
    space = active_space(preset, base)
    dists = {k: _distribution(p) for k, p in space.items()}
    storage = storage or f"sqlite:///{(Path(store.root) / 'optuna.sqlite').resolve()}"
    if study_name is None:
        study_name = f"{preset.name}-{config_hash(_resolved(base, resolve))[:12]}-s{seed}"
    study = optuna.create_study(
        storage=storage, study_name=study_name, direction=preset.direction, load_if_exists=True,
        sampler=_sampler(kind, seed, 0),
    )
    me = f"{socket.gethostname()}:{os.getpid()}:{pid_start_time(os.getpid())}"
    sweep_name = f"search-{study_name}"

    def to_run(params: dict[str, Any]) -> RunSpec:
        cfg = _resolved(trial_config(base, params, preset), resolve)
        h = config_hash(cfg)
        cfg["name"] = f"{sweep_name}-{h[:8]}"
        return RunSpec(hash=h, name=cfg["name"], config=cfg, varied=params)

    # trials asked by a driver on this host that has died: run them again
    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING and _dead(t.user_attrs.get("driver"))]
    for t in orphans:
        study._storage.set_trial_user_attr(t._trial_id, "driver", me)  # adopt it
    batch: list[tuple[int, int, dict[str, Any]]] = [(t.number, t._trial_id, dict(t.params)) for t in orphans]
    while True:
        n_have = len(study.trials)
        while len(batch) < max(1, executor.capacity) and n_have < n_target:
            study.sampler = _sampler(kind, seed, n_have)
            tr = study.ask(dists)
            tr.set_user_attr("driver", me)
            batch.append((tr.number, tr._trial_id, dict(tr.params)))
            n_have += 1
        if not batch:
            break
        runs = [to_run(p) for _, _, p in batch]
        run_sweep(store, runs, run_fn=run_fn, executor=executor, sweep=sweep_name, on_event=on_event)
        for (number, trial_id, _), run in zip(batch, runs):
            row = store.get(run.hash)
            value = None if row is None or row["status"] != "completed" else (row["final"] or {}).get(preset.metric)
            study._storage.set_trial_user_attr(trial_id, "run_hash", run.hash)
            if value is None or not math.isfinite(float(value)):
                study.tell(number, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(number, float(value))
            if on_trial is not None:
                on_trial(_trial_event(study, number, value, run.varied, preset, n_target))
        batch = []

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    result = SearchResult(
        study_name=study_name, storage=storage, n_trials=len(study.trials), n_complete=len(complete),
        best_params={}, best_value=None, best_config={},
        trials=[{"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
                 "run_hash": t.user_attrs.get("run_hash")} for t in study.trials],
        metric=preset.metric, direction=preset.direction,
    )
    if not complete:
        return result
    best = study.best_trial
    result.best_params = dict(best.params)
    result.best_value = best.value
    final_cfg = copy.deepcopy(base)
    for k, v in best.params.items():
        set_dotted(final_cfg, k, v)
    final_cfg = _resolved(final_cfg, resolve)
    result.best_config = final_cfg
    if retrain:
        h = config_hash(final_cfg)
        final_cfg = {**final_cfg, "name": f"{sweep_name}-best-{h[:8]}"}
        run = RunSpec(hash=h, name=final_cfg["name"], config=final_cfg, varied=dict(best.params))
        run_sweep(store, [run], run_fn=run_fn, executor=executor, sweep=sweep_name, on_event=on_event)
        row = store.get(h)
        result.retrain_hash = h
        result.retrain_final = row["final"] if row and row["status"] == "completed" else None
    return result


def _trial_event(study: Any, number: int, value: Any, params: dict[str, Any], preset: SearchPreset,
                 total: int) -> dict[str, Any]:
    import optuna  # noqa: PLC0415

    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    values = [t.value for t in done if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    ok = value is not None and math.isfinite(float(value))
    best = (max(values) if preset.direction == "maximize" else min(values)) if values else None
    return {"number": number, "state": "COMPLETE" if ok else "FAIL", "value": float(value) if ok else None,
            "metric": preset.metric, "direction": preset.direction, "params": dict(params),
            "finished": len(done), "total": total, "best": best}


def _resolved(cfg: dict[str, Any], resolve: Callable[[dict], dict] | None) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    cfg.setdefault("name", "search")
    return resolve(cfg) if resolve is not None else cfg


def _dead(driver: str | None) -> bool:
    """Whether a ``host:pid:start`` driver tag names a dead process on this host."""
    if not driver:
        return True  # asked without a tag: nobody will tell it
    try:
        host, pid, start = driver.rsplit(":", 2)
    except ValueError:
        return True
    if host != socket.gethostname():
        return False
    return not pid_alive(int(pid), None if start == "None" else int(start))
