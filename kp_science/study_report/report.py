"""The study report: one self-contained HTML page of the whole study (docs/architecture.md).

:func:`study_report_html` puts the sections of :mod:`.sections` in the order of
:data:`SECTIONS` into the page of :mod:`.page`.
"""

from __future__ import annotations

from collections.abc import Callable

from kp_science.study_report import sections
from kp_science.study_report.inputs import ReportInputs
from kp_science.study_report.page import document_html

#: (html id, heading) of every section, in order.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("study", "Study"),
    ("quality", "Quality"),
    ("rois", "Regions of interest"),
    ("features", "Headline features"),
    ("prediction", "Prediction (elastic net)"),
    ("dcm", "Dynamic causal modelling"),
    ("findings", "Findings: the paper and kp"),
    ("provenance", "Provenance"),
)

_BUILDERS: dict[str, Callable[[ReportInputs], str]] = {
    "study": sections.study_section,
    "quality": sections.quality_section,
    "rois": sections.rois_section,
    "features": sections.features_section,
    "prediction": sections.prediction_section,
    "dcm": sections.dcm_section,
    "findings": sections.findings_section,
    "provenance": sections.provenance_section,
}


def study_report_html(inputs: ReportInputs) -> str:
    """The study report as one HTML document (text): every section of :data:`SECTIONS`,
    figures inline as PNG data URIs, no script and nothing fetched when it is viewed.
    Missing or empty tables never raise: their sections say what is missing."""
    built = [(sid, name, _BUILDERS[sid](inputs)) for sid, name in SECTIONS]
    return document_html(
        f"kp study report: {inputs.study_name}",
        f"kp {inputs.provenance.kp_version}; made {inputs.provenance.built_at} (UTC)",
        built,
        generator=f"kp {inputs.provenance.kp_version}",
    )
