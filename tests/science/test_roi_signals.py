"""Spheres, ROI means and their cleaning (kp_science.roi_signals)."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kp_resources.roi_set import RoiSet
from kp_science.cleaning import CleaningStrategy
from kp_science.roi_signals import (
    Extraction,
    RoiValues,
    RoiVoxels,
    clean_roi_signals,
    load_run_confounds,
    sphere_voxels,
    stream_roi_means,
)
from kp_science.study.layout import find_runs
from kp_science.study.nifti import open_nifti, read_nifti

EYE = np.eye(4)  # 1 mm voxels, voxel (i, j, k) at (i, j, k) mm


SHAPE = (20, 20, 20)


def flat_index(*ijk: tuple[int, int, int], shape=SHAPE) -> np.ndarray:
    return np.sort(np.ravel_multi_index(tuple(np.array(ijk).T), shape, order="F"))


def extract_roi_means(
    data: np.ndarray,
    brain: np.ndarray,
    rois: list[RoiVoxels],
    slope: float = 1.0,
    inter: float = 0.0,
    per_block: int = 5,
) -> Extraction:
    """:class:`RoiValues` fed an in-memory run (x, y, z, t) in blocks of ``per_block`` volumes,
    as the run's decompression feeds it."""
    n_volumes = data.shape[3]
    by_volume = data.reshape(-1, n_volumes, order="F").T  # (t, voxels), NIfTI voxel order
    values = RoiValues(rois, brain, n_volumes, data.dtype)
    for first in range(0, n_volumes, per_block):
        values.add(first, by_volume[first : first + per_block])
    return values.extraction(slope, inter)


def reference_means(path: Path, brain: np.ndarray, rois: list[RoiVoxels]) -> pd.DataFrame:
    """The ROI means of a run computed in memory from nibabel's scaled array, usable voxels
    (in the brain, finite, not flat) only."""
    data = np.asanyarray(nib.load(path).dataobj)
    by_voxel = data.reshape(-1, data.shape[3], order="F")
    in_brain = brain.reshape(-1, order="F") != 0
    means = {}
    for roi in rois:
        values = by_voxel[roi.flat[in_brain[roi.flat]]].astype(np.float64)
        finite = np.isfinite(values).all(axis=1)
        usable = values[finite][np.ptp(values[finite], axis=1) > 0]
        means[roi.name] = usable.mean(axis=0)
    return pd.DataFrame(means)


# --- cleaning, against nilearn ----------------------------------------------------------------


def rest_run(root: Path):
    return next(r for r in find_runs(root, "sub-01") if r.task == "rest" and r.session == "pre")


# --- spheres ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("radius", "count"), [(0.5, 1), (1.0, 7), (1.5, 19), (2.0, 33)])
def test_sphere_voxel_counts(radius, count):
    (roi,) = sphere_voxels(EYE, SHAPE, {"vmpfc": ((10.0, 10.0, 10.0),)}, radius)
    assert roi.n_defined == count and len(roi.flat) == count
    assert np.all(np.diff(roi.flat) > 0)  # sorted, no duplicates


def test_sphere_on_scaled_grid_and_two_sphere_region():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -20.0  # voxel (10, 10, 10) is the origin
    (roi,) = sphere_voxels(affine, SHAPE, {"amygdala": ((-6.0, 0, 0), (6.0, 0, 0))}, 2.0)
    assert roi.n_defined == 14  # two disjoint 7-voxel spheres make one region
    centre = flat_index((7, 10, 10), (13, 10, 10))
    assert np.isin(centre, roi.flat).all()


def test_sphere_overlap_names_both_regions():
    centres = {"racc": ((10.0, 10.0, 10.0),), "dacc": ((11.0, 10.0, 10.0),)}
    with pytest.raises(ValueError, match="'racc' and 'dacc' overlap by 2 voxel"):
        sphere_voxels(EYE, SHAPE, centres, 1.0)
    a, b = sphere_voxels(EYE, SHAPE, centres, 1.0, allow_overlap=True)
    assert np.intersect1d(a.flat, b.flat).size == 2


