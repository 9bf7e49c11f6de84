"""One small logger interface for metrics records: JSONL, TensorBoard, MLflow.

A logger receives each flat metrics record of a run (the dicts ``metrics.jsonl``
holds: ``epoch``, ``lr``, ``train_loss``, ``train.nc1``, ``test.dilation``, ...)
and is closed once at the end::

    from nclab.integrations.loggers import make_loggers
    loggers = make_loggers(["tensorboard", "mlflow"], run_dir="runs/x", name="x", params=cfg.to_dict())
    nclab.train.train(cfg, run_dir="runs/x", loggers=loggers)

or from the command line ``nclab train CFG --log tensorboard --log mlflow`` (also
``nclab sweep``). Conventions:

- one key set for every sink: :func:`tracking_key` maps each ``metrics.jsonl`` key to
  the name TensorBoard, MLflow and the Lightning callback use (``train.nc1`` ->
  ``train/nc1``, ``train_loss`` -> ``train/loss``, ``test_acc`` -> ``test/accuracy``,
  the same key as ``test.accuracy``, so it is logged once);
- the step is the record's ``epoch``; only numeric scalars are logged (``None``,
  booleans, strings and per-class lists are skipped; non-finite values too, which
  MLflow rejects); constants of the data (:data:`CONSTANT_KEYS`: ``train/num_classes``,
  ``train/feature_dim``, ``train/n_samples``, ...) are logged once, as MLflow params and
  a TensorBoard text entry, not as series;
- TensorBoard event files go to ``RUN_DIR/tensorboard/`` (``pip install 'nclab[tensorboard]'``);
- MLflow logs into ``$MLFLOW_TRACKING_URI`` when set, else into one SQLite store per
  working directory (``./mlflow.db`` for ``nclab train``) or results store
  (``STORE/mlflow.db`` for ``nclab sweep``), so the runs meet in one UI (``mlflow ui
  --backend-store-uri sqlite:///mlflow.db``); artifacts go next to it (``mlartifacts/``).
  Experiment ``nclab`` unless given; the config goes in as flattened params; the run
  name is the config name plus its hash (``digits-binary-3f2a9c1e``), unique per
  config; at the end ``config.yaml`` and the run's curves (``figures/*.png``) are logged
  as artifacts. The MLflow run id is kept in ``RUN_DIR/mlflow_run.json`` so a resumed
  training continues the same MLflow run (``pip install 'nclab[mlflow]'``);
- ``jsonl`` is :class:`JsonlLogger`; the trainer always writes ``metrics.jsonl``
  itself, so ``--log jsonl`` adds nothing there.

Loggers open lazily (at the first record), after the trainer has prepared the run
directory, so ``overwrite`` clears the run's old event files (and starts a new MLflow run).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nclab.store.files import append_jsonl, atomic_write_json

__all__ = [
    "CONSTANT_KEYS",
    "LOGGER_NAMES",
    "JsonlLogger",
    "MLflowLogger",
    "MetricsLogger",
    "TensorBoardLogger",
    "flatten_params",
    "make_loggers",
    "scalar_metrics",
    "tracking_key",
    "tracking_record",
]

LOGGER_NAMES: tuple[str, ...] = ("jsonl", "tensorboard", "mlflow")
"""Names accepted by :func:`make_loggers` and ``--log``."""

MLFLOW_RUN_FILE = "mlflow_run.json"


def scalar_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric scalars of ``record`` as floats (``epoch`` included)."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        f = float(v)
        if math.isfinite(f):
            out[k] = f
    return out


_RENAMED: dict[str, str] = {
    "lr": "train/lr",
    "train_loss": "train/loss",
    "train_loss_running": "train/loss_running",
    "train_acc_noisy": "train/accuracy",  # = train.accuracy (the given, noisy labels)
    "train_acc_clean": "train/accuracy_clean",  # = train.accuracy_clean
    "test_loss": "test/loss",
    "test_acc": "test/accuracy",  # = test.accuracy
    "val_loss": "val/loss",
    "val_acc_noisy": "val/accuracy",
    "elapsed_s": "time/elapsed_s",
    "epoch_time_s": "time/epoch_s",
    "eval_time_s": "time/eval_s",
    "terminal_epoch": "train/terminal_epoch",
}

CONSTANT_KEYS: tuple[str, ...] = ("num_classes", "feature_dim", "n_samples")
"""Metric names (after the split prefix) that are properties of the data, not of training:
logged once as params, not as series."""


def tracking_key(key: str) -> str | None:
    """The name of a ``metrics.jsonl`` key in every tracking sink (TensorBoard tag, MLflow
    metric key, Lightning log key); ``None`` for ``epoch``, which is the step.

    ``split.metric`` -> ``split/metric`` (``train.nc1`` -> ``train/nc1``); the flat
    trainer keys join the same scheme (``train_loss`` -> ``train/loss``, ``test_acc`` ->
    ``test/accuracy``, ``lr`` -> ``train/lr``, ``epoch_time_s`` -> ``time/epoch_s``);
    keys outside the scheme are kept. The flat accuracies equal their suite twins
    (``test_acc`` = ``test.accuracy``) and map to the same key, so each is logged once.
    """
    if key == "epoch":
        return None
    if key in _RENAMED:
        return _RENAMED[key]
    return key.replace(".", "/", 1)


def tracking_record(record: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """``record``'s finite numeric scalars under :func:`tracking_key` names, split into
    ``(metrics, constants)`` (constants: names ending in one of :data:`CONSTANT_KEYS`)."""
    metrics: dict[str, float] = {}
    constants: dict[str, float] = {}
    for k, v in scalar_metrics(record).items():
        name = tracking_key(k)
        if name is None:
            continue
        (constants if name.rsplit("/", 1)[-1] in CONSTANT_KEYS else metrics)[name] = v
    return metrics, constants


def run_label(name: str, params: Mapping[str, Any] | None) -> str:
    """``name-<8 hex of the config hash>`` (unique per config); ``name`` when it already ends in it."""
    if not params:
        return name
    import hashlib  # noqa: PLC0415
    import json  # noqa: PLC0415

    digest = hashlib.sha256(json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=str)
                            .encode()).hexdigest()[:8]
    return name if name.endswith(digest) else f"{name}-{digest}"


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": "0.1"}`` (strings, as MLflow params are)."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, prefix=f"{key}."))
        else:
            out[key] = str(v)
    return out


class MetricsLogger:
    """Receives every metrics record of a run (``log``) and the final status (``close``).

    Subclass and override :meth:`log` (and :meth:`close` if something must be flushed).
    """

    def log(self, record: Mapping[str, Any]) -> None:
        """One flat record; ``record["epoch"]`` is the step."""
        raise NotImplementedError

    def close(self, *, status: str = "completed") -> None:
        """End of the run (``completed``, ``stopped`` or ``diverged``); flush and release."""


def _step(record: Mapping[str, Any]) -> int:
    try:
        return int(record["epoch"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("a metrics record needs an integer 'epoch' (the logging step)") from None


class JsonlLogger(MetricsLogger):
    """Appends each record as one JSON line to ``path`` (durably, as ``metrics.jsonl`` is written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def log(self, record: Mapping[str, Any]) -> None:
        append_jsonl(self.path, dict(record))


class TensorBoardLogger(MetricsLogger):
    """Scalars into TensorBoard event files in ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``).

    ``params`` (e.g. the run config) are written once as a text summary ``config``.
    """

    def __init__(self, log_dir: str | Path, *, params: Mapping[str, Any] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.params = dict(params) if params else None
        self._writer = None
        self._constants: dict[str, float] = {}

    @staticmethod
    def tag(key: str) -> str | None:
        """The tag of a ``metrics.jsonl`` key: :func:`tracking_key`."""
        return tracking_key(key)

    def _open(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            except ImportError as exc:  # torch's writer needs the tensorboard package
                raise ImportError("TensorBoard logging needs the tensorboard package: "
                                  "pip install 'nclab[tensorboard]'") from exc
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
            if self.params:
                lines = [f"    {k}: {v}" for k, v in flatten_params(self.params).items()]
                self._writer.add_text("config", "\n".join(lines), global_step=0)  # indented = Markdown code
        return self._writer

    def log(self, record: Mapping[str, Any]) -> None:
        w, step = self._open(), _step(record)
        metrics, constants = tracking_record(record)
        for k, v in metrics.items():
            w.add_scalar(k, v, global_step=step)
        new = {k: v for k, v in constants.items() if k not in self._constants}
        if new:  # once per run, as text: they are properties of the data
            self._constants.update(new)
            w.add_text("constants", "\n".join(f"    {k}: {v:g}" for k, v in sorted(new.items())), global_step=step)
        w.flush()  # a killed run keeps what it logged

    def close(self, *, status: str = "completed") -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MLflowLogger(MetricsLogger):
    """Metrics into an MLflow tracking store through ``MlflowClient`` (no global MLflow state).

    Parameters
    ----------
    tracking_uri : str
        e.g. ``sqlite:///runs/x/mlflow.db``, ``http://host:5000``.
    experiment : str
        Experiment name, created if missing.
    run_name : str, optional
        The MLflow run's name.
    params : mapping, optional
        Logged once, flattened (``optim.lr``), as MLflow params.
    tags : mapping, optional
        MLflow run tags.
    resume_file : path, optional
        Where the MLflow run id is kept; when it names a run of this tracking store,
        that run is continued instead of starting a new one.
    run_dir : path, optional
        The run directory: at ``close`` its ``config.yaml`` and its curves
        (``figures/*.png``, drawn then) are logged as artifacts.
    """

    _STATUS = {"completed": "FINISHED", "stopped": "KILLED", "diverged": "FAILED"}

    def __init__(self, *, tracking_uri: str, experiment: str = "nclab", run_name: str | None = None,
                 params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
                 resume_file: str | Path | None = None, run_dir: str | Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._constants: set[str] = set()
        self.experiment = experiment
        self.run_name = run_name
        self.params = dict(params) if params else {}
        self.tags = dict(tags) if tags else {}
        self.resume_file = Path(resume_file) if resume_file is not None else None
        self._client = None
        self.run_id: str | None = None

    def _open(self):
        if self._client is not None:
            return self._client
        try:
            from mlflow.tracking import MlflowClient  # noqa: PLC0415
        except ImportError as exc:
            raise ImportError("MLflow logging needs MLflow: pip install 'nclab[mlflow]'") from exc
        client = MlflowClient(tracking_uri=self.tracking_uri)
        run_id = self._previous_run(client)
        if run_id is None:
            run = client.create_run(self.experiment_id(client), run_name=self.run_name, tags=self.tags)
            run_id = run.info.run_id
            self._log_params(client, run_id)
            if self.resume_file is not None:
                atomic_write_json(self.resume_file, {"tracking_uri": self.tracking_uri, "run_id": run_id})
        else:
            client.update_run(run_id, status="RUNNING")
        self._client, self.run_id = client, run_id
        return client

    def experiment_id(self, client=None) -> str:
        """The experiment's id, created if missing (safe when parallel runs race to create it)."""
        if client is None:
            from mlflow.tracking import MlflowClient  # noqa: PLC0415

            client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(self.experiment, artifact_location=self._artifact_location())
        except Exception:  # noqa: BLE001 - another process created it first
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _artifact_location(self) -> str | None:
        """``mlartifacts/`` next to a SQLite store (MLflow's default is relative to the working
        directory, so artifacts would scatter); the server's choice for other stores."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        return (Path(self.tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()

    def _previous_run(self, client) -> str | None:
        if self.resume_file is None or not self.resume_file.exists():
            return None
        import json  # noqa: PLC0415

        try:
            saved = json.loads(self.resume_file.read_text())
            if saved.get("tracking_uri") != self.tracking_uri:
                return None
            return client.get_run(saved["run_id"]).info.run_id
        except Exception:  # noqa: BLE001 - unreadable file or run gone: start a new MLflow run
            return None

    def _log_params(self, client, run_id: str) -> None:
        from mlflow.entities import Param  # noqa: PLC0415

        items = [Param(k, v[:6000]) for k, v in flatten_params(self.params).items()]
        for i in range(0, len(items), 100):  # MLflow's per-request limit
            client.log_batch(run_id, params=items[i : i + 100])

    def log(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, Param  # noqa: PLC0415

        client, step = self._open(), _step(record)
        ts = int(time.time() * 1000)
        metrics, constants = tracking_record(record)
        items = [Metric(k, v, ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow's per-request limit
            client.log_batch(self.run_id, metrics=items[i : i + 1000])
        new = [Param(k, f"{v:g}") for k, v in sorted(constants.items()) if k not in self._constants]
        if new:  # once: a property of the data, not a series
            client.log_batch(self.run_id, params=new)
            self._constants.update(p.key for p in new)

    def _log_artifacts(self) -> None:
        rd = self.run_dir
        if rd is None:
            return
        if (rd / "config.yaml").is_file():
            self._client.log_artifact(self.run_id, str(rd / "config.yaml"))
        if (rd / "metrics.jsonl").is_file():
            from nclab.report.curves import plot_run  # noqa: PLC0415

            for fig in plot_run(rd):
                self._client.log_artifact(self.run_id, str(fig), artifact_path="figures")

    def close(self, *, status: str = "completed") -> None:
        if self._client is not None:
            try:
                self._log_artifacts()
            finally:
                self._client.set_terminated(self.run_id, status=self._STATUS.get(status, "FINISHED"))
                self._client = None


def default_mlflow_uri(root: str | Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the SQLite store ``ROOT/mlflow.db`` — one per
    results store (``nclab sweep``) or working directory (default; ``nclab train``)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(root if root is not None else Path.cwd()).resolve() / 'mlflow.db'}"


def make_loggers(
    names: Iterable[str],
    *,
    run_dir: str | Path,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    mlflow_uri: str | None = None,
    experiment: str = "nclab",
    jsonl_path: str | Path | None = None,
) -> list[MetricsLogger]:
    """Loggers for ``names`` (each of :data:`LOGGER_NAMES`, repeats ignored) for the run in ``run_dir``.

    ``jsonl`` gives a :class:`JsonlLogger` only when ``jsonl_path`` is set (the trainer
    writes ``metrics.jsonl`` itself). ``mlflow_uri`` defaults to :func:`default_mlflow_uri`
    (``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``); the MLflow run is named
    :func:`run_label` ``(name, params)``.
    Unknown names raise ``ValueError`` before anything is written.
    """
    names = list(dict.fromkeys(n.strip().lower() for n in names))
    bad = [n for n in names if n not in LOGGER_NAMES]
    if bad:
        raise ValueError(f"unknown logger(s) {', '.join(map(repr, bad))}; choose from {', '.join(LOGGER_NAMES)}")
    import importlib.util  # noqa: PLC0415

    for n, module, extra in (("tensorboard", "tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlflow")):
        if n in names and importlib.util.find_spec(module) is None:  # fail before training, not at epoch 1
            raise ValueError(f"--log {n} needs the {module} package: pip install 'nclab[{extra}]'")
    run_dir = Path(run_dir)
    out: list[MetricsLogger] = []
    for n in names:
        if n == "jsonl":
            if jsonl_path is not None:
                out.append(JsonlLogger(jsonl_path))
        elif n == "tensorboard":
            out.append(TensorBoardLogger(run_dir / "tensorboard", params=params))
        else:
            out.append(MLflowLogger(tracking_uri=mlflow_uri or default_mlflow_uri(), experiment=experiment,
                                    run_name=run_label(name or run_dir.resolve().name, params), params=params,
                                    tags={"nclab.run_dir": str(run_dir.resolve())},
                                    resume_file=run_dir / MLFLOW_RUN_FILE, run_dir=run_dir))
    return out
