"""Per-sample training dynamics: the logit margin of every training sample after every epoch.

The margin of sample ``i`` with given (possibly noisy) label ``y_i`` is

    m_i = z_{i, y_i} − max_{j ≠ y_i} z_{i, j}

(positive iff the model predicts the given label). Its mean over epochs is the
*area under the margin* (AUM, Pleiss et al. 2020); the epoch from which it stays
positive is how late the sample is fitted. Both flag mislabeled samples, which
a network fits late (memorization) and with small or negative margins.

Files: ``run_dir/dynamics/epoch_XXXX.npy``, one float32 vector of length n per
recorded epoch, written atomically. Re-recording an epoch overwrites it, and
:meth:`DynamicsRecorder.truncate` drops epochs after a resumed checkpoint, so a
resumed run ends with the same files as an uninterrupted one.

The trainer (``record_dynamics: true``) records after *every* epoch, independently
of ``eval_every``: one eval-mode forward over the training set (logits only, no
metric suite), so a run with a large ``eval_every`` still has the full curve.

Differences from Pleiss et al.: margins are taken from eval-mode logits after
each epoch (not from the training-mode forward of each minibatch), so they do
not depend on dropout/BatchNorm batch statistics or on the batch order.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nclab.store.files import atomic_write_bytes, npy_header

DYNAMICS_DIR = "dynamics"
_PATTERN = re.compile(r"^epoch_(\d{4,})\.npy$")

__all__ = ["DYNAMICS_DIR", "Dynamics", "DynamicsRecorder", "load_dynamics", "logit_margins"]


def logit_margins(logits: Any, labels: Any) -> np.ndarray:
    """``z[i, y_i] − max_{j≠y_i} z[i, j]`` for logits (n×C, C ≥ 2) and integer labels (n); float32 numpy."""
    z = torch.as_tensor(logits).detach()
    y = torch.as_tensor(labels).detach().to(device=z.device)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be n×C with C >= 2; got shape {tuple(z.shape)}")
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"labels must be a vector of length {z.shape[0]}; got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integer class ids; got dtype {y.dtype}")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1]})")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("logits contain NaN or inf; margins would be meaningless")
    z = z.double()
    own = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return (own - other).cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class Dynamics:
    """Recorded margins: ``epochs`` (E,) increasing, ``margins`` (E, n) float32."""

    epochs: np.ndarray
    margins: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.margins.shape[1])


def npy_problem(path: Path) -> tuple[str | None, int]:
    """``(None, n)`` for a whole ``.npy`` float32 vector of n margins, else ``(what is wrong, 0)``."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = npy_header(f)
            header = f.tell()
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return "missing", 0
    except (OSError, ValueError, EOFError) as exc:
        return f"not a .npy file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", 0
    if len(shape) != 1 or dtype != np.float32:
        return f"holds {dtype} of shape {tuple(shape)}, not a float32 vector", 0
    need = header + int(shape[0]) * 4
    if size != need:
        return f"{'truncated' if size < need else 'too long'}: {size} of {need} bytes", 0
    return None, int(shape[0])


class DynamicsRecorder:
    """Writes per-epoch per-sample margins under ``run_dir/dynamics``.

    Call :meth:`clear` when a run starts fresh, :meth:`truncate` (``after`` = the
    checkpoint epoch) when it resumes, then :meth:`record` the margins of each epoch's logits.
    """

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / DYNAMICS_DIR
        self.last: np.ndarray | None = None  # margins of the latest record (m > 0 <=> the given label wins)

    def path(self, epoch: int) -> Path:
        return self.dir / f"epoch_{int(epoch):04d}.npy"

    def epochs(self) -> list[int]:
        """Recorded epochs, increasing."""
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _PATTERN.match(p.name)))

    def record(self, epoch: int, logits: Tensor, labels: Tensor) -> Path:
        """Write the margins of ``logits`` (n×C, training-label space) w.r.t. ``labels`` (n, the
        labels the loss sees) for ``epoch`` (≥ 0; overwrites an existing record)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer; got {epoch!r}")
        m = logit_margins(logits, labels)
        for e in self.epochs():
            if e != epoch:
                n_old = np.load(self.path(e), mmap_mode="r").shape[0]
                if n_old != m.shape[0]:
                    raise ValueError(
                        f"{self.path(e)} holds {n_old} samples but this record has {m.shape[0]}; "
                        "a dynamics folder belongs to one training set (clear() it to start over)"
                    )
                break
        buf = io.BytesIO()
        np.save(buf, m, allow_pickle=False)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path(epoch), buf.getvalue())
        self.last = m
        return self.path(epoch)

    def verify(self, *, upto: int) -> None:
        """Check that the records of epochs ``1..upto`` (what a resume from a checkpoint at
        ``upto`` continues) exist, are whole and hold the same number of samples; raise
        ``ValueError`` naming each bad file. Past margins cannot be recomputed, so a damaged
        one is reported instead of being kept (it would fail a later ``load_dynamics``)."""
        bad: list[str] = []
        sizes: dict[int, list[str]] = {}
        for e in range(1, upto + 1):
            p = self.path(e)
            problem, n = npy_problem(p)
            if problem:
                bad.append(f"{p.name} ({problem})")
            else:
                sizes.setdefault(n, []).append(p.name)
        if len(sizes) > 1:
            bad += [f"{names[0]} ({n} samples)" for n, names in sorted(sizes.items())]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ValueError(
                f"damaged training dynamics in {self.dir}: {shown}; the margins of past epochs cannot be "
                "recomputed: restore the files, or train again with overwrite"
            )

    def truncate(self, *, after: int) -> None:
        """Delete records of epochs ``> after`` (they will be recomputed on resume)."""
        if self.dir.is_symlink():  # deleting through it would delete files of the link's target
            raise ValueError(f"{self.dir} is a symbolic link; nclab never deletes through links inside a run "
                             "directory: remove the link")
        for e in self.epochs():
            if e > after:
                os.unlink(self.path(e))

    def clear(self) -> None:
        """Delete every record (a fresh run in a reused directory)."""
        self.truncate(after=-1)


def load_dynamics(run_dir: str | Path) -> Dynamics:
    """All recorded margins of a run, stacked by epoch. Raises ``FileNotFoundError`` when
    nothing was recorded (the run was trained without ``record_dynamics``)."""
    rec = DynamicsRecorder(run_dir)
    epochs = rec.epochs()
    if not epochs:
        raise FileNotFoundError(
            f"no training dynamics in {rec.dir}: train with record_dynamics=true "
            "(or use the feature score, which needs only the checkpoint)"
        )
    for e in epochs:
        problem, _ = npy_problem(rec.path(e))
        if problem:
            raise ValueError(f"training dynamics file {rec.path(e)} is damaged ({problem}); "
                             "train the run again with record_dynamics=true, or use the feature score")
    rows = [np.load(rec.path(e), allow_pickle=False) for e in epochs]
    sizes = {r.shape for r in rows}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ValueError(f"dynamics records in {rec.dir} have different shapes {sorted(sizes)}")
    return Dynamics(epochs=np.asarray(epochs, dtype=np.int64), margins=np.stack(rows).astype(np.float32))
