"""The self-contained HTML study report (kp_science.study_report) on small synthetic tables,
and the group DCM connectivity diagram (kp_science.dcm.group_plots)."""

import base64
import re
from dataclasses import replace
from html import escape as html_escape

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from kp_science.dcm.group_plots import connectivity_diagram_png
from kp_science.figures import figure_png
from kp_science.study.protocol import DCMDesign, default_vocabulary
from kp_science.study_report import (
    SECTIONS,
    QualityLimits,
    ReportInputs,
    ReportProvenance,
    study_report_html,
)
from kp_science.study_report.sections import dcm_section, study_section
from kp_science.study_report.summaries import headline_features, run_quality

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROTOCOL = default_vocabulary()
ACTIVE, CONTROL = PROTOCOL.arms
PRE, POST = PROTOCOL.sessions
TASKS = PROTOCOL.task_labels
EVIL = "<script>alert('x')</script>"
PIDS = ["sub-01", "sub-02", "sub-03", f"sub-{EVIL}"]
FEATURE = "faces.gppi.vmpfc->amygdala.emotional"


def _tiny_png() -> bytes:
    figure = Figure(figsize=(1, 1))
    figure.add_subplot().plot([0, 1], [0, 1])
    return figure_png(figure, dpi=30)


def _scans_and_coverage() -> tuple[pd.DataFrame, pd.DataFrame]:
    scans, coverage = [], []
    for i, pid in enumerate(PIDS):
        sessions = (PRE,) if pid == "sub-03" else (PRE, POST)  # sub-03: no follow-up
        for session in sessions:
            for task in TASKS:
                # sub-02's baseline faces run moves too much; sub-01's follow-up rest run
                # loses a third of its volumes to scrubbing
                bad_fd = pid == "sub-02" and session == PRE and task == TASKS[0]
                scrub = pid == "sub-01" and session == POST and task == TASKS[-1]
                scans.append(
                    {
                        "participant_id": pid,
                        "session": session,
                        "task": task,
                        "run": 1,
                        "mean_fd": 0.8 if bad_fd else 0.1 + 0.02 * i,
                        "tsnr": 50.0 - i,
                        "n_volumes": 100,
                    }
                )
                for roi, share in (("amygdala", 0.9), ("vmpfc", 1.0)):
                    coverage.append(
                        {
                            "participant_id": pid,
                            "session": session,
                            "task": task,
                            "run": 1,
                            "roi": roi,
                            "coverage": share,
                            "n_volumes_kept": 60 if scrub else 98,
                            "n_volumes": 100,
                        }
                    )
    return pd.DataFrame(scans), pd.DataFrame(coverage)


