"""Neural-collapse analysis of a trained model: an nclab run directory or a state-dict file.

``analyze(target, ...)`` loads the model and the data (or, for a run whose data or model cannot
be rebuilt in this process, the run's stored final features), measures the metric suite at the
classifier's input and, when the model is at hand, at every named layer. It returns an
:class:`Analysis` that ``nclab analyze`` prints and :func:`nclab.report.analysis.write_figures`
draws. Bad input raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nclab.metrics import NCResult
from nclab.store.rundir import RunDir

__all__ = ["Analysis", "analyze", "stored_run_features"]


@dataclass
class Analysis:
    """The result of :func:`analyze`.

    ``result`` holds the metrics at the classifier's input (``result.info["layers"]``: the
    per-layer summaries); ``what`` names the target for titles; ``warnings`` are the messages
    the metric engine raised; ``note`` says when only the stored final features were used.
    ``model``/``data`` (or ``stored``) are kept for :meth:`scatter_data`.
    """

    target: Path
    split: str
    what: str
    result: NCResult
    class_names: list[str] | None = None
    note: str | None = None
    warnings: list[str] = field(default_factory=list)
    model: torch.nn.Module | None = None
    data: Any = None
    stored: dict[str, Any] | None = None
    layer: str | None = None
    device: str = "cpu"
    batch_size: int = 512

    @property
    def per_layer(self) -> dict[str, dict[str, Any]]:
        return self.result.info.get("layers", {})

    def to_dict(self) -> dict[str, Any]:
        """The JSON view ``nclab analyze --json`` prints."""
        return {"target": str(self.target), "split": self.split, "classifier_layer": self.result.info["layer"],
                "metrics": self.result.to_dict(), "layers": self.per_layer}

    def scatter_data(self, *, max_samples: int = 20000) -> dict[str, Any]:
        """Up to ``max_samples`` classifier-input features with their labels (``clean_labels``
        when known) and the classifier's ``W`` and ``b``: what a feature scatter plot needs."""
        if self.stored is not None:
            f = {k: self.stored[k][:max_samples] for k in ("features", "labels", "clean_labels") if k in self.stored}
            w, b = self.stored.get("W"), self.stored.get("b")
        else:
            from nclab.collect import features_of

            f = features_of(self.model, self.data, layer=self.layer, device=self.device,
                            batch_size=self.batch_size, max_samples=max_samples)
            lin = dict(self.model.named_modules())[self.result.info["layer"]]
            w = lin.weight.detach().cpu().numpy()
            b = None if lin.bias is None else lin.bias.detach().cpu().numpy()
        f.setdefault("clean_labels", f["labels"])
        return {**f, "W": w, "b": b}


def stored_run_features(run_dir: Path, *, split: str, reason: str) -> dict[str, Any]:
    """A run's final training features from ``features.npz`` (written by the trainer), for runs
    whose data or model cannot be rebuilt in this process (in-memory data, a model passed from
    Python, a dataset/model registered elsewhere). Only the training split is stored."""
    rd = RunDir(run_dir)
    path = rd.features_path
    if split != "train":
        raise ValueError(f"{reason}. Only the training split's final features are stored in the run dir "
                         f"({path}); --split test needs the data and model")
    if not path.is_file():
        raise ValueError(f"{reason}. {path} does not exist either (train with save_features: true and let the run finish)")
    f = rd.features()
    f["class_names"] = rd.class_names()
    f["note"] = (f"{reason.split(';')[0]}: metrics from the stored final features; no depth profile "
                 "(it needs the model)")
    return f


