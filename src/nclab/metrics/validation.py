"""Input checks shared by the accumulator and the functional API.

Every check raises with a message naming the problem (shape, dtype, NaN count,
label range); nothing is silently dropped or coerced to NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def check_features(x: torch.Tensor, *, name: str = "features", dim: int | None = None) -> torch.Tensor:
    """2-D floating array with finite values; returns it as float64."""
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d); got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT:
        raise TypeError(f"{name} must be floating point; got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, but earlier batches had {dim}")
    x64 = x.to(torch.float64)
    # Cheap screen: a float64 sum is finite when every entry is (float32/16 inputs cannot
    # overflow it); only if it is not, look at the entries and count the offenders.
    if not bool(torch.isfinite(x64.sum())):
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            rows = int(bad.any(dim=1).sum())
            raise ValueError(
                f"{name} has {int(bad.sum())} non-finite values (NaN or inf) in {rows} of {x.shape[0]} rows"
            )
    return x64


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
