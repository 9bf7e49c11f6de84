"""Study data: one row per run (``runs.csv``), and the study's claims decided from those rows.

The report is a function of the run table alone: :func:`runs_table` builds it from a results
store (final records, ``features.npz``), :func:`write_runs_csv` / :func:`read_runs_csv` store
it losslessly (floats are written as their shortest round-trip text), and
:func:`decide_claims` turns it into claims. ``nclab report runs.csv --json`` therefore gives
the same claims as the store it came from.

A *cell* is ``(dataset, variant, noise rate)``. ``dataset`` is the dataset name, with
``-<N>c`` appended when the task has ``N != 2`` classes (``fashion-mnist-10c``); ``variant``
is ``"main"``, ``"latent"`` (latent-class noise) or ``"nobias"`` (a classifier without bias,
``model.classifier_bias: false``).

Every run counts (see ``docs/method.md`` §5):

* ``status`` is ``completed`` or ``diverged``; a diverged run leaves its pair out, counted;
* ``terminal_epoch`` (first epoch from which the noisy-label train accuracy stayed >= 0.999,
  empty = never) and ``reached_terminal`` are outcomes, used only for the sensitivity
  analyses, never to select runs;
* ``geometry`` classifies the run's final clean centroids (the class means of its correctly
  labelled training samples; :func:`nclab.metrics.frames.classify_features`): orthogonal
  frame / dead class / other, whatever the run's accuracy. It is a stratum.

Metric columns (from the final record):

* ``memorization`` / ``dilation``: normalized by the mean distance between the clean training
  centroids (``*_raw``: unnormalized);
* ``test_dilation``: test-set dilation divided by the *training* clean-centroid distance of
  the same run (one fixed scale per run); ``test_dilation_raw`` is the raw value;
* ``dilation_official``: mean over classes of the per-class std of the clean samples'
  distances to their centroid (the official code's dilation), on the same training scale;
* ``etf_error`` is left empty for ``N = 2`` (two centred means are always antipodal).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nclab.store.index import RunStore

__all__ = ["METRICS", "TERMINAL_ACC", "STUDY_SWEEP_PREFIX", "COLUMNS", "runs_table", "write_runs_csv",
           "read_runs_csv", "runs_csv_text", "finite_float", "aggregate", "fit_line", "is_study_store", "cell_counts"]

TERMINAL_ACC = 0.999
STUDY_SWEEP_PREFIX = "md-"

#: report name -> (label, final-record keys in order of preference)
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "test_acc": ("test accuracy", ("test_acc", "test.accuracy")),
    "memorization": ("memorization (normalized)", ("train.memorization_normalized",)),
    "dilation": ("dilation (normalized)", ("train.dilation_normalized",)),
    "memorization_raw": ("memorization (raw)", ("train.memorization",)),
    "dilation_raw": ("dilation (raw)", ("train.dilation",)),
    "test_dilation": ("test dilation / train centroid distance", ()),  # computed, see module doc
    "test_dilation_raw": ("test dilation (raw)", ("test.dilation",)),
    "dilation_official": ("dilation, official variant (mean per-class std, normalized)", ()),  # computed
    "nc1": ("NC1 (train)", ("train.nc1",)),
    "orth_error": ("orthogonal-frame error of class means (train)", ("train.nc2_orthogonal_error_means",)),
    "etf_error": ("simplex-ETF error of centred class means (train; N > 2 only)", ("train.nc2_etf_error_means",)),
    "train_acc_noisy": ("train accuracy vs noisy labels", ("train_acc_noisy",)),
    "train_acc_clean": ("train accuracy vs clean labels", ("train.accuracy_clean", "train_acc_clean")),
}

#: the columns of runs.csv and their types (every quantity the report uses)
COLUMNS: dict[str, type] = {
    "hash": str, "dataset": str, "classes": int, "variant": str, "loss": str, "alpha": float,
    "noise_kind": str, "noise_rate": float, "realized_noise": float, "seed": int, "status": str,
    "epochs": int, "final_lr": float, "terminal_epoch": int, "reached_terminal": bool, "geometry": str,
    "bias": bool, "max_cos": float, "norm_ratio": float,
    **{m: float for m in METRICS},
}


def finite_float(v: Any) -> float | None:
    """A finite float, or None (None, '', NaN, infinities, booleans, non-numbers)."""
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


def _geometry(run_dir: Path, n_classes: int | None) -> dict[str, Any]:
    """The geometry of a run's clean centroids (the class means of its correctly labelled
    samples, so memorized samples do not pull the means together), from ``features.npz``."""
    from nclab.metrics.frames import classify_features  # noqa: PLC0415
    from nclab.store.rundir import RunDir  # noqa: PLC0415

    rd = RunDir(run_dir)
    if not rd.has_features():
        return {}
    try:
        f = rd.features()
        feats, labels = f["features"], f["labels"]
        if f.get("clean_labels") is not None:  # the clean centroids: correctly labelled samples only
            keep = f["clean_labels"] == labels
            feats, labels = feats[keep], labels[keep]
        g = classify_features(feats, labels, num_classes=n_classes)
    except (OSError, ValueError, KeyError):
        return {}
    return {"geometry": g.kind, "max_cos": finite_float(g.max_abs_cos), "norm_ratio": finite_float(g.norm_ratio)}


def _row(store: RunStore, row: dict[str, Any]) -> dict[str, Any]:
    cfg, fin = row["config"], row["final"] or {}
    noise, ds, model = cfg.get("noise") or {}, cfg.get("dataset") or {}, cfg.get("model") or {}
    n_cls = _n_classes(ds)
    name = ds.get("name", "?")
    diverged = row.get("outcome") == "diverged" or row.get("status") == "diverged"
    te = fin.get("terminal_epoch")
    te = te if isinstance(te, int) and not isinstance(te, bool) else None
    if te is None and not (cfg.get("terminal_acc") or (cfg.get("stop") or {}).get("train_acc")):
        # a run that recorded no terminal phase (the fixed-epoch protocol): judged at its last epoch
        acc = finite_float(fin.get("train_acc_noisy"))
        te = fin.get("epoch") if acc is not None and acc >= TERMINAL_ACC else None
    rec: dict[str, Any] = {
        "hash": row["hash"],
        "dataset": name if n_cls in (None, 2) else f"{name}-{n_cls}c",
        "classes": n_cls,
        "variant": ("latent" if float(noise.get("latent_fraction") or 0) > 0
                    else "nobias" if model.get("classifier_bias") is False else "main"),
        "loss": (cfg.get("loss") or {}).get("name", "?"),
        "alpha": finite_float((cfg.get("loss") or {}).get("alpha")),
        "noise_kind": noise.get("kind"),
        "noise_rate": float(noise.get("rate") or 0.0),
        "realized_noise": finite_float(fin.get("train.realized_noise_rate")),
        "seed": int(cfg.get("seed", 0)),
        "status": "diverged" if diverged else "completed",
        "epochs": fin.get("epoch") if isinstance(fin.get("epoch"), int) else None,
        "final_lr": finite_float(fin.get("lr")),
        "terminal_epoch": None if diverged else te,
        "reached_terminal": (not diverged) and te is not None,
        "geometry": None, "bias": model.get("classifier_bias", True) is not False,
        "max_cos": None, "norm_ratio": None,
    }
    if rec["realized_noise"] is None and rec["noise_rate"] == 0:
        rec["realized_noise"] = 0.0
    for m, (_, keys) in METRICS.items():
        rec[m] = next((finite_float(fin.get(k)) for k in keys if finite_float(fin.get(k)) is not None), None)
    scale = finite_float(fin.get("train.clean_centroid_distance"))
    if rec["test_dilation_raw"] is not None and scale:
        rec["test_dilation"] = rec["test_dilation_raw"] / scale
    off = finite_float(fin.get("train.dilation_std_official"))
    if off is not None and scale:
        rec["dilation_official"] = off / scale
    if n_cls == 2:
        rec["etf_error"] = None
    if not diverged:
        rec.update(_geometry(store.run_dir(row["hash"]), n_cls))
    return rec


def runs_table(store: RunStore | str | Path, *, sweep: str | None = None) -> list[dict[str, Any]]:
    """One row per completed or diverged run (:data:`COLUMNS`), sorted by (dataset, variant,
    noise rate, seed, loss). With ``sweep=None`` on a study store: the study's runs only (not
    the search trials stored beside them)."""
    if not isinstance(store, RunStore):
        store = RunStore(store, create=False)
    sweeps = [sweep] if sweep is not None else ([s for s in store.sweeps() if s.startswith(STUDY_SWEEP_PREFIX)] or [None])
    seen: set[str] = set()
    out = []
    for sw in sweeps:
        rows = store.rows(status="completed", sweep=sw)
        try:  # stores that report diverged runs under their own status
            rows += store.rows(status="diverged", sweep=sw)
        except ValueError:
            pass
        for row in rows:
            if row["hash"] in seen:
                continue
            seen.add(row["hash"])
            out.append(_row(store, row))
    out.sort(key=lambda r: (r["dataset"], r["variant"], r["noise_rate"], r["seed"], r["loss"], r["hash"]))
    return out


def _cell_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # shortest text that reads back to the same float
    return str(v)


def runs_csv_text(rows: Iterable[dict[str, Any]]) -> str:
    """The rows as CSV text (:data:`COLUMNS`, in order; empty cell = missing)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(COLUMNS))
    for r in rows:
        w.writerow([_cell_text(r.get(c)) for c in COLUMNS])
    return buf.getvalue()


