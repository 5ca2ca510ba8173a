"""The simulated study on disk (kp_science.simulator.study): reproducible, readable, never
overwriting."""

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kp_science.simulator import simulate_study
from kp_science.simulator.images import mni_grid
from kp_science.simulator.study import SESSIONS, TASKS

TRUTH = Path("derivatives") / "simulation-truth"


def _truth_bytes(study: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((study / TRUTH).iterdir())}


def test_same_seed_gives_same_bytes(study_root, tmp_path):
    again = simulate_study(tmp_path / "again", participants=3, seed=0, voxel_size=8.0, volumes=24)
    assert _truth_bytes(again) == _truth_bytes(study_root)
    bold = (
        "sub-02/ses-post/func/"
        "sub-02_ses-post_task-faces_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    )
    assert (again / bold).read_bytes() == (study_root / bold).read_bytes()
    other = simulate_study(tmp_path / "other", participants=3, seed=1, voxel_size=8.0, volumes=24)
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
        confounds = pd.read_csv(
            bold.with_name(f"{stem}_desc-confounds_timeseries.tsv"), sep="\t", na_values="n/a"
        )
        assert len(confounds) == 24
        task = stem.split("task-")[1]
        events = bold.with_name(f"{stem}_events.tsv")
        assert events.exists() == (task != "rest")


def test_study_tables(study_root):
    participants = pd.read_csv(study_root / "participants.tsv", sep="\t")
    assert list(participants.participant_id) == ["sub-01", "sub-02", "sub-03"]
    assert set(participants.arm) <= {"ketamine", "midazolam"}
    caps = pd.read_csv(study_root / "phenotype" / "caps5.tsv", sep="\t")
    assert len(caps) == 6 and set(caps.session) == {"pre", "post"}
    truth = pd.read_csv(study_root / TRUTH / "parameters.tsv", sep="\t")
    assert {"participant_id", "session", "parameter", "value"} == set(truth.columns)
    for name in [
        "dcm.A[vmpfc->amygdala]",
        "dcm.B[emotional][amygdala->vmpfc]",
        "dcm.C[faces][amygdala]",
        "faces.gppi.vmpfc->amygdala.emotional",
        "conflict.activation.dacc.regulation",
        "rest.fc.vmpfc~insula_ant",
    ]:
        assert (truth.parameter == name).sum() == 6, name


def test_refuses_to_overwrite_a_study(study_root):
    # a study kp simulated is replaced only when asked
    # (tests/system/test_user_files.py: never others)
    with pytest.raises(FileExistsError, match=re.escape(f"{study_root}: holds a study kp s")):
        simulate_study(study_root, participants=1, voxel_size=8.0, volumes=24)
