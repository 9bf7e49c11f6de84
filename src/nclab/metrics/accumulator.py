"""``NCAccumulator``: the streaming, torchmetrics-style neural-collapse metric state.

Two passes over the data, never holding all features:

* **pass 1** (``update``): per-class counts and sums (one ``index_add_`` per chunk into
  2C rows: mislabeled and clean samples apart, which gives the clean centroids too); with
  ``within="full"`` also per-class M2 and the pooled d×d within-class scatter (Chan's
  formula, float64), logit moments and accuracy/ECE.
* **pass 2** (``start_second_pass`` then ``update`` again over the same data):
  everything that needs the final class means, from *one* float64 GEMM per chunk on the
  within-class deviations ``r = h − μ_y`` — NC1's projection ``Qᵀ Σ_W Q``
  (``within="projected"``), the per-class M2 (CDNV, trace ratio), the nearest-class-centre
  mismatch (NC4), the classifier's logits ``W h`` (accuracy, ECE and NC1 on the logits
  when the classifier is given instead of logits), memorization, dilation, the
  noisy-centroid projection and the optional per-sample scores.

With ``within="full"``, ``compute()`` after pass 1 alone already gives NC1–NC3,
CDNV, accuracy and ECE; the pass-2 metrics are then ``None`` and listed in
``result.info["missing"]``. With ``within="projected"`` and a classifier (no explicit
logits), accuracy, ECE and ``nc1_logits`` come from pass 2 as well. Memory is O(C·d + d²) (full) or O(C·d) (projected) plus one
chunk, independent of n; per-sample scores are O(n) scalars when asked for. Batches are
cut into chunks of ``chunk_rows`` rows (default from the cache size, see
``nclab.metrics.chunking``), so the float64 copy of a chunk stays small whatever batch
size the caller uses.

State lives in float64 on the device of the first batch (CPU or CUDA). Ranks are decided
at the precision of the *input* (float32 features → float32 round-off; see
``within_class.numerical_rank_tol``).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch

from nclab.metrics import geometry as geo
from nclab.metrics.calibration import CalibrationState
from nclab.metrics.chunking import auto_chunk_rows, group_rows
from nclab.metrics.conventions import DEFAULT_CONVENTION, Convention, get_convention
from nclab.metrics.ncc import NCCState
from nclab.metrics.noise import NoiseState, corruption_biases, mean_or_none, noise_metrics
from nclab.metrics.result import NCResult
from nclab.metrics.validation import (
    as_tensor,
    check_classifier,
    check_features,
    check_labels,
    check_num_classes,
    raise_nonfinite,
    short_list,
)
from nclab.metrics.within_class import (
    EPS64,
    ClassMoments,
    ProjectedScatter,
    Spectrum,
    cdnv,
    centred_spectrum,
    input_eps,
    nc1_from_projection,
)

PASS2_KEYS = (
    "nc4_ncc_mismatch",
    "nc4_ncc_mismatch_bias",
    "nc4_ncc_mismatch_nobias",
    "memorization",
    "memorization_std",
    "memorization_normalized",
    "dilation",
    "dilation_std",
    "dilation_std_official",
    "dilation_normalized",
    "noisy_centroid_projection",
    "memorization_per_class",
    "dilation_per_class",
    "noisy_centroid_projection_pairs",
)

# Pass-2 distances come from an expansion around the sample's own class mean (one GEMM for
# all of them). Where the distance is tiny against the expansion's terms (a sample sitting on
# a *different* centre, e.g. a mislabeled sample at its true class on collapsed features) the
# expansion cancels; below this fraction of the terms' scale the distance is recomputed from
# the features themselves (rows affected only: none on uncollapsed data). Left alone, the
# relative error of a squared distance is at most ~√d·eps64/CANCEL_TOL ≈ 1e-10 at d = 512.
CANCEL_TOL = 1e-4

ETF_N2_NOTE = (
    "nc2_etf_error_means is None for C = 2: the two centred class means are always opposite "
    "(n_0 (μ_0 − μ_G) = −n_1 (μ_1 − μ_G)), so the error depends only on the label counts"
)




class NCAccumulator:
    """Streaming neural-collapse metrics.

    Parameters
    ----------
    num_classes : int
        C, the number of (given) label classes; labels must lie in ``[0, C)``.
    convention : str or Convention
        One of ``papyan2020``, ``papyan_colab``, ``zhu2021`` (default), ``rhubarbwu``;
        see ``nclab.metrics.conventions``.
    weight, bias : array (C×d), array (C), optional
        The last layer. When given, logits ``h Wᵀ + b`` are computed for batches
        that come without ``logits`` (accuracy, ECE, NC1 on logits, NC4).
    within : {"full", "projected"}
        How Σ_W is accumulated (see module docstring). Both are exact.
    per_sample : bool
        Keep per-sample scores from pass 2 (``result.per_sample``).
    ece_bins : int
        Number of equal-width ECE bins (15, as the official code).
    chunk_rows : int, optional
        Rows per internal chunk; default ``chunking.auto_chunk_rows(d)``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        convention: str | Convention = DEFAULT_CONVENTION,
        weight: Any = None,
        bias: Any = None,
        within: Literal["full", "projected"] = "full",
        per_sample: bool = False,
        ece_bins: int = 15,
        chunk_rows: int | None = None,
    ) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.convention = get_convention(convention)
        if within not in ("full", "projected"):
            raise ValueError(f"within must be 'full' or 'projected'; got {within!r}")
        if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
            raise ValueError(f"chunk_rows must be a positive integer; got {chunk_rows!r}")
        self.within = within
        self.per_sample = per_sample
        self.ece_bins = ece_bins
        self.chunk_rows = chunk_rows
        self._weight_in, self._bias_in = weight, bias
        self._weight_eps = input_eps(*(t.dtype for t in (weight, bias) if isinstance(t, torch.Tensor)))
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything seen (both passes)."""
        C = self.num_classes
        self.phase = 1
        self._device: torch.device | None = None
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
        self._moments = ClassMoments(C, full_scatter=self.within == "full", track_m2=self.within == "full")
        self._logit_moments = ClassMoments(C, full_scatter=True)
        self._calib = CalibrationState(bins=self.ece_bins)
        self._has_clean: bool | None = None
        self._has_logits: bool | None = None
        self._explicit_logits: bool | None = None
        self._clean_sum: torch.Tensor | None = None
        self._clean_count: torch.Tensor | None = None
        self._mislabeled = 0
        self._eps_x: float | None = None  # round-off of the feature dtype(s) seen
        self._eps_z: float | None = None  # round-off of explicit logits
        self._derived: dict[str, Any] | None = None
        self._pass2_n = 0
        self._proj: ProjectedScatter | None = None
        self._logit_gram: torch.Tensor | None = None
        self._ncc: NCCState | None = None
        self._noise: NoiseState | None = None
        self._samples: dict[str, list[torch.Tensor]] = {}
        self._bufs: dict[str, torch.Tensor] = {}

    def _buf(self, name: str, rows: int, cols: int) -> torch.Tensor:
        """A reusable float64 scratch array (rows×cols) on the state's device. Allocating a fresh
        megabyte-sized array per chunk costs page faults on every chunk (the allocator hands
        large blocks back to the OS), which measured 3× the arithmetic."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = self._bufs[name] = torch.empty(rows, cols, dtype=torch.float64, device=self._device)
        return buf[:rows]

    def _to64(self, x: torch.Tensor, name: str = "x64") -> torch.Tensor:
        """A float64 copy of the chunk ``x`` in a scratch array (never the caller's tensor)."""
        out = self._buf(name, x.shape[0], x.shape[1])
        out.copy_(x)
        return out

    @property
    def _calib_in_pass2(self) -> bool:
        """With a classifier and no explicit logits, the projected mode forms ``W h`` in pass 2
        from the shared GEMM (so pass 1 is only sums); the full mode keeps it in pass 1."""
        return self.within == "projected" and self._weight is not None and not self._explicit_logits

    # ------------------------------------------------------------------ input
    def _prepare(self, features, labels, clean_labels, logits):
        dev = self._device
        x = as_tensor(features, name="features", device=dev)
        if dev is None:
            dev = self._device = x.device
            self._weight, self._bias = check_classifier(
                self._weight_in, self._bias_in, num_classes=self.num_classes, dim=None, device=dev
            )
        x = check_features(x, name="features", dim=self._moments.dim, convert=False)
        if self._weight is not None and self._weight.shape[1] != x.shape[1]:
            raise ValueError(f"weight has {self._weight.shape[1]} columns but features have dimension {x.shape[1]}")
        n = x.shape[0]
        y = check_labels(as_tensor(labels, name="labels", device=dev), n=n, num_classes=self.num_classes)
        yc = None
        if clean_labels is not None:
            yc = check_labels(
                as_tensor(clean_labels, name="clean_labels", device=dev),
                n=n,
                num_classes=self.num_classes,
                name="clean_labels",
            )
        z = None
        if logits is not None:
            z_in = as_tensor(logits, name="logits", device=dev)
            z = check_features(z_in, name="logits")
            if z.shape != (n, self.num_classes):
                raise ValueError(f"logits must have shape ({n}, {self.num_classes}); got {tuple(z.shape)}")
            self._eps_z = max(self._eps_z or 0.0, input_eps(z_in.dtype))
        self._eps_x = max(self._eps_x or 0.0, input_eps(x.dtype))
        has_logits = logits is not None or self._weight is not None
        for attr, present, what in (
            ("_has_clean", yc is not None, "clean_labels"),
            ("_has_logits", has_logits, "logits"),
            ("_explicit_logits", logits is not None, "explicit logits"),
        ):
            seen = getattr(self, attr)
            if seen is None:
                setattr(self, attr, present)
            elif seen != present:
                raise ValueError(f"{what} were given for some batches but not for others")
        return x, y, yc, z

    def update(self, features: Any, labels: Any, *, clean_labels: Any = None, logits: Any = None) -> None:
        """Fold in one batch: ``features`` (b×d), ``labels`` (b), optional ``clean_labels`` (b), ``logits`` (b×C).

        In pass 2 the same batches must be fed again (any order, any partition). Large
        batches are processed in chunks of ``chunk_rows`` rows.
        """
        x, y, yc, z = self._prepare(features, labels, clean_labels, logits)
        n = x.shape[0]
        if n == 0:
            return
        heavy = self.chunk_rows or auto_chunk_rows(x.shape[1])
        step = group_rows(heavy)
        fn = self._update_pass1 if self.phase == 1 else self._update_pass2
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            fn(x[lo:hi], y[lo:hi], None if yc is None else yc[lo:hi], None if z is None else z[lo:hi], heavy)

    def _update_pass1(self, x, y, yc, z, heavy) -> None:
        """A group of rows: the b×d work (float64 copy, index_add_) runs over cache-sized
        chunks of ``heavy`` rows; the per-row bookkeeping runs once per group, since each
        torch call costs microseconds whatever its size."""
        C = self.num_classes
        b, dim = x.shape
        # One index_add_ into 2C rows: row y (mislabeled or no clean labels), row C + y (clean).
        if yc is not None:
            ok = y == yc
            slot = torch.where(ok, y + C, y)
            K = 2 * C
        else:
            slot, K = y, C
        bsum = self._buf("bsum", K, dim).zero_()
        m = self._moments
        w_logits = z is None and self._weight is not None and not self._calib_in_pass2
        for lo in range(0, b, heavy):
            hi = min(b, lo + heavy)
            xc = x[lo:hi]
            x64 = xc if xc.dtype == torch.float64 else self._to64(xc)  # pass 1 only reads it
            bsum.index_add_(0, slot[lo:hi], x64)
            if m.track_m2:
                m.update(x64, y[lo:hi])
            if w_logits:
                zc = x64 @ self._weight.T
                if self._bias is not None:
                    zc += self._bias
                self._logit_moments.update(zc, y[lo:hi])
                self._calib.update(zc, y[lo:hi], None if yc is None else yc[lo:hi])
        # Cheap finiteness screen: the float64 sums are finite when every entry is (no float32/16
        # input can overflow them); only if not, look at the entries and count the offenders.
        # (After this error the state is unusable: reset() before feeding more.)
        if not bool(torch.isfinite(bsum.sum())):
            raise_nonfinite(x, name="features")
        counts = torch.bincount(slot, minlength=K).to(torch.float64)
        if not m.track_m2:
            if m.count is None:
                m._init(dim, x.device)
            m.count += counts[:C] + counts[C:] if K == 2 * C else counts
            m.sum += bsum[:C] + bsum[C:] if K == 2 * C else bsum
        if z is not None:
            self._logit_moments.update(z, y)
            self._calib.update(z, y, yc)
        if yc is not None:
            if self._clean_sum is None:
                self._clean_sum = torch.zeros(C, x64.shape[1], dtype=torch.float64, device=x64.device)
                self._clean_count = torch.zeros(C, dtype=torch.float64, device=x64.device)
            self._clean_sum += bsum[C:]
            self._clean_count += counts[C:]
            self._mislabeled += int(counts[:C].sum())

    # ------------------------------------------------------------- pass two
    def start_second_pass(self) -> None:
        """Freeze pass 1 (class means, spectrum, clean centroids) and start pass 2."""
        if self.phase != 1:
            raise RuntimeError("the second pass has already started; call reset() to begin again")
        self._derived = self._derive()
        d = self._derived
        self.phase = 2
        dev = d["means"].device
        if self.within == "projected":
            self._proj = ProjectedScatter(d["means"], d["spectrum"].U[:, : d["proj_k"]])
        if self._calib_in_pass2:
            self._logit_gram = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64, device=dev)
        self._ncc = NCCState()
        if d["centroids"] is not None:
            self._noise = NoiseState(self.num_classes, d["centroids"])
        self._pass2 = self._pass2_tables(d)

    def _pass2_tables(self, d: dict[str, Any]) -> dict[str, Any]:
        """One right-hand side for a single GEMM ``r @ R`` per chunk, with r = h − μ_y.

        Every pass-2 quantity is an exact function of the within-class deviation r and
        small C×C tables, so each term stays on the scale of the distances involved
        (no ‖h‖² − 2⟨h, μ⟩ + ‖μ‖² cancellation on collapsed features; a distance to *another*
        centre that is tiny against ‖r‖ and that centre's offset — a mislabeled sample sitting
        at its true class — is recomputed from h, see ``CANCEL_TOL``):
        ``‖h − μ_c‖² = ‖r‖² − 2 r·(μ_c − μ_y) + ‖μ_c − μ_y‖²``,
        ``‖h − ν_k‖² = ‖r‖² + 2 r·(μ_y − ν_k) + ‖μ_y − ν_k‖²``, ``W h = W r + W μ_y``.
        In the projected mode the columns ``r·(μ_c − μ_G)`` are not in R: μ_c − μ_G lies in
        the span of Q (all min(d, C) left singular vectors of the centred means), so they
        are ``(r Q)(Qᵀ(μ_c − μ_G))``, a b×k×C product.
        """
        mu, g = d["means"], d["global_mean"]
        C = self.num_classes
        blocks, t = {}, {}
        cols = []

        def add(name, mat):  # mat: d×k
            start = sum(c.shape[1] for c in cols)
            cols.append(mat)
            blocks[name] = slice(start, start + mat.shape[1])

        if self.within == "projected":
            Q = d["spectrum"].U[:, : d["proj_k"]]
            add("proj", Q)
            t["mu_in_q"] = Q.T @ (mu - g).T  # k×C
        else:
            add("mu", (mu - g).T)
        t["d_mu"] = ((mu[:, None, :] - mu[None, :, :]) ** 2).sum(-1)  # C×C
        t["mu_g_norm"] = torch.linalg.vector_norm(mu - g, dim=1)  # ‖μ_c − μ_G‖ (error scale)
        if self._weight is not None:
            add("w", self._weight.T)
            t["w_mu"] = mu @ self._weight.T  # C×C: row y = W μ_y
        if d["centroids"] is not None:
            nu = d["centroids"]
            add("nu", (nu - g).T)
            t["d_mu_nu"] = ((mu[:, None, :] - nu[None, :, :]) ** 2).sum(-1).reshape(-1)  # [y·C + k] = ‖μ_y − ν_k‖²
            t["nu_g_norm"] = torch.linalg.vector_norm(nu - g, dim=1)  # ‖ν_k − μ_G‖ (error scale)
            # noisy-centroid projection of a sample of true class c given c' (flat index c'·C + c):
            # t = (r·(ν_c' − ν_c) + (μ_c' − ν_c)·(ν_c' − ν_c)) / ‖ν_c' − ν_c‖²
            dnu = nu[:, None, :] - nu[None, :, :]  # [c', c] = ν_c' − ν_c
            t["proj_off"] = ((mu[:, None, :] - nu[None, :, :]) * dnu).sum(-1).reshape(-1)
            den = (dnu * dnu).sum(-1)
            t["proj_den"] = torch.where(den > 0, den, torch.ones_like(den)).reshape(-1)
        # zero columns up to a multiple of 8: MKL's float64 kernels run a 32-column GEMM faster
        # than a 30-column one (measured 78 vs 88 ms per 100k rows at d = 512)
        width = sum(c.shape[1] for c in cols)
        cols.append(torch.zeros(mu.shape[1], -width % 8, dtype=torch.float64, device=mu.device))
        rhs = torch.cat(cols, dim=1)
        return {"rhs": rhs.contiguous(), "blocks": blocks, "C": C, **t}

    def _derive(self) -> dict[str, Any]:
        m = self._moments
        if m.n == 0:
            raise ValueError("no samples were given (update() was never called with a non-empty batch)")
        empty = [c for c in range(self.num_classes) if float(m.count[c]) == 0]
        if empty:
            raise ValueError(
                f"{len(empty)} class(es) {short_list(empty)} have no samples (num_classes={self.num_classes}); "
                "NC metrics need every class present — pass num_classes equal to the classes present"
            )
        means = m.means()
        gm = m.sum.sum(dim=0) / m.n if self.convention.global_mean == "samples" else means.mean(dim=0)
        centred = means - gm
        eps = self._eps_x if self._eps_x is not None else EPS64
        scale = float(torch.linalg.vector_norm(means, dim=1).max())
        spectrum = centred_spectrum(centred, eps=eps, scale=scale)
        C, dim = self.num_classes, m.dim
        msgs = []
        if dim < C - 1:
            msgs.append(f"feature dimension d={dim} < C-1={C - 1}: Σ_B has rank at most {dim}")
        if spectrum.rank < min(C - 1, dim):
            msgs.append(
                f"Σ_B is rank-deficient (numerical rank {spectrum.rank} < {min(C - 1, dim)} at the input's "
                f"precision, eps={eps:.3g})"
            )
        if msgs:
            warnings.warn("; ".join(msgs) + f"; NC1 uses rank {spectrum.rank}", RuntimeWarning, stacklevel=3)
        centroids = None
        if self._has_clean:
            missing = [c for c in range(C) if float(self._clean_count[c]) == 0]
            if missing:
                warnings.warn(
                    f"{len(missing)} class(es) {short_list(missing)} have no correctly labelled samples: "
                    "memorization and dilation are undefined and reported as None",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                centroids = self._clean_sum / self._clean_count[:, None]
        proj_k = spectrum.U.shape[1]  # all min(d, C) directions, so μ_c − μ_G ∈ span(Q) exactly
        return dict(means=means, global_mean=gm, centred=centred, spectrum=spectrum, centroids=centroids,
                    warnings=msgs, proj_k=proj_k)

    def _update_pass2(self, x, y, yc, z, heavy) -> None:
        d, t = self._derived, self._pass2
        blk, C = t["blocks"], t["C"]
        self._pass2_n += x.shape[0]
        b = x.shape[0]
        rhs = t["rhs"]
        G = self._buf("G", b, rhs.shape[1])
        rr = self._buf("rr", b, 1).view(-1)
        # r = h − μ_y as one GEMM update with the one-hot label matrix: each entry of
        # onehot @ μ has a single non-zero term, so it is μ_y exactly and r gets the one
        # rounding of the plain subtraction, without a gathered b×d copy of the means
        onehot = self._buf("onehot", b, C).zero_().scatter_(1, y[:, None], 1.0)
        means = d["means"]
        for lo in range(0, b, heavy):  # the b×d work, in cache-sized chunks
            hi = min(b, lo + heavy)
            r = self._to64(x[lo:hi])
            r.addmm_(onehot[lo:hi], means, alpha=-1.0)
            torch.linalg.vector_norm(r, dim=1, out=rr[lo:hi])
            torch.mm(r, rhs, out=G[lo:hi])
        rr.square_()
        if not bool(torch.isfinite(rr.sum())):
            raise_nonfinite(x, name="features")
        if "proj" in blk:
            Gp = G[:, blk["proj"]]
            self._proj.add(Gp, rr, y)
            A = Gp @ t["mu_in_q"]  # r·(μ_c − μ_G)
        else:
            A = G[:, blk["mu"]]
        Ay = A.gather(1, y[:, None]).squeeze(1)
        # argmin_c ‖h − μ_c‖² = argmin_c (‖μ_c − μ_y‖² − 2 r·(μ_c − μ_y)); ‖r‖² is common to the row
        score = t["d_mu"].index_select(0, y).sub_(A, alpha=2.0)
        ncc_pred = score.min(dim=1).indices  # the first minimal index, as argmin
        pred_b = pred_nb = None
        if "w" in blk:
            Gw = G[:, blk["w"]]  # W r
            lin = t["w_mu"].index_select(0, y).add_(Gw)  # W h
            # max(dim) gives the first maximal index like argmax, and is faster on short rows
            top, pred_nb = lin.max(dim=1)
            if self._bias is not None:
                lin += self._bias
                top, pred_b = lin.max(dim=1)
            else:
                pred_b = pred_nb
            if self._calib_in_pass2:
                self._logit_gram += Gw.T @ Gw
                self._calib.update(lin, y, yc, top=top, pred=pred_b)
        if z is not None:  # explicit logits decide the biased prediction
            pred_b = z.argmax(dim=1)
            if pred_nb is None and self._bias is None:
                pred_nb = pred_b  # logits without a known bias: treat as bias-free
        self._ncc.update(ncc_pred, pred_b, pred_nb)
        dist_true = None
        if self._noise is not None and yc is not None:
            B = G[:, blk["nu"]]  # r·(ν_k − μ_G)
            By = B.gather(1, y[:, None]).squeeze(1)
            Byc = B.gather(1, yc[:, None]).squeeze(1)
            pair_given = y * C + yc  # [given, true]
            d2 = rr + 2.0 * (Ay - Byc) + t["d_mu_nu"].index_select(0, pair_given)
            scale = rr.sqrt() + t["mu_g_norm"].index_select(0, y) + t["nu_g_norm"].index_select(0, yc)
            self._exact_where_cancelled(d2, scale, x, self._noise.centroids, yc, heavy)
            dist_true = d2.clamp_min_(0.0).sqrt_()
            noisy = y != yc
            proj = (By - Byc + t["proj_off"].index_select(0, pair_given)) / t["proj_den"].index_select(0, pair_given)
            slot = torch.where(noisy, yc, yc + C)
            self._noise.update(slot, dist_true, yc * C + y, proj, noisy)
        if self.per_sample:
            d2 = score.add_(rr[:, None]).sub_(Ay[:, None], alpha=-2.0)
            other, nearest = d2.scatter(1, y[:, None], float("inf")).min(dim=1)
            scale = rr.sqrt() + t["mu_g_norm"].index_select(0, y) + t["mu_g_norm"].index_select(0, nearest)
            self._exact_where_cancelled(other, scale, x, d["means"], nearest, heavy)
            rec = {"dist_given_mean": rr.sqrt(), "dist_nearest_other_mean": other.clamp_min_(0.0).sqrt(),
                   "ncc_pred": ncc_pred}
            if dist_true is not None:
                rec["dist_true_centroid"] = dist_true
                rec["memorization"] = torch.where(y != yc, dist_true, torch.full_like(dist_true, float("nan")))
            for k, v in rec.items():
                self._samples.setdefault(k, []).append(v.cpu())

    def _exact_where_cancelled(self, d2: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, centres: torch.Tensor,
                               cls: torch.Tensor, heavy: int) -> None:
        """Replace, in place, the squared distances ``d2`` (from the expansion around μ_y) that
        are below ``CANCEL_TOL · scale²`` by ``‖h − centres[cls]‖²`` formed from the features
        directly (``heavy`` rows at a time, in scratch arrays); ``scale`` bounds the norms of the
        expansion's terms (‖r‖ + ‖μ_y − μ_G‖ + ‖c − μ_G‖), so the rows kept have a relative
        error of at most ~√d·eps64/CANCEL_TOL."""
        bad = (d2 < CANCEL_TOL * scale * scale).nonzero().squeeze(1)
        n_bad = bad.numel()
        if n_bad == 0:
            return
        exact = self._buf("exact_d2", n_bad, 1).view(-1)
        for lo in range(0, n_bad, heavy):
            hi = min(n_bad, lo + heavy)
            rows = bad[lo:hi]
            h = self._buf("exact_h", hi - lo, x.shape[1])
            h.copy_(x.index_select(0, rows))
            h -= torch.index_select(centres, 0, cls.index_select(0, rows), out=self._buf("exact_c", hi - lo, x.shape[1]))
            torch.linalg.vector_norm(h, dim=1, out=exact[lo:hi])
        d2.index_copy_(0, bad, exact.square_())

    # ---------------------------------------------------------------- merge
    def merge(self, other: "NCAccumulator") -> None:
        """Add another accumulator's state (same C, convention, pass), e.g. from another worker."""
        if other.num_classes != self.num_classes or other.convention != self.convention:
            raise ValueError("can only merge accumulators with the same num_classes and convention")
        if other.phase != self.phase:
            raise ValueError(f"cannot merge a pass-{other.phase} accumulator into a pass-{self.phase} one")
        if self.phase == 1:
            self._merge_pass1(other)
        else:
            if not torch.equal(self._derived["means"], other._derived["means"].to(self._derived["means"].device)):
                raise ValueError("pass-2 states were started from different pass-1 results; merge pass 1 first")
            self._pass2_n += other._pass2_n
            if self._proj is not None:
                self._proj.merge(other._proj)
            if self._logit_gram is not None:
                self._logit_gram += other._logit_gram.to(self._logit_gram.device)
                self._calib.merge(other._calib)
            self._ncc.merge(other._ncc)
            if self._noise is not None:
                self._noise.merge(other._noise)
            for k, v in other._samples.items():
                self._samples.setdefault(k, []).extend(v)

    def _merge_pass1(self, other: "NCAccumulator") -> None:
        if other._moments.n == 0:
            return
        if self._moments.n == 0:
            self._device = other._device
            self._weight, self._bias = other._weight, other._bias
            self._has_clean, self._has_logits = other._has_clean, other._has_logits
            self._explicit_logits = other._explicit_logits
        elif (self._has_clean, self._has_logits, self._explicit_logits) != (
            other._has_clean, other._has_logits, other._explicit_logits
        ):
            raise ValueError("cannot merge: one accumulator saw clean_labels/logits and the other did not")
        for attr in ("_eps_x", "_eps_z"):
            mine, theirs = getattr(self, attr), getattr(other, attr)
            setattr(self, attr, theirs if mine is None else mine if theirs is None else max(mine, theirs))
        self._moments.merge(other._moments)
        self._logit_moments.merge(other._logit_moments)
        self._calib.merge(other._calib)
        if other._clean_sum is not None:
            if self._clean_sum is None:
                self._clean_sum = torch.zeros_like(other._clean_sum)
                self._clean_count = torch.zeros_like(other._clean_count)
            self._clean_sum += other._clean_sum.to(self._clean_sum.device)
            self._clean_count += other._clean_count.to(self._clean_count.device)
        self._mislabeled += other._mislabeled

    # -------------------------------------------------------------- compute
    def compute(self, *, weight: Any = None, bias: Any = None) -> NCResult:
        """All metrics from the state so far. ``weight``/``bias`` override the constructor's."""
        conv = self.convention
        d = self._derived if self._derived is not None else self._derive()
        m = self._moments
        C, n, dim = self.num_classes, m.n, m.dim
        if self.phase == 2 and self._pass2_n != n:
            raise ValueError(f"the second pass saw {self._pass2_n} samples but the first saw {n}; feed the same data")
        if weight is not None or bias is not None:
            W, b = check_classifier(weight, bias, num_classes=C, dim=dim, device=self._device)
        else:
            W, b = self._weight, self._bias
            if W is not None and W.shape[1] != dim:
                raise ValueError(f"weight has {W.shape[1]} columns but features have dimension {dim}")
        spectrum: Spectrum = d["spectrum"]
        centred, means, gm = d["centred"], d["means"], d["global_mean"]
        v: dict[str, Any] = {"n_samples": n, "num_classes": C, "feature_dim": dim}

        # NC1 family
        if self.within == "full":
            P = spectrum.U.T @ (m.scatter / n) @ spectrum.U
        elif self.phase == 2:
            P = self._proj.gram / n
        else:
            P = None
        if P is not None:
            v["nc1"] = nc1_from_projection(P, spectrum, num_classes=C, divide=conv.nc1_divide_by_classes, pinv=False)
            v["nc1_pinv"] = nc1_from_projection(P, spectrum, num_classes=C, divide=conv.nc1_divide_by_classes, pinv=True)
        else:
            v["nc1"] = v["nc1_pinv"] = None
        v["nc1_rank"] = spectrum.rank
        if self.within == "full":
            m2 = m.m2
        elif self.phase == 2:
            m2 = self._proj.m2
        else:
            m2 = None
        tr_w = float(m2.sum()) / n if m2 is not None else None
        tr_b = float((centred * centred).sum()) / C
        if tr_w is None:
            v["nc1_trace_ratio"] = None
        else:
            v["nc1_trace_ratio"] = tr_w / tr_b if tr_b > 0 else float("inf")
        logit_spec = self._nc1_logits(conv, d) if self._has_logits else None
        v["nc1_logits"] = None if logit_spec is None else logit_spec[0]
        v["cdnv"] = None if m2 is None else cdnv(means, m2 / (m.count - conv.cdnv_ddof).clamp_min(1.0))

        # NC2 / NC3 / NC4 geometry
        ddof = conv.std_ddof
        v["nc2_equinorm_means"] = geo.coefficient_of_variation(torch.linalg.vector_norm(centred, dim=1), ddof=ddof)
        v["nc2_equiangular_means"], v["nc2_cos_std_means"] = geo.cosine_stats(centred, ddof=ddof)
        notes: list[str] = []
        if C == 2:
            v["nc2_etf_error_means"] = None
            notes.append(ETF_N2_NOTE)
        else:
            v["nc2_etf_error_means"] = geo.etf_error(centred @ centred.T)
        v["nc2_orthogonal_error_means"] = geo.orthogonal_error(means @ means.T)
        if W is not None:
            Wg = W - W.mean(dim=0) if conv.center_weights else W
            v["nc2_equinorm_weights"] = geo.coefficient_of_variation(torch.linalg.vector_norm(Wg, dim=1), ddof=ddof)
            v["nc2_equiangular_weights"], v["nc2_cos_std_weights"] = geo.cosine_stats(Wg, ddof=ddof)
            v["nc2_etf_error_weights"] = geo.etf_error(Wg @ Wg.T)
            v["nc2_orthogonal_error_weights"] = geo.orthogonal_error(W @ W.T)
            v["nc3_papyan"] = geo.nc3_papyan(W, centred)
            v["nc3_zhu"] = geo.nc3_zhu(W, centred)
            v["nc4_bias_norm"] = geo.bias_norm(W, gm, b, sign=conv.bias_sign)
        else:
            for k in (
                "nc2_equinorm_weights", "nc2_equiangular_weights", "nc2_cos_std_weights", "nc2_etf_error_weights",
                "nc2_orthogonal_error_weights", "nc3_papyan", "nc3_zhu", "nc4_bias_norm",
            ):
                v[k] = None

        # classifier outputs
        calib_pending = self._calib_in_pass2 and self.phase == 1
        if self._has_logits and not calib_pending:
            v["accuracy"] = self._calib.accuracy()
            v["accuracy_clean"] = self._calib.accuracy_clean()
            v["ece"] = self._calib.ece()
        else:
            v["accuracy"] = v["accuracy_clean"] = v["ece"] = None
        v["realized_noise_rate"] = self._mislabeled / n if self._has_clean else None
        if self._has_clean:
            noisy_count = m.count - self._clean_count
            biases = corruption_biases(means, m.sum - self._clean_sum, noisy_count)
            v["corruption_biases"] = biases
            v["corruption_bias_mean"] = mean_or_none(biases)
        else:
            v["corruption_biases"] = v["corruption_bias_mean"] = None

        # pass-2 metrics
        missing: list[str] = []
        if self.phase == 2:
            with_b, without_b = self._ncc.rates()
            v["nc4_ncc_mismatch_bias"], v["nc4_ncc_mismatch_nobias"] = with_b, without_b
            v["nc4_ncc_mismatch"] = with_b if conv.ncc_use_bias else without_b
            if self._noise is not None:
                v.update(noise_metrics(self._noise, ddof=ddof))
            else:
                for k in PASS2_KEYS[3:]:
                    v[k] = None
                v["clean_centroid_distance"] = None
        else:
            for k in PASS2_KEYS:
                v[k] = None
            v["clean_centroid_distance"] = None
            missing = list(PASS2_KEYS) + (["nc1", "nc1_pinv", "nc1_trace_ratio", "cdnv"] if P is None else [])
            if calib_pending:
                missing += ["accuracy", "accuracy_clean", "ece", "nc1_logits"]
        per_sample = None
        if self.per_sample and self.phase == 2:
            per_sample = {k: torch.cat(vs).numpy() for k, vs in self._samples.items()}
        info = {
            "convention": conv.name,
            "within": self.within,
            "nc1_rank": spectrum.rank,
            "pinv_rank": spectrum.pinv_rank,
            "rank_tol": spectrum.tol,
            "input_eps": spectrum.eps,
            "nc1_logits_rank": None if logit_spec is None else logit_spec[1],
            "warnings": list(d["warnings"]) + ([] if logit_spec is None else logit_spec[2]),
            "notes": notes,
            "missing": missing,
        }
        return NCResult(values=v, per_sample=per_sample, info=info)

    def _nc1_logits(self, conv: Convention, d: dict[str, Any]) -> tuple[float, int, list[str]] | None:
        """(NC1 of the logits, the rank it used, warnings), or None when not available yet.

        Explicit logits (or the full mode's pass-1 logits) come from their own class moments.
        With the classifier in the projected mode the logits are ``z = W h + b``: their class
        means are ``W μ_c + b`` and their within-class scatter ``W S_W Wᵀ`` is the Gram of the
        pass-2 columns ``W r`` — the same numbers without a pass-1 GEMM. The rank is decided at
        the precision of the logits' inputs (explicit logits: their dtype; formed logits: the
        features' and the classifier's dtypes).
        """
        C = self.num_classes
        if self._logit_moments.n > 0:
            lm = self._logit_moments
            means = lm.means()
            scatter = lm.scatter
            n = lm.n
            gm = lm.sum.sum(dim=0) / n if conv.global_mean == "samples" else means.mean(dim=0)
            eps = self._eps_z if self._explicit_logits and self._eps_z is not None else max(
                self._eps_x or EPS64, self._weight_eps)
        elif self._logit_gram is not None and self.phase == 2:
            W, b = self._weight, self._bias
            means = d["means"] @ W.T + (b if b is not None else 0.0)
            n = self._moments.n
            gm = d["global_mean"] @ W.T + (b if b is not None else 0.0)
            scatter = self._logit_gram
            eps = max(self._eps_x or EPS64, self._weight_eps)
        else:
            return None
        scale = float(torch.linalg.vector_norm(means, dim=1).max())
        spec = centred_spectrum(means - gm, eps=eps, scale=scale)
        msgs = []
        if spec.rank < C - 1:
            msgs.append(
                f"the logits' Σ_B is rank-deficient (numerical rank {spec.rank} < {C - 1} at eps={eps:.3g}); "
                f"nc1_logits uses rank {spec.rank}"
            )
            warnings.warn(msgs[-1], RuntimeWarning, stacklevel=3)
        P = spec.U.T @ (scatter / n) @ spec.U
        val = nc1_from_projection(P, spec, num_classes=C, divide=conv.nc1_divide_by_classes, pinv=False)
        return val, spec.rank, msgs
