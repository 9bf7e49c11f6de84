"""The memorization-dilation study: CE vs LS across noise rates, paired seeds, terminal phase.

``plan_study(scale=...)`` decides the runs; ``run_study(plan, store=..., executor=...)`` runs
them (resumable, through :func:`nclab.sweep.run_sweep`). The report is built separately
from the store (:func:`nclab.report.build_report`); its verdicts are explained in
``docs/method.md``.

Pairing
    The CE and LS runs of one ``(dataset, noise rate, seed)`` differ only in ``loss.name``.
    Every random draw of a run comes from a named stream of ``config.seed`` (``"data"`` for
    the per-class subsample, ``"noise"``, ``"init"``, ``"batches"``; :mod:`nclab.seeding`),
    none of which depends on the loss, so the pair shares the noisy labels, the initial
    weights and the batch order (tested in ``tests/test_study.py``).

Noise convention
    ``symmetric_all`` at every scale, the official code's convention: with probability ``p``
    a training label is redrawn uniformly over all ``N`` classes, so about ``p (N-1)/N`` of
    the labels change (``p/2`` for binary tasks). Each run reports the realized flip rate
    (``train.realized_noise_rate``).

Terminal phase: an outcome, never a filter
    Every study run trains its whole annealed schedule (no early stop), so the CE and LS runs
    of a pair are measured at the same epoch and learning rate. ``terminal_acc`` records the
    terminal phase as an outcome: the first epoch from which the eval-mode accuracy on the
    *noisy* training labels stayed >= 0.999 to the end (``terminal_epoch``), or that it never
    got there. The report counts every run and uses this only for a sensitivity analysis.

Scales
------
``small`` (CPU): datasets at native resolution flattened (digits 8x8; Fashion-MNIST 28x28 at
    500 training images per class); MLP depth 3, width 256 (digits: width 512 and batch 16,
    without which most CE runs at noise 0.4 never fit their last noisy label), batch norm,
    features of dimension d = N; SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 32 (digits 16), cosine schedule
    over 200 epochs to lr 0, every run to the end; LS alpha 0.1; no search; 10 seeds. Cells:
    binary digits (0 vs 1) and binary Fashion-MNIST (T-shirt vs Trouser) at noise
    {0, 0.1, 0.2, 0.3, 0.4}, the noise-free cells again with a classifier without bias, and
    10-class Fashion-MNIST (200 images per class, d = 10) at noise {0.2, 0.4}: 280 runs.
``paper`` (GPU; the official configuration): binary MNIST, Fashion-MNIST, CIFAR-10, SVHN
    (classes 0 and 1), images to 3x32x32 with the official normalisation; MLP depth 9,
    width 2048; batch 16, weight decay 1e-3, 200 epochs, step schedule every 40 epochs. As in
    the official code, every (dataset, loss, rate, seed) run is tuned by its own search (20
    random trials on 80% of its noisy data for 80% of the epochs, scored on the noisy 20%),
    then trained on all data with the best parameters; ``search="per-cell"`` searches once
    per (dataset, loss, rate) on seed 0's data and reuses the result for every seed (cheaper).
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

__all__ = ["STUDIES", "StudyPlan", "plan_study", "run_study", "available_datasets", "NOISE_RATES",
           "SMALL_DATASETS", "PAPER_DATASETS", "MULTICLASS_RATES", "TERMINAL_ACC", "SEARCH_MODES",
           "require_datasets"]

STUDIES: tuple[str, ...] = ("memorization-dilation",)
NOISE_RATES: list[float] = [0.0, 0.1, 0.2, 0.3, 0.4]
MULTICLASS_RATES: list[float] = [0.2, 0.4]
CANDIDATES: tuple[str, ...] = ("digits", "fashion-mnist", "mnist", "cifar10", "svhn")
SMALL_DATASETS: tuple[str, ...] = ("digits", "fashion-mnist")
PAPER_DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "svhn")
TERMINAL_ACC = 0.999
SEARCH_MODES: tuple[str, ...] = ("per-run", "per-cell")
NOISE_KIND = "symmetric_all"


def available_datasets(*, data_dir: str | Path | None = None, candidates: tuple[str, ...] = CANDIDATES) -> list[str]:
    """Datasets whose files are on this machine (no download is attempted)."""
    return [d for d in candidates if _missing_reason(d, data_dir=data_dir) is None]


def _missing_reason(name: str, *, data_dir: str | Path | None) -> str | None:
    """None when ``name``'s files are found; else the loader's message (it lists every place looked in)."""
    if name == "digits":  # ships with scikit-learn
        return None
    from nclab.data import load_dataset  # noqa: PLC0415
    from nclab.data.errors import DataNotFoundError  # noqa: PLC0415

    try:
        load_dataset(name, classes=2, per_class=1, data_dir=data_dir, download=False)
    except (DataNotFoundError, FileNotFoundError, ValueError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None


def require_datasets(names: list[str] | tuple[str, ...], *, data_dir: str | Path | None = None) -> None:
    """Raise ``FileNotFoundError`` naming every missing dataset and where it was looked for."""
    problems = [(n, r) for n in names if (r := _missing_reason(n, data_dir=data_dir)) is not None]
    if problems:
        lines = [f"dataset(s) not found: {', '.join(n for n, _ in problems)}"]
        lines += [f"- {n}: {r}" for n, r in problems]
        lines.append("give --data-dir DIR (or download the files first), or choose datasets with --datasets")
        raise FileNotFoundError("\n".join(lines))


@dataclass
class StudyPlan:
    """The study's sweeps: one spec per cell group; ``search`` (``"per-run"``, ``"per-cell"``
    or None) for the paper scale."""

    scale: str
    datasets: list[str]
    specs: list[SweepSpec]
    search: str | None = None
    notes: list[str] = field(default_factory=list)

    def runs(self):
        out = []
        for s in self.specs:
            out.extend(expand(s))
        return out

    def describe(self) -> str:
        n = sum(len(expand(s)) for s in self.specs)
        lines = [f"memorization-dilation study, scale {self.scale}: datasets {', '.join(self.datasets)}; {n} runs"
                 + ({"per-run": " (+ a 20-trial search per run)", "per-cell": " (+ a 20-trial search per cell)"}
                    .get(self.search or "", ""))]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The resolved run configs (each with ``dataset``, ``noise``, ``loss``, ``seed``,
        ``stop``, ...) plus the plan's summary: what ``reproduce --dry-run --json`` prints."""
        runs = []
        for s in self.specs:
            for r in expand(s):
                runs.append({"hash": r.hash, "spec": s.name, **r.config})
        return {"study": STUDIES[0], "scale": self.scale, "datasets": self.datasets, "search": self.search,
                "n_runs": len(runs), "notes": self.notes, "runs": runs}


