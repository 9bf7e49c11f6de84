"""``NeuralCollapse``: the one-pass neural-collapse metrics as a ``torchmetrics.Metric``.

Install with ``pip install 'nclab[torchmetrics]'``. Use it like any torchmetrics
metric (``update`` per batch, ``compute`` at the end of the epoch, ``reset``; it
moves with ``.to()``, is saved in ``state_dict`` and syncs across DDP ranks)::

    nc = NeuralCollapse(10, feature_dim=512, classifier=model.fc)
    for x, y in loader:
        nc.update(model.features(x), y)
    nc.compute()   # {"nc1": tensor(...), "nc2_etf_error_means": ..., "nc3_zhu": ..., ...}

**What it computes.** Everything that is an exact function of per-class counts,
sums and second moments — the pass-1 metrics of :class:`nclab.metrics.NCAccumulator`
with ``within="full"``: NC1 (``nc1``, ``nc1_pinv``, ``nc1_trace_ratio``, ``cdnv``,
``nc1_logits``), NC2 on the means and (with a classifier) on the weights, NC3
(``nc3_papyan``, ``nc3_zhu``), ``nc4_bias_norm``, ``accuracy``, ``accuracy_clean``,
``ece``, ``realized_noise_rate``. The values equal :func:`nclab.metrics.nc_metrics`
on the same data (to rounding; the tests check 1e-6 relative on collapsed features).

**What it does not.** Quantities that need the final class means while the data are
streamed — NC4's nearest-class-centre mismatch, memorization, dilation and the
noisy-centroid projection — need a second pass over the data. A metric that only
sees each batch once cannot compute them exactly; use
:class:`nclab.integrations.lightning.NeuralCollapseCallback` (both passes over a
dataloader at chosen epochs) or :func:`nclab.collect`.

**Precision.** The states are float64 whatever the module's dtype: ``.to(torch.bfloat16)``,
``set_dtype`` and Lightning's ``precision="bf16-true"`` move them between devices but never
round them; ``update`` casts its inputs (bf16, fp16, float32, ...) to float64, and the input
dtype's round-off sets the numerical-rank tolerance of NC1.

**State and distributed reduction.** All states are float64 sums
(``dist_reduce_fx="sum"``) except the two per-class moment blocks (features and
logits), each one flat tensor ``[count (C) | sum (C·d) | M2 (C) | within-class
scatter (d·d)]`` whose M2 and scatter are *centred* (about each class mean). Their
``dist_reduce_fx`` is Chan's pairwise merge, ``S = S_a + S_b + n_a n_b/(n_a+n_b)·δδᵀ``
with ``δ`` the difference of the class means — a sum of moments corrected for the
differing centres, exact in real arithmetic and associative. Raw second moments
``Σ hhᵀ − n μμᵀ`` would be plain sums but lose about ``(‖μ‖/σ)²·2⁻⁵³`` relative precision
on collapsed features (σ ≪ ‖μ‖); the centred form keeps NC1 accurate at any level of
collapse. Memory is O(C·d + d²) float64 per rank, independent of the number of samples.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

try:
    from torchmetrics import Metric
except ImportError as exc:
    raise ImportError("nclab.integrations.torchmetrics needs torchmetrics: pip install 'nclab[torchmetrics]'") from exc

from nclab.metrics.accumulator import NCAccumulator, input_eps
from nclab.metrics.calibration import CalibrationState
from nclab.metrics.conventions import DEFAULT_CONVENTION, Convention, get_convention
from nclab.metrics.validation import as_tensor, check_classifier, check_features, check_labels, check_num_classes
from nclab.metrics.within_class import ClassMoments

__all__ = ["NeuralCollapse", "chan_merge"]


def _packed_len(num_classes: int, dim: int) -> int:
    return num_classes * (dim + 2) + dim * dim


def _moments_view(flat: Tensor, num_classes: int, dim: int) -> ClassMoments:
    """A :class:`ClassMoments` whose tensors are views into ``flat`` (in-place updates write through)."""
    C, d = num_classes, dim
    m = ClassMoments(C, full_scatter=True)
    m.count = flat[:C]
    m.sum = flat[C : C + C * d].view(C, d)
    m.m2 = flat[C + C * d : 2 * C + C * d]
    m.scatter = flat[2 * C + C * d :].view(d, d)
    return m


def chan_merge(stacked: Tensor, *, num_classes: int, dim: int) -> Tensor:
    """Merge packed per-class moment states (rows of ``stacked``, k×L) with Chan's formula.

    The ``dist_reduce_fx`` of the moment states: torchmetrics stacks the ranks' states
    (or the global and the batch state in ``forward``/``merge_state``) and calls this.
    A single 1-D state is returned unchanged.
    """
    if stacked.ndim == 1:
        return stacked
    out = torch.zeros(_packed_len(num_classes, dim), dtype=stacked.dtype, device=stacked.device)
    acc = _moments_view(out, num_classes, dim)
    for row in stacked:
        acc.merge(_moments_view(row, num_classes, dim))
    return out


class NeuralCollapse(Metric):
    """The one-pass neural-collapse metrics (NC1, NC2, NC3, accuracy, ECE) as a ``torchmetrics.Metric``.

    Parameters
    ----------
    num_classes : int
        C; labels lie in ``[0, C)``. Every class must be present when ``compute`` is called.
    feature_dim : int, optional
        d, the penultimate-layer width (fixes the state shapes, as DDP needs). Defaults
        to ``classifier.in_features`` or ``weight.shape[1]``.
    classifier : nn.Linear, optional
        The last layer. Read at ``update`` (logits for accuracy/ECE/NC1-on-logits when
        ``update`` gets none) and at ``compute`` (NC2 on weights, NC3, bias norm), so a
        layer that trains between epochs is always current. Held by reference, not
        registered as a submodule (it is not part of this metric's ``state_dict``).
    weight, bias : tensor (C×d), tensor (C), optional
        A fixed last layer instead of ``classifier``.
    convention : str or Convention
        One of :data:`nclab.metrics.CONVENTIONS` (default ``zhu2021``).
    ece_bins : int
        Equal-width ECE bins (15).
    **kwargs
        Passed to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).

    ``compute()`` returns ``{key: 0-d float64 tensor}`` for every metric that is defined
    (keys as in :data:`nclab.metrics.METRIC_KEYS`); pass-2 keys are absent (see the module
    docstring). ``forward(features, labels)`` updates the state and returns the metrics of
    that batch alone — an empty dict when the batch lacks a class.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        *,
        feature_dim: int | None = None,
        classifier: nn.Linear | None = None,
        weight: Any = None,
        bias: Any = None,
        convention: str | Convention = DEFAULT_CONVENTION,
        ece_bins: int = 15,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        C = check_num_classes(num_classes)
        if classifier is not None:
            if weight is not None or bias is not None:
                raise ValueError("pass either classifier= or weight=/bias=, not both")
            if not isinstance(classifier, nn.Linear):
                raise TypeError(f"classifier must be an nn.Linear; got {type(classifier).__name__}")
            if classifier.out_features != C:
                raise ValueError(f"classifier has {classifier.out_features} outputs but num_classes={C}")
        if feature_dim is None:
            if classifier is not None:
                feature_dim = classifier.in_features
            elif weight is not None:
                feature_dim = int(as_tensor(weight, name="weight").shape[1])
            else:
                raise ValueError("feature_dim is required (or pass classifier= or weight=): the state shapes "
                                 "must be fixed before the first batch so that DDP ranks agree")
        if int(feature_dim) < 1:
            raise ValueError(f"feature_dim must be >= 1; got {feature_dim}")
        if ece_bins < 1:
            raise ValueError(f"ece_bins must be >= 1; got {ece_bins}")
        d = int(feature_dim)
        self.num_classes, self.feature_dim, self.ece_bins = C, d, int(ece_bins)
        self.convention = get_convention(convention)
        # not a submodule: the model owns the layer; we only read it
        self.__dict__["_classifier"] = classifier
        W, b = check_classifier(weight, bias, num_classes=C, dim=d, device=torch.device("cpu"))
        self.__dict__["_fixed"] = (W, b)

        f64 = torch.float64

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=f64)

        merge = functools.partial(chan_merge, num_classes=C, dim=d)
        self.add_state("feature_moments", zeros(_packed_len(C, d)), dist_reduce_fx=merge, persistent=True)
        merge_logits = functools.partial(chan_merge, num_classes=C, dim=C)
        self.add_state("logit_moments", zeros(_packed_len(C, C)), dist_reduce_fx=merge_logits, persistent=True)
        for name, shape in (
            ("clean_sum", (C, d)), ("clean_count", (C,)),
            ("calib_count", (ece_bins,)), ("calib_conf", (ece_bins,)), ("calib_correct", (ece_bins,)),
            # scalars: samples seen with clean labels / with logits, mislabelled, correct vs clean labels
            ("n_with_clean", ()), ("n_with_logits", ()), ("n_mislabeled", ()), ("n_correct_clean", ()),
        ):
            self.add_state(name, zeros(*shape), dist_reduce_fx="sum", persistent=True)
        # round-off of the input dtypes seen (float32 data -> float32-scale numerical rank in NC1)
        self.add_state("eps_features", zeros(), dist_reduce_fx="max", persistent=True)
        self.add_state("eps_logits", zeros(), dist_reduce_fx="max", persistent=True)

    # ------------------------------------------------------------------ dtype
    def _apply(self, fn: Any, exclude_state: Any = "") -> nn.Module:
        """Move the states with the module (``.to(device)``, ``.cuda()``) but keep them float64.

        ``.to(torch.bfloat16)``, ``set_dtype`` or a Lightning ``precision="bf16-true"`` that
        converts the whole LightningModule would otherwise round the accumulated sums to the
        new dtype; the inputs are cast in :meth:`update` instead."""
        names = tuple(self._defaults)
        this = super()._apply(fn, exclude_state=names)
        dev = this.device
        for key in names:
            this._defaults[key] = this._defaults[key].to(device=dev, dtype=torch.float64)
            setattr(this, key, getattr(this, key).to(device=dev, dtype=torch.float64))
        this._dtype = torch.float64
        return this

    # ------------------------------------------------------------------ helpers
    def _classifier_now(self, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        lin = self.__dict__["_classifier"]
        if lin is not None:
            W = lin.weight.detach().to(device=device, dtype=torch.float64)
            b = None if lin.bias is None else lin.bias.detach().to(device=device, dtype=torch.float64)
            return W, b
        W, b = self.__dict__["_fixed"]
        return (None if W is None else W.to(device), None if b is None else b.to(device))

    # ------------------------------------------------------------------ update
    def update(self, features: Tensor, labels: Tensor, clean_labels: Tensor | None = None,
               logits: Tensor | None = None) -> None:
        """Fold in a batch: ``features`` (b×d, any float dtype), ``labels`` (b), optional
        ``clean_labels`` (b; gives ``accuracy_clean`` and ``realized_noise_rate``) and
        ``logits`` (b×C; otherwise formed from the classifier when there is one)."""
        dev = self.feature_moments.device
        x_in = as_tensor(features, name="features", device=dev)  # the input dtype sets the rank tolerance
        x = check_features(x_in, name="features", dim=self.feature_dim)
        n = x.shape[0]
        C = self.num_classes
        y = check_labels(as_tensor(labels, name="labels", device=dev), n=n, num_classes=C)
        if n == 0:
            return
        yc = None
        if clean_labels is not None:
            yc = check_labels(as_tensor(clean_labels, name="clean_labels", device=dev), n=n, num_classes=C,
                              name="clean_labels")
        if logits is not None:
            z_in = as_tensor(logits, name="logits", device=dev)
            z = check_features(z_in, name="logits")
            if z.shape != (n, C):
                raise ValueError(f"logits must have shape ({n}, {C}); got {tuple(z.shape)}")
        else:
            W, b = self._classifier_now(dev)
            z = None if W is None else x @ W.T + (b if b is not None else 0.0)
        self.eps_features.fill_(max(float(self.eps_features), input_eps(x_in.dtype)))
        if logits is not None:
            self.eps_logits.fill_(max(float(self.eps_logits), input_eps(z_in.dtype)))
        _moments_view(self.feature_moments, C, self.feature_dim).update(x, y)
        if z is not None:
            _moments_view(self.logit_moments, C, C).update(z, y)
            cal = CalibrationState(bins=self.ece_bins)
            cal.count, cal.conf, cal.correct = self.calib_count, self.calib_conf, self.calib_correct
            cal.update(z, y, yc)  # index_add_ in place into the states
            self.n_with_logits += n
            if yc is not None:
                self.n_correct_clean += cal.correct_clean
        if yc is not None:
            self.n_with_clean += n
            ok = y == yc
            self.clean_sum.index_add_(0, y[ok], x[ok])
            self.clean_count += torch.bincount(y[ok], minlength=C).to(torch.float64)
            self.n_mislabeled += (~ok).sum().to(torch.float64)

    # ------------------------------------------------------------------ compute
    def _accumulator(self) -> NCAccumulator:
        """An :class:`NCAccumulator` in pass 1 holding this metric's (synced) state."""
        C, d = self.num_classes, self.feature_dim
        dev = self.feature_moments.device
        W, b = self._classifier_now(dev)
        acc = NCAccumulator(C, convention=self.convention, weight=W, bias=b, within="full", ece_bins=self.ece_bins)
        fm = _moments_view(self.feature_moments.clone(), C, d)
        n = float(fm.count.sum())
        acc._device = dev
        acc._weight, acc._bias = W, b
        acc._moments = fm
        for what, seen in (("clean_labels", float(self.n_with_clean)), ("logits", float(self.n_with_logits))):
            if seen not in (0.0, n):
                raise ValueError(f"{what} were given for some batches but not for others")
        acc._eps_x = float(self.eps_features) or None
        acc._eps_z = float(self.eps_logits) or None
        acc._has_clean = float(self.n_with_clean) > 0
        acc._has_logits = float(self.n_with_logits) > 0
        if acc._has_logits:
            acc._logit_moments = _moments_view(self.logit_moments.clone(), C, C)
            cal = acc._calib
            cal.count, cal.conf, cal.correct = self.calib_count.clone(), self.calib_conf.clone(), self.calib_correct.clone()
            if acc._has_clean:
                cal.correct_clean, cal.n_clean = float(self.n_correct_clean), int(n)
        if acc._has_clean:
            acc._clean_sum, acc._clean_count = self.clean_sum.clone(), self.clean_count.clone()
            acc._mislabeled = int(self.n_mislabeled)
        return acc

    def compute(self) -> dict[str, Tensor]:
        """``{key: 0-d float64 tensor}`` for every one-pass metric that is defined."""
        if getattr(self, "_batch_mode", False):
            counts = self.feature_moments[: self.num_classes]
            if bool((counts == 0).any()):
                return {}
        res = self._accumulator().compute()
        dev = self.feature_moments.device
        return {
            k: torch.tensor(float(v), dtype=torch.float64, device=dev)
            for k, v in res.values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot the metrics with torchmetrics' helper (``Metric._plot``): ``val`` — one
        ``compute()`` result or a list of them (one per epoch, drawn as curves); default:
        ``compute()`` now. Returns ``(figure, axes)``; needs matplotlib."""
        val = val if val is not None else self.compute()
        return self._plot(val, ax)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Update with the batch and return the batch's own metrics (``{}`` if it lacks a class)."""
        self.__dict__["_batch_mode"] = True
        try:
            return super().forward(*args, **kwargs)
        finally:
            self.__dict__["_batch_mode"] = False
