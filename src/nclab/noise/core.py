"""Label-noise generators.

Every kind is one rule: *with probability ``rate`` a sample's label is redrawn from a
kernel row* ``K[c]`` (``c`` = its original label), otherwise it is kept. So the expected
transition matrix is ``T = (1 - rate) I + rate K`` and the kinds differ only in ``K``:

==================  ===========================================================  ============
kind                kernel ``K[c, j]``                                            flip rate
==================  ===========================================================  ============
``none``            identity (``rate`` must be 0 or None)                          0
``symmetric``       ``1/(C-1)`` for ``j != c``, 0 on the diagonal                  ``rate``
``symmetric_all``   ``1/C`` everywhere (the official M-D code, DivideMix)           ``rate (C-1)/C``
``pairflip``        1 at ``j = (c+1) mod C`` (or ``pairs[c]``); classes not in      ``rate`` on mapped
                    ``pairs`` keep their label                                      classes
``matrix``          the user's row-stochastic ``transition``; ``rate=None`` (or 1)  ``rate (1 - mean K_cc)``
                    uses it as ``T`` directly
==================  ===========================================================  ============

``exact=True`` replaces the per-sample coin with an exact count: in every class exactly
``round(rate * n_c)`` samples (chosen uniformly) are redrawn. For ``symmetric`` and
``pairflip`` that makes the number of flipped labels exact; for ``symmetric_all`` the number
*redrawn* is exact (a redraw may land on the true class), for ``matrix`` the number of
samples whose label is redrawn from ``K`` is exact.

Noise is always sampled from the *original* labels (never compounded), vectorised (no Python
loop over samples), and only through the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

NOISE_KINDS: tuple[str, ...] = ("none", "symmetric", "symmetric_all", "pairflip", "matrix")

__all__ = ["NOISE_KINDS", "NoisyLabels", "make_noise", "latent_classes", "kernel_matrix", "expected_transition"]


# --------------------------------------------------------------------------- validation
def _as_label_array(labels: Any, *, name: str = "labels") -> np.ndarray:
    """1-D int64 numpy copy of ``labels`` (numpy array, torch tensor or sequence)."""
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):  # torch tensor, any device
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one integer label per sample); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; label noise needs at least one sample")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must hold integers (class ids); got dtype {arr.dtype}. "
            "Convert soft/one-hot labels with argmax first."
        )
    return arr.astype(np.int64, copy=True)


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an integer; got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    return int(num_classes)


def _check_labels_range(y: np.ndarray, num_classes: int, *, name: str = "labels") -> None:
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        bad = y[(y < 0) | (y >= num_classes)]
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}; "
            f"found {bad.size} out-of-range value(s), e.g. {int(bad[0])}"
        )


def _check_rate(rate: Any, *, name: str = "rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1]; got {rate!r}")
    r = float(rate)
    if not np.isfinite(r) or r < 0.0 or r > 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {rate!r}")
    return r


def _check_generator(generator: Any) -> np.random.Generator:
    if not isinstance(generator, np.random.Generator):
        raise TypeError(
            "generator must be a numpy.random.Generator (e.g. nclab.seeding.numpy_generator(seed, 'noise')); "
            f"got {type(generator).__name__}"
        )
    return generator


def _check_transition(transition: Any, num_classes: int) -> np.ndarray:
    if transition is None:
        raise ValueError("kind='matrix' needs transition=<row-stochastic C x C array>")
    if hasattr(transition, "detach"):
        transition = transition.detach().cpu().numpy()
    T = np.asarray(transition, dtype=np.float64)
    if T.shape != (num_classes, num_classes):
        raise ValueError(f"transition must have shape ({num_classes}, {num_classes}); got {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError("transition has non-finite entries (NaN or inf)")
    if np.any(T < 0):
        i, j = np.argwhere(T < 0)[0]
        raise ValueError(f"transition entries must be >= 0; transition[{i}, {j}] = {T[i, j]}")
    sums = T.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-6)
    if bad.size:
        raise ValueError(
            f"transition rows must sum to 1 (row-stochastic, rows = clean class); "
            f"row {int(bad[0])} sums to {sums[bad[0]]:.6g}"
        )
    return T / sums[:, None]  # remove rounding drift so cumsum ends at exactly 1


def _pair_map(pairs: Mapping[int, int] | None, num_classes: int) -> np.ndarray:
    """Array ``m`` with ``m[c]`` = target of class c, or -1 if c is not flipped."""
    m = np.full(num_classes, -1, dtype=np.int64)
    if pairs is None:
        m[:] = (np.arange(num_classes) + 1) % num_classes
        return m
    if not isinstance(pairs, Mapping):
        raise TypeError(f"pairs must be a mapping {{source_class: target_class}}; got {type(pairs).__name__}")
    for src, dst in pairs.items():
        for v, what in ((src, "source"), (dst, "target")):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < num_classes:
                raise ValueError(f"pairs {what} class {v!r} is not an integer in [0, {num_classes})")
        if src == dst:
            raise ValueError(f"pairs maps class {src} to itself; a pair flip must change the class")
        m[int(src)] = int(dst)
    return m


# ------------------------------------------------------------------------------ kernels
def kernel_matrix(
    kind: str, *, num_classes: int, transition: Any = None, pairs: Mapping[int, int] | None = None
) -> np.ndarray:
    """The redraw kernel ``K`` (C x C, rows = clean class) of a noise kind (see module doc)."""
    C = _check_num_classes(num_classes)
    if kind == "none":
        return np.eye(C)
    if kind == "symmetric":
        return (np.ones((C, C)) - np.eye(C)) / (C - 1)
    if kind == "symmetric_all":
        return np.full((C, C), 1.0 / C)
    if kind == "pairflip":
        m = _pair_map(pairs, C)
        K = np.eye(C)
        src = np.flatnonzero(m >= 0)
        K[src, src] = 0.0
        K[src, m[src]] = 1.0
        return K
    if kind == "matrix":
        return _check_transition(transition, C)
    raise ValueError(_unknown_kind(kind))


def expected_transition(
    kind: str,
    *,
    rate: float | None,
    num_classes: int,
    transition: Any = None,
    pairs: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Target transition ``T = (1 - rate) I + rate K`` (``rate=None`` means 1 for 'matrix', 0 for 'none')."""
    K = kernel_matrix(kind, num_classes=num_classes, transition=transition, pairs=pairs)
    r = _resolve_rate(kind, rate)
    return (1.0 - r) * np.eye(K.shape[0]) + r * K