def _base(scale: str, dataset: str, *, data_dir: str | None, device: str | None, tiny: bool,
          classes: int = 2, per_class: int | None = None) -> dict[str, Any]:
    if scale == "small":
        epochs = 30 if tiny else 200
        if per_class is None:
            per_class = None if dataset == "digits" else (60 if tiny else 500)
        return {
            # full metrics only at the end; a checkpoint every 25 epochs (one per epoch costs more than the epoch)
            # digits: batch 16 (more steps per epoch); at 32 most CE runs at noise 0.4 never fit their last label
            "epochs": epochs, "batch_size": 16 if dataset == "digits" and not tiny else 32, "eval_every": epochs,
            "checkpoint_every": 25, "device": device or "cpu",
            "threads": 1,
            "dataset": {"name": dataset, "classes": classes, "per_class": per_class, "preprocess": "native",
                        "data_dir": data_dir},
            "noise": {"kind": NOISE_KIND, "rate": 0.0, "exact": False},
            "loss": {"name": "ce", "alpha": 0.1},
            # digits (270 binary images) needs width 512 for CE to fit every noisy label within the cap
            "model": {"name": "mlp", "depth": 2 if tiny else 3, "width": 64 if tiny else (512 if dataset == "digits" else 256),
                      "feature_dim": None,
                      "batch_norm": True},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"},
            # no stop rule: the terminal phase is an outcome (first epoch from which it holds to the end)
            "terminal_acc": TERMINAL_ACC,
        }
    if scale == "paper":
        return {
            "epochs": 200, "batch_size": 16, "eval_every": 20, "checkpoint_every": 10, "device": device or "auto",
            "dataset": {"name": dataset, "classes": classes, "per_class": per_class, "preprocess": "paper",
                        "data_dir": data_dir},
            "noise": {"kind": NOISE_KIND, "rate": 0.0, "exact": False},
            "loss": {"name": "ce", "alpha": 0.1},
            "model": {"name": "mlp", "depth": 9, "width": 2048, "feature_dim": None, "batch_norm": True},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
            "schedule": {"name": "step", "step_size": 40, "gamma": 0.1},
            "terminal_acc": TERMINAL_ACC,
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
    multiclass: bool | None = None,
    check_data: bool = True,
    search: str = "per-run",
) -> StudyPlan:
    """Plan the study: datasets x {CE, LS} x noise rates x seeds (binary tasks, classes 0
    and 1), plus at ``small`` scale the 10-class Fashion-MNIST cell (noise 0.2 and 0.4).

    ``datasets`` defaults to the scale's own (small: digits, fashion-mnist; paper: mnist,
    fashion-mnist, cifar10, svhn). With ``check_data`` (default) a missing dataset raises
    ``FileNotFoundError`` listing where it was looked for; ``check_data=False`` plans
    without looking (``--dry-run``). ``multiclass`` (default: small scale, not tiny, with
    fashion-mnist among the datasets) adds the 10-class cell. ``search`` (paper scale only):
    ``"per-run"`` tunes every (dataset, loss, rate, seed) run on its own data, as the official
    code does; ``"per-cell"`` tunes once per (dataset, loss, rate) on seed 0's data.
    """
    if scale not in ("small", "paper"):
        raise ValueError(f"unknown scale {scale!r}; small or paper")
    if search not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {search!r}; one of {', '.join(SEARCH_MODES)}")
    dd = None if data_dir is None else str(data_dir)
    default = (["digits"] if tiny else list(SMALL_DATASETS)) if scale == "small" else list(PAPER_DATASETS)
    chosen = list(dict.fromkeys(datasets)) if datasets else default
    unknown = [d for d in chosen if d not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown dataset(s) {', '.join(unknown)}; the study knows {', '.join(CANDIDATES)}")
    if check_data:
        require_datasets(chosen, data_dir=dd)
    n_seeds = seeds or (2 if tiny else 10)
    if n_seeds < 1:
        raise ValueError(f"seeds must be >= 1; got {n_seeds}")
    rates = rates or ([0.0, 0.2, 0.4] if tiny else NOISE_RATES)
    seed_list = list(range(n_seeds))
    specs = []
    for ds in chosen:
        base = _base(scale, ds, data_dir=dd, device=device, tiny=tiny)
        specs.append(SweepSpec(name=f"md-{scale}-{ds}", base=base, seeds=seed_list,
                               grid={"loss.name": ["ce", "ls"], "noise.rate": list(rates)}))
    if scale == "small" and not tiny and 0.0 in rates:
        # H3 with and without a classifier bias: with a free bias a dead class is a global minimum
        # of the positive unconstrained-features model, without one it is not a minimum at all
        for ds in chosen:
            nb = _base(scale, ds, data_dir=dd, device=device, tiny=tiny)
            nb["model"]["classifier_bias"] = False
            specs.append(SweepSpec(name=f"md-{scale}-{ds}-nobias", base=nb, seeds=seed_list,
                                   grid={"loss.name": ["ce", "ls"], "noise.rate": [0.0]}))
    if multiclass is None:
        multiclass = scale == "small" and not tiny and "fashion-mnist" in chosen
    if multiclass:
        base = _base(scale, "fashion-mnist", data_dir=dd, device=device, tiny=tiny, classes=10,
                     per_class=60 if tiny else 200)
        specs.append(SweepSpec(name=f"md-{scale}-fashion-mnist-10c", base=base, seeds=seed_list,
                               grid={"loss.name": ["ce", "ls"], "noise.rate": MULTICLASS_RATES}))
    notes = [f"terminal phase: recorded per run (first epoch from which noisy-label train accuracy >= {TERMINAL_ACC} "
             "holds to the end), never used to stop or to select runs",
             f"noise: {NOISE_KIND} (a label is redrawn uniformly over all N classes with probability p; "
             "about p(N-1)/N flip); realized rate reported per run",
             "pairing: CE and LS of one (dataset, rate, seed) share noisy labels, initial weights and batch order"]
    if scale == "small":
        notes.append("small: native-resolution MLP depth 3 width 256 (digits 512; d = N), SGD lr 0.05, wd 5e-4, batch 32 (digits 16), "
                     "cosine over 200 epochs to lr 0, every run to the end (no early stop), LS alpha 0.1, no search"
                     if not tiny else "tiny smoke scale: MLP depth 2 width 64, cosine over 30 epochs, every run to the end")
        if multiclass:
            notes.append("multi-class cell: 10-class Fashion-MNIST, 200 images per class, d = N = 10, noise 0.2 and 0.4")
    else:
        notes.append("paper: 3x32x32 inputs, MLP depth 9 width 2048, 200 epochs (fixed, official), batch 16, wd 1e-3, "
                     "step schedule every 40 epochs, the official search "
                     + ("per (dataset, loss, rate, seed) run" if search == "per-run"
                        else "once per (dataset, loss, rate) cell on seed 0's data, reused for every seed"))
    return StudyPlan(scale=scale, datasets=chosen + (["fashion-mnist-10c"] if multiclass else []), specs=specs,
                     search=search if scale == "paper" else None, notes=notes)


def run_study(
    plan: StudyPlan,
    *,
    store: RunStore,
    executor: Executor,
    run_fn: RunFn | None = None,
    on_event: Callable[[SweepEvent], None] | None = None,
    retry_failed: bool = False,
    stack: int | None = None,
) -> SweepSummary:
    """Run the plan's runs into ``store`` (resumable). With ``plan.search == "per-run"`` every
    run is tuned first on its own seed's data (paper preset, the official protocol); with
    ``"per-cell"`` each (dataset, loss, rate) cell is tuned once on seed 0 and its seeds use
    the best parameters. ``stack`` (when given) is passed to :func:`run_sweep`: train that many
    runs of one cell together. Returns the summary of the final runs."""
    from nclab.sweep.runner import resolve_run_fn  # noqa: PLC0415

    fn = resolve_run_fn(run_fn)
    extra: dict[str, Any] = {} if stack is None else {"stack": stack}
    if not plan.search:
        runs = []
        for s in plan.specs:
            runs.extend(expand(s))
        store.register(runs, sweep=f"md-{plan.scale}")
        return run_sweep(store, runs, run_fn=fn, executor=executor, sweep=f"md-{plan.scale}",
                         on_event=on_event, retry_failed=retry_failed, **extra)
    from nclab.sweep.search import run_search  # noqa: PLC0415

    def tuned(config: dict[str, Any], seed: int) -> dict[str, Any]:
        res = run_search(config, store=store, preset="paper", seed=seed, executor=executor, run_fn=fn,
                         retrain=False, on_event=on_event)
        out = copy.deepcopy(config)
        for k, v in res.best_params.items():
            parts = k.split(".")
            out[parts[0]][parts[1]] = v
        return out

    final_runs = []
    for s in plan.specs:
        if plan.search == "per-cell":
            for cell in expand(s.model_copy(update={"seeds": []})):
                # every seed of the cell, CE and LS alike, trains with this cell's tuned parameters
                final_runs.extend(expand(SweepSpec(name=s.name, base=tuned(cell.config, 0), seeds=s.seeds)))
        else:  # per run: each seed's search sees that seed's noisy labels and initialisation
            for run in expand(s):
                seed = int(run.config["seed"])
                final_runs.extend(expand(SweepSpec(name=s.name, base=tuned(run.config, seed), seeds=[seed])))
    return run_sweep(store, final_runs, run_fn=fn, executor=executor, sweep=f"md-{plan.scale}",
                     on_event=on_event, retry_failed=retry_failed, **extra)