def test_sphere_outside_image_lowers_coverage():
    centres = {
        "insula_ant": ((0.0, 10.0, 10.0),),
        "dacc": ((-5.0, 10.0, 10.0),),
        "racc": ((10.0, 10.0, 10.0),),
    }
    rois = {r.name: r for r in sphere_voxels(EYE, SHAPE, centres, 1.0)}
    assert (rois["insula_ant"].n_defined, len(rois["insula_ant"].flat)) == (7, 6)
    assert (rois["dacc"].n_defined, len(rois["dacc"].flat)) == (7, 0)

    data = np.random.default_rng(0).normal(100, 1, (*SHAPE, 8))
    result = extract_roi_means(data, np.ones(SHAPE), list(rois.values()))
    coverage = result.coverage.set_index("roi")
    assert coverage.loc["insula_ant", "coverage"] == pytest.approx(6 / 7)
    assert coverage.loc["dacc", "coverage"] == 0.0
    assert coverage.loc["racc", "coverage"] == 1.0
    assert result.signals["dacc"].isna().all()  # no usable voxel: NaN, and only then
    assert result.signals[["insula_ant", "racc"]].notna().all().all()


# --- extraction -------------------------------------------------------------------------------


def test_extraction_excludes_and_counts_unusable_voxels():
    rng = np.random.default_rng(1)
    data = rng.normal(500, 5, (*SHAPE, 12))
    (roi,) = sphere_voxels(EYE, SHAPE, {"vmpfc": ((10.0, 10.0, 10.0),)}, 1.5)  # 19 voxels
    brain = np.ones(SHAPE, np.uint8)
    brain[10, 10, 11] = 0  # outside the brain
    data[10, 10, 9, 4] = np.nan  # one non-finite value drops the voxel
    data[11, 10, 10, :] = 321.0  # a flat voxel
    data[9, 10, 10, :] = np.inf
    result = extract_roi_means(data, brain, [roi])
    row = result.coverage.iloc[0]
    assert (row.n_defined, row.n_in_brain, row.n_nonfinite, row.n_flat, row.n_used) == (
        19,
        18,
        2,
        1,
        15,
    )
    assert row.coverage == pytest.approx(15 / 19)

    used = np.ones(SHAPE, bool)
    used[10, 10, 11] = used[10, 10, 9] = used[11, 10, 10] = used[9, 10, 10] = False
    in_roi = np.zeros(int(np.prod(SHAPE)), bool)
    in_roi[roi.flat] = True
    keep = in_roi & used.reshape(-1, order="F")
    expected = data.reshape(-1, 12, order="F")[keep].mean(axis=0)
    np.testing.assert_allclose(result.signals["vmpfc"], expected, rtol=1e-12)
    assert result.signals.notna().all().all()


def test_extraction_applies_scaling_to_stored_integers():
    rng = np.random.default_rng(2)
    stored = np.asfortranarray(rng.integers(100, 200, (*SHAPE, 6)).astype(np.int16))
    (roi,) = sphere_voxels(EYE, SHAPE, {"racc": ((5.0, 5.0, 5.0),)}, 1.0)
    scaled = extract_roi_means(stored, np.ones(SHAPE), [roi], slope=0.5, inter=10.0)
    physical = extract_roi_means(stored * 0.5 + 10.0, np.ones(SHAPE), [roi])
    np.testing.assert_allclose(scaled.signals, physical.signals, rtol=1e-12)


