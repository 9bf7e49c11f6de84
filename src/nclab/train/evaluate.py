"""The evaluation pass: one eval-mode forward over a split, then the metric engine.

Features and logits of a split are computed once (eval mode, ``no_grad``) and kept
on the device; they are far smaller than the inputs (``d`` vs ``C*H*W`` per
sample). The metric engine streams over them in batches and does its own second
pass, so no second forward pass through the network is needed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn


@torch.no_grad()
def collect_outputs(model: nn.Module, x: Tensor, *, batch_size: int) -> tuple[Tensor, Tensor]:
    """``(logits, features)`` of every row of ``x`` in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        outs = [model.forward_features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def fold_logits(logits: Tensor, label_to_class: Tensor, num_classes: int) -> Tensor:
    """Class logits from label logits: ``z_c = logsumexp_{l : class(l) = c} z_l``.

    ``softmax`` of the result is the total probability of each class, so with latent
    classes (labels ``c`` and ``c + C`` for class ``c``) test predictions and losses
    are taken over the ``C`` true classes.
    """
    idx = label_to_class.to(logits.device).expand(logits.shape[0], -1)
    neg_inf = torch.full((logits.shape[0], num_classes), float("-inf"), dtype=logits.dtype, device=logits.device)
    peak = neg_inf.scatter_reduce(1, idx, logits, reduce="amax", include_self=True)  # stable logsumexp
    total = torch.zeros_like(peak).scatter_add(1, idx, (logits - peak.gather(1, idx)).exp())
    return peak + total.log()


def nc_metrics(
    features: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    classifier: nn.Linear | None,
    logits: Tensor | None = None,
    clean_labels: Tensor | None = None,
    convention: str,
    batch_size: int,
) -> dict[str, Any]:
    """The metric engine's flat dict for one split (``nclab.metrics.evaluate_stream``).

    ``labels`` are the labels the model was trained on (noisy for the training
    split), ``clean_labels`` the true ones (enables memorization/dilation).
    """
    from nclab.metrics import evaluate_stream

    n = features.shape[0]

    def make_batches() -> Iterator[dict[str, Tensor]]:
        for i in range(0, n, batch_size):
            b = {"features": features[i : i + batch_size], "labels": labels[i : i + batch_size]}
            if logits is not None:
                b["logits"] = logits[i : i + batch_size]
            if clean_labels is not None:
                b["clean_labels"] = clean_labels[i : i + batch_size]
            yield b

    res = evaluate_stream(
        make_batches,
        num_classes=num_classes,
        weight=None if classifier is None else classifier.weight.detach(),
        bias=None if classifier is None or classifier.bias is None else classifier.bias.detach(),
        convention=convention,
    )
    return res.to_dict()


def evaluate_split(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    num_classes: int,
    label_to_class: Tensor,
    clean_labels: Tensor | None = None,
    metric_clean_labels: Tensor | None = None,
    convention: str,
    batch_size: int,
    metrics: bool = True,
    fold: bool = False,
) -> dict[str, Any]:
    """Loss, accuracies and (optionally) the NC metric dict of one split.

    Returns ``{"loss", "acc", "acc_clean" (if clean_labels), "metrics" (dict or None)}``
    where ``acc`` compares ``argmax`` with ``labels`` and ``acc_clean`` compares the
    class the predicted label stands for (``label_to_class``) with ``clean_labels``.
    ``fold=True`` (latent classes on a split labelled by class): logits are first
    folded to the true classes (:func:`fold_logits`) and the metrics use the
    ``C`` classes without the classifier (its rows are per label, not per class).
    """
    logits, feats = collect_outputs(model, x, batch_size=batch_size)
    classifier: nn.Linear | None = model.classifier
    if fold:
        num_classes = int(label_to_class.max()) + 1
        logits = fold_logits(logits, label_to_class, num_classes)
        label_to_class = torch.arange(num_classes, device=logits.device)
        classifier = None
    pred = logits.argmax(dim=1)
    with torch.no_grad():
        loss = float(loss_fn(logits, labels))
    out: dict[str, Any] = {"loss": loss, "acc": float((pred == labels).double().mean())}
    if clean_labels is not None:
        out["acc_clean"] = float((label_to_class[pred] == clean_labels).double().mean())
    out["metrics"] = None
    if metrics:
        out["metrics"] = nc_metrics(
            feats, labels, num_classes=num_classes, classifier=classifier, logits=logits,
            clean_labels=metric_clean_labels, convention=convention, batch_size=batch_size,
        )
    return out


def evaluate_run(model: nn.Module, data: Any, loss_fn: nn.Module, config: Any, *, final: bool = True) -> dict[str, Any]:
    """One evaluation record of a run (``data``: its :class:`~nclab.train.data.RunData`):
    losses and accuracies on train/test (and validation), plus the metric suite unless
    ``config.eval_mode`` is ``light`` and the record is not ``final``."""
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


def feature_arrays(model: nn.Module, data: Any, *, batch_size: int) -> dict[str, Any]:
    """The final training features in ``nclab metrics``' file format (one eval-mode pass).

    ``labels`` are the noisy training labels, ``clean_labels`` the true ones in the
    same label space (latent classes: ``RunData.metric_clean_train``), ``W``/``b`` the classifier.
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
    return arrays


@torch.no_grad()
def eval_logits(model: nn.Module, x: Tensor, *, batch_size: int) -> Tensor:
    """Eval-mode logits of every row of ``x``; the model's mode is restored."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was)
