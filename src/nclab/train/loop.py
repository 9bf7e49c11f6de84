"""The training loop: data -> noise -> model -> epochs -> metrics.jsonl, with resume.

Read top to bottom: ``train`` prepares the run directory, the data (in-memory
tensors, noise from stream ``"noise"``, split from ``"split"``), the model
(``"init"``), then runs epochs with batches drawn by index from stream
``"batches"``. Every ``eval_every`` epochs one flat record goes to
``metrics.jsonl``; every ``checkpoint_every`` epochs (and at the end) the model,
optimizer and batch-generator state go to ``checkpoints/last.pt``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nclab.config import ConfigError
from nclab.losses import get_loss
from nclab.models import build_model
from nclab.seeding import numpy_generator, torch_generator
from nclab.store.files import append_jsonl, atomic_write_json, read_jsonl, truncate_jsonl
from nclab.train import rundir
from nclab.train.checkpoint import CheckpointError, checkpoint_info, load_checkpoint, save_checkpoint
from nclab.train.config import OptimConfig, TrainConfig
from nclab.train.evaluate import collect_outputs, evaluate_split
from nclab.train.schedule import lr_at
from nclab.train.stop import StopTracker, train_accuracy
from nclab.train.threads import thread_record, thread_scope

TIMING_KEYS: tuple[str, ...] = ("elapsed_s", "epoch_time_s", "eval_time_s")
"""Record keys that measure wall time (they differ between otherwise identical runs)."""


@dataclass
class RunResult:
    """Outcome of :func:`train`.

    ``status``: ``"completed"`` (all ``config.epochs`` done), ``"stopped"`` (ended
    early by ``max_epochs``; resumable), ``"diverged"`` (non-finite loss, parameters
    or logits in epoch ``diverged_epoch``; the last good checkpoint is kept) or
    ``"interrupted"`` (SIGINT/SIGTERM with ``handle_signals``; ``signum`` says which;
    resumable). ``history`` holds every record of ``metrics.jsonl`` (earlier sessions
    included), ``final`` the last one (None when no epoch was evaluated).
    """

    run_dir: Path
    config: TrainConfig
    history: list[dict[str, Any]]
    final: dict[str, Any] | None
    status: str
    epoch: int
    message: str = ""
    diverged_epoch: int | None = None
    signum: int | None = None


@dataclass
class RunData:
    """Everything the loop needs about the data, on the training device."""

    x_train: Tensor
    y_train: Tensor  # noisy training labels (the ones the loss sees)
    clean_train: Tensor
    metric_clean_train: Tensor  # clean labels in the training-label space (latent: see _metric_clean)
    x_val: Tensor | None
    y_val: Tensor | None
    x_test: Tensor
    y_test: Tensor
    num_classes: int  # training labels / logits (2C with latent classes)
    input_shape: tuple[int, ...]
    label_to_class: Tensor
    noise_arrays: dict[str, np.ndarray] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False; use device=auto or cpu")
    return torch.device(name)


def _metric_clean(noisy: np.ndarray, clean: np.ndarray, label_to_class: np.ndarray) -> np.ndarray:
    # In the training-label space a correctly labelled sample keeps its label (l or l + C for
    # latent classes); a mislabelled one is assigned its true class c, so memorization is its
    # distance to the clean centroid of class c.
    return np.where(label_to_class[noisy] == clean, noisy, clean).astype(np.int64)


def _own_noise(noisy: np.ndarray, clean: np.ndarray, num_classes: int):
    """The labels of data that bring their own noise (``clean_y``): nothing is injected."""
    from nclab.noise import NoisyLabels

    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (clean, noisy), 1)
    rows = counts.sum(axis=1, keepdims=True)
    return NoisyLabels(noisy=noisy.copy(), clean=clean.copy(), num_classes=num_classes, clean_num_classes=num_classes,
                       label_to_class=np.arange(num_classes, dtype=np.int64), spec={"kind": "dataset", "rate": None},
                       target_transition=np.divide(counts, rows, out=np.eye(num_classes), where=rows > 0))


def prepare_data(config: TrainConfig, device: torch.device, *, dataset: Any = None) -> RunData:
    """Load the dataset, apply label noise (stream ``noise``; latent classes: ``latent``),
    split off a validation part of the noisy training set (stream ``split``).

    ``dataset`` (in-memory data: an ``nclab.data.ArrayDataset``, a mapping with its keys,
    ``(x, y)`` or ``DatasetSplits``) replaces loading ``config.dataset.name``; ``classes``
    and ``per_class`` still apply. Data with their own ``clean_y`` take no injected noise."""
    from nclab.data import from_arrays, load_dataset, train_val_split
    from nclab.noise import latent_classes, make_noise

    d, nz = config.dataset, config.noise
    if dataset is not None:
        splits = from_arrays(dataset, name="python", classes=d.classes, per_class=d.per_class, seed=config.seed)
    else:
        splits = load_dataset(
            d.name, data_dir=d.data_dir, classes=d.classes, per_class=d.per_class,
            preprocess=d.preprocess, seed=config.seed, download=d.download, options=d.options or None,
            path=d.path,
        )
    y = np.asarray(splits.train_y, dtype=np.int64)
    if splits.train_clean_y is not None:
        if nz.kind != "none" or nz.latent_fraction > 0:
            raise ConfigError("the dataset brings its own noisy labels (clean_y); set noise.kind: none "
                              "(or drop clean_y to inject noise into y)")
        nl = _own_noise(y, np.asarray(splits.train_clean_y, dtype=np.int64), splits.num_classes)
    else:
        nl = make_noise(
            y, kind=nz.kind, rate=nz.rate, num_classes=splits.num_classes,
            generator=numpy_generator(config.seed, "noise"), exact=nz.exact,
            transition=nz.transition, pairs=nz.pairs,
        )
    if nz.latent_fraction > 0:
        nl = latent_classes(nl, fraction=nz.latent_fraction, generator=numpy_generator(config.seed, "latent"),
                            exact=nz.exact)
    n = y.shape[0]
    if d.val_fraction > 0:
        train_idx, val_idx = train_val_split(nl.noisy, fraction=d.val_fraction,
                                             generator=numpy_generator(config.seed, "split"))
        train_idx, val_idx = np.sort(np.asarray(train_idx)), np.sort(np.asarray(val_idx))
    else:
        train_idx, val_idx = np.arange(n), np.arange(0)
    noisy, clean = np.asarray(nl.noisy), np.asarray(nl.clean)
    l2c = np.asarray(nl.label_to_class)

    def t(a: Any, dtype=None) -> Tensor:
        # np.array copies: the noise record's arrays are read-only
        return torch.as_tensor(np.array(a) if not isinstance(a, Tensor) else a, dtype=dtype).to(device)

    x_all = torch.as_tensor(splits.train_x)
    ti, vi = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    arrays = {**nl.as_arrays(), "train_idx": train_idx.astype(np.int64), "val_idx": val_idx.astype(np.int64)}
    return RunData(
        x_train=t(x_all[ti] if len(val_idx) else x_all),  # no copy of the inputs without a split
        y_train=t(noisy[train_idx], torch.int64),
        clean_train=t(clean[train_idx], torch.int64),
        metric_clean_train=t(_metric_clean(noisy, clean, l2c)[train_idx], torch.int64),
        x_val=t(x_all[vi]) if len(val_idx) else None,
        y_val=t(noisy[val_idx], torch.int64) if len(val_idx) else None,
        x_test=t(splits.test_x),
        y_test=t(splits.test_y, torch.int64),
        num_classes=int(nl.num_classes),
        input_shape=tuple(int(s) for s in splits.input_shape),
        label_to_class=t(l2c, torch.int64),
        noise_arrays=arrays,
        info={"n_train": len(train_idx), "n_val": len(val_idx), "n_test": int(splits.test_y.shape[0]),
              "realized_noise_rate": nl.realized_rate, "class_names": list(splits.class_names),
              **({"source": "python"} if dataset is not None else {})},
    )


def make_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, L2 weight decay) or Adam (``momentum``/``nesterov`` unused).

    ``cfg.fused`` selects PyTorch's fused implementation (the same update rule; results
    differ from the per-tensor loop only by floating-point rounding order).
    """
    impl = {"fused": True} if cfg.fused else {"foreach": False}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov, **impl)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each batch; a trailing batch of one sample joins the previous one
    (BatchNorm cannot normalise a single sample in train mode)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, x: Tensor, y: Tensor, *,
    batch_size: int, generator: torch.Generator,
) -> float:
    """One pass over ``x`` in a random order drawn from ``generator``; returns the mean batch loss
    (sample-weighted). No Python work per sample: batches are index slices of in-memory tensors."""
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator).to(x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s, e in batch_bounds(n, batch_size):
        idx = perm[s:e]
        loss = loss_fn(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().double() * (e - s)
    return float(total / n)


def write_checkpoint(path: Path, config: TrainConfig, *, epoch: int, elapsed: float, model: nn.Module,
                     optimizer: torch.optim.Optimizer, batches: torch.Generator, stopper: StopTracker) -> None:
    """The run's checkpoint (model, optimizer, batch-RNG and stop-rule state), shared by the
    solo and the stacked trainer so that either can resume the other's runs."""
    save_checkpoint(path, {
        "epoch": epoch,
        "elapsed_s": elapsed,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "batch_rng": batches.get_state(),
        "stop": stopper.state(),
    }, config_hash=config.config_hash())


def restore_checkpoint(path: Path, config: TrainConfig, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                       batches: torch.Generator, stopper: StopTracker) -> tuple[int, float]:
    """Load :func:`write_checkpoint`'s state into the given objects; returns ``(epoch, elapsed_s)``."""
    state = load_checkpoint(path, config_hash=config.config_hash())
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.set_state(state["batch_rng"])
        stopper.load(state.get("stop"))
        return int(state["epoch"]), float(state["elapsed_s"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {exc}") from None


def open_session(run_dir: Path, config: TrainConfig, *, device: torch.device, data: RunData, start: int,
                 sessions: list[dict[str, Any]], resuming: bool, stack: dict[str, Any] | None = None) -> Any:
    """The files a (solo or stacked) session writes before training: records after the
    checkpoint epoch dropped, ``noise.npz``, ``env.json`` with this session (threads, builds,
    stack), the dynamics folder; returns the dynamics recorder (or None)."""
    metrics_path = run_dir / rundir.METRICS
    truncate_jsonl(metrics_path, [r for r in read_jsonl(metrics_path) if r.get("epoch", 0) <= start])
    rundir.save_npz(run_dir / rundir.NOISE, data.noise_arrays)
    env = rundir.environment(config, device)
    threads_now = thread_record()
    if sessions and sessions[-1].get("torch_threads") not in (None, threads_now["torch_threads"]):
        import warnings

        warnings.warn(f"{run_dir}: resuming with {threads_now['torch_threads']} torch threads; the run so far used "
                      f"{sessions[-1]['torch_threads']} (results depend on the thread count)", stacklevel=3)
    env["threads"] = threads_now
    session = {"start_epoch": start, "device": str(device), "hostname": env["hostname"],
               "git_commit": env["git_commit"], "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "torch_threads": threads_now["torch_threads"]}
    if stack is not None:
        env["stack"] = stack
        session["stack_size"] = stack["size"]
    env["sessions"] = sessions + [session]
    env["data"] = data.info
    rundir.write_env(run_dir, env)
    if not config.record_dynamics:
        return None
    from nclab.train.dynamics import DynamicsRecorder

    recorder = DynamicsRecorder(run_dir)
    if resuming:
        recorder.truncate(after=start)  # epochs after the checkpoint are recomputed
    else:
        recorder.clear()
    return recorder


def _finite_params(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _check_noise_file(path: Path, arrays: dict[str, np.ndarray]) -> None:
    old = rundir.load_npz(path)
    for key in ("noisy", "clean", "train_idx", "val_idx"):
        if key not in old or not np.array_equal(old[key], arrays[key]):
            raise CheckpointError(
                f"{path}: stored {key!r} differ from the labels this config generates now "
                "(code or data changed since the run started); cannot resume bit-identically, use overwrite"
            )


def save_features(path: Path, model: nn.Module, data: RunData, *, batch_size: int) -> None:
    """The final training features in ``nclab metrics``' file format (one eval-mode pass).

    ``labels`` are the noisy training labels, ``clean_labels`` the true ones in the
    same label space (latent classes: see ``_metric_clean``), ``W``/``b`` the classifier.
    """
    logits, feats = collect_outputs(model, data.x_train, batch_size=batch_size)
    clf = model.classifier
    arrays = {
        "features": feats.float().cpu().numpy(),
        "labels": data.y_train.cpu().numpy(),
        "clean_labels": data.metric_clean_train.cpu().numpy(),
        "logits": logits.float().cpu().numpy(),
        "W": clf.weight.detach().float().cpu().numpy(),
    }
    if clf.bias is not None:
        arrays["b"] = clf.bias.detach().float().cpu().numpy()
    rundir.save_npz(path, arrays)


def _evaluate(model: nn.Module, data: RunData, loss_fn: nn.Module, config: TrainConfig, *,
              final: bool = True) -> dict[str, Any]:
    """One evaluation record; with ``eval_mode: light`` the metric suite runs only when ``final``."""
    full = final or config.eval_mode == "full"
    kw = dict(loss_fn=loss_fn, num_classes=data.num_classes, label_to_class=data.label_to_class,
              convention=config.convention, batch_size=config.eval_batch_size, metrics=full)
    tr = evaluate_split(model, data.x_train, data.y_train, clean_labels=data.clean_train,
                        metric_clean_labels=data.metric_clean_train, **kw)
    latent = data.num_classes != int(data.label_to_class.max()) + 1
    # test labels are clean: passing them as clean labels gives the test-set dilation
    te = evaluate_split(model, data.x_test, data.y_test, clean_labels=data.y_test,
                        metric_clean_labels=data.y_test, fold=latent, **kw)
    rec: dict[str, Any] = {
        "train_loss": tr["loss"],
        "train_acc_noisy": tr["acc"],
        "train_acc_clean": tr["acc_clean"],
        "test_loss": te["loss"],
        "test_acc": te["acc_clean"],  # predicted label mapped to its class (identity unless latent)
    }
    if data.x_val is not None:
        va = evaluate_split(model, data.x_val, data.y_val, **{**kw, "metrics": False})
        rec["val_loss"], rec["val_acc_noisy"] = va["loss"], va["acc"]
    if full:
        rec.update({f"train.{k}": v for k, v in tr["metrics"].items()})
        rec.update({f"test.{k}": v for k, v in te["metrics"].items()})
    return rec


class _Progress:
    """Epoch progress, or nothing when disabled. On a terminal (or in Jupyter): a rich bar on
    stderr. Otherwise (``nclab train cfg > log 2>&1``, batch jobs) a rich bar would print nothing
    until the end, so plain lines go to stderr instead: the first epoch, then at most one every
    ``NCLAB_PROGRESS_SECONDS`` seconds (default 10; 0 = every epoch), and the last epoch reached."""

    def __init__(self, enabled: bool, total: int, start: int, name: str):
        self.bar = None
        self.plain = False
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal or console.is_jupyter:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]{task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"), TimeElapsedColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task("", total=total, completed=start, name=name)
            return
        import os

        try:
            self.interval = max(0.0, float(os.environ.get("NCLAB_PROGRESS_SECONDS", "10")))
        except ValueError:
            self.interval = 10.0
        self.plain, self.total, self.name = True, total, name
        self.t0 = time.monotonic()
        self.last_time: float | None = None
        self.pending: str | None = None

    @staticmethod
    def _describe(record: dict[str, Any] | None, loss: float) -> str:
        desc = f"loss {loss:.4f}"
        if record is not None:
            nc1 = record.get("train.nc1")
            desc += f"  acc {record['train_acc_noisy']:.3f}  test {record['test_acc']:.3f}"
            desc += f"  NC1 {nc1:.3g}" if isinstance(nc1, float) else "  NC1 -"
        return desc

    def _emit(self, line: str) -> None:
        import sys

        print(line, file=sys.stderr, flush=True)
        self.last_time, self.pending = time.monotonic(), None

    def update(self, epoch: int, record: dict[str, Any] | None, loss: float) -> None:
        if self.plain:
            now = time.monotonic()
            line = (f"{self.name}: epoch {epoch}/{self.total}  {self._describe(record, loss)}"
                    f"  elapsed {now - self.t0:.1f}s")
            if self.last_time is None or epoch == self.total or now - self.last_time >= self.interval:
                self._emit(line)
            else:
                self.pending = line
            return
        if self.bar is None:
            return
        self.bar.update(self.task, completed=epoch, description=self._describe(record, loss))

    def close(self) -> None:
        if self.plain and self.pending is not None:
            self._emit(self.pending)  # where the run stopped (max_epochs, divergence, interrupt)
        if self.bar is not None:
            self.bar.stop()


def train(
    config: TrainConfig,
    *,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    max_epochs: int | None = None,
    handle_signals: bool = False,
    dataset: Any = None,
    model: Any = None,
    loggers: list[Any] | None = None,
) -> RunResult:
    """Train one model as ``config`` says and record it in ``run_dir``.

    ``loggers``: objects with ``log(record)`` and ``close(status=...)`` (e.g. from
    :func:`nclab.integrations.loggers.make_loggers`), given each record as it is
    appended to ``metrics.jsonl`` and closed once with the final status.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint
    (records after the checkpoint epoch are dropped and recomputed); on CPU the
    result is bit-identical to an uninterrupted run. ``overwrite=True`` deletes
    nclab's files in ``run_dir`` and starts over; without either, a ``run_dir``
    that already holds a run is refused. ``max_epochs`` stops after that epoch
    (status ``"stopped"``, resumable) — for time-boxed sessions and tests.
    A non-finite loss, parameter or logit stops the run with status ``"diverged"``,
    keeping the last good checkpoint. The run directory is locked
    (:class:`~nclab.train.rundir.RunLock`) for the whole call: a second process gets
    ``RunLockError`` naming this one's pid. ``handle_signals=True`` (the CLI) turns
    the first SIGINT/SIGTERM into a clean stop after the current epoch: checkpoint,
    ``status.json`` = ``interrupted``, status ``"interrupted"`` returned.

    Your own data and model from Python: ``dataset`` — an ``nclab.data.ArrayDataset``
    (``x``, ``y``, optional ``x_test``/``y_test``/``clean_y``/``class_names``), a mapping
    with those keys, or ``(x, y)`` — replaces ``config.dataset.name`` (``classes`` and
    ``per_class`` still apply; without test arrays 20 % is held out). ``model`` — an
    ``nn.Module`` (trained from its current parameters) or a factory
    ``factory(*, input_shape, num_classes[, generator])`` — replaces ``config.model``;
    its forward returns logits (b×C) and its classifier is the last ``nn.Linear``
    with C outputs (see ``nclab.models.make_model``). ``env.json`` records
    ``data.source = "python"`` / ``data.model``; ``nclab detect`` and ``nclab analyze``
    work on such runs from the run directory's files (``features.npz``, ``noise.npz``,
    ``dynamics/``). Pass the same data and model again to resume.
    """
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1; got {max_epochs}")
    resolve_device(config.device)  # before touching the run directory
    with thread_scope(config.threads), rundir.RunLock(run_dir), rundir.StopSignals(enabled=handle_signals) as sig:
        return _train(config, run_dir=Path(run_dir), resume=resume, overwrite=overwrite, progress=progress,
                      max_epochs=max_epochs, signals=sig, dataset=dataset, user_model=model, loggers=loggers)


def _train(config: TrainConfig, *, run_dir: Path, resume: bool, overwrite: bool, progress: bool,
           max_epochs: int | None, signals: rundir.StopSignals | None = None, dataset: Any = None,
           user_model: Any = None, loggers: list[Any] | None = None) -> RunResult:
    device = resolve_device(config.device)  # before touching the run directory
    resuming = rundir.prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
    data = prepare_data(config, device, dataset=dataset)

    try:
        if user_model is not None:
            from nclab.models import make_model

            model = make_model(user_model, input_shape=data.input_shape, num_classes=data.num_classes,
                               generator=torch_generator(config.seed, "init")).to(device)
            data.info["model"] = f"python: {type(user_model).__name__}"
        else:
            model = build_model(config.model.name, input_shape=data.input_shape, num_classes=data.num_classes,
                                generator=torch_generator(config.seed, "init"), **config.model.options()).to(device)
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise ConfigError(f"model {config.model.name!r} is too large for the memory of {device} ({exc}); "
                          "choose a smaller model") from None
    except RuntimeError as exc:
        if "alloc" not in str(exc).lower():
            raise
        raise ConfigError(f"model {config.model.name!r} is too large for the memory of {device} "
                          f"({str(exc).splitlines()[0]}); choose a smaller model") from None
    optimizer = make_optimizer(config.optim, model.parameters())
    loss_fn = get_loss(config.loss.name, **config.loss.params())
    batches = torch_generator(config.seed, "batches")
    ckpt_path = run_dir / rundir.CHECKPOINT
    metrics_path = run_dir / rundir.METRICS
    noise_path = run_dir / rundir.NOISE

    start, elapsed = 0, 0.0
    stopper = StopTracker.from_config(config.stop, terminal_acc=config.terminal_acc)
    sessions: list[dict[str, Any]] = []
    if resuming and ckpt_path.exists():
        start, elapsed = restore_checkpoint(ckpt_path, config, model=model, optimizer=optimizer, batches=batches,
                                            stopper=stopper)
        if noise_path.exists():
            _check_noise_file(noise_path, data.noise_arrays)
        try:
            sessions = list(json.loads((run_dir / rundir.ENV).read_text()).get("sessions", []))
        except (OSError, ValueError):
            sessions = []
    else:
        rundir.write_config(run_dir, config)
    recorder = open_session(run_dir, config, device=device, data=data, start=start, sessions=sessions,
                            resuming=resuming)

    end = config.epochs if max_epochs is None else min(config.epochs, max_epochs)
    if stopper.fired:
        end = start  # the run already stopped at its terminal phase: nothing left to train
    status, message, epoch_done, diverged_epoch = "completed", "", start, None
    # a kill from here on leaves "running" (with this pid), never a stale earlier outcome
    atomic_write_json(run_dir / rundir.STATUS, {"status": "running", "epoch": start, "pid": os.getpid()})
    bar = _Progress(progress, config.epochs, start, config.name)
    t_session = time.perf_counter()
    try:
        for epoch in range(start + 1, end + 1):
            lr = lr_at(config.schedule, base_lr=config.optim.lr, epoch=epoch, total_epochs=config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            run_loss = train_one_epoch(model, optimizer, loss_fn, data.x_train, data.y_train,
                                       batch_size=config.batch_size, generator=batches)
            epoch_time = time.perf_counter() - t0
            if not (np.isfinite(run_loss) and _finite_params(model)):
                status, diverged_epoch = "diverged", epoch
                message = _diverged_message(epoch, lr, "the loss or the parameters", ckpt_path)
                break
            record = None
            dyn_time, dyn_acc = 0.0, None
            if recorder is not None:
                # margins every epoch, independent of eval_every: one eval-mode forward over the training set
                t1 = time.perf_counter()
                recorder.record_model(epoch, model, data.x_train, data.y_train, batch_size=config.eval_batch_size)
                dyn_acc = float((recorder.last > 0).mean())  # = eval-mode accuracy on the noisy labels
                dyn_time = time.perf_counter() - t1
            full_eval = epoch % config.eval_every == 0 or epoch == config.epochs
            fired = False
            if stopper.active and not full_eval:
                # cheap eval-mode pass; the full suite runs only when the rule fires
                acc = dyn_acc if dyn_acc is not None else train_accuracy(model, data.x_train, data.y_train,
                                                                         batch_size=config.eval_batch_size)
                fired = stopper.update(epoch, acc)  # the margins' pass serves the stop rule too
                full_eval = fired
            if full_eval:
                t1 = time.perf_counter()
                ev = _evaluate(model, data, loss_fn, config, final=fired or epoch == config.epochs)
                if stopper.active and not fired:
                    fired = stopper.update(epoch, float(ev["train_acc_noisy"]))
                    if fired and config.eval_mode == "light":  # the run ends here: its record gets the suite
                        ev = _evaluate(model, data, loss_fn, config, final=True)
                eval_time = time.perf_counter() - t1 + dyn_time
                record = {"epoch": epoch, "lr": lr,
                          "elapsed_s": elapsed + time.perf_counter() - t_session,
                          "epoch_time_s": epoch_time, "eval_time_s": eval_time,
                          "train_loss_running": run_loss, **ev}
                if fired or epoch == config.epochs:
                    record.update(stopper.summary(finished_by_rule=fired))
                record = _ordered(record)
                append_jsonl(metrics_path, record)
                for lg in loggers or ():
                    lg.log(record)
            epoch_done = epoch
            if fired:
                end = epoch
            if epoch % config.checkpoint_every == 0 or epoch == end:
                write_checkpoint(ckpt_path, config, epoch=epoch, elapsed=elapsed + time.perf_counter() - t_session,
                                 model=model, optimizer=optimizer, batches=batches, stopper=stopper)
            bar.update(epoch, record, run_loss)
            if fired:
                break
            if signals is not None and signals.signum is not None and epoch < end:
                if epoch % config.checkpoint_every != 0:
                    write_checkpoint(ckpt_path, config, epoch=epoch,
                                     elapsed=elapsed + time.perf_counter() - t_session, model=model,
                                     optimizer=optimizer, batches=batches, stopper=stopper)
                status = "interrupted"
                message = (f"interrupted by {signals.name} after epoch {epoch} of {config.epochs}; checkpoint "
                           f"saved in {ckpt_path}; resume with --resume --run-dir {run_dir}")
                break
    except (ValueError, RuntimeError):
        # finite weights can still give non-finite eval-mode logits (BatchNorm running statistics):
        # that is divergence, not bad input; checked only here, so it costs nothing per epoch
        if _finite_logits(model, data.x_train, batch_size=config.eval_batch_size):
            raise
        status, diverged_epoch = "diverged", epoch
        message = _diverged_message(epoch, lr, "the logits", ckpt_path)
    except KeyboardInterrupt:
        # abandoned mid-epoch (a second signal, or Ctrl-C without handle_signals): the last checkpoint stays
        last = _ckpt_epoch(ckpt_path)
        status, epoch_done = "interrupted", last if last is not None else start
        message = (f"interrupted during epoch {epoch_done + 1}; the last checkpoint (epoch {epoch_done}) is kept; "
                   f"resume with --resume --run-dir {run_dir}")
        atomic_write_json(run_dir / rundir.STATUS, {"status": status, "epoch": epoch_done, "message": message})
        if signals is None or signals.signum is None:
            raise
        history = read_jsonl(metrics_path)
        return RunResult(run_dir=run_dir, config=config, history=history, final=history[-1] if history else None,
                         status=status, epoch=epoch_done, message=message, signum=signals.signum)
    finally:
        bar.close()
    finished = epoch_done == config.epochs or stopper.fired
    if status == "completed" and config.save_features and finished:
        save_features(run_dir / rundir.FEATURES, model, data, batch_size=config.eval_batch_size)
    if status == "completed" and not finished:
        status = "stopped"
        message = f"stopped after epoch {epoch_done} of {config.epochs} (max_epochs); resume to continue"
    history = read_jsonl(metrics_path)
    stop_info = stopper.summary(finished_by_rule=stopper.fired) if finished else {}
    extra = {"diverged_epoch": diverged_epoch} if diverged_epoch is not None else {}
    atomic_write_json(run_dir / rundir.STATUS, {"status": status, "epoch": epoch_done, "message": message,
                                                **extra, **stop_info})
    for lg in loggers or ():
        lg.close(status=status)
    return RunResult(run_dir=run_dir, config=config, history=history, final=history[-1] if history else None,
                     status=status, epoch=epoch_done, message=message, diverged_epoch=diverged_epoch,
                     signum=signals.signum if signals is not None and status == "interrupted" else None)


_HEAD = ("epoch", "lr", "elapsed_s", "train_loss", "train_acc_noisy", "train_acc_clean", "test_loss", "test_acc",
         "val_loss", "val_acc_noisy", "train_loss_running", "epoch_time_s", "eval_time_s")


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    head = {k: record[k] for k in _HEAD if k in record}
    return {**head, **{k: v for k, v in record.items() if k not in head}}


def _ckpt_epoch(path: Path) -> int | None:
    try:
        return int(checkpoint_info(path)["epoch"])
    except CheckpointError:
        return None


@torch.no_grad()
def _finite_logits(model: nn.Module, x: Tensor, *, batch_size: int) -> bool:
    """Whether the eval-mode logits of ``x`` are all finite (a model with finite weights can
    still overflow them; that is divergence, not bad input)."""
    was = model.training
    model.eval()
    try:
        return all(bool(torch.isfinite(model(x[i : i + batch_size])).all()) for i in range(0, x.shape[0], batch_size))
    finally:
        model.train(was)


def _diverged_message(epoch: int, lr: float, what: str, ckpt_path: Path) -> str:
    last = _ckpt_epoch(ckpt_path)
    kept = (f"kept the last good checkpoint (epoch {last}) in {ckpt_path}" if last is not None
            else "no checkpoint had been written yet")
    return (f"training diverged in epoch {epoch} (lr {lr:g}): {what} became non-finite; {kept}. "
            "Lower optim.lr or add a schedule.")
