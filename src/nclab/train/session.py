"""A run session: one run's life inside a trainer, from set-up to finish.

:meth:`RunSession.open` locks the run directory, prepares it (fresh, resumed or
overwritten), builds the data (stream ``"noise"``, ``"split"``), the model (``"init"``),
the optimizer, the loss, the batch generator (``"batches"``) and the stop rule, restores
them from ``checkpoints/last.pt`` when resuming, and writes the session's files
(``config.yaml``, ``noise.npz``, ``env.json``, ``status.json`` = running). During
training the epoch policy (:mod:`nclab.train.policy`) calls :meth:`write_record`,
:meth:`checkpoint`, :meth:`diverge` and :meth:`interrupt`; :meth:`finish` writes the
features and the final ``status.json`` and releases the lock. The session keeps the run's
*solo* model and optimizer: they are what evaluation sees and what a checkpoint holds, so
a checkpoint resumes in any stack.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nclab.config import ConfigError
from nclab.losses import get_loss
from nclab.models import build_model
from nclab.seeding import torch_generator
from nclab.store.files import append_jsonl, atomic_write_json, read_jsonl, truncate_jsonl
from nclab.train import data as run_data
from nclab.store import rundir
from nclab.store.checkpoint import CheckpointError, checkpoint_info, load_checkpoint, save_checkpoint
from nclab.train.config import TrainConfig
from nclab.train.engine import make_optimizer
from nclab.train.evaluate import feature_arrays
from nclab.train.stop import StopTracker
from nclab.train.threads import thread_record

__all__ = ["RunResult", "RunSession", "TIMING_KEYS"]

TIMING_KEYS: tuple[str, ...] = ("elapsed_s", "epoch_time_s", "eval_time_s")
"""Record keys that measure wall time (they differ between otherwise identical runs)."""

_HEAD = ("epoch", "lr", "elapsed_s", "train_loss", "train_acc_noisy", "train_acc_clean", "test_loss", "test_acc",
         "val_loss", "val_acc_noisy", "train_loss_running", "epoch_time_s", "eval_time_s")


@dataclass
class RunResult:
    """Outcome of one run (:func:`nclab.train.train`, one member of :func:`nclab.train.train_stack`).

    ``status``: ``"completed"`` (all ``config.epochs`` done, or the stop rule fired),
    ``"stopped"`` (ended early by ``max_epochs``; resumable), ``"diverged"`` (non-finite
    loss, parameters or logits in epoch ``diverged_epoch``; the last good checkpoint is
    kept) or ``"interrupted"`` (SIGINT/SIGTERM with ``handle_signals``; ``signum`` says
    which; resumable). ``history`` holds every record of ``metrics.jsonl`` (earlier
    sessions included), ``final`` the last one (None when no epoch was evaluated).
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


