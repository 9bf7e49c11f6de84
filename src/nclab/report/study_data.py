"""Study data from a results store: per-run rows, eligibility, per-cell aggregates, claims.

A *cell* is ``(dataset, variant, loss, noise rate)``. ``dataset`` is the dataset name, with
``-<N>c`` appended when the task has ``N != 2`` classes (the 10-class Fashion-MNIST cell is
``fashion-mnist-10c``); ``variant`` is ``"main"``, ``"latent"`` (latent-class noise) or
``"nobias"`` (a classifier without bias, ``model.classifier_bias: false``). H1/H2 use the
main variant; H3 uses the noise-free runs of main and nobias, split by bias. Aggregates are mean and
sample std (ddof=1) over seeds.

Eligibility (which runs enter the verdicts; see ``docs/method.md``):

* ``diverged``: the run's outcome is ``"diverged"`` (non-finite loss or weights) — never used;
* ``terminal``: the run reached the terminal phase. With a stop rule in its config
  (``stop.train_acc``) that is ``terminal_epoch`` being set; without one (the official fixed-epoch
  protocol, older runs) the final noisy-label train accuracy must be >= :data:`TERMINAL_ACC`;
* otherwise ``not terminal``.

Only ``terminal`` runs are *eligible*; the others are counted per cell and listed.

Metric conventions (all from the final record of a run):

* memorization and dilation are the normalized values (divided by the mean distance between
  the clean training centroids), raw when a run lacks them;
* ``test_dilation`` is the test-set dilation divided by the *training* clean-centroid distance
  (``test.dilation / train.clean_centroid_distance``: one fixed scale per run), so CE and LS
  compare on the same yardstick as their training features; ``test_dilation_raw`` is the raw
  value. (The store's ``test.dilation_normalized`` divides by the distance between the test
  centroids, which is unstable under noise; it is kept as ``test_dilation_testnorm`` only.)
* ``dilation_official`` is ``train.dilation_std_official``: the mean over classes of the
  per-class std of the clean samples' distances to their centroid (the official code's
  dilation), normalized by the same training scale when present;
* the simplex-ETF error of the class means is left out for ``N = 2`` (for two classes the
  centred means are always antipodal: the number carries no information).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from nclab.store.index import RunStore

__all__ = ["METRICS", "TERMINAL_ACC", "STUDY_SWEEP_PREFIX", "load_records", "aggregate", "fit_line", "md_keys",
           "eligible", "is_study_store", "cell_counts", "excluded_runs", "add_geometry", "decide_claims",
           "geometry_counts"]

TERMINAL_ACC = 0.999
STUDY_SWEEP_PREFIX = "md-"

#: report name -> (label, candidate final-metric keys in order of preference)
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "test_acc": ("test accuracy", ("test_acc", "test.accuracy")),
    "memorization": ("memorization (normalized)", ("train.memorization_normalized", "train.memorization")),
    "dilation": ("dilation (normalized)", ("train.dilation_normalized", "train.dilation")),
    "test_dilation": ("test dilation / train centroid distance", ()),  # computed, see module doc
    "test_dilation_raw": ("test dilation (raw)", ("test.dilation",)),
    "test_dilation_testnorm": ("test dilation / test centroid distance", ("test.dilation_normalized",)),
    "dilation_official": ("dilation, official variant (mean per-class std, normalized)", ()),  # computed
    "nc1": ("NC1 (train)", ("train.nc1",)),
    "orth_error": ("orthogonal-frame error of class means (train)", ("train.nc2_orthogonal_error_means",)),
    "etf_error": ("simplex-ETF error of centred class means (train; N > 2 only)", ("train.nc2_etf_error_means",)),
    "realized_rate": ("realized noise rate", ("train.realized_noise_rate",)),
    "train_acc_clean": ("train accuracy vs clean labels", ("train.accuracy_clean", "train_acc_clean")),
    "train_acc_noisy": ("train accuracy vs noisy labels", ("train_acc_noisy",)),
}


def md_keys(records: list[dict[str, Any]]) -> dict[str, str]:
    """Which final keys fed ``memorization``/``dilation`` (normalized or raw)."""
    out = {}
    for m in ("memorization", "dilation"):
        # rate-0 runs have no noisy samples (memorization None): take the first run that has it
        out[m] = next((r["_keys"][m] for r in records if m in r["_keys"]), "n/a")
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _n_classes(ds_cfg: dict[str, Any]) -> int | None:
    c = ds_cfg.get("classes")
    if isinstance(c, list):
        return len(c)
    if isinstance(c, int) and not isinstance(c, bool):
        return c
    return None


def _status(cfg: dict[str, Any], fin: dict[str, Any], outcome: str | None, status: str | None = None) -> str:
    if outcome == "diverged" or status == "diverged":
        return "diverged"
    stop = cfg.get("stop") or {}
    if stop.get("train_acc") is not None:
        return "terminal" if isinstance(fin.get("terminal_epoch"), int) else "not terminal"
    acc = _num(fin.get("train_acc_noisy"))
    return "terminal" if acc is not None and acc >= TERMINAL_ACC else "not terminal"


def load_records(store: RunStore | str | Path, *, sweep: str | None = None) -> list[dict[str, Any]]:
    """One flat row per completed run (diverged and non-terminal included, flagged by
    ``status`` and ``eligible``): dataset label, variant, loss, rate, seed, hash, classes,
    terminal epoch, stop reason, duration and the :data:`METRICS` values (None when missing
    or non-finite)."""
    if not isinstance(store, RunStore):
        store = RunStore(store, create=False)
    rows = store.rows(status="completed", sweep=sweep)
    try:  # stores that report diverged runs under their own status
        rows += store.rows(status="diverged", sweep=sweep)
    except ValueError:
        pass
    out = []
    for row in rows:
        cfg, fin = row["config"], row["final"] or {}
        noise = cfg.get("noise") or {}
        ds = cfg.get("dataset") or {}
        n_cls = _n_classes(ds)
        name = ds.get("name", "?")
        status = _status(cfg, fin, row.get("outcome"), row.get("status"))
        rec: dict[str, Any] = {
            "hash": row["hash"],
            "dataset": name if n_cls in (None, 2) else f"{name}-{n_cls}c",
            "classes": n_cls,
            "variant": ("latent" if float(noise.get("latent_fraction") or 0) > 0
                        else "nobias" if (cfg.get("model") or {}).get("classifier_bias") is False else "main"),
            "loss": (cfg.get("loss") or {}).get("name", "?"),
            "rate": float(noise.get("rate") or 0.0),
            "noise_kind": noise.get("kind"),
            "seed": int(cfg.get("seed", 0)),
            "outcome": row.get("outcome"),
            "status": status,
            "eligible": status == "terminal",
            "terminal_epoch": fin.get("terminal_epoch") if isinstance(fin.get("terminal_epoch"), int) else None,
            "stop_reason": fin.get("stop_reason"),
            "epochs_run": fin.get("epoch"),
            "duration": _num(row.get("duration")),
            "_keys": {},
        }
        for name_, (_, keys) in METRICS.items():
            rec[name_] = None
            for k in keys:
                if _num(fin.get(k)) is not None:
                    rec[name_] = _num(fin.get(k))
                    rec["_keys"][name_] = k
                    break
        scale = _num(fin.get("train.clean_centroid_distance"))
        if rec["test_dilation_raw"] is not None and scale:
            rec["test_dilation"] = rec["test_dilation_raw"] / scale
            rec["_keys"]["test_dilation"] = "test.dilation / train.clean_centroid_distance"
        off = _num(fin.get("train.dilation_std_official"))
        if off is not None:
            rec["dilation_official"] = off / scale if scale else off
            rec["_keys"]["dilation_official"] = "train.dilation_std_official" + (" / train.clean_centroid_distance" if scale else "")
        if n_cls == 2:  # no information for two classes (module doc)
            rec["etf_error"] = None
        out.append(rec)
    return out


def eligible(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that enter verdicts: terminal phase reached, not diverged."""
    return [r for r in records if r.get("eligible")]


