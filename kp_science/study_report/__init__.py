"""The study report: one self-contained HTML file of a study's results (no network needed to
view it), built from the warehouse tables as DataFrames — participants, quality, ROIs,
headline features, elastic-net models, DCM, the paper's findings beside kp's, provenance.

No Dagster: the caller (``kp_resources.study_report``) reads the warehouse and passes
:class:`ReportInputs`; :func:`study_report_html` returns the page's text. Modules:
:mod:`.inputs` (what the report is made from), :mod:`.summaries` (derived tables),
:mod:`.figures` (the report's own figures), :mod:`.page` (HTML pieces), :mod:`.sections`
(one function per section), :mod:`.report` (the page).
"""

from kp_science.study_report.inputs import QualityLimits, ReportInputs, ReportProvenance
from kp_science.study_report.report import SECTIONS, study_report_html

__all__ = [
    "SECTIONS",
    "QualityLimits",
    "ReportInputs",
    "ReportProvenance",
    "study_report_html",
]
