"""Reports from store data only: figures (matplotlib Agg) and Markdown/HTML assembly.

``build_report(source)`` writes the memorization-dilation study report from a study store or
a study's ``runs.csv`` (:mod:`nclab.report.study_report`; the run table is
:mod:`nclab.report.study_data`, the claims :mod:`nclab.report.study_claims`), and the sweep
report (:mod:`nclab.report.sweep_report`) for any other store.
"""

from pathlib import Path


def build_report(source, *, out_dir=None, sweep=None, write=True):
    """Build the report of a store or of a study's ``runs.csv`` (see the module doc)."""
    if Path(source).suffix != ".csv":
        from nclab.report.sweep_report import build_sweep_report, is_sweep_store  # noqa: PLC0415

        if is_sweep_store(source, sweep=sweep):  # not the study: a report grouped by the swept keys
            return build_sweep_report(source, out_dir=out_dir, sweep=sweep)
    from nclab.report.study_report import build_report as _build  # lazy: matplotlib only when used

    return _build(source, out_dir=out_dir, sweep=sweep, write=write)


__all__ = ["build_report"]