def is_study_store(store: RunStore) -> bool:
    """A store made by ``nclab reproduce`` (it registers sweeps named ``md-<scale>``)."""
    return any(s.startswith(STUDY_SWEEP_PREFIX) for s in store.sweeps())


def cell_counts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: runs, terminal / not terminal / diverged counts, median terminal epoch."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["variant"], r["loss"], r["rate"]), []).append(r)
    out = []
    for (ds, var, loss, rate), rs in sorted(groups.items()):
        te = [r["terminal_epoch"] for r in rs if r["terminal_epoch"] is not None]
        out.append({"dataset": ds, "variant": var, "loss": loss, "rate": rate, "runs": len(rs),
                    "terminal": sum(r["status"] == "terminal" for r in rs),
                    "not_terminal": sum(r["status"] == "not terminal" for r in rs),
                    "diverged": sum(r["status"] == "diverged" for r in rs),
                    "median_terminal_epoch": float(np.median(te)) if te else None})
    return out


def excluded_runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs left out of the verdicts, with why."""
    return [{k: r.get(k) for k in ("hash", "dataset", "variant", "loss", "rate", "seed", "status", "stop_reason",
                                   "epochs_run", "train_acc_noisy")}
            for r in records if not r.get("eligible")]


def add_geometry(store: RunStore, records: list[dict[str, Any]], *, thresholds: Any = None) -> None:
    """Classify each run's final class means (of the saved training features, grouped by the
    training labels) with :func:`nclab.metrics.frames.classify_features`; sets ``frame``
    (kind or None without ``features.npz``), ``frame_detail`` and ``bias`` (whether the
    classifier has a bias vector) on each record in place."""
    from nclab.metrics.frames import classify_features  # noqa: PLC0415
    from nclab.store.rundir import RunDir  # noqa: PLC0415

    for r in records:
        r["frame"], r["frame_detail"], r["bias"] = None, None, None
        rd = RunDir(store.run_dir(r["hash"]))
        if not rd.has_features():
            continue
        try:
            f = rd.features()
            g = classify_features(f["features"], f["labels"], thresholds=thresholds)
        except (OSError, ValueError, KeyError) as exc:
            r["frame_detail"] = {"error": str(exc)}
            continue
        r["frame"], r["frame_detail"] = g.kind, g.to_dict()
        r["bias"] = f.get("b") is not None


def geometry_counts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell (eligible runs with features): how many reached each geometry."""
    from nclab.metrics.frames import KINDS  # noqa: PLC0415

    groups: dict[tuple, list[str]] = {}
    for r in eligible(records):
        if r.get("frame") is None:
            continue
        groups.setdefault((r["dataset"], r["loss"], r["rate"], bool(r.get("bias"))), []).append(r["frame"])
    return [{"dataset": ds, "loss": loss, "rate": rate, "bias": b, "runs": len(v), **{k: v.count(k) for k in KINDS}}
            for (ds, loss, rate, b), v in sorted(groups.items())]


