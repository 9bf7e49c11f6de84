"""Detection quality on injected label noise, nclab's scores next to cleanlab's confident learning.

One *setting* = a dataset, a noise kind and rate, a seed. For each setting, on the
same noisy training set (built by the trainer's own ``prepare_data``, so the noise
is the trainer's, stream ``"noise"``):

* **nclab** trains one model with the trainer's engine (:func:`nclab.train.engine.fit`:
  the run's model, optimizer, loss and schedule), recording the
  eval-mode logit margins of every training sample after each epoch
  (:mod:`nclab.store.dynamics`), then scores from the final features and from
  the margins (:mod:`nclab.detect.scores`);
* **cleanlab** gets out-of-fold predicted probabilities from K-fold training of
  the *same* model, optimizer and number of epochs (each fold model is
  trained on the other K−1 folds' noisy labels, predicts the held-out fold), and
  ranks by ``cleanlab.rank.get_label_quality_scores`` (self-confidence);
  ``cleanlab.filter.find_label_issues`` gives its flagged set; nclab's own
  confident learning (:func:`nclab.detect.find_label_issues`) runs on the same
  probabilities as a check of the re-implementation. Optionally also
  on out-of-fold probabilities of a scikit-learn logistic regression on the
  flattened inputs (``logreg``), the usual cheap baseline.

Same model for both sides, so the comparison is of the *detectors* and not of
the classifiers; cleanlab pays K trainings where nclab pays one, which the
timing columns show. Ground truth (``is_noisy``) is used only for the quality
numbers.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from nclab.detect.issues import find_label_issues, get_label_quality_scores
from nclab.detect.suspicion import score_arrays
from nclab.detect.scores import detection_quality

__all__ = ["Setting", "evaluate_setting", "train_with_dynamics", "oof_probabilities", "cleanlab_available"]


def cleanlab_available() -> bool:
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Setting:
    """One detection experiment; ``overrides`` are extra ``TrainConfig`` keys (dotted)."""

    dataset: str = "digits"
    classes: int | None = None
    per_class: int | None = None
    kind: str = "symmetric"
    rate: float = 0.2
    seed: int = 0
    epochs: int = 20
    overrides: tuple[tuple[str, Any], ...] = ()

    def config(self):
        from nclab.train import TrainConfig

        base = {
            "name": f"detect-{self.dataset}-{self.kind}-{self.rate}",
            "seed": self.seed,
            "epochs": self.epochs,
            "batch_size": 64,
            "device": "cpu",
            "dataset": {"name": self.dataset, "classes": self.classes, "per_class": self.per_class},
            "noise": {"kind": self.kind, "rate": self.rate, "exact": True},
            "model": {"name": "mlp", "depth": 2, "width": 256, "feature_dim": 64},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "loss": {"name": "ce"},
        }
        from nclab.config import deep_merge, parse_overrides

        if self.overrides:
            base = deep_merge(base, parse_overrides([f"{k}={v}" for k, v in self.overrides]))
        return TrainConfig.from_dict(base)


@torch.no_grad()
def _forward(model, x, batch_size=1024):
    outs = [model.forward_features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def train_with_dynamics(config, data) -> tuple[torch.nn.Module, np.ndarray]:
    """One model on the noisy training set; returns it and the margins (epochs × n, float32)."""
    from nclab.store.dynamics import logit_margins

    from nclab.train.engine import fit

    rows: list[np.ndarray] = []
    model = fit(config, data.x_train, data.y_train, num_classes=data.num_classes, input_shape=data.input_shape,
                on_epoch=lambda epoch, logits: rows.append(logit_margins(logits, data.y_train)),
                batches_stream="init-batches")
    return model, np.stack(rows)


def _folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed) % (2**32))
    return [te for _, te in skf.split(np.zeros(len(y)), y)]


def oof_probabilities(config, data, *, folds: int = 5, model: str = "same") -> np.ndarray:
    """Out-of-fold softmax probabilities (n×C) on the noisy training labels.

    ``model="same"``: the config's network, trained ``folds`` times with the trainer's
    epoch function (folds stratified by the noisy label); ``"logreg"``: scikit-learn
    ``LogisticRegression`` on the flattened, standardized inputs.
    """
    y = data.y_train.cpu().numpy()
    parts = _folds(y, folds, config.seed)
    C = data.num_classes
    probs = np.zeros((len(y), C))
    if model == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X = data.x_train.reshape(len(y), -1).cpu().numpy()
        for te in parts:
            tr = np.setdiff1d(np.arange(len(y)), te)
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.1))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X[tr], y[tr])
            p = np.zeros((len(te), C))
            p[:, clf.classes_] = clf.predict_proba(X[te])
            probs[te] = p
        return probs
    if model != "same":
        raise ValueError(f"model must be 'same' or 'logreg'; got {model!r}")
    from nclab.train.engine import fit

    for f, te in enumerate(parts):
        tr = torch.as_tensor(np.setdiff1d(np.arange(len(y)), te))
        m = fit(config, data.x_train[tr], data.y_train[tr], num_classes=C, input_shape=data.input_shape,
                init_stream=f"oof-{f}", batches_stream=f"oof-{f}-batches")
        probs[te] = torch.softmax(_forward(m, data.x_train[torch.as_tensor(te)])[0].double(), dim=1).cpu().numpy()
    return probs


_FLAG_RULES = {"dynamics": "aum", "features": "nearest_centroid"}


def _flag_stats(flagged: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    n = int(flagged.sum())
    return {"flagged": n, "flagged_precision": float(truth[flagged].mean()) if n else None,
            "flagged_recall": float(flagged[truth].mean()) if truth.any() else None}


def _cleanlab_rows(probs, y, truth, *, label: str, fit_s: float) -> list[dict[str, Any]]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    t0 = time.perf_counter()
    quality = get_label_quality_scores(y, probs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        issues = find_label_issues(y, probs)
    score_s = time.perf_counter() - t0
    q = detection_quality(1.0 - quality, truth)
    flagged = int(issues.sum())
    return [{
        "method": label, **q, "fit_s": fit_s, "score_s": score_s,
        "flagged": flagged,
        "flagged_precision": float(truth[issues].mean()) if flagged else None,
        "flagged_recall": float(issues[truth].mean()) if truth.any() else None,
    }]


def evaluate_setting(
    setting: Setting, *, scores: Sequence[str] = ("features", "knn", "dynamics", "fit_epoch", "combined"),
    cleanlab: bool = True, logreg: bool = True, folds: int = 5, k: int = 10,
) -> dict[str, Any]:
    """Every detector on one setting. Returns ``{"setting", "realized_noise_rate", "n",
    "clean_test_acc", "rows": [{method, auroc, precision_at_k, average_precision, fit_s, score_s, ...}]}``.
    cleanlab rows are skipped (``"cleanlab": "not installed"``) when cleanlab is absent."""
    from nclab.train import prepare_data

    config = setting.config()
    data = prepare_data(config, torch.device("cpu"))
    arrays = data.noise_arrays
    ti = arrays["train_idx"]
    truth = (np.asarray(arrays["label_to_class"])[np.asarray(arrays["noisy"])[ti]] != np.asarray(arrays["clean"])[ti])
    y = data.y_train.cpu().numpy()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    model, margins = train_with_dynamics(config, data)
    fit_s = time.perf_counter() - t0
    logits, feats = _forward(model, data.x_train)
    logits_te = _forward(model, data.x_test)[0]
    test_acc = float((logits_te.argmax(1) == data.y_test).double().mean())
    for name in scores:
        t1 = time.perf_counter()
        s, _ = score_arrays(labels=data.y_train, features=feats, margins=margins, score=name,
                            num_classes=data.num_classes, k=k)
        row = {"method": f"nclab:{name}", **detection_quality(s, truth), "fit_s": fit_s,
               "score_s": time.perf_counter() - t1}
        if name in _FLAG_RULES:  # the flagged set of find_label_issues for this kind of evidence
            ev = {"margins": margins} if name == "dynamics" else {"features": feats.cpu().numpy()}
            row.update(_flag_stats(find_label_issues(y, filter_by=_FLAG_RULES[name], num_classes=data.num_classes,
                                                     **ev), truth))
        rows.append(row)
    out: dict[str, Any] = {"setting": setting, "realized_noise_rate": float(truth.mean()), "n": len(y),
                           "clean_test_acc": test_acc}
    if cleanlab and cleanlab_available():
        t1 = time.perf_counter()
        probs = oof_probabilities(config, data, folds=folds, model="same")
        fit_oof = time.perf_counter() - t1
        rows += _cleanlab_rows(probs, y, truth, label=f"cleanlab:oof-{folds}fold-same-model", fit_s=fit_oof)
        t2 = time.perf_counter()
        q = get_label_quality_scores(y, pred_probs=probs)
        rows.append({"method": f"nclab-cl:oof-{folds}fold-same-model", **detection_quality(1.0 - q, truth),
                     "fit_s": fit_oof, "score_s": time.perf_counter() - t2,
                     **_flag_stats(find_label_issues(y, pred_probs=probs), truth)})
        if logreg:
            t1 = time.perf_counter()
            probs = oof_probabilities(config, data, folds=folds, model="logreg")
            rows += _cleanlab_rows(probs, y, truth, label=f"cleanlab:oof-{folds}fold-logreg",
                                   fit_s=time.perf_counter() - t1)
    elif cleanlab:
        out["cleanlab"] = "not installed (pip install 'nclab[cleanlab]')"
    out["rows"] = rows
    return out
