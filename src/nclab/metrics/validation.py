"""Input checks shared by the accumulator and the functional API.

Every check raises with a message naming the problem (shape, dtype, NaN count,
label range); nothing is silently dropped or coerced to NaN.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SPARSE_MAX_LABEL = 100_000  # max label above which C must be given explicitly


def as_tensor(x: Any, *, name: str, device: torch.device | None = None) -> torch.Tensor:
    """numpy / torch / sequence -> torch tensor (no copy for torch input on ``device``)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{name} has dtype object; pass a numeric array")
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except Exception as exc:  # noqa: BLE001 - re-raised with the array's name
            raise TypeError(f"{name} could not be converted to an array: {exc}") from exc
    if device is not None and t.device != device:
        t = t.to(device)
    return t


def check_features(
    x: torch.Tensor, *, name: str = "features", dim: int | None = None, convert: bool = True
) -> torch.Tensor:
    """2-D floating array with finite values; returns it as float64.

    With ``convert=False`` only the shape and dtype are checked and ``x`` is returned as is:
    the accumulator converts chunk by chunk and screens finiteness through the float64
    sums it forms anyway (``raise_nonfinite`` names the offenders).
    """
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d); got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT:
        raise TypeError(f"{name} must be floating point; got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, but earlier batches had {dim}")
    if not convert:
        return x
    x64 = x.to(torch.float64)
    # Cheap screen: a float64 sum is finite when every entry is (float32/16 inputs cannot
    # overflow it); only if it is not, look at the entries and count the offenders.
    if not bool(torch.isfinite(x64.sum())):
        raise_nonfinite(x, name=name)
    return x64


def raise_nonfinite(x: torch.Tensor, *, name: str) -> None:
    """Raise naming how many entries (and rows) of ``x`` are NaN or inf; return if there are
    none (a float64 sum of huge finite values can overflow without any bad entry)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = int(bad.any(dim=1).sum())
        raise ValueError(f"{name} has {int(bad.sum())} non-finite values (NaN or inf) in {rows} of {x.shape[0]} rows")


def short_list(items: Sequence[Any], *, limit: int = 10) -> str:
    """``[a, b, c]`` for short lists; ``[a, b, …, z] (N in all)`` past ``limit`` items, so an
    error about 10⁵ classes stays one line."""
    items = list(items)
    if len(items) <= limit:
        return "[" + ", ".join(map(str, items)) + "]"
    head = ", ".join(map(str, items[: limit - 2]))
    return f"[{head}, …, {items[-1]}] ({len(items)} in all)"


def infer_num_classes(labels: torch.Tensor, *, what: str = "num_classes") -> int:
    """C = max label + 1, refusing sparse labels.

    Sparse labels (max label ≥ 10·n, or above ``SPARSE_MAX_LABEL``) would allocate C×d state
    for mostly empty classes — labels {0, 10⁹} would need gigabytes — so they raise and ask
    for ``num_classes`` (remap the labels to 0..C−1 first if they are ids, not indices).
    """
    if labels.numel() == 0:
        raise ValueError("labels are empty")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
        check_labels(labels, n=labels.shape[0], num_classes=2**62)  # raises, naming the dtype
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"labels must be non-negative class indices; got a minimum of {lo}")
    n = int(labels.numel())
    if hi >= 10 * n or hi > SPARSE_MAX_LABEL:
        present = int(torch.unique(labels).numel())
        raise ValueError(
            f"labels look sparse: the largest label is {hi} but there are only {n} samples "
            f"({present} distinct labels), so taking C = max label + 1 = {hi + 1} would allocate "
            f"state for {hi + 1 - present} empty classes. Pass {what} explicitly "
            "(or remap the labels to 0..C−1)"
        )
    return hi + 1


def check_labels(y: torch.Tensor, *, n: int, num_classes: int, name: str = "labels") -> torch.Tensor:
    """1-D integer labels of length ``n`` in ``[0, num_classes)``; returns int64."""
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but features have {n} rows")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        if y.dtype.is_floating_point and bool((y == y.round()).all()) and bool(torch.isfinite(y).all()):
            raise TypeError(f"{name} must be an integer array; got {y.dtype} (cast with .astype(int))")
        raise TypeError(f"{name} must be an integer array; got {y.dtype}")
    y = y.to(torch.int64)
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}); got values in [{lo}, {hi}]")
    return y


def check_num_classes(num_classes: int) -> int:
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool):
        raise TypeError(f"num_classes must be an integer; got {type(num_classes).__name__}")
    if num_classes < 2:
        raise ValueError(f"neural-collapse metrics need at least 2 classes; got num_classes={num_classes}")
    return int(num_classes)


def check_classifier(
    weight: Any, bias: Any, *, num_classes: int, dim: int | None, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validate ``W`` (C×d) and ``b`` (C) and return them as float64 on ``device``."""
    w = b = None
    if weight is not None:
        w = check_features(as_tensor(weight, name="weight", device=device), name="weight")
        if w.shape[0] != num_classes:
            raise ValueError(f"weight must have shape ({num_classes}, d); got {tuple(w.shape)}")
        if dim is not None and w.shape[1] != dim:
            raise ValueError(f"weight has {w.shape[1]} columns but features have dimension {dim}")
    if bias is not None:
        b = as_tensor(bias, name="bias", device=device)
        if b.ndim != 1 or b.shape[0] != num_classes:
            raise ValueError(f"bias must have shape ({num_classes},); got {tuple(b.shape)}")
        b = check_features(b[None, :], name="bias")[0]
        if w is None:
            raise ValueError("bias given without weight")
    return w, b
