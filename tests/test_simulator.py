"""The study simulator: determinism, file validity, realism and the planted effects."""

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.signal import detrend

from kp_science.balloon import DCMParameters
from kp_science.simulator import SimulationOptions, simulate_study
from kp_science.simulator.effects import (
    HEADLINE_EFFECTS,
    MAX_LOOP_GAIN,
    simulate_clinical,
    simulate_parameters,
)
from kp_science.simulator.images import mni_grid
from kp_science.simulator.neural import integrate_dcm
from kp_science.simulator.study import SESSIONS, TASKS, plan_study
from tests.spm12 import spm12_fixture

TRUTH = Path("derivatives") / "simulation-truth"


def _truth_bytes(study: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((study / TRUTH).iterdir())}


def test_same_seed_gives_same_bytes(study_root, tmp_path):
    again = simulate_study(tmp_path / "again", participants=3, seed=0, voxel_size=8.0,
                           volumes=24)
    assert _truth_bytes(again) == _truth_bytes(study_root)
    bold = ("sub-02/ses-post/func/"
            "sub-02_ses-post_task-faces_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    assert (again / bold).read_bytes() == (study_root / bold).read_bytes()
    other = simulate_study(tmp_path / "other", participants=3, seed=1, voxel_size=8.0,
                           volumes=24)
    assert _truth_bytes(other)["parameters.tsv"] != _truth_bytes(study_root)["parameters.tsv"]


def test_every_image_loads_with_declared_shape_and_affine(study_root):
    grid = mni_grid(8.0)
    bolds = sorted(study_root.glob("sub-*/ses-*/func/*_desc-preproc_bold.nii.gz"))
    assert len(bolds) == 3 * len(SESSIONS) * len(TASKS)
    for bold in bolds:
        image = nib.load(bold)
        assert image.shape == (*grid.shape, 24), bold
        np.testing.assert_allclose(image.affine, grid.affine)
        assert image.header.get_zooms()[3] == pytest.approx(2.0)
        assert image.get_data_dtype() == np.int16
        data = image.get_fdata(dtype=np.float32)
        assert np.all(data[~grid.brain] == 0)
        sidecar = json.loads(bold.with_name(bold.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["RepetitionTime"] == 2.0
        mask = nib.load(str(bold).replace("desc-preproc_bold", "desc-brain_mask"))
        assert mask.shape == grid.shape
        np.testing.assert_array_equal(mask.get_fdata() > 0, grid.brain)
        stem = bold.name.split("_space-")[0]
        confounds = pd.read_csv(bold.with_name(f"{stem}_desc-confounds_timeseries.tsv"),
                                sep="\t", na_values="n/a")
        assert len(confounds) == 24
        task = stem.split("task-")[1]
        events = bold.with_name(f"{stem}_events.tsv")
        assert events.exists() == (task != "rest")


def test_grid_matches_fmriprep_2mm_template_grid():
    grid = mni_grid(2.0)
    assert grid.shape == (97, 115, 97)
    np.testing.assert_allclose(grid.affine[:3, 3], [-96, -132, -78])
    assert mni_grid(4.0).shape == (49, 58, 49)


def test_study_tables(study_root):
    participants = pd.read_csv(study_root / "participants.tsv", sep="\t")
    assert list(participants.participant_id) == ["sub-01", "sub-02", "sub-03"]
    assert set(participants.arm) <= {"ketamine", "midazolam"}
    caps = pd.read_csv(study_root / "phenotype" / "caps5.tsv", sep="\t")
    assert len(caps) == 6 and set(caps.session) == {"pre", "post"}
    truth = pd.read_csv(study_root / TRUTH / "parameters.tsv", sep="\t")
    assert {"participant_id", "session", "parameter", "value"} == set(truth.columns)
    for name in ["dcm.A[vmpfc->amygdala]", "dcm.B[emotional][amygdala->vmpfc]",
                 "dcm.C[faces][amygdala]", "faces.gppi.vmpfc->amygdala.emotional",
                 "conflict.activation.dacc.regulation", "rest.fc.vmpfc~insula_ant"]:
        assert (truth.parameter == name).sum() == 6, name


def test_refuses_to_overwrite_a_study(study_root):
    # a study kp simulated is replaced only when asked (tests/test_user_files.py: never others)
    with pytest.raises(FileExistsError, match=re.escape(f"{study_root}: holds a study kp s")):
        simulate_study(study_root, participants=1, voxel_size=8.0, volumes=24)


def test_realism_of_one_run(tmp_path):
    """tSNR 30–100, AR(1) 0.2–0.5, spatially smooth noise, mean FD 0.05–0.3 mm."""
    study = simulate_study(tmp_path / "s", participants=2, seed=3, voxel_size=4.0,
                           volumes=80)
    grid = mni_grid(4.0)
    fds = []
    for bold in sorted(study.glob("sub-*/ses-pre/func/*_desc-preproc_bold.nii.gz")):
        data = nib.load(bold).get_fdata(dtype=np.float32)
        voxels = data[grid.brain]
        tsnr = np.median(voxels.mean(1) / voxels.std(1))
        assert 30 <= tsnr <= 100, (bold.name, tsnr)
        residual = detrend(voxels, axis=1)
        ar1 = np.median((residual[:, 1:] * residual[:, :-1]).sum(1) / (residual**2).sum(1))
        assert 0.2 <= ar1 <= 0.5, (bold.name, ar1)
        full = detrend(data, axis=3)
        inner = grid.brain[:-1] & grid.brain[1:]
        neighbour = np.median([np.corrcoef(a, b)[0, 1] for a, b in
                               zip(full[:-1][inner][:500], full[1:][inner][:500], strict=True)])
        assert neighbour > 0.2, (bold.name, neighbour)
        stem = bold.name.split("_space-")[0]
        confounds = pd.read_csv(bold.with_name(f"{stem}_desc-confounds_timeseries.tsv"),
                                sep="\t", na_values="n/a")
        fds.append(confounds["framewise_displacement"].mean())
    assert all(0.05 <= fd <= 0.3 for fd in fds), fds


def _changes(parameters: pd.DataFrame, name: str, baseline: bool) -> pd.Series:
    wide = parameters[parameters.parameter == name].pivot(index="participant_id",
                                                           columns="session", values="value")
    return wide["pre"] if baseline else wide["post"] - wide["pre"]


@pytest.mark.parametrize("null", [False, True])
def test_planted_relations_explain_30_to_60_percent(null):
    rs = []
    for seed in range(5):
        planted, _ = plan_study(SimulationOptions(participants=21, seed=seed, null=null,
                                                  volumes={"faces": 16, "conflict": 16,
                                                           "rest": 16}))
        clinical = planted.clinical.set_index("participant_id")
        assert abs((clinical.arm == "ketamine").sum() - (clinical.arm == "midazolam").sum()) <= 1
        improvement = clinical.caps5_pre - clinical.caps5_post
        for effect in HEADLINE_EFFECTS:
            scope = clinical.arm.isin(effect.arms)
            values = _changes(planted.parameters, effect.parameter, effect.baseline)
            r = np.corrcoef(values[scope], improvement[scope])[0, 1]
            if null:
                rs.append(r)
            else:
                assert 0.3 <= r**2 <= 0.6, (effect.parameter, r**2)
                assert np.sign(r) == effect.direction
    if null:
        # no planted relation: correlations scatter around zero like sampling noise
        assert abs(np.mean(rs)) < 0.15
        assert np.mean(np.square(rs)) < 0.15


@pytest.mark.parametrize("null", [False, True])
def test_amygdala_vmpfc_loop_stays_stable(null):
    """stabilise_loop: in every session the loop gain a12·a21 / σ1σ2 stays at or below
    MAX_LOOP_GAIN with emotional faces off and on (their B modulations added)."""
    gains = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        clinical = simulate_clinical(21, rng)
        wide = simulate_parameters(clinical, null, rng).parameters.pivot_table(
            index=["participant_id", "session"], columns="parameter", values="value")
        a12, a21, b12, b21 = (wide[f"dcm.{name}"] for name in (
            "A[vmpfc->amygdala]", "A[amygdala->vmpfc]", "B[emotional][vmpfc->amygdala]",
            "B[emotional][amygdala->vmpfc]"))
        decay = 0.25 * np.exp(wide["dcm.A[amygdala->amygdala]"] + wide["dcm.A[vmpfc->vmpfc]"])
        gains.append(np.maximum(a12 * a21, (a12 + b12) * (a21 + b21)) / decay)
    gains = pd.concat(gains)
    assert gains.max() <= MAX_LOOP_GAIN + 1e-9
    assert (gains > MAX_LOOP_GAIN - 1e-9).any()  # the guard did act on some draws


def test_drug_interaction_is_steeper_on_ketamine():
    planted, _ = plan_study(SimulationOptions(participants=40, seed=1))
    clinical = planted.clinical.set_index("participant_id")
    improvement = clinical.caps5_pre - clinical.caps5_post
    change = _changes(planted.parameters, "faces.gppi.vmpfc->amygdala.emotional", False)
    slopes = {arm: np.polyfit(improvement[clinical.arm == arm], change[clinical.arm == arm], 1)[0]
              for arm in ("ketamine", "midazolam")}
    assert slopes["ketamine"] > 1.5 * slopes["midazolam"] > 0


@pytest.mark.parametrize("case", ["dev_2region_fwdmod", "dev_2region_bothmod",
                                  "dev_3region_chain"])
def test_forward_model_matches_spm12_prediction(case):
    """Integrating SPM's posterior parameters reproduces SPM's predicted BOLD (the simulator
    integrates the nonlinear system, SPM its bilinear approximation, so not to the digit)."""
    fixture = spm12_fixture("spm12_dcm", case)
    spm = fixture["spm"]
    params = DCMParameters(np.array(spm["Ep_A"]), np.array(spm["Ep_B"]), np.array(spm["Ep_C"]),
                           np.array(spm["Ep_transit"]), spm["Ep_decay"], spm["Ep_epsilon"])
    bold = integrate_dcm([params], np.array(fixture["u"], float)[None], fixture["TR"])[0]
    expected = np.array(spm["y_hat"])
    bold, expected = bold - bold.mean(0), expected - expected.mean(0)
    for region in range(bold.shape[1]):
        assert np.corrcoef(bold[:, region], expected[:, region])[0, 1] > 0.995
        error = bold[:, region] - expected[:, region]
        rel = np.sqrt(np.mean(error**2)) / expected[:, region].std()
        assert rel < 0.15
