"""The epoch policy: what happens to one run around each epoch, whoever trains it.

Before the epoch: its learning rate (:func:`learning_rate`). After it
(:func:`end_epoch`), in this order:

1. divergence: a non-finite loss, parameter or eval-mode logit ends the run (``diverged``);
2. dynamics: the eval-mode logit margins of every training sample, every epoch;
3. the stop rule: fed by the eval-mode training accuracy, every epoch (from an
   evaluation's record when there is one);
4. evaluation: every ``eval_every`` epochs, at the run's last epoch and when the stop
   rule fires; with ``eval_mode: light`` the metric suite only in the record that ends the
   run (its last epoch or the stop rule; not a ``max_epochs`` cap, which a resume continues);
5. checkpoint: every ``checkpoint_every`` epochs, at the session's end and on a stop request;
6. a stop request (SIGINT/SIGTERM) ends the session after the epoch (``interrupted``).

The policy reads and writes the run only through its :class:`~nclab.train.session.RunSession`;
the engine gives it the epoch's loss, whether the parameters are finite, the training
logits when :func:`needs_train_logits` asked for them, and ``export`` (bring the session's
solo model and optimizer up to date).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import Tensor

from nclab.train.evaluate import eval_logits, evaluate_run
from nclab.train.schedule import lr_at
from nclab.train.session import RunSession

__all__ = ["end_epoch", "learning_rate", "needs_train_logits"]


def learning_rate(s: RunSession) -> float:
    """The learning rate of the session's next epoch (also kept as ``s.lr``)."""
    c = s.config
    s.lr = lr_at(c.schedule, base_lr=c.optim.lr, epoch=s.epoch + 1, total_epochs=c.epochs)
    return s.lr


def _evaluation_epoch(s: RunSession, epoch: int) -> bool:
    return epoch % s.config.eval_every == 0 or epoch == s.config.epochs


def needs_train_logits(s: RunSession) -> bool:
    """Whether the next epoch's end needs the eval-mode training logits (dynamics, or the stop
    rule on an epoch without evaluation)."""
    return s.recorder is not None or (s.stopper.active and not _evaluation_epoch(s, s.epoch + 1))


def end_epoch(s: RunSession, *, loss: float, params_finite: bool, logits: Tensor | None, export: Callable[[], None],
              epoch_time: float, signals: Any = None) -> dict[str, Any] | None:
    """Apply the policy to the epoch just trained (see the module docstring); returns its
    evaluation record, if any. Afterwards ``s.status != "running"`` or ``s.done`` says the run
    leaves its trainer. ``signals``: a :class:`~nclab.train.signals.StopSignals` (a stop request
    received before the policy's end ends the session)."""
    c = s.config
    epoch = s.epoch + 1
    if not (math.isfinite(loss) and params_finite):
        s.diverge(epoch, "the loss or the parameters")
        return None
    if logits is not None and not bool(torch.isfinite(logits).all()):
        s.diverge(epoch, "the logits")
        return None
    t0 = time.perf_counter()
    if s.recorder is not None:
        s.recorder.record(epoch, logits, s.data.y_train)
    evaluate = _evaluation_epoch(s, epoch)
    fired = False
    if s.stopper.active and not evaluate:
        fired = s.stopper.update(epoch, float((logits.argmax(1) == s.data.y_train).double().mean()))
        evaluate = fired  # the run ends here: it gets a record
    record = None
    if evaluate:
        export()
        try:
            ev = evaluate_run(s.model, s.data, s.loss_fn, c, final=fired or epoch == c.epochs)
        except (ValueError, RuntimeError):
            # finite weights can still give non-finite eval-mode logits (BatchNorm running statistics):
            # that is divergence, not bad input
            if bool(torch.isfinite(eval_logits(s.model, s.data.x_train, batch_size=c.eval_batch_size)).all()):
                raise
            s.diverge(epoch, "the logits")
            return None
        if s.stopper.active and not fired:
            fired = s.stopper.update(epoch, float(ev["train_acc_noisy"]))
            if fired and c.eval_mode == "light" and epoch != c.epochs:  # the run ends here: the full suite
                ev = evaluate_run(s.model, s.data, s.loss_fn, c, final=True)
        record = {"epoch": epoch, "lr": s.lr, "elapsed_s": s.elapsed_now(), "epoch_time_s": epoch_time,
                  "eval_time_s": time.perf_counter() - t0, "train_loss_running": loss, **ev}
        if fired or epoch == c.epochs:
            record.update(s.stopper.summary(finished_by_rule=fired))
        record = s.write_record(record)
    s.epoch = epoch
    if fired:
        s.end = epoch
    stopping = signals is not None and signals.signum is not None and not s.done
    if s.done or stopping or epoch % c.checkpoint_every == 0:
        export()
        s.checkpoint()
    if stopping:
        s.interrupt(signals.name)
    return record
