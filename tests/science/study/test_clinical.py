"""Reading the clinical scores (kp_science.study.clinical)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kp_resources.study import StudyFolder
from kp_science.study.clinical import CLINICAL_COLUMNS, load_clinical
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import discover_participants


def _set_score(study: Path, measure: str, pid: str, session: str, value: str) -> int:
    """Write ``value`` as the participant's total; return its row number (from 1)."""
    path = study / "phenotype" / f"{measure}.tsv"
    table = pd.read_csv(path, sep="\t", dtype=str)
    (index,) = table.index[(table["participant_id"] == pid) & (table["session"] == session)]
    table.loc[index, f"{measure}_total"] = value
    table.to_csv(path, sep="\t", index=False)
    return index + 1


# --- clinical ---------------------------------------------------------------------------------


def test_load_clinical(study_root):
    df = load_clinical(study_root)
    assert list(df.columns[: len(CLINICAL_COLUMNS)]) == CLINICAL_COLUMNS
    assert list(df["participant_id"]) == discover_participants(study_root)
    assert set(df["arm"]) <= {"ketamine", "midazolam"}
    np.testing.assert_allclose(df["caps5_improvement"], df["caps5_pre"] - df["caps5_post"])
    np.testing.assert_allclose(df["madrs_improvement"], df["madrs_pre"] - df["madrs_post"])
    assert df["caps5_pre"].notna().all()
    assert set(df.attrs["source_sha256"]) == {
        str(study_root / "participants.tsv"),
        str(study_root / "phenotype" / "caps5.tsv"),
        str(study_root / "phenotype" / "madrs.tsv"),
    }
    truth = pd.read_csv(
        study_root / "derivatives" / "simulation-truth" / "participants.tsv", sep="\t"
    ).set_index("participant_id")
    mine = df.set_index("participant_id")
    for column in ("caps5_pre", "caps5_post", "madrs_pre", "madrs_post"):
        observed = mine[column].dropna()
        np.testing.assert_allclose(observed, truth.loc[observed.index, column], atol=1e-6)
    assert (mine["arm"] == truth["arm"]).all()


def test_clinical_missing_post_gives_nan(study_copy):
    path = study_copy / "phenotype" / "caps5.tsv"
    caps = pd.read_csv(path, sep="\t")
    pid = caps["participant_id"].iloc[0]
    caps = caps[~((caps["participant_id"] == pid) & (caps["session"] == "post"))]
    caps.to_csv(path, sep="\t", index=False, na_rep="n/a")
    df = load_clinical(study_copy).set_index("participant_id")
    assert math.isnan(df.loc[pid, "caps5_post"]) and math.isnan(df.loc[pid, "caps5_improvement"])
    assert df.drop(index=pid)["caps5_improvement"].notna().all()


def test_clinical_duplicate_participant(study_copy):
    path = study_copy / "participants.tsv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + [lines[2]]))
    dup = lines[2].split("\t")[0]
    with pytest.raises(StudyDataError) as info:
        load_clinical(study_copy)
    assert info.value.path == str(path)
    assert f"duplicated participant_id {dup}" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda df: df.assign(arm=["placebo"] + list(df["arm"][1:])), "arm must be ketamine"),
        (
            lambda df: df.assign(participant_id=["sub-../x"] + list(df["participant_id"][1:])),
            "invalid participant_id",
        ),
        (lambda df: df.drop(columns="arm"), "missing column(s) arm"),
    ],
)
def test_clinical_bad_participants_file(study_copy, edit, problem):
    path = study_copy / "participants.tsv"
    edit(pd.read_csv(path, sep="\t")).to_csv(path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(StudyDataError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_clinical(study_copy)


def test_clinical_bad_phenotype(study_copy):
    path = study_copy / "phenotype" / "madrs.tsv"
    madrs = pd.read_csv(path, sep="\t", dtype=str)
    madrs.loc[0, "madrs_total"] = "high"
    madrs.to_csv(path, sep="\t", index=False)
    with pytest.raises(StudyDataError, match="non-numeric madrs_total 'high'"):
        load_clinical(study_copy)
    madrs = pd.concat([madrs.iloc[1:], madrs.iloc[[1]]])
    madrs.to_csv(path, sep="\t", index=False)
    with pytest.raises(StudyDataError, match="duplicated participant_id"):
        load_clinical(study_copy)


def test_impossible_scores_are_rejected_for_their_participant_only(study_copy):
    before = load_clinical(study_copy).set_index("participant_id")
    assert (before["clinical_problems"] == "").all()
    first, second, third = before.index
    row_999 = _set_score(study_copy, "caps5", second, "post", "999")
    row_neg = _set_score(study_copy, "caps5", third, "pre", "-5")
    row_61 = _set_score(study_copy, "madrs", third, "post", "61")
    after = load_clinical(study_copy).set_index("participant_id")

    assert after.loc[second, "clinical_problems"] == (
        f"phenotype/caps5.tsv row {row_999}: caps5_total 999 outside 0–80"
    )
    assert math.isnan(after.loc[second, "caps5_post"])
    assert math.isnan(after.loc[second, "caps5_improvement"])  # not 999 − pre
    assert after.loc[second, "caps5_pre"] == before.loc[second, "caps5_pre"]
    assert after.loc[third, "clinical_problems"] == (
        f"phenotype/caps5.tsv row {row_neg}: caps5_total -5 outside 0–80; "
        f"phenotype/madrs.tsv row {row_61}: madrs_total 61 outside 0–60"
    )
    assert math.isnan(after.loc[third, "caps5_pre"]) and math.isnan(after.loc[third, "madrs_post"])
    assert after.loc[third, "caps5_post"] == before.loc[third, "caps5_post"]
    assert after.loc[third, "madrs_pre"] == before.loc[third, "madrs_pre"]
    pd.testing.assert_series_equal(after.loc[first], before.loc[first])
    # the limits themselves are possible scores
    _set_score(study_copy, "caps5", first, "pre", "80")
    _set_score(study_copy, "madrs", first, "post", "0")
    assert (
        load_clinical(study_copy).set_index("participant_id").loc[first, "clinical_problems"] == ""
    )


def test_score_ranges_are_configurable(study_copy):
    pid = discover_participants(study_copy)[0]
    _set_score(study_copy, "caps5", pid, "pre", "100")  # e.g. a scale scored 0–136
    default = StudyFolder(root=str(study_copy)).clinical().set_index("participant_id")
    assert "caps5_total 100 outside 0–80" in default.loc[pid, "clinical_problems"]
    wide = StudyFolder(root=str(study_copy), caps5_range=[0, 136]).clinical()
    wide = wide.set_index("participant_id")
    assert wide.loc[pid, "caps5_pre"] == 100 and wide.loc[pid, "clinical_problems"] == ""
    narrow = load_clinical(study_copy, score_ranges={"madrs": [10, 20]})
    assert (narrow["clinical_problems"].str.contains("outside 10–20")).any()
    for bad in ({"caps5": [80, 0]}, {"caps5": [0]}, {"hamd": [0, 52]}):
        with pytest.raises(ValueError, match="range"):
            load_clinical(study_copy, score_ranges=bad)
