"""Bridges to the tools researchers already use; each engine is an optional extra.

- :mod:`nclab.integrations.torchmetrics`: ``NeuralCollapse``, a ``torchmetrics.Metric``
  (extra ``torchmetrics``);
- :mod:`nclab.integrations.lightning`: ``NeuralCollapseCallback`` for a Lightning
  ``Trainer`` (extra ``lightning``);
- :mod:`nclab.integrations.loggers`: ``MetricsLogger`` and its JSONL, TensorBoard
  (extra ``tensorboard``) and MLflow (extra ``mlflow``) implementations, used by
  ``nclab.train.train(..., loggers=...)`` and ``nclab train/sweep --log``.

Nothing here is imported by ``import nclab``; import the submodule you need.
"""