def _load_state_dict_model(target: Path, *, model: str | None, model_class: str | None,
                           model_kwargs: dict[str, Any], input_shape: Any, num_classes: int) -> torch.nn.Module:
    from nclab.collect.rebuild import load_user_model

    if model_class is not None:
        return load_user_model(target, model_class, kwargs=model_kwargs)
    from nclab.models import build_model
    from nclab.store.checkpoint import MAGIC, load_checkpoint

    net = build_model(model, input_shape=input_shape, num_classes=num_classes, **model_kwargs)
    try:  # an nclab checkpoint (record line + archive) or a plain torch file
        with open(target, "rb") as fh:
            is_nclab = fh.read(len(MAGIC)) == MAGIC
        state = load_checkpoint(target) if is_nclab else torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, a refused pickle, a corrupt archive
        raise ValueError(f"{target} cannot be read as a weights-only torch file: {str(exc).splitlines()[0]}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    net.load_state_dict(state)
    net.eval()
    return net


def analyze(target: str | Path, *, model: str | None = None, model_class: str | None = None,
            model_kwargs: dict[str, Any] | None = None, dataset: str | None = None, classes: int | None = None,
            per_class: int | None = None, split: str = "train", layer: str | None = None,
            layers: list[str] | None = None, convention: str = "zhu2021", device: str = "cpu",
            batch_size: int = 512) -> Analysis:
    """Metrics of a trained model at its classifier's input and through depth.

    ``target`` is an nclab run directory (the model and data are rebuilt from its files; when
    they cannot be, its stored final features are used) or a state-dict file, which needs
    exactly one of ``model`` (a registered nclab model, built with ``model_kwargs``) or
    ``model_class`` (``"package.module:Class"``) and a ``dataset`` to measure on.
    ``layers``: module names for the depth profile (default: every activation module).
    """
    from nclab.collect import collect, default_layers
    from nclab.collect.rebuild import load_run

    target = Path(target)
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test; got {split!r}")
    kwargs = dict(model_kwargs or {})
    stored = net = data = None
    class_names = None
    if target.is_dir() and RunDir(target).is_run():
        if model or model_class or dataset:
            raise ValueError("a run directory rebuilds its own model and data; drop --model/--model-class/--dataset")
        try:
            run = load_run(target, device=device)
        except ValueError as exc:  # data/model not rebuildable here: the run dir's own files
            stored = stored_run_features(target, split=split, reason=str(exc))
            class_names = stored["class_names"]
            what = f"{target.name} (final features.npz, {split})"
        else:
            net, d = run.model, run.data
            data = (d.x_train, d.y_train, d.metric_clean_train) if split == "train" else (d.x_test, d.y_test)
            class_names = d.info.get("class_names")
            what = f"{target.name} (epoch {run.epoch}, {split})"
    else:
        if target.is_dir():
            raise ValueError(f"{target} is a folder without config.yaml: not an nclab run directory")
        if not target.is_file():
            raise ValueError(f"{target} does not exist")
        if (model is None) == (model_class is None):
            raise ValueError("a state dict needs exactly one of --model NAME or --model-class package.module:Class")
        if dataset is None:
            raise ValueError("a state dict needs --dataset NAME (the data to measure on)")
        from nclab.data import load_dataset

        splits = load_dataset(dataset, classes=classes, per_class=per_class)
        net = _load_state_dict_model(target, model=model, model_class=model_class, model_kwargs=kwargs,
                                     input_shape=splits.input_shape, num_classes=splits.num_classes)
        data = (splits.train_x, splits.train_y) if split == "train" else (splits.test_x, splits.test_y)
        class_names = splits.class_names
        what = f"{target.name} on {dataset} ({split})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if stored is not None:
            from nclab.metrics import nc_metrics

            res = nc_metrics(stored["features"], stored["labels"], clean_labels=stored.get("clean_labels"),
                             weight=stored.get("W"), bias=stored.get("b"), logits=stored.get("logits"),
                             convention=convention)
            res.info["layer"] = "classifier (features.npz)"
        else:
            names = list(layers) if layers else default_layers(net)
            res = collect(net, data, layer=layer, layers=names, convention=convention, device=device,
                          batch_size=batch_size)
    return Analysis(target=target, split=split, what=what, result=res,
                    class_names=None if class_names is None else list(class_names),
                    note=None if stored is None else stored["note"], warnings=[str(w.message) for w in caught],
                    model=net, data=data, stored=stored, layer=layer, device=device, batch_size=batch_size)