def _tables() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    scans, coverage = _scans_and_coverage()
    arms = [ACTIVE, CONTROL, ACTIVE, CONTROL]
    clinical = pd.DataFrame(
        {
            "participant_id": PIDS,
            "arm": arms,
            "caps5_improvement": [10.0, 4.0, np.nan, 8.0],
        }
    )
    status = pd.DataFrame(
        {
            "participant_id": PIDS,
            "status": ["current", "current", "incomplete", "current"],
            "reason": ["", "", f"no {POST} session {EVIL}", ""],
        }
    )
    complete = [p for p in PIDS if p != "sub-03"]
    changes = pd.DataFrame(
        [
            {"participant_id": p, "feature": f, "pre": 0.0, "post": c, "change": c}
            for p in complete
            for f, c in ((FEATURE, rng.normal()), ("rest.fc.vmpfc~insula_ant", rng.normal()))
        ]
    )
    checks = pd.DataFrame(
        [
            {
                "asset": "scans",
                "check_name": "scans_fd_check",
                "partition": "sub-02",
                "passed": False,
                "severity": "WARN",
                "summary": "1 run with mean FD > 0.5 mm",
                "run_id": "r1",
                "evaluated_at": pd.Timestamp("2026-12-04T10:00:00Z"),
            },
            {
                "asset": "scans",
                "check_name": "scans_tsnr_check",
                "partition": "sub-01",
                "passed": True,
                "severity": "WARN",
                "summary": "every run above 20",
                "run_id": "r1",
                "evaluated_at": pd.Timestamp("2026-12-04T10:00:00Z"),
            },
        ]
    )
    summary = pd.DataFrame(
        [
            {
                "model": "main",
                "status": "ok",
                "outcome": "caps5_improvement",
                "n_participants": 3,
                "nested_r": 0.41,
                "permutation_p": 0.03,
                "loo_r": 0.5,
            },
            {
                "model": "interaction",
                "status": "not fitted: only 3 participant(s) with complete data",
                "outcome": "caps5_improvement",
                "n_participants": np.nan,
                "nested_r": np.nan,
                "permutation_p": np.nan,
                "loo_r": np.nan,
            },
        ]
    )
    coefficients = pd.DataFrame(
        {
            "model": "main",
            "term": [FEATURE, "rest.fc.vmpfc~insula_ant"],
            "beta_std": [1.2, 0.0],
            "beta_fully_std": [0.3, 0.0],
            "selected": [True, False],
            "selection_frequency": [0.7, 0.1],
        }
    )
    predictions = pd.DataFrame(
        {
            "model": "main",
            "participant_id": complete,
            "observed": [10.0, 4.0, 8.0],
            "predicted": [9.0, 5.0, 7.0],
            "nested_predicted": [8.0, 6.0, 7.5],
        }
    )
    alphas = np.logspace(-2, 1, 5)
    cv_curve = pd.DataFrame(
        {
            "model": "main",
            "l1_ratio": np.repeat([0.5, 1.0], 5),
            "alpha": np.tile(alphas, 2),
            "loo_mse": np.linspace(5, 9, 10),
            "selected": [True] + [False] * 9,
        }
    )
    enet_exclusions = pd.DataFrame(
        {"model": ["main"], "participant_id": ["sub-03"], "reason": ["no change scores"]}
    )
    fits = pd.DataFrame(
        [
            {
                "participant_id": p,
                "session": s,
                "task": PROTOCOL.dcm.task,
                "run": 1,
                "model": "full",
                "explained_variance": 0.6 + 0.05 * i,
                "free_energy": -1000.0,
                "converged": not (p == "sub-02" and s == POST),
                "message": "",
            }
            for i, p in enumerate(complete)
            for s in (PRE, POST)
        ]
    )
    regions = PROTOCOL.dcm.regions
    a, b = regions[0], regions[1]
    effect_rows = []
    for covariate in ("mean", "caps5_improvement"):
        for parameter, mean, pp in (
            (f"A[{a}->{b}]", 0.3, 0.99),
            (f"A[{b}->{a}]", -0.2, np.nan),  # Pp missing: dashed arrow
            (f"A[{a}->{a}]", -0.1, 0.5),  # a self-connection: a loop
            (f"B[emotional][{a}->{b}]", -0.05, 0.97),
        ):
            effect_rows.append(
                {
                    "analysis": "longitudinal",
                    "covariate": covariate,
                    "parameter": parameter,
                    "mean": mean,
                    "sd": 0.05,
                    "Pp": pp,
                    "n_participants": 3,
                }
            )
    paper = pd.DataFrame(
        [
            {
                "finding": "vmpfc_amygdala_faces",
                "description": "improvement ~ increased vmPFC–amygdala connectivity",
                "statistic": "standardized β",
                "model": "main",
                "term": FEATURE,
                "published": 2.9,
                "published_direction": "+",
                "estimate": 1.2,
                "supported": True,
                "evidence": "published sign; permutation p = 0.030 (needs < 0.05)",
                "note": "",
            },
            {
                "finding": "drug_interaction",
                "description": "stronger under the active arm",
                "statistic": "standardized β",
                "model": "interaction",
                "term": f"{FEATURE}:arm",
                "published": 0.86,
                "published_direction": "+",
                "estimate": np.nan,
                "supported": False,
                "evidence": "✗ no estimate",
                "note": "not fitted",
            },
            {
                "finding": "dcm_baseline_inhibition",
                "description": "DCM: baseline inhibition",
                "statistic": "direction",
                "model": "dcm_group",
                "term": "dcm.A[vmpfc->amygdala] pre",
                "published": np.nan,
                "published_direction": "+",
                "estimate": np.nan,
                "supported": False,
                "evidence": "✗ no estimate",
                "note": "DCM group analysis not available",
            },
        ]
    )
    return {
        "scans": scans,
        "roi_coverage": coverage,
        "clinical": clinical,
        "participant_status": status,
        "checks": checks,
        "change_scores": changes,
        "enet_summary": summary,
        "enet_coefficients": coefficients,
        "enet_predictions": predictions,
        "enet_cv_curve": cv_curve,
        "enet_exclusions": enet_exclusions,
        "dcm_fits": fits,
        "dcm_group_effects": pd.DataFrame(effect_rows),
        "paper_table": paper,
    }