def _unknown_kind(kind: Any) -> str:
    import difflib

    hint = difflib.get_close_matches(str(kind), NOISE_KINDS, n=1)
    extra = f" Did you mean {hint[0]!r}?" if hint else ""
    return f"unknown noise kind {kind!r}; valid kinds: {', '.join(NOISE_KINDS)}.{extra}"


def _resolve_rate(kind: str, rate: Any) -> float:
    if kind == "none":
        if rate is None:
            return 0.0
        r = _check_rate(rate)
        if r != 0.0:
            raise ValueError(f"kind='none' takes rate 0 (or None); got {rate!r}")
        return 0.0
    if kind == "matrix" and rate is None:
        return 1.0  # the transition matrix is used as given
    if rate is None:
        raise ValueError(f"kind={kind!r} needs a rate in [0, 1]")
    return _check_rate(rate)


# ------------------------------------------------------------------------------ record
@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """Noisy training labels together with the clean ones they were drawn from.

    Attributes
    ----------
    noisy : int64 (n,) — training labels, in ``[0, num_classes)``.
    clean : int64 (n,) — original labels, in ``[0, clean_num_classes)``.
    num_classes : number of training (output) labels; ``2C`` after :func:`latent_classes`.
    clean_num_classes : number of true classes ``C``.
    label_to_class : int64 (num_classes,) — the true class a training label stands for
        (identity, or ``l mod C`` for latent classes).
    spec : dict — how the labels were made (kind, rate, exact, pairs/transition, latent...).
    target_transition : float (C, num_classes) — the expected transition matrix of the spec.
    """

    noisy: np.ndarray
    clean: np.ndarray
    num_classes: int
    clean_num_classes: int
    label_to_class: np.ndarray
    spec: dict
    target_transition: np.ndarray
    counts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for a in (self.noisy, self.clean, self.label_to_class, self.target_transition):
            a.setflags(write=False)
        counts = np.zeros((self.clean_num_classes, self.num_classes), dtype=np.int64)
        np.add.at(counts, (self.clean, self.noisy), 1)
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)

    @property
    def is_noisy(self) -> np.ndarray:
        """bool (n,): the training label denotes a different true class than the clean label."""
        return self.label_to_class[self.noisy] != self.clean

    @property
    def realized_rate(self) -> float:
        """Fraction of samples whose label was changed to another class (``mean(is_noisy)``)."""
        return float(self.is_noisy.mean())

    @property
    def transition(self) -> np.ndarray:
        """Empirical transition (C x num_classes): ``counts[c, j] / n_c``; rows with no samples are 0."""
        n_c = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.counts, n_c, out=np.zeros(self.counts.shape), where=n_c > 0)

    @property
    def class_realized_rates(self) -> np.ndarray:
        """Per clean class flip rate (C,); 0 for classes with no samples."""
        n_c = np.bincount(self.clean, minlength=self.clean_num_classes)
        flips = np.bincount(self.clean[self.is_noisy], minlength=self.clean_num_classes)
        return np.divide(flips, n_c, out=np.zeros(n_c.shape), where=n_c > 0)

    def __len__(self) -> int:
        return int(self.noisy.shape[0])

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for saving (e.g. ``np.savez(path, **nl.as_arrays())``); inverse: :meth:`from_arrays`."""
        from nclab.store.files import to_json  # spec as JSON text, so the npz holds no pickles

        return {
            "noisy": np.asarray(self.noisy),
            "clean": np.asarray(self.clean),
            "label_to_class": np.asarray(self.label_to_class),
            "target_transition": np.asarray(self.target_transition),
            "transition": self.transition,
            "num_classes": np.int64(self.num_classes),
            "clean_num_classes": np.int64(self.clean_num_classes),
            "spec_json": np.array(to_json(self.spec)),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> "NoisyLabels":
        import json

        return cls(
            noisy=np.asarray(arrays["noisy"], dtype=np.int64).copy(),
            clean=np.asarray(arrays["clean"], dtype=np.int64).copy(),
            num_classes=int(arrays["num_classes"]),
            clean_num_classes=int(arrays["clean_num_classes"]),
            label_to_class=np.asarray(arrays["label_to_class"], dtype=np.int64).copy(),
            spec=json.loads(str(arrays["spec_json"])),
            target_transition=np.asarray(arrays["target_transition"], dtype=np.float64).copy(),
        )

    def summary(self) -> dict[str, Any]:
        """Small JSON-able description: spec, n, realized rate, per-class rates."""
        return {
            **self.spec,
            "n": len(self),
            "num_classes": self.num_classes,
            "realized_rate": self.realized_rate,
            "class_realized_rates": self.class_realized_rates.tolist(),
        }


# --------------------------------------------------------------------------- sampling
def _exact_mask(y: np.ndarray, rate: float, num_classes: int, generator: np.random.Generator) -> np.ndarray:
    """Exactly ``round(rate * n_c)`` True entries among the samples of each class, uniformly chosen.

    Vectorised: a random key per sample, sort by (class, key), and mark the first k_c of each class.
    """
    keys = generator.random(y.shape[0])
    order = np.lexsort((keys, y))
    n_c = np.bincount(y, minlength=num_classes)
    starts = np.concatenate(([0], np.cumsum(n_c)[:-1]))
    k_c = np.rint(rate * n_c).astype(np.int64)  # round half to even, documented as round()
    rank = np.empty(y.shape[0], dtype=np.int64)
    rank[order] = np.arange(y.shape[0]) - starts[y[order]]
    return rank < k_c[y]


def _draw_from_rows(rows: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of a row-stochastic matrix (inverse CDF, vectorised)."""
    cdf = np.cumsum(rows, axis=1)
    u = generator.random(rows.shape[0])[:, None]
    # u < cdf[-1] == 1, so the count lies in [0, C-1]; clip guards rounding in cdf
    return np.minimum((u >= cdf).sum(axis=1), rows.shape[1] - 1).astype(np.int64)