def write_runs_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` atomically; returns the path."""
    from nclab.store.files import atomic_write_text  # noqa: PLC0415

    path = Path(path)
    atomic_write_text(path, runs_csv_text(rows))
    return path


def _parse(v: str, typ: type, *, col: str, line: int, path: Path) -> Any:
    if v == "":
        return None
    try:
        if typ is bool:
            if v not in ("true", "false"):
                raise ValueError(v)
            return v == "true"
        if typ is int:
            return int(v)
        if typ is float:
            f = float(v)
            return f if math.isfinite(f) else None
    except ValueError:
        raise ValueError(f"{path}, line {line}: column {col!r} should be {typ.__name__}, got {v!r}") from None
    return v


def read_runs_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``runs.csv`` written by :func:`write_runs_csv` (exact round trip). Missing
    required columns or a malformed value are a ``ValueError`` naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text))
    cols = reader.fieldnames or []
    required = ("dataset", "variant", "loss", "noise_rate", "seed", "status")
    missing = [c for c in required if c not in cols]
    if missing:
        raise ValueError(f"{path}: not a study runs table (missing column(s) {', '.join(missing)})")
    out = []
    for i, raw in enumerate(reader, start=2):
        out.append({c: _parse(raw.get(c) or "", COLUMNS.get(c, str), col=c, line=i, path=path)
                    for c in cols if c is not None})
    if not out:
        raise ValueError(f"{path}: the runs table has no runs")
    return out


def is_study_store(store: RunStore) -> bool:
    """A store made by ``nclab reproduce`` (it registers sweeps named ``md-<scale>``)."""
    return any(s.startswith(STUDY_SWEEP_PREFIX) for s in store.sweeps())


def cell_counts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, variant, loss, noise rate): runs, diverged, reached the terminal phase,
    median terminal epoch, mean realized noise, and the geometry counts."""
    from nclab.metrics.frames import KINDS  # noqa: PLC0415

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["variant"], r["loss"], r["noise_rate"]), []).append(r)
    out = []
    for (ds, var, loss, rate), rs in sorted(groups.items()):
        te = [r["terminal_epoch"] for r in rs if r.get("terminal_epoch") is not None]
        eta = [r["realized_noise"] for r in rs if r.get("realized_noise") is not None]
        out.append({"dataset": ds, "variant": var, "loss": loss, "noise_rate": rate,
                    "realized_noise": float(np.mean(eta)) if eta else None, "runs": len(rs),
                    "diverged": sum(r["status"] == "diverged" for r in rs),
                    "reached_terminal": sum(bool(r.get("reached_terminal")) for r in rs),
                    "median_terminal_epoch": float(np.median(te)) if te else None,
                    **{k: sum(r.get("geometry") == k for r in rs) for k in KINDS},
                    "no_geometry": sum(r.get("geometry") is None for r in rs)})
    return out


def aggregate(records: list[dict[str, Any]], metric: str) -> dict[tuple, dict[str, float]]:
    """``{(dataset, variant, loss, noise rate): {mean, std, n}}`` over seeds (std: ddof 1; 0 if n=1)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r.get(metric) is None:
            continue
        groups.setdefault((r["dataset"], r["variant"], r["loss"], r["noise_rate"]), []).append(r[metric])
    out = {}
    for k, vals in sorted(groups.items()):
        a = np.asarray(vals, dtype=float)
        out[k] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}
    return out


def fit_line(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least squares ``y = a + b x``; R² = 1 - SS_res/SS_tot (descriptive only: the verdicts
    use per-seed slopes, :mod:`nclab.report.study_claims`)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0:
        return {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "n": int(x.size)}
    b, a = np.polyfit(x, y, 1)
    res = y - (a + b * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((res**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return {"slope": float(b), "intercept": float(a), "r2": r2, "n": int(x.size)}


