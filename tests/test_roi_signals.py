"""ROI definition (spheres, user atlas), one-pass extraction, confound cleaning and ROI plots."""

import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kp_resources.roi_set import RoiSet
from kp_science.roi_signals import (
    CleaningStrategy,
    clean_roi_signals,
    extract_roi_means,
    load_run_confounds,
    sphere_voxels,
)
from kp_science.study.layout import find_runs
from kp_science.study.nifti import read_nifti

EYE = np.eye(4)  # 1 mm voxels, voxel (i, j, k) at (i, j, k) mm
SHAPE = (20, 20, 20)


def flat_index(*ijk: tuple[int, int, int], shape=SHAPE) -> np.ndarray:
    return np.sort(np.ravel_multi_index(tuple(np.array(ijk).T), shape, order="F"))


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
    centres = {"insula_ant": ((0.0, 10.0, 10.0),), "dacc": ((-5.0, 10.0, 10.0),),
               "racc": ((10.0, 10.0, 10.0),)}
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


def test_default_roi_set_is_the_six_literature_spheres():
    rois = RoiSet()
    assert rois.names == ["amygdala", "vmpfc", "racc", "dacc", "hippocampus_ant", "insula_ant"]
    definition = rois.definition()
    assert definition["kind"] == "spheres" and definition["radius_mm"] == 6.0
    assert len(rois.fingerprint()) == 12
    assert RoiSet(radius_mm=5.0).fingerprint() != rois.fingerprint()


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
        19, 18, 2, 1, 15)
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


# --- user atlas -------------------------------------------------------------------------------


def write_atlas(folder: Path, labels: np.ndarray, affine: np.ndarray, rows: str) -> RoiSet:
    atlas, lookup = folder / "atlas.nii.gz", folder / "lookup.tsv"
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), atlas)
    lookup.write_text("index\tname\n" + rows)
    return RoiSet(atlas_path=str(atlas), lookup_path=str(lookup))


@pytest.fixture
def block_atlas() -> tuple[np.ndarray, np.ndarray]:
    """A 12³ label image of 4 mm voxels: labels 1 and 2 (left/right), 3, and unmapped 4."""
    labels = np.zeros((12, 12, 12), np.int16)
    labels[1:4, 2:6, 2:6] = 1
    labels[8:11, 2:6, 2:6] = 2
    labels[4:8, 7:10, 6:9] = 3
    labels[0, 0, 0] = 4
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    return labels, affine


def test_atlas_maps_several_labels_to_one_region(tmp_path, block_atlas):
    labels, affine = block_atlas
    rois = write_atlas(tmp_path, labels, affine, "3\tvmpfc\n1\tamygdala\n2\tamygdala\n")
    assert rois.names == ["amygdala", "vmpfc"]  # canonical order, not file order
    placed = {r.name: r for r in rois.voxels(affine, labels.shape)}
    flat = labels.reshape(-1, order="F")
    np.testing.assert_array_equal(placed["amygdala"].flat, np.flatnonzero(np.isin(flat, [1, 2])))
    np.testing.assert_array_equal(placed["vmpfc"].flat, np.flatnonzero(flat == 3))
    assert placed["amygdala"].n_defined == 2 * 3 * 4 * 4

    definition = rois.definition()
    assert definition["kind"] == "atlas"
    assert definition["atlas"]["sha256"] == hashlib.sha256(
        (tmp_path / "atlas.nii.gz").read_bytes()).hexdigest()
    assert definition["lookup"]["sha256"] == hashlib.sha256(
        (tmp_path / "lookup.tsv").read_bytes()).hexdigest()
    assert definition["lookup"]["labels"] == {"amygdala": [1, 2], "vmpfc": [3]}

    # the fingerprint follows the contents, not where the files are
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("atlas.nii.gz", "lookup.tsv"):
        shutil.copy(tmp_path / name, moved / name)
    same = RoiSet(atlas_path=str(moved / "atlas.nii.gz"), lookup_path=str(moved / "lookup.tsv"))
    assert same.fingerprint() == rois.fingerprint() != RoiSet().fingerprint()
    (moved / "lookup.tsv").write_text("index\tname\n1\tamygdala\n2\tamygdala\n3\tracc\n")
    assert same.fingerprint() != rois.fingerprint()


