"""Figures of an :class:`nclab.collect.analyze.Analysis`: the classifier-input feature scatter
and the collapse-through-depth profile (``nclab analyze --out``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nclab.report.features import feature_scatter
from nclab.report.style import OKABE_ITO, apply_style, plt, save

__all__ = ["layer_profile_figure", "write_figures"]


def layer_profile_figure(path: Path, summaries: dict[str, dict[str, Any]], *, title: str = "") -> None:
    """NC1 (log scale), ETF error of the centred means and orthogonal-frame error of the
    uncentred means against layer depth (one point per named layer)."""
    apply_style()
    names = list(summaries)
    xs = list(range(len(names)))
    panels = [("nc1", "NC1", True), ("nc2_etf_error_means", "ETF error (centred means)", False),
              ("nc2_orthogonal_error_means", "orthogonal-frame error (means)", False)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for i, (ax, (key, label, logy)) in enumerate(zip(axes, panels)):
        pts = [(x, summaries[n].get(key)) for x, n in zip(xs, names)]
        pts = [(x, v) for x, v in pts if v is not None and (not logy or v > 0)]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=OKABE_ITO[i])
        if logy and pts:
            ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save(fig, path)


def write_figures(analysis: Any, out: Path) -> list[Path]:
    """``out/features.png`` (the classifier input, coloured by class) and, when the analysis has
    a depth profile, ``out/layers.png``; returns the paths written. ``out`` must exist."""
    out = Path(out)
    f = analysis.scatter_data()
    C = int(analysis.result.to_dict()["num_classes"])
    names = analysis.class_names if analysis.class_names is not None and len(analysis.class_names) >= C else None
    feature_scatter(out / "features.png", f["features"], f["labels"], f["clean_labels"],
                    class_names=None if names is None else names[:C], weight=f["W"], bias=f["b"],
                    title=f"{analysis.what}: classifier input")
    written = [out / "features.png"]
    if analysis.per_layer:
        layer_profile_figure(out / "layers.png", analysis.per_layer, title=f"{analysis.what}: collapse through depth")
        written.append(out / "layers.png")
    return written