@pytest.mark.parametrize(
    ("stored", "slope", "inter"), [(np.float32, None, None), (np.int16, 0.25, 100.0)]
)
def test_streamed_means_equal_the_in_memory_reference(tmp_path, stored, slope, inter):
    """A .nii.gz run read 3 volumes a block (the blocks do not divide its 8 volumes): the
    means equal nibabel's whole array averaged the same way, to the last bit — the same
    values (nibabel scales int16 to float64 as raw·slope + inter too) summed in the same
    order; unusable voxels are counted as the in-memory path counts them."""
    rng = np.random.default_rng(7)
    data = rng.normal(800, 20, (*SHAPE, 8))
    centres = {"vmpfc": ((10.0, 10.0, 10.0),), "amygdala": ((4.0, 4.0, 4.0), (15.0, 4.0, 4.0))}
    rois = sphere_voxels(EYE, SHAPE, centres, 2.0)
    brain = np.ones(SHAPE, np.uint8)
    brain[10, 10, 12] = 0  # an ROI voxel outside the brain
    data[11, 10, 10, :] = 790.0  # a flat voxel
    if stored == np.float32:
        data[9, 10, 10, 5] = np.nan  # a voxel non-finite in one volume
    header = nib.Nifti1Header()
    header.set_data_dtype(stored)
    raw = data if slope is None else np.round((data - inter) / slope)
    image = nib.Nifti1Image(raw.astype(stored), EYE, header)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    path = tmp_path / "bold.nii.gz"
    nib.save(image, path)

    with open_nifti(path) as bold:
        result = stream_roi_means(bold, brain, rois, block_bytes=3 * 8000 * raw.itemsize)
    pd.testing.assert_frame_equal(
        result.signals, reference_means(path, brain, rois), check_exact=True
    )
    vmpfc = result.coverage.set_index("roi").loc["vmpfc"]
    n_nonfinite = 1 if stored == np.float32 else 0
    assert (vmpfc.n_defined, vmpfc.n_in_brain, vmpfc.n_nonfinite, vmpfc.n_flat) == (
        33,
        32,
        n_nonfinite,
        1,
    )
    assert vmpfc.n_used == 31 - n_nonfinite


def test_blocks_must_match_the_mask_grid_and_come_in_order():
    (roi,) = sphere_voxels(EYE, SHAPE, {"racc": ((5.0, 5.0, 5.0),)}, 1.0)
    values = RoiValues([roi], np.ones(SHAPE), 4, np.dtype(np.float32))
    with pytest.raises(ValueError, match="grids differ"):
        values.add(0, np.zeros((2, 7999), np.float32))
    with pytest.raises(ValueError, match="got 2, expected 0"):
        values.add(2, np.zeros((2, 8000), np.float32))
    values.add(0, np.zeros((2, 8000), np.float32))
    with pytest.raises(ValueError, match="2 of 4 volumes"):
        values.extraction()


def test_cleaned_means_equal_nilearn_labels_masker(study_root):
    from nilearn.maskers import NiftiLabelsMasker

    run = rest_run(study_root)
    brain = read_nifti(run.mask_path).data
    with open_nifti(run.bold_path) as bold:
        image = bold.header
        rois = RoiSet().voxels(image.affine, image.shape[:3])
        extraction = stream_roi_means(bold, brain, rois, block_bytes=1000)  # a volume a block
    assert (extraction.coverage["n_used"] > 0).all()
    # the simulator's scaled int16 run: the same means as nibabel's whole array
    pd.testing.assert_frame_equal(
        extraction.signals, reference_means(run.bold_path, brain, rois), check_exact=True
    )
    confounds, kept = load_run_confounds(run.bold_path, CleaningStrategy())
    ours = clean_roi_signals(extraction.signals, confounds, kept, image.tr_s)
    assert list(ours.columns) == RoiSet().names and list(ours.index) == list(kept)

    # the same voxels (in the brain) as a label image for nilearn
    labels = np.zeros(int(np.prod(image.shape[:3])), np.int16)
    in_brain = brain.reshape(-1, order="F") != 0
    for i, roi in enumerate(rois):
        labels[roi.flat[in_brain[roi.flat]]] = i + 1
    label_image = nib.Nifti1Image(labels.reshape(image.shape[:3], order="F"), image.affine)
    masker = NiftiLabelsMasker(label_image, standardize=None, detrend=False, t_r=image.tr_s)
    theirs = masker.fit_transform(str(run.bold_path), confounds=confounds, sample_mask=kept)

    baseline = extraction.signals.to_numpy()[kept].mean(axis=0)
    expected = theirs - theirs.mean(axis=0)
    np.testing.assert_allclose(
        ours.to_numpy() * baseline / 100, expected, rtol=0, atol=1e-8 * np.abs(expected).max()
    )


