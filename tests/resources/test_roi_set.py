"""The ROI set resource (kp_resources.roi_set): the default spheres and atlases."""

import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kp_resources.roi_set import RoiSet
from kp_science.study.protocol import DEFAULT_PROTOCOL_PATH, default_protocol, load_protocol

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


def test_default_roi_set_is_the_six_literature_spheres():
    rois = RoiSet()
    assert rois.names == ["amygdala", "vmpfc", "racc", "dacc", "hippocampus_ant", "insula_ant"]
    definition = rois.definition()
    assert definition["kind"] == "spheres" and definition["radius_mm"] == 6.0
    assert len(rois.fingerprint()) == 12
    assert RoiSet(radius_mm=5.0).fingerprint() != rois.fingerprint()


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
    assert (
        definition["atlas"]["sha256"]
        == hashlib.sha256((tmp_path / "atlas.nii.gz").read_bytes()).hexdigest()
    )
    assert (
        definition["lookup"]["sha256"]
        == hashlib.sha256((tmp_path / "lookup.tsv").read_bytes()).hexdigest()
    )
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


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ("1\tamygdala\n1\tvmpfc\n", "appears twice"),
        ("0\tamygdala\n", "background"),
        ("x\tamygdala\n", "not an integer"),
        ("7\tamygdala\n", "no voxel with label"),
    ],
)
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


def test_the_study_protocol_declares_the_atlas(tmp_path, block_atlas):
    labels, affine = block_atlas
    declared = write_atlas(tmp_path, labels, affine, "1\tamygdala\n2\tamygdala\n3\tvmpfc\n")
    text = DEFAULT_PROTOCOL_PATH.read_text().replace(
        "  atlas: null\n  lookup: null", "  atlas: atlas.nii.gz\n  lookup: lookup.tsv"
    )
    (tmp_path / "kp-protocol.yaml").write_text(text)
    protocol = load_protocol(tmp_path / "kp-protocol.yaml")
    chosen = RoiSet(radius_mm=5.0).for_protocol(protocol)
    assert chosen.atlas_path == declared.atlas_path and chosen.radius_mm == 5.0
    assert chosen.names == ["amygdala", "vmpfc"]
    assert RoiSet().for_protocol(default_protocol(tmp_path)) == RoiSet()  # spheres
    other = RoiSet(atlas_path=str(tmp_path / "x.nii.gz"), lookup_path=str(tmp_path / "x.tsv"))
    with pytest.raises(ValueError, match="declare the study's ROI atlas in one place"):
        other.for_protocol(protocol)
