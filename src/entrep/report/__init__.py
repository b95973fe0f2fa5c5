"""Evaluation reports: metrics, paper-layout tables, figures, Markdown and HTML.

``classification_summary`` turns predictions into the one metrics schema;
``write_report`` turns an ``evaluate --json`` dict into a report folder.
"""

from entrep.report.metrics import classification_summary, coarse_of, fine_and_coarse_summary

__all__ = ["classification_summary", "coarse_of", "fine_and_coarse_summary", "write_report"]


def __getattr__(name: str):
    # write_report pulls in matplotlib; import it only when asked for.
    if name == "write_report":
        from entrep.report.html import write_report

        return write_report
    raise AttributeError(f"module 'entrep.report' has no attribute {name!r}")
