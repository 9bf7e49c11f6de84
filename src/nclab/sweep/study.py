"""The memorization-dilation study: binary experiments, CE vs LS, across noise rates and seeds.

``plan_study(scale=...)`` decides the runs; ``run_study(plan, store=..., executor=...)`` runs
them (resumable, through :func:`nclab.sweep.run_sweep`). The report is built separately
from the store (:func:`nclab.report.build_report`).

Noise convention: ``symmetric`` — with probability ``p`` a training label is flipped to the
*other* class (binary), so the nominal rate is the flip rate; each run reports the realized
rate (``train.realized_noise_rate``). (The official code redraws over all classes, which
flips only ``p/2`` in expectation; use ``noise.kind: symmetric_all`` to match it.)

Scales
------
``small`` (CPU; 72 runs, ~8-15 s each, about 10 minutes on 2 cores, well inside 30):
    datasets' native resolution flattened (digits 8x8, Fashion-MNIST 28x28), Fashion-MNIST
    subsampled to 500 images per class; MLP depth 3, width 256, 2-D features (d = N), batch
    norm; SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 32, 60 epochs, step schedule
    every 20 epochs by 0.5; LS alpha = 0.1; no search (fixed hyperparameters); seeds 0-2;
    noise rates {0, 0.1, 0.2, 0.3, 0.4}; latent-class variant at rate 0.2 with latent
    fraction 0.25.
``paper`` (GPU; the official configuration): images to 3x32x32 with the paper's
    normalisation; MLP depth 9, width 2048; batch 16, weight decay 1e-3, 200 epochs, step
    every 40 epochs; per (dataset, loss, rate) cell the paper's search preset (20 random
    trials on 80% of the noisy data for 80% of the epochs, scored on the noisy 20%), then
    every seed trained on all data with the best parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nclab.store.index import RunStore
from nclab.sweep.executors import Executor, RunFn
from nclab.sweep.runner import SweepEvent, SweepSummary, run_sweep
from nclab.sweep.spec import SweepSpec, expand

__all__ = ["STUDIES", "StudyPlan", "plan_study", "run_study", "available_datasets", "NOISE_RATES"]

STUDIES: tuple[str, ...] = ("memorization-dilation",)
NOISE_RATES: list[float] = [0.0, 0.1, 0.2, 0.3, 0.4]
CANDIDATES: tuple[str, ...] = ("digits", "fashion-mnist", "mnist", "cifar10", "svhn")


def available_datasets(*, data_dir: str | Path | None = None, candidates: tuple[str, ...] = CANDIDATES) -> list[str]:
    """Datasets whose files are on this machine (no download is attempted)."""
    from nclab.data import load_dataset  # noqa: PLC0415
    from nclab.data.errors import DataNotFoundError  # noqa: PLC0415

    out = []
    for name in candidates:
        if name == "digits":  # ships with scikit-learn
            out.append(name)
            continue
        try:
            load_dataset(name, classes=2, per_class=1, data_dir=data_dir, download=False)
        except (DataNotFoundError, FileNotFoundError, ValueError, OSError):
            continue
        out.append(name)
    return out


@dataclass
class StudyPlan:
    """The study's sweeps: one spec per (dataset, variant); ``search`` for the paper scale."""

    scale: str
    datasets: list[str]
    specs: list[SweepSpec]
    search: bool = False
    notes: list[str] = field(default_factory=list)

    def runs(self):
        out = []
        for s in self.specs:
            out.extend(expand(s))
        return out

    def describe(self) -> str:
        n = sum(len(expand(s)) for s in self.specs)
        lines = [f"memorization-dilation study, scale {self.scale}: datasets {', '.join(self.datasets)}; {n} runs"
                 + (" (+ a 20-trial search per cell)" if self.search else "")]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def _base(scale: str, dataset: str, *, data_dir: str | None, device: str | None, tiny: bool) -> dict[str, Any]:
    if scale == "small":
        epochs = 8 if tiny else 60
        per_class = None if dataset == "digits" else (60 if tiny else 500)
        return {
            "epochs": epochs, "batch_size": 32, "eval_every": max(1, epochs // 4), "device": device or "cpu",
            "dataset": {"name": dataset, "classes": 2, "per_class": per_class, "preprocess": "native", "data_dir": data_dir},
            "noise": {"kind": "symmetric", "rate": 0.0, "exact": False},
            "loss": {"name": "ce", "alpha": 0.1},
            "model": {"name": "mlp", "depth": 2 if tiny else 3, "width": 64 if tiny else 256, "feature_dim": None, "batch_norm": True},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "step", "step_size": max(1, epochs // 3), "gamma": 0.5},
        }
    if scale == "paper":
        return {
            "epochs": 200, "batch_size": 16, "eval_every": 20, "device": device or "auto",
            "dataset": {"name": dataset, "classes": 2, "per_class": None, "preprocess": "paper", "data_dir": data_dir},
            "noise": {"kind": "symmetric", "rate": 0.0, "exact": False},
            "loss": {"name": "ce", "alpha": 0.1},
            "model": {"name": "mlp", "depth": 9, "width": 2048, "feature_dim": None, "batch_norm": True},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
            "schedule": {"name": "step", "step_size": 40, "gamma": 0.1},
        }
    raise ValueError(f"unknown scale {scale!r}; small or paper")


def plan_study(
    *,
    scale: str = "small",
    datasets: list[str] | None = None,
    data_dir: str | Path | None = None,
    seeds: int | None = None,
    device: str | None = None,
    tiny: bool = False,
    rates: list[float] | None = None,
) -> StudyPlan:
    """Plan the study: every requested (default: every locally available) dataset x {CE, LS}
    x noise rates x seeds, plus the latent-class variant (rate 0.2, latent fraction 0.25)."""
    if scale not in ("small", "paper"):
        raise ValueError(f"unknown scale {scale!r}; small or paper")
    dd = None if data_dir is None else str(data_dir)
    avail = available_datasets(data_dir=dd, candidates=tuple(datasets) if datasets else CANDIDATES)
    if datasets:
        missing = [d for d in datasets if d not in avail]
        if missing:
            raise ValueError(f"dataset(s) not available locally: {', '.join(missing)} (give --data-dir, or download them first)")
    if not avail:
        raise ValueError("no dataset available")
    n_seeds = seeds or (2 if tiny else 3)
    rates = rates or ([0.0, 0.2, 0.4] if tiny else NOISE_RATES)
    specs = []
    for ds in avail:
        base = _base(scale, ds, data_dir=dd, device=device, tiny=tiny)
        specs.append(SweepSpec(
            name=f"md-{scale}-{ds}", base=base, seeds=list(range(n_seeds)),
            grid={"loss.name": ["ce", "ls"], "noise.rate": rates},
        ))
        latent = copy.deepcopy(base)
        latent["noise"]["latent_fraction"] = 0.25
        specs.append(SweepSpec(
            name=f"md-{scale}-{ds}-latent", base=latent, seeds=list(range(n_seeds)),
            grid={"loss.name": ["ce", "ls"], "noise.rate": [0.2]},
        ))
    notes = ["noise: symmetric (flip to the other class with probability p); realized rate reported per run"]
    if scale == "small":
        notes.append("small: native-resolution MLP depth 3 width 256, 60 epochs, fixed lr 0.05, LS alpha 0.1, no search"
                     if not tiny else "tiny smoke scale: MLP depth 2 width 64, 8 epochs")
    else:
        notes.append("paper: MLP depth 9 width 2048, 200 epochs, batch 16, wd 1e-3, paper search preset per cell")
    return StudyPlan(scale=scale, datasets=avail, specs=specs, search=(scale == "paper"), notes=notes)


def run_study(
    plan: StudyPlan,
    *,
    store: RunStore,
    executor: Executor,
    run_fn: RunFn | None = None,
    on_event: Callable[[SweepEvent], None] | None = None,
    retry_failed: bool = False,
) -> SweepSummary:
    """Run the plan's runs into ``store`` (resumable). With ``plan.search`` each
    (dataset, loss, rate) cell is tuned first (paper preset) and its seeds use the best
    parameters. Returns the summary of the final runs."""
    from nclab.sweep.runner import resolve_run_fn  # noqa: PLC0415

    fn = resolve_run_fn(run_fn)
    if not plan.search:
        runs = []
        for s in plan.specs:
            runs.extend(expand(s))
        store.register(runs, sweep=f"md-{plan.scale}")
        return run_sweep(store, runs, run_fn=fn, executor=executor, sweep=f"md-{plan.scale}",
                         on_event=on_event, retry_failed=retry_failed)
    from nclab.sweep.search import run_search  # noqa: PLC0415

    final_runs = []
    for s in plan.specs:
        for cell in expand(s.model_copy(update={"seeds": []})):
            res = run_search(cell.config, store=store, preset="paper", seed=0, executor=executor, run_fn=fn,
                             retrain=False, on_event=on_event)
            tuned = copy.deepcopy(cell.config)
            for k, v in res.best_params.items():
                parts = k.split(".")
                tuned[parts[0]][parts[1]] = v
            final_runs.extend(expand(SweepSpec(name=s.name, base=tuned, seeds=s.seeds)))
    return run_sweep(store, final_runs, run_fn=fn, executor=executor, sweep=f"md-{plan.scale}",
                     on_event=on_event, retry_failed=retry_failed)