def aggregate(records: list[dict[str, Any]], metric: str) -> dict[tuple, dict[str, float]]:
    """``{(dataset, variant, loss, rate): {mean, std, n}}`` over seeds (std: ddof 1; 0 if n=1)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r.get(metric) is None:
            continue
        groups.setdefault((r["dataset"], r["variant"], r["loss"], r["rate"]), []).append(r[metric])
    out = {}
    for k, vals in sorted(groups.items()):
        a = np.asarray(vals, dtype=float)
        out[k] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}
    return out


def fit_line(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least squares ``y = a + b x``; R² = 1 - SS_res/SS_tot (descriptive only: the verdicts
    use slopes with bootstrap intervals, :mod:`nclab.report.verdicts`)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0:
        return {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "n": int(x.size)}
    b, a = np.polyfit(x, y, 1)
    res = y - (a + b * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((res**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return {"slope": float(b), "intercept": float(a), "r2": r2, "n": int(x.size)}


#: claim id -> statement (what "held" means)
STATEMENTS: dict[str, str] = {
    "H1-ce": "CE: dilation grows with memorization across noise rates (slope > 0)",
    "H1-ls": "LS: dilation grows with memorization across noise rates (slope > 0)",
    "H2-dilation": "at equal noise, LS ends with less training dilation than CE (LS - CE < 0)",
    "H2-test-dilation": "at equal noise, LS ends with less test dilation than CE (LS - CE < 0; train-centroid scale)",
    "H2-test-acc": "at equal noise, LS has higher test accuracy than CE (LS - CE > 0)",
    "H2-slope": "LS has a lower memorization-to-dilation slope than CE (slope LS - slope CE < 0)",
    "H3-bias": "without noise, the class means form an orthogonal frame (classifier with bias; fraction of runs > 0.5)",
    "H3-nobias": "without noise, the class means form an orthogonal frame (classifier without bias; fraction > 0.5)",
    "Q-memorization": "(open question, not a claim) at equal noise LS memorizes less than CE (LS - CE < 0)",
}


def decide_claims(records: list[dict[str, Any]], *, seed: int = 0) -> list[Any]:
    """Every claim's :class:`nclab.report.verdicts.ClaimResult`, from the eligible runs of the
    main variant (binary and multi-class cells alike; each claim's cells are in its result).

    The bootstrap uses ``numpy.random.default_rng(seed)``, one generator passed through in a
    fixed claim order, so a report is reproducible.
    """
    from nclab.metrics.frames import FRAME  # noqa: PLC0415
    from nclab.report import verdicts as V  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    rows = [r for r in eligible(records) if r["variant"] == "main"]
    noisy = lambda c: c[2] > 0  # noqa: E731
    out = [
        V.slope_claim("H1-ce", STATEMENTS["H1-ce"], rows, loss="ce", x="memorization", y="dilation", rng=rng),
        V.slope_claim("H1-ls", STATEMENTS["H1-ls"], rows, loss="ls", x="memorization", y="dilation", rng=rng),
        V.paired_claim("H2-dilation", STATEMENTS["H2-dilation"], rows, "dilation", direction="less", rng=rng, cells=noisy),
        V.paired_claim("H2-test-dilation", STATEMENTS["H2-test-dilation"], rows, "test_dilation", direction="less",
                       rng=rng, cells=noisy),
        V.paired_claim("H2-test-acc", STATEMENTS["H2-test-acc"], rows, "test_acc", direction="greater", rng=rng,
                       cells=noisy),
        V.slope_difference_claim("H2-slope", STATEMENTS["H2-slope"], rows, x="memorization", y="dilation", rng=rng),
    ]
    clean = [r for r in eligible(records) if r["variant"] in ("main", "nobias") and r["rate"] == 0]
    for cid, want in (("H3-bias", True), ("H3-nobias", False)):
        runs = [r for r in clean if r.get("frame") is not None and bool(r.get("bias")) == want]
        k = sum(r["frame"] == FRAME for r in runs)
        cells = geometry_counts([r for r in records if r["rate"] == 0 and bool(r.get("bias")) == want])
        reason = ("no noise-free runs with saved features" + (" and a classifier bias" if want else " without a classifier bias")
                  if not runs else "")
        out.append(V.fraction_claim(cid, STATEMENTS[cid], k, len(runs), quantity="fraction of noise-free runs whose "
                                    "class means form an orthogonal frame", reason=reason, cells=cells))
    out.append(V.paired_claim("Q-memorization", STATEMENTS["Q-memorization"], rows, "memorization", direction="less",
                              rng=rng, cells=noisy))
    return out