def make_noise(
    labels: Any,
    *,
    kind: str,
    rate: float | None = None,
    num_classes: int,
    generator: np.random.Generator,
    exact: bool = False,
    transition: Any = None,
    pairs: Mapping[int, int] | None = None,
) -> NoisyLabels:
    """Corrupt ``labels`` with label noise of the given ``kind`` (see the module doc for the table).

    Parameters
    ----------
    labels : int array (n,) — numpy or torch, values in ``[0, num_classes)``.
    kind : one of :data:`NOISE_KINDS`.
    rate : probability that a label is redrawn from the kernel, in [0, 1]. For ``"symmetric"``
        and ``"pairflip"`` it is the flip rate; for ``"symmetric_all"`` the flip rate is
        ``rate (C-1)/C``. ``None`` is allowed for ``"none"`` and for ``"matrix"`` (``transition``
        is then the transition matrix itself).
    generator : numpy Generator; the only source of randomness.
    exact : redraw exactly ``round(rate * n_c)`` samples per class instead of a coin per sample.
    transition : C x C row-stochastic matrix (rows = clean class), for ``kind="matrix"``.
    pairs : ``{source: target}`` for ``kind="pairflip"``; default ``c -> (c+1) mod C``.

    Returns
    -------
    NoisyLabels with ``noisy``, ``clean``, ``realized_rate``, empirical ``transition``.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(_unknown_kind(kind))
    C = _check_num_classes(num_classes)
    y = _as_label_array(labels)
    _check_labels_range(y, C)
    gen = _check_generator(generator)
    if not isinstance(exact, (bool, np.bool_)):
        raise TypeError(f"exact must be a bool; got {exact!r}")
    if transition is not None and kind != "matrix":
        raise ValueError(f"transition= is only used with kind='matrix' (got kind={kind!r})")
    if pairs is not None and kind != "pairflip":
        raise ValueError(f"pairs= is only used with kind='pairflip' (got kind={kind!r})")
    r = _resolve_rate(kind, rate)
    K = kernel_matrix(kind, num_classes=C, transition=transition, pairs=pairs)

    noisy = y.copy()
    if r > 0.0:
        redraw = _exact_mask(y, r, C, gen) if exact else gen.random(y.shape[0]) < r
        idx = np.flatnonzero(redraw)
        if kind == "symmetric":
            # uniform over the C-1 other classes: add an offset in [1, C-1]
            noisy[idx] = (y[idx] + gen.integers(1, C, size=idx.size)) % C
        elif kind == "symmetric_all":
            noisy[idx] = gen.integers(0, C, size=idx.size)
        elif kind == "pairflip":
            m = _pair_map(pairs, C)
            tgt = m[y[idx]]
            noisy[idx] = np.where(tgt >= 0, tgt, y[idx])
        else:  # matrix
            noisy[idx] = _draw_from_rows(K[y[idx]], gen)

    spec: dict[str, Any] = {"kind": kind, "rate": None if rate is None else float(r), "exact": bool(exact)}
    if kind == "symmetric_all":
        spec["expected_flip_rate"] = r * (C - 1) / C
    if kind == "pairflip":
        m = _pair_map(pairs, C)
        spec["pairs"] = {int(c): int(m[c]) for c in np.flatnonzero(m >= 0)}
    if kind == "matrix":
        spec["transition"] = K.tolist()
    return NoisyLabels(
        noisy=noisy,
        clean=y,
        num_classes=C,
        clean_num_classes=C,
        label_to_class=np.arange(C, dtype=np.int64),
        spec=spec,
        target_transition=(1.0 - r) * np.eye(C) + r * K,
    )


def latent_classes(
    noisy_labels: NoisyLabels, *, fraction: float, generator: np.random.Generator, exact: bool = False
) -> NoisyLabels:
    """Latent-class variant of the official code: split each training label into two.

    After noise, each sample moves with probability ``fraction`` from its (noisy) training label
    ``l`` to the new label ``l + C`` (``exact=True``: exactly ``round(fraction * m_l)`` of the
    ``m_l`` samples carrying label ``l``). The result has ``num_classes = 2C`` training labels;
    clean labels and the test labels keep C classes, and ``label_to_class[l + C] = l``, so a
    moved sample counts as mislabeled only if its label already was.
    """
    if not isinstance(noisy_labels, NoisyLabels):
        raise TypeError(f"latent_classes takes a NoisyLabels (from make_noise); got {type(noisy_labels).__name__}")
    if noisy_labels.spec.get("latent_fraction") is not None:
        raise ValueError("these labels already have latent classes; apply latent_classes once")
    q = _check_rate(fraction, name="fraction")
    gen = _check_generator(generator)
    C = noisy_labels.clean_num_classes
    base = np.asarray(noisy_labels.noisy)
    move = _exact_mask(base, q, C, gen) if exact else gen.random(base.shape[0]) < q
    noisy = np.where(move, base + C, base).astype(np.int64)
    # target: each column j of the base transition splits into (1-q) at j and q at j + C
    Tb = noisy_labels.target_transition
    target = np.concatenate([(1.0 - q) * Tb, q * Tb], axis=1)
    return NoisyLabels(
        noisy=noisy,
        clean=np.array(noisy_labels.clean),
        num_classes=2 * C,
        clean_num_classes=C,
        label_to_class=np.concatenate([np.arange(C), np.arange(C)]).astype(np.int64),
        spec={**noisy_labels.spec, "latent_fraction": q, "latent_exact": bool(exact)},
        target_transition=target,
    )