class RunSession:
    """One run from :meth:`open` to :meth:`finish` (see the module docstring).

    ``epoch`` is the last epoch trained and accepted; ``end`` the last epoch this session
    trains (``config.epochs``, or ``max_epochs``; the start epoch when the stop rule already
    fired); ``status`` stays ``"running"`` until the run leaves its trainer.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, *, lock: rundir.RunLock, data: run_data.RunData,
                 model: nn.Module, start: int, elapsed: float, stopper: StopTracker, batches: torch.Generator,
                 end: int, loggers: list[Any]):
        self.config, self.run_dir, self.lock, self.data, self.model = config, run_dir, lock, data, model
        self.optimizer = make_optimizer(config.optim, model.parameters())
        self.loss_fn = get_loss(config.loss.name, **config.loss.params())
        self.batches, self.stopper, self.loggers = batches, stopper, loggers
        self.start = self.epoch = start
        self.end = end
        self.elapsed = elapsed
        self.t_session = time.perf_counter()
        self.recorder: Any = None
        self.lr = config.optim.lr
        self.status, self.message = "running", ""
        self.diverged_epoch: int | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / rundir.CHECKPOINT

    @property
    def done(self) -> bool:
        """Nothing left to train in this session."""
        return self.epoch >= self.end

    @property
    def finished(self) -> bool:
        """The run itself is over (its last epoch, or the stop rule fired)."""
        return self.epoch == self.config.epochs or self.stopper.fired

    def elapsed_now(self) -> float:
        return self.elapsed + time.perf_counter() - self.t_session

    # ------------------------------------------------------------------ set-up
    @classmethod
    def open(cls, config: TrainConfig, run_dir: str | Path, *, device: torch.device, resume: bool, overwrite: bool,
             max_epochs: int | None = None, dataset: Any = None, model: Any = None, loggers: list[Any] | None = None,
             stack: dict[str, Any] | None = None) -> "RunSession":
        """Lock and prepare ``run_dir`` and build the run (see :func:`nclab.train.train` for the
        arguments). The lock is released again if anything fails here."""
        run_dir = Path(run_dir)
        lock = rundir.RunLock(run_dir).acquire()
        try:
            resuming = rundir.prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
            data = run_data.prepare_data(config, device, dataset=dataset)
            net = _build_model(config, data, device, model)
            stopper = StopTracker.from_config(config.stop, terminal_acc=config.terminal_acc)
            batches = torch_generator(config.seed, "batches")
            session = cls(config, run_dir, lock=lock, data=data, model=net, start=0, elapsed=0.0, stopper=stopper,
                          batches=batches, end=config.epochs, loggers=list(loggers or []))
            sessions: list[dict[str, Any]] = []
            if resuming and session.checkpoint_path.exists():
                session.restore()
                if (run_dir / rundir.NOISE).exists():
                    run_data.check_noise_file(run_dir / rundir.NOISE, data.noise_arrays)
                with contextlib.suppress(OSError, ValueError):
                    sessions = list(json.loads((run_dir / rundir.ENV).read_text()).get("sessions", []))
            else:
                rundir.write_config(run_dir, config)
            session._write_session_files(device, sessions, resuming=resuming, stack=stack)
            session.end = config.epochs if max_epochs is None else min(config.epochs, max_epochs)
            if stopper.fired:
                session.end = session.start  # the run already stopped at its terminal phase
            # a kill from here on leaves "running" (with this pid), never a stale earlier outcome
            atomic_write_json(run_dir / rundir.STATUS, {"status": "running", "epoch": session.start, "pid": os.getpid()})
            return session
        except BaseException:
            lock.release()
            raise

    def _write_session_files(self, device: torch.device, sessions: list[dict[str, Any]], *, resuming: bool,
                             stack: dict[str, Any] | None) -> None:
        """Records after the checkpoint epoch dropped, ``noise.npz``, ``env.json`` with this
        session (threads, builds, stack), the dynamics recorder."""
        metrics_path = self.run_dir / rundir.METRICS
        truncate_jsonl(metrics_path, [r for r in read_jsonl(metrics_path) if r.get("epoch", 0) <= self.start])
        rundir.save_npz(self.run_dir / rundir.NOISE, self.data.noise_arrays)
        env = rundir.environment(self.config, device)
        threads_now = thread_record()
        if sessions and sessions[-1].get("torch_threads") not in (None, threads_now["torch_threads"]):
            import warnings

            warnings.warn(f"{self.run_dir}: resuming with {threads_now['torch_threads']} torch threads; the run so "
                          f"far used {sessions[-1]['torch_threads']} (results depend on the thread count)",
                          stacklevel=4)
        env["threads"] = threads_now
        session = {"start_epoch": self.start, "device": str(device), "hostname": env["hostname"],
                   "git_commit": env["git_commit"], "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "torch_threads": threads_now["torch_threads"]}
        if stack is not None:
            env["stack"] = stack
            session["stack_size"] = stack["size"]
        env["sessions"] = sessions + [session]
        env["data"] = self.data.info
        rundir.write_env(self.run_dir, env)
        if self.config.record_dynamics:
            from nclab.store.dynamics import DynamicsRecorder

            self.recorder = DynamicsRecorder(self.run_dir)
            if resuming:
                self.recorder.truncate(after=self.start)  # epochs after the checkpoint are recomputed
            else:
                self.recorder.clear()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> None:
        """The run's checkpoint at ``epoch`` (model, optimizer, batch-RNG and stop-rule state)."""
        save_checkpoint(self.checkpoint_path, {
            "epoch": self.epoch,
            "elapsed_s": self.elapsed_now(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batch_rng": self.batches.get_state(),
            "stop": self.stopper.state(),
            "metrics_jsonl": rundir.history_snapshot(self.run_dir),  # a resume rebuilds a lost history from it
        }, config_hash=self.config.config_hash())

    def restore(self) -> None:
        """Load :meth:`checkpoint`'s state; ``start``/``epoch``/``elapsed`` follow it."""
        path = self.checkpoint_path
        state = load_checkpoint(path, config_hash=self.config.config_hash())
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.batches.set_state(state["batch_rng"])
            self.stopper.load(state.get("stop"))
            self.start = self.epoch = int(state["epoch"])
            self.elapsed = float(state["elapsed_s"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {exc}") from None
        # the history up to the checkpoint must be whole: rebuilt from the checkpoint's copy, or refused
        rundir.check_history(self.run_dir, epoch=self.start, saved=state.get("metrics_jsonl"),
                             eval_every=self.config.eval_every, epochs=self.config.epochs)
        if self.config.record_dynamics:
            from nclab.store.dynamics import DynamicsRecorder

            try:
                DynamicsRecorder(self.run_dir).verify(upto=self.start)
            except ValueError as exc:
                raise rundir.RunDirError(str(exc)) from None

    def checkpoint_epoch(self) -> int | None:
        """The epoch of the checkpoint on disk, if a readable one is there."""
        try:
            return int(checkpoint_info(self.checkpoint_path)["epoch"])
        except CheckpointError:
            return None

    # ------------------------------------------------------------------ during training
    def write_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one evaluation record to ``metrics.jsonl`` (stable key order) and give it to the loggers."""
        head = {k: record[k] for k in _HEAD if k in record}
        record = {**head, **{k: v for k, v in record.items() if k not in head}}
        append_jsonl(self.run_dir / rundir.METRICS, record)
        for lg in self.loggers:
            lg.log(record)
        return record

    def diverge(self, epoch: int, what: str) -> None:
        """Epoch ``epoch`` produced non-finite ``what``: the run stops, its last good checkpoint stays."""
        last = self.checkpoint_epoch()
        kept = (f"kept the last good checkpoint (epoch {last}) in {self.checkpoint_path}" if last is not None
                else "no checkpoint had been written yet")
        self.status, self.diverged_epoch = "diverged", epoch
        self.message = (f"training diverged in epoch {epoch} (lr {self.lr:g}): {what} became non-finite; {kept}. "
                        "Lower optim.lr or add a schedule.")

    def interrupt(self, signal_name: str) -> None:
        """A stop was requested after this epoch (the checkpoint is written by the caller)."""
        self.status = "interrupted"
        self.message = (f"interrupted by {signal_name} after epoch {self.epoch} of {self.config.epochs}; checkpoint "
                        f"saved in {self.checkpoint_path}; resume with --resume --run-dir {self.run_dir}")

    def abandon(self) -> None:
        """The epoch in flight was abandoned (a second signal, Ctrl-C): the last checkpoint stays."""
        last = self.checkpoint_epoch()
        self.epoch = last if last is not None else self.start
        self.status = "interrupted"
        self.message = (f"interrupted during epoch {self.epoch + 1}; the last checkpoint (epoch {self.epoch}) is "
                        f"kept; resume with --resume --run-dir {self.run_dir}")

    # ------------------------------------------------------------------ finish
    def finish(self) -> None:
        """Features (a completed run), the final ``status.json``, loggers closed, lock released."""
        try:
            if self.status == "running":
                self.status = "completed" if self.finished else "stopped"
                if not self.finished:
                    self.message = (f"stopped after epoch {self.epoch} of {self.config.epochs} (max_epochs); "
                                    "resume to continue")
            if self.status == "completed" and self.config.save_features:
                rundir.save_npz(self.run_dir / rundir.FEATURES,
                                feature_arrays(self.model, self.data, batch_size=self.config.eval_batch_size))
            extra: dict[str, Any] = {"diverged_epoch": self.diverged_epoch} if self.diverged_epoch is not None else {}
            if self.status == "completed":
                extra.update(self.stopper.summary(finished_by_rule=self.stopper.fired))
            atomic_write_json(self.run_dir / rundir.STATUS,
                              {"status": self.status, "epoch": self.epoch, "message": self.message, **extra})
            for lg in self.loggers:
                lg.close(status=self.status)
        finally:
            self.lock.release()

    def result(self, *, signum: int | None = None) -> RunResult:
        history = read_jsonl(self.run_dir / rundir.METRICS)
        return RunResult(run_dir=self.run_dir, config=self.config, history=history,
                         final=history[-1] if history else None, status=self.status, epoch=self.epoch,
                         message=self.message, diverged_epoch=self.diverged_epoch,
                         signum=signum if self.status == "interrupted" else None)


def _build_model(config: TrainConfig, data: run_data.RunData, device: torch.device, model: Any) -> nn.Module:
    """The config's model (stream ``"init"``), or the caller's (``model``: a module, used as it
    is, or a factory); a model too large for the device is a config error."""
    gen = torch_generator(config.seed, "init")
    try:
        if model is not None:
            from nclab.models import make_model

            data.info["model"] = f"python: {type(model).__name__}"
            return make_model(model, input_shape=data.input_shape, num_classes=data.num_classes,
                              generator=gen).to(device)
        return build_model(config.model.name, input_shape=data.input_shape, num_classes=data.num_classes,
                           generator=gen, **config.model.options()).to(device)
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise ConfigError(f"model {config.model.name!r} is too large for the memory of {device} ({exc}); "
                          "choose a smaller model") from None
    except RuntimeError as exc:
        if "alloc" not in str(exc).lower():
            raise
        raise ConfigError(f"model {config.model.name!r} is too large for the memory of {device} "
                          f"({str(exc).splitlines()[0]}); choose a smaller model") from None


def copy_model(model: Any) -> Any:
    """A module given for several runs: each run trains its own copy (a factory is called per run)."""
    return copy.deepcopy(model) if isinstance(model, nn.Module) else model