def test_atlas_unknown_name_is_a_clear_error(tmp_path, block_atlas):
    rois = write_atlas(tmp_path, *block_atlas, "1\tamygdala\n2\tthalamus\n")
    with pytest.raises(ValueError, match=r"lookup\.tsv: unknown ROI name\(s\) 'thalamus'"):
        rois.names  # noqa: B018


@pytest.mark.parametrize(("rows", "problem"), [
    ("1\tamygdala\n1\tvmpfc\n", "appears twice"),
    ("0\tamygdala\n", "background"),
    ("x\tamygdala\n", "not an integer"),
    ("7\tamygdala\n", "no voxel with label"),
])
def test_atlas_lookup_problems(tmp_path, block_atlas, rows, problem):
    labels, affine = block_atlas
    rois = write_atlas(tmp_path, labels, affine, rows)
    with pytest.raises(ValueError, match=problem):
        rois.voxels(affine, labels.shape)


def test_atlas_needs_both_files(tmp_path):
    with pytest.raises(ValueError, match="must be set together"):
        RoiSet(atlas_path=str(tmp_path / "atlas.nii.gz")).names  # noqa: B018


def test_atlas_is_resampled_by_nearest_neighbour(tmp_path, block_atlas):
    labels, affine = block_atlas
    rois = write_atlas(tmp_path, labels, affine, "1\tamygdala\n2\tamygdala\n3\tvmpfc\n")
    # a 2 mm grid offset by 0.5 mm: every target voxel has one nearest atlas voxel (no ties)
    target = np.diag([2.0, 2.0, 2.0, 1.0])
    target[:3, 3] = 0.5
    shape = (20, 20, 20)
    placed = {r.name: r for r in rois.voxels(target, shape)}

    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    source = np.rint((ijk * 2.0 + 0.5) / 4.0).astype(int)
    nearest = labels[tuple(source.T)]
    order = np.argsort(np.ravel_multi_index(tuple(ijk.T), shape, order="F"))
    nearest = nearest[order]  # in Fortran voxel order
    np.testing.assert_array_equal(placed["amygdala"].flat, np.flatnonzero(np.isin(nearest, [1, 2])))
    np.testing.assert_array_equal(placed["vmpfc"].flat, np.flatnonzero(nearest == 3))
    # about 2³ target voxels per atlas voxel (fewer at the edge of the target grid)
    assert 600 < placed["amygdala"].n_defined == len(placed["amygdala"].flat) <= 8 * 96


# --- cleaning, against nilearn ----------------------------------------------------------------


def rest_run(root: Path):
    return next(r for r in find_runs(root, "sub-01") if r.task == "rest" and r.session == "pre")


def test_cleaned_means_equal_nilearn_labels_masker(study_root):
    from nilearn.maskers import NiftiLabelsMasker

    run = rest_run(study_root)
    image = read_nifti(run.bold_path)
    brain = read_nifti(run.mask_path).data
    rois = RoiSet().voxels(image.affine, image.shape[:3])
    extraction = extract_roi_means(image.data, brain, rois, image.slope, image.inter)
    assert (extraction.coverage["n_used"] > 0).all()
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
    np.testing.assert_allclose(ours.to_numpy() * baseline / 100, expected,
                               rtol=0, atol=1e-8 * np.abs(expected).max())


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


# --- plots ------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_roi_plots_are_small_pngs():
    from kp_science.figures import markdown_image
    from kp_science.roi_plots import connectivity_matrix_png, roi_positions_png

    positions = roi_positions_png(RoiSet())
    names = RoiSet().names
    r = np.corrcoef(np.random.default_rng(4).normal(size=(len(names), 30)))
    r[0, 1] = r[1, 0] = np.nan  # a missing pair is drawn grey, not an error
    matrix = connectivity_matrix_png(pd.DataFrame(r, names, names), "rest FC (r)")
    for png in (positions, matrix):
        assert png.startswith(PNG_SIGNATURE) and len(png) <= 100_000
    markdown = markdown_image(matrix, "rest [FC]")
    assert markdown.startswith("![rest (FC)](data:image/png;base64,iVBORw0KGgo")