def test_sample_mask_scrubs_high_motion_volumes(study_root, tmp_path):
    run = rest_run(study_root)
    strategy = CleaningStrategy()
    _, kept_before = load_run_confounds(run.bold_path, strategy)
    table = pd.read_csv(run.confounds_path, sep="\t")
    n = len(table)
    assert list(kept_before) == list(range(n))  # the simulated run has no spike

    def with_spikes(volumes: list[int]) -> Path:
        """The BOLD path of a copy of the run whose FD is 2 mm at ``volumes``; each copy in
        its own folder, so no cache keyed on the file can hand back an earlier version."""
        func = Path(shutil.copytree(run.bold_path.parent, tmp_path / f"spikes{volumes}"))
        spiked = table.copy()
        spiked.loc[volumes, "framewise_displacement"] = 2.0  # above fd_threshold (0.5 mm)
        spiked.to_csv(func / run.confounds_path.name, sep="\t", index=False, na_rep="n/a")
        return func / run.bold_path.name

    confounds, kept = load_run_confounds(with_spikes([12]), strategy)
    assert list(kept) == [v for v in range(n) if v != 12]
    signals = pd.DataFrame(np.random.default_rng(3).normal(800, 5, (n, 2)), columns=["a", "b"])
    cleaned = clean_roi_signals(signals, confounds, kept, 2.0)
    assert list(cleaned.index) == list(kept) and cleaned.notna().all().all()

    # a spike near the start leaves a segment shorter than `scrub` volumes: it goes too
    _, kept = load_run_confounds(with_spikes([3, 12]), strategy)
    assert list(kept) == [v for v in range(4, n) if v != 12]


def test_confounds_from_an_explicit_path_with_more_entities(study_root, tmp_path):
    """A run named as fMRIPrep names real data (acq, rec, run, res entities, confounds file
    not derivable by cutting at _space-) loads from the run's confounds path; volumes an
    added non-steady-state column marks leave the kept volumes and the cleaned signals."""
    run = rest_run(study_root)
    expected, kept_expected = load_run_confounds(run.bold_path, CleaningStrategy())
    entities = "sub-01_ses-pre_task-rest_acq-mb_rec-norm_run-1"
    bold = tmp_path / f"{entities}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz"
    tsv = tmp_path / f"{entities}_echo-2_desc-confounds_timeseries.tsv"  # not the derived name
    shutil.copyfile(run.confounds_path, tsv)
    confounds, kept = load_run_confounds(bold, CleaningStrategy(), confounds_path=tsv)
    pd.testing.assert_frame_equal(confounds, expected)
    assert list(kept) == list(kept_expected)

    table = pd.read_csv(tsv, sep="\t")
    n = len(table)
    table["non_steady_state_outlier00"] = np.eye(n)[0]
    table["non_steady_state_outlier01"] = np.eye(n)[1]
    marked = tmp_path / "marked"
    marked.mkdir()
    table.to_csv(marked / tsv.name, sep="\t", index=False, na_rep="n/a")
    confounds, kept = load_run_confounds(bold, CleaningStrategy(), marked / tsv.name)
    assert list(kept) == list(range(2, n))
    assert list(confounds.columns) == list(expected.columns)  # indicators are no regressors
    signals = pd.DataFrame(np.random.default_rng(5).normal(800, 5, (n, 2)), columns=["a", "b"])
    cleaned = clean_roi_signals(signals, confounds, kept, 2.0)
    assert list(cleaned.index) == list(range(2, n)) and cleaned.notna().all().all()
