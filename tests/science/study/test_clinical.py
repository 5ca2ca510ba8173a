"""Reading the clinical scores (kp_science.study.clinical)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kp_resources.study import StudyFolder
from kp_science.study.clinical import clinical_columns, load_clinical
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import discover_participants
from kp_science.study.protocol import PROTOCOL_FILE, ProtocolError, default_vocabulary

CLINICAL_COLUMNS = clinical_columns(default_vocabulary())


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
        (
            lambda df: df.assign(arm=["placebo"] + list(df["arm"][1:])),
            "arm must be ketamine or midazolam, got 'placebo'",
        ),
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


def _edit_protocol(study: Path, old: str, new: str) -> None:
    path = study / PROTOCOL_FILE
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def test_score_ranges_come_from_the_protocol(study_copy):
    assert CLINICAL_COLUMNS == [
        "participant_id",
        "arm",
        "caps5_pre",
        "caps5_post",
        "madrs_pre",
        "madrs_post",
        "caps5_improvement",
        "madrs_improvement",
        "clinical_problems",
    ]
    pid = discover_participants(study_copy)[0]
    _set_score(study_copy, "caps5", pid, "pre", "100")  # e.g. a scale scored 0–136
    default = StudyFolder(root=str(study_copy)).clinical().set_index("participant_id")
    assert "caps5_total 100 outside 0–80" in default.loc[pid, "clinical_problems"]
    _edit_protocol(study_copy, "range: [0, 80]", "range: [0, 136]")
    wide = StudyFolder(root=str(study_copy)).clinical().set_index("participant_id")
    assert wide.loc[pid, "caps5_pre"] == 100 and wide.loc[pid, "clinical_problems"] == ""
    _edit_protocol(study_copy, "range: [0, 60]", "range: [10, 20]")
    narrow = load_clinical(study_copy)
    assert (narrow["clinical_problems"].str.contains("outside 10–20")).any()
    _edit_protocol(study_copy, "range: [10, 20]", "range: [20, 10]")
    with pytest.raises(ProtocolError, match="outcomes.covariate.range: lowest 20 is above"):
        load_clinical(study_copy)


def test_bids_phenotype_arm_column_and_raw_root_from_the_protocol(study_copy, tmp_path):
    """participants.tsv and phenotype/ in a separate raw root, the arm in a column of another
    name with other values, BIDS phenotype files (session_id = ses-<label>) of other session
    labels and score columns: the same clinical table as the default layout."""
    expected = load_clinical(study_copy)
    raw = tmp_path / "raw"
    (raw / "phenotype").mkdir(parents=True)
    people = pd.read_csv(study_copy / "participants.tsv", sep="\t", dtype=str)
    people["group"] = people.pop("arm").map({"ketamine": "KET", "midazolam": "MID"})
    people.to_csv(raw / "participants.tsv", sep="\t", index=False)
    for measure, column in (("caps5", "caps_total"), ("madrs", "madrs_score")):
        table = pd.read_csv(study_copy / "phenotype" / f"{measure}.tsv", sep="\t", dtype=str)
        table.insert(1, "session_id", "ses-" + table.pop("session").map({"pre": "1", "post": "2"}))
        table = table.rename(columns={f"{measure}_total": column})
        table.to_csv(raw / "phenotype" / f"{measure}_scores.tsv", sep="\t", index=False)
    protocol = tmp_path / "protocol.yaml"
    text = (study_copy / PROTOCOL_FILE).read_text()
    for old, new in [
        ("  raw: .", f"  raw: {raw}"),
        ("  derivatives: .", f"  derivatives: {study_copy}"),
        ("baseline: pre", "baseline: '1'"),
        ("follow_up: post", "follow_up: '2'"),
        ("column: arm", "column: group"),
        ("active: ketamine", "active: KET"),
        ("control: midazolam", "control: MID"),
        ("file: phenotype/caps5.tsv", "file: phenotype/caps5_scores.tsv"),
        ("column: caps5_total", "column: caps_total"),
        ("file: phenotype/madrs.tsv", "file: phenotype/madrs_scores.tsv"),
        ("column: madrs_total", "column: madrs_score"),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text = text.replace("session_column: session", "session_column: session_id")
    protocol.write_text(text)
    renamed = StudyFolder(root=str(study_copy), protocol_file=str(protocol)).clinical()
    assert set(renamed["arm"]) == {"KET", "MID"}
    renamed["arm"] = renamed["arm"].map({"KET": "ketamine", "MID": "midazolam"})
    renamed.attrs = expected.attrs = {}
    pd.testing.assert_frame_equal(renamed, expected)
    # a kp-style session label in a session_id column is refused, naming the file and row
    path = raw / "phenotype" / "madrs_scores.tsv"
    table = pd.read_csv(path, sep="\t", dtype=str)
    table.loc[2, "session_id"] = "2"
    table.to_csv(path, sep="\t", index=False)
    with pytest.raises(StudyDataError, match="session_id must be ses-1 or ses-2, got '2' in row 3"):
        StudyFolder(root=str(study_copy), protocol_file=str(protocol)).clinical()
