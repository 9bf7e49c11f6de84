"""``NeuralCollapseCallback``: every neural-collapse metric, both passes, logged by a Lightning ``Trainer``.

Install with ``pip install 'nclab[lightning]'`` (works with ``lightning`` and, when only
that is installed, ``pytorch_lightning``)::

    from nclab.integrations.lightning import NeuralCollapseCallback
    cb = NeuralCollapseCallback(eval_loader, every_n_epochs=5)   # batches (x, y) or (x, y, y_clean)
    trainer = lightning.Trainer(callbacks=[cb], logger=CSVLogger("logs"))

At the end of each chosen training epoch the callback runs :func:`nclab.collect` on
the LightningModule: forward hooks on the input of the final ``nn.Linear`` (the
penultimate features) and the logits, two streamed passes over ``data`` (the second
one is what memorization, dilation and NC4's nearest-class-centre mismatch need), then
``pl_module.log_dict`` of every scalar metric under ``prefix`` (``train/nc1``,
``train/memorization``, ``train/dilation``, ... — the names nclab's own TensorBoard and
MLflow loggers use, :func:`nclab.integrations.loggers.tracking_key`; pass
``prefix="val/"`` for validation data) — so the Trainer's loggers (CSV, TensorBoard,
MLflow, W&B, ...) receive them, and they can be monitored by callbacks. Constants of
the data (``num_classes``, ``feature_dim``, ``n_samples``) go once to the loggers'
hyperparameters instead.

Conventions:

- ``data`` should be deterministic (no augmentation): both passes must see the same
  features; order may differ (a shuffling loader is fine unless ``clean_labels=`` is
  given, which must line up with the order);
- memorization and dilation need the clean labels: a third batch element or
  ``clean_labels=`` (aligned with ``data``); without them those keys are absent;
- only finite numeric scalars are logged (per-class lists and ``None`` are skipped);
  the full :class:`~nclab.metrics.NCResult` of the last run is ``callback.last_result``;
- the collect pass runs the model in its own dtype and the Trainer's autocast context
  (``precision="bf16-true"`` / ``"bf16-mixed"`` work; see :meth:`NeuralCollapseCallback.measure`);
- under DDP the metrics are computed and logged on rank 0 only (the whole of ``data``
  on one process, as ``nclab.collect`` does); the other ranks skip the hook.

For one-pass metrics accumulated inside ``validation_step`` use
:class:`nclab.integrations.torchmetrics.NeuralCollapse` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch

try:
    from lightning.pytorch import Callback
except ImportError:  # the older standalone package
    try:
        from pytorch_lightning import Callback
    except ImportError as exc:
        raise ImportError("nclab.integrations.lightning needs Lightning: pip install 'nclab[lightning]'") from exc

from nclab.integrations.loggers import CONSTANT_KEYS, scalar_metrics

__all__ = ["NeuralCollapseCallback"]


class NeuralCollapseCallback(Callback):
    """Measure neural collapse on ``data`` at the end of chosen training epochs and log it.

    Parameters
    ----------
    data : DataLoader, Dataset or tensors ``(x, y[, y_clean])``
        What :func:`nclab.collect` accepts; measured with the model in eval mode.
    every_n_epochs : int
        Run after epochs ``n, 2n, ...`` (1-based; default every epoch).
    epochs : iterable of int, optional
        Exactly these (1-based) epochs instead of ``every_n_epochs``.
    prefix : str
        Prepended to each metric key in the logs (default ``"train/"``: ``data`` is
        usually the training set, whose noisy labels memorization needs).
    **collect_kwargs
        Passed to :func:`nclab.collect` (``clean_labels``, ``layer``, ``num_classes``,
        ``convention``, ``batch_size``, ``input_key``/``label_key``, ...).
    """

    def __init__(self, data: Any, *, every_n_epochs: int = 1, epochs: Iterable[int] | None = None,
                 prefix: str = "train/", **collect_kwargs: Any) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1; got {every_n_epochs}")
        self.data = data
        self.every_n_epochs = int(every_n_epochs)
        self.epochs = None if epochs is None else {int(e) for e in epochs}
        if self.epochs is not None and any(e < 1 for e in self.epochs):
            raise ValueError(f"epochs are 1-based; got {sorted(self.epochs)}")
        self.prefix = prefix
        self.collect_kwargs = collect_kwargs
        self.last_result = None
        self.last_epoch: int | None = None
        self.constants: dict[str, float] = {}

    def _due(self, epoch: int) -> bool:
        if self.epochs is not None:
            return epoch in self.epochs
        return epoch % self.every_n_epochs == 0

    def measure(self, pl_module: Any, trainer: Any = None) -> dict[str, float]:
        """Run both passes now; returns the prefixed scalar metrics (also kept in ``last_result``).

        The model runs as the Trainer runs it: inputs go through the precision plugin's
        ``convert_input`` (``bf16-true`` casts float batches to bfloat16) and the forward
        runs in its ``forward_context`` (autocast under ``bf16-mixed``). Without a Trainer,
        float inputs are cast to the dtype of the model's parameters."""
        from nclab.collect import collect  # noqa: PLC0415

        if trainer is None:
            trainer = getattr(pl_module, "_trainer", None)
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        if plugin is not None:
            convert, context = plugin.convert_input, plugin.forward_context()
        else:
            dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), None)

            def convert(args: Any) -> Any:
                return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() and dtype is not None
                             else a for a in args)

            context = contextlib.nullcontext()
        hook = pl_module.register_forward_pre_hook(lambda _module, args: convert(args))
        try:
            with context:
                self.last_result = collect(pl_module, self.data, **self.collect_kwargs)
        finally:
            hook.remove()
        values = scalar_metrics(self.last_result.values)
        self.constants = {self.prefix + k: v for k, v in values.items() if k in CONSTANT_KEYS}
        return {self.prefix + k: v for k, v in values.items() if k not in CONSTANT_KEYS}

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or not self._due(epoch):
            return
        distributed = trainer.world_size > 1
        if distributed and trainer.global_rank != 0:
            return
        metrics = self.measure(pl_module, trainer)
        if self.last_epoch is None:  # the constants once, as hyperparameters
            for lg in getattr(trainer, "loggers", None) or []:
                lg.log_hyperparams(self.constants)
        self.last_epoch = epoch
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, logger=True, prog_bar=False,
                           rank_zero_only=distributed)
