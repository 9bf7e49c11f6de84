"""Reports from store data only: figures (matplotlib Agg) and Markdown/HTML assembly.

``build_report(store_dir)`` writes the memorization-dilation study report (see
:mod:`nclab.report.study_report`); claims are decided by :mod:`nclab.report.study_data`.
"""


def build_report(store_dir, *, out_dir=None, sweep=None):
    """Build the study report from a results store (see :func:`nclab.report.study_report.build_report`)."""
    from nclab.report.sweep_report import build_sweep_report, is_sweep_store

    if is_sweep_store(store_dir, sweep=sweep):  # not the study: a report grouped by the swept keys
        return build_sweep_report(store_dir, out_dir=out_dir, sweep=sweep)
    from nclab.report.study_report import build_report as _build  # lazy: matplotlib only when used

    return _build(store_dir, out_dir=out_dir, sweep=sweep)


__all__ = ["build_report"]