def _provenance(tables: dict[str, pd.DataFrame]) -> ReportProvenance:
    return ReportProvenance(
        kp_version="0.1.0",
        built_at="2026-12-04T12:00:00+00:00",
        tables=pd.DataFrame(
            [
                {
                    "table": name,
                    "code_version": f"{name}-1",
                    "built_at": "2026-12-04T11:00:00+00:00",
                    "n_files": 1,
                    "rows": len(frame),
                }
                for name, frame in tables.items()
            ]
        ),
        packages={"numpy": "2.1.0", "pandas": "2.2.3"},
        n_source_files=42,
        source_digest="0" * 64,
    )


def _inputs(tables, protocol=PROTOCOL, roi_png=None) -> ReportInputs:
    return ReportInputs(
        study_name=f"study {EVIL}",
        tables=tables,
        protocol=protocol,
        limits=QualityLimits(),
        roi_png=roi_png,
        provenance=_provenance(tables),
    )


@pytest.fixture(scope="module")
def report() -> str:
    return study_report_html(_inputs(_tables(), roi_png=_tiny_png()))


@pytest.fixture(scope="module")
def empty_report() -> str:
    return study_report_html(_inputs({}))


def _section(html: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert match, f"no section {sid}"
    return match.group(1)


def _rows(html: str) -> list[str]:
    return re.findall(r"<tr[^>]*>.*?</tr>", html, re.S)


# --- the page -----------------------------------------------------------------------------


def test_every_section_in_order_with_a_contents_link(report, empty_report):
    for html in (report, empty_report):
        positions = [html.index(f'<section id="{sid}">') for sid, _ in SECTIONS]
        assert positions == sorted(positions)
        for sid, heading in SECTIONS:
            assert f'<a href="#{sid}">{html_escape(heading)}</a>' in html
            assert f"<h2>{html_escape(heading)}</h2>" in html
    assert [sid for sid, _ in SECTIONS] == [
        "study",
        "quality",
        "rois",
        "features",
        "prediction",
        "dcm",
        "findings",
        "provenance",
    ]


def test_every_image_is_an_inline_png(report):
    sources = re.findall(r'<img src="([^"]*)"', report)
    # ROI figure, QC scatter, change scores, 3 for the fitted model, DCM fits, diagram
    assert len(sources) == 8
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        png = base64.b64decode(source.removeprefix("data:image/png;base64,"), validate=True)
        assert png.startswith(PNG_SIGNATURE)
    assert len(re.findall(r"<img ", report)) == len(sources)
    assert all(re.search(r'alt="[^"]+"', tag) for tag in re.findall(r"<img [^>]*>", report))


def test_nothing_is_fetched_and_no_script(report, empty_report):
    for html in (report, empty_report):
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
        assert "http://" not in html and "https://" not in html
        assert "<script" not in html.lower()
        assert "<link" not in html.lower()
        hrefs = re.findall(r'href="([^"]*)"', html)
        assert hrefs and all(h.startswith("#") for h in hrefs)


def test_text_is_escaped(report):
    assert EVIL not in report
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert f"sub-{escaped}" in _section(report, "study")  # a participant id
    assert f"no {POST} session {escaped}" in _section(report, "study")  # a reason
    assert f"<title>kp study report: study {escaped}</title>" in report


# --- sections -----------------------------------------------------------------------------


def test_study_counts_arms_sessions_and_exclusions(report):
    study = _section(report, "study")
    by_arm = {
        re.sub(r"<[^>]+>", "|", row).split("|")[2]: row
        for row in _rows(study)
        if ACTIVE in row or CONTROL in row
    }
    # active: sub-01 and sub-03 (no follow-up, not current); control: sub-02, sub-<evil>
    counts = [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', by_arm[ACTIVE])]
    assert counts == [2, 1, 2, 1, 1]  # participants, current, pre, post, both complete
    counts = [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', by_arm[CONTROL])]
    assert counts == [2, 2, 2, 2, 2]
    assert "3 of 4 scanned participants have every task" in study
    assert "incomplete: no post session" in study
    assert "elastic net main" in study and "no change scores" in study
    assert "group DCM (full)" in study and "did not converge" in study


def test_flagged_runs_are_highlighted_with_the_broken_limit(report):
    quality = _section(report, "quality")
    flagged_table = quality.split("<h3>Flagged runs</h3>")[1].split("<details>")[0]
    flagged = [r for r in _rows(flagged_table) if 'class="flagged"' in r]
    assert len(flagged) == 2
    fd_row = next(r for r in flagged if "sub-02" in r)
    assert "mean FD 0.8 mm &gt; 0.5 mm" in fd_row
    scrub_row = next(r for r in flagged if "sub-01" in r)
    assert "scrubbed 40% &gt; 25%" in scrub_row
    # the full table highlights the same runs and no other
    every = quality.split("<details>")[1].split("</details>")[0]
    assert sum('class="flagged"' in r for r in _rows(every)) == 2
    assert "2 flagged" in quality
    # failed checks listed, passed ones not
    assert "scans_fd_check" in quality and "scans_tsnr_check" not in quality


def test_prediction_says_why_a_model_was_not_fitted(report):
    prediction = _section(report, "prediction")
    assert "interaction was not fitted: not fitted: only 3 participant(s)" in prediction
    assert "nested LOO r = 0.41" in prediction and "permutation p = 0.03" in prediction
    assert prediction.count("<img ") == 3


def test_the_cross_validation_scheme_is_named_as_the_tables_record_it():
    from kp_science.study_report.sections import cv_name

    assert [cv_name(v) for v in ("loo", "10-fold", np.nan)] == ["LOO", "10-fold CV", "LOO"]


def test_dcm_section_counts_fits_and_marks_effects_by_pp(report):
    dcm = _section(report, "dcm")
    fits = next(r for r in _rows(dcm) if f"<td>{POST}</td>" in r)
    assert [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', fits)][:2] == [3, 2]
    assert sum('class="supported"' in r for r in _rows(dcm)) == 4  # Pp 0.99 and 0.97, twice
    strict = replace(_inputs(_tables()), min_pp=0.98)
    assert sum('class="supported"' in r for r in _rows(dcm_section(strict))) == 2


def test_findings_mark_supported_rows(report):
    findings = _section(report, "findings")
    supported = [r for r in _rows(findings) if 'class="supported"' in r]
    assert len(supported) == 1 and "vmPFC–amygdala" in supported[0]
    assert "1 of 3 headline findings are supported" in findings
    assert "direction +" in findings  # a direction-only finding shows its direction


def test_provenance_lists_versions_tables_and_sources(report):
    provenance = _section(report, "provenance")
    for text in ("0.1.0", "2026-12-04T12:00:00+00:00", "42", "0" * 64, "pandas", "2.2.3"):
        assert text in provenance
    assert "enet_cv_curve-1" in provenance


def test_empty_tables_say_what_is_missing(empty_report):
    for sid, _ in SECTIONS:
        body = _section(empty_report, sid)
        assert 'class="missing"' in body, sid
    assert "the warehouse has no scans table" in _section(empty_report, "quality")
    assert "the warehouse has no enet_summary table" in _section(empty_report, "prediction")
    assert "<img" not in empty_report


def test_tables_without_rows_say_so():
    tables = {name: frame.iloc[0:0] for name, frame in _tables().items()}
    html = study_report_html(_inputs(tables))
    assert "the enet_summary table has no rows" in _section(html, "prediction")
    assert "the dcm_group_effects table has no rows" in _section(html, "dcm")
    assert "<img" not in html


def test_arm_and_session_labels_come_from_the_protocol():
    protocol = replace(
        PROTOCOL, active_arm="drugA", control_arm="placebo", baseline="t0", follow_up="t1"
    )
    tables = _tables()
    rename = {ACTIVE: "drugA", CONTROL: "placebo", PRE: "t0", POST: "t1"}
    for name in ("clinical", "scans", "roi_coverage", "dcm_fits"):
        for column in ("arm", "session"):
            if column in tables[name]:
                tables[name] = tables[name].assign(**{column: tables[name][column].replace(rename)})
    study = study_section(_inputs(tables, protocol))
    assert "drugA" in study and "placebo" in study and ACTIVE not in study
    assert "<th>t0 scanned</th>" in study
    assert "3 of 4 scanned participants" in study


# --- summaries ----------------------------------------------------------------------------


def test_run_quality_scrubbed_share_and_lowest_coverage():
    scans, coverage = _scans_and_coverage()
    coverage.loc[(coverage.participant_id == "sub-03") & (coverage.roi == "vmpfc"), "coverage"] = (
        0.3
    )
    table = run_quality(scans, coverage, QualityLimits())
    assert len(table) == len(scans)
    row = table[(table.participant_id == "sub-01") & (table.session == POST)].iloc[-1]
    assert row.task == TASKS[-1] and row.scrubbed_share == pytest.approx(0.4)
    low = table[table.participant_id == "sub-03"]
    assert (low.min_roi_coverage == 0.3).all() and (low.lowest_roi == "vmpfc").all()
    assert low.broken_limits.str.contains("ROI coverage 30% < 50%").all()
    assert (table.broken_limits != "").sum() == 2 + len(low)
    # without roi_coverage the scan limits still apply
    alone = run_quality(scans, None, QualityLimits())
    assert alone.scrubbed_share.isna().all() and (alone.broken_limits != "").sum() == 1


def test_headline_features_strip_interactions_and_skip_dcm_terms():
    paper = _tables()["paper_table"]
    found, absent = headline_features(paper, PROTOCOL, [FEATURE, "rest.fc.vmpfc~insula_ant"])
    assert found == [FEATURE]
    assert absent == ["dcm.A[vmpfc->amygdala] pre"]
    # without a paper table the findings' own terms are used
    found, _ = headline_features(None, PROTOCOL, [FEATURE, "rest.fc.vmpfc~insula_ant"])
    assert found == [FEATURE, "rest.fc.vmpfc~insula_ant"]


def test_headline_features_in_a_renamed_study():
    faces = PROTOCOL.tasks["faces"]
    look = replace(
        faces,
        label="look",
        conditions=("threat", "calm"),
        contrasts={"threat_vs_calm": {"threat": 1.0, "calm": -1.0}},
    )
    renamed = replace(
        PROTOCOL,
        tasks={"look": look, **{k: v for k, v in PROTOCOL.tasks.items() if k != "faces"}},
        dcm=DCMDesign(
            "look", PROTOCOL.dcm.regions, {"look": ("threat", "calm"), "threat": ("threat",)}
        ),
    )
    study_feature = "look.gppi.vmpfc->amygdala.threat"
    found, absent = headline_features(_tables()["paper_table"], renamed, [study_feature])
    assert found == [study_feature] and FEATURE not in absent


# --- the connectivity diagram -------------------------------------------------------------


def test_connectivity_diagram_draws_loops_and_missing_pp():
    effects = _tables()["dcm_group_effects"]
    png = connectivity_diagram_png(effects, "longitudinal", PROTOCOL.dcm.regions)
    assert png.startswith(PNG_SIGNATURE)
    no_pp = connectivity_diagram_png(effects.drop(columns="Pp"), "longitudinal")
    assert no_pp.startswith(PNG_SIGNATURE) and no_pp != png
    with pytest.raises(ValueError, match="no connection effects for analysis 'baseline'"):
        connectivity_diagram_png(effects, "baseline")
    hemodynamic = effects.assign(parameter="transit[vmpfc]")
    with pytest.raises(ValueError, match="no connection effects"):
        connectivity_diagram_png(hemodynamic, "longitudinal")
