"""Figures of the memorization-dilation model sweeps (rows of ``nclab.theory.md_model.md_sweep``).

Each function takes the sweep rows (dicts with ``loss``, ``alpha``, ``eta``, ``expressivity``,
``memorization``, ``dilation``, ``test_error`` ...) for ONE expressivity and writes one PNG.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from nclab.report.style import LOSS_COLORS, apply_style, plt, save
from nclab.theory.md_model import best_alpha_by_eta

__all__ = ["plot_best_alpha", "plot_dilation_vs_memorization", "plot_md_vs_eta", "write_md_figures"]


def _series(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    out: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[(r["loss"], float(r["alpha"]))].append(r)
    return {k: sorted(v, key=lambda r: r["eta"]) for k, v in sorted(out.items())}


def _style(key: tuple[str, float], n_ls: int, i_ls: int) -> dict[str, Any]:
    loss, alpha = key
    if loss == "ls":
        # LS series: shades of blue from light (small alpha) to dark (large alpha)
        shade = 0.35 + 0.65 * (i_ls + 1) / max(n_ls, 1)
        return {"color": plt.cm.Blues(shade), "label": f"LS α={alpha:g}", "marker": "o"}
    label = loss.upper() if alpha == 0 else f"{loss.upper()} α={alpha:g}"
    return {"color": LOSS_COLORS.get(loss, "k"), "label": label, "marker": "s", "linewidth": 2}


def _styles(series) -> dict:
    ls_keys = [k for k in series if k[0] == "ls"]
    return {k: _style(k, len(ls_keys), ls_keys.index(k) if k in ls_keys else 0) for k in series}


def _title(rows) -> str:
    r = rows[0]
    soft = f", soft μ={r['penalty']:g}" if r.get("constraint") == "soft" else ""
    return f"M-D model, N={r['num_classes']}, λ={r['expressivity']:g}{soft}"


def plot_dilation_vs_memorization(rows: Sequence[dict[str, Any]], path: str | Path, *, normalized: bool = False) -> Path:
    """D against M, one curve per loss, points along eta (annotated at both ends)."""
    apply_style()
    series = _series(rows)
    styles = _styles(series)
    mk, dk = ("memorization_normalized", "dilation_normalized") if normalized else ("memorization", "dilation")
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for key, rs in series.items():
        ax.plot([r[mk] for r in rs], [r[dk] for r in rs], markersize=3, **styles[key])
        if rs:
            ax.annotate(f"η={rs[-1]['eta']:g}", (rs[-1][mk], rs[-1][dk]), fontsize=6, alpha=0.7)
    unit = " / centre distance" if normalized else ""
    ax.set_xlabel(f"memorization M{unit}")
    ax.set_ylabel(f"dilation D{unit}")
    ax.set_title(_title(rows) + ": dilation vs memorization across η")
    ax.legend(ncol=2)
    path = Path(path)
    save(fig, path)
    return path


def plot_md_vs_eta(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Three panels against eta: dilation D, D / centre distance and the test-error proxy."""
    apply_style()
    series = _series(rows)
    styles = _styles(series)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12.5, 3.8))
    for key, rs in series.items():
        etas = [r["eta"] for r in rs]
        ax1.plot(etas, [r["dilation"] for r in rs], markersize=3, **styles[key])
        ax2.plot(etas, [r["dilation_normalized"] for r in rs], markersize=3, **styles[key])
        ax3.plot(etas, [r["test_error"] for r in rs], markersize=3, **styles[key])
    ax1.set_ylabel("dilation D")
    ax2.set_ylabel("D / distance between class centres")
    ax3.set_ylabel(f"test-error proxy ({rows[0]['test_noise']} u)")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("noise fraction η")
    ax1.set_title(_title(rows))
    ax3.legend(ncol=2)
    path = Path(path)
    save(fig, path)
    return path


def plot_best_alpha(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The error-minimizing alpha against eta (alpha = 0 is CE)."""
    apply_style()
    best = best_alpha_by_eta(rows)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.plot([b[0] for b in best], [b[1] for b in best], marker="o", color=LOSS_COLORS["ls"])
    ax.set_xlabel("noise fraction η")
    ax.set_ylabel("α minimizing the test-error proxy")
    ax.set_title(_title(rows) + ": best label smoothing")
    path = Path(path)
    save(fig, path)
    return path


def write_md_figures(rows: Sequence[dict[str, Any]], out_dir: str | Path, *, prefix: str = "theory_md") -> list[Path]:
    """All M-D figures, one set per expressivity: ``{prefix}_dm[_lam{λ}].png`` etc. Returns the paths."""
    out_dir = Path(out_dir)
    by_lam: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_lam[float(r["expressivity"])].append(r)
    paths = []
    for lam, rs in sorted(by_lam.items()):
        tag = "" if len(by_lam) == 1 else f"_lam{lam:g}"
        paths.append(plot_dilation_vs_memorization(rs, out_dir / f"{prefix}_dm{tag}.png"))
        paths.append(plot_md_vs_eta(rs, out_dir / f"{prefix}_eta{tag}.png"))
        paths.append(plot_best_alpha(rs, out_dir / f"{prefix}_best_alpha{tag}.png"))
    return paths
