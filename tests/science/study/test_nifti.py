"""Reading NIfTI images block by block (kp_science.study.nifti)."""

import gzip
import hashlib

import nibabel as nib
import numpy as np
import pytest

from kp_science.study.errors import StudyDataError
from kp_science.study.layout import discover_participants, find_runs
from kp_science.study.nifti import open_nifti, read_nifti
from kp_science.study.reading import sha256_file

SHAPE = (5, 4, 3, 7)  # 60 voxels a volume, 7 volumes
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def write_image(path, data, dtype, endianness="<", slope=None, inter=None):
    """``data`` stored as ``dtype`` with the given byte order (and scaling) at ``path``."""
    header = nib.Nifti1Header(endianness=endianness)
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(data.astype(dtype), AFFINE, header)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


def streamed(path, block_bytes):
    """(all volumes read block by block as (t, voxels) raw, first volumes, sha256); every
    block is checked to have the on-disk dtype, byte order included."""
    with open_nifti(path) as stream:
        firsts, blocks = [], []
        for first, block in stream.volume_blocks(block_bytes):
            assert not block.flags.writeable and block.dtype == stream.header.dtype
            firsts.append(first)
            blocks.append(block.copy())  # the buffer is reused for the next block
        return np.concatenate(blocks), firsts, stream.sha256


def test_read_nifti_hash_matches_file(study_root):
    run = find_runs(study_root, discover_participants(study_root)[0])[0]
    img = read_nifti(run.bold_path)
    assert img.sha256 == sha256_file(run.bold_path)
    assert img.data.ndim == 4 and img.data.flags.f_contiguous
    np.testing.assert_allclose(
        img.data * img.slope + img.inter, nib.load(run.bold_path).get_fdata(), rtol=1e-6
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_blocks_equal_nibabel_for_every_dtype_and_byte_order(tmp_path, dtype, endianness, suffix):
    data = np.random.default_rng(0).uniform(0, 100, SHAPE)
    path = write_image(tmp_path / f"bold{suffix}", data, dtype, endianness)
    image = nib.load(path)
    with open_nifti(path) as stream:
        assert stream.header.dtype == image.get_data_dtype()  # byte order included
    expected = np.asanyarray(image.dataobj)  # unscaled: the stored values
    volume_bytes = 60 * np.dtype(dtype).itemsize
    # 3 volumes a block: blocks of 3, 3 and 1 (the block does not divide the 7 volumes)
    values, firsts, sha = streamed(path, 3 * volume_bytes + 1)
    assert firsts == [0, 3, 6]
    np.testing.assert_array_equal(values, expected.reshape(-1, 7, order="F").T)
    assert sha == sha256_file(path)


def test_several_gzip_members(tmp_path):
    """A .nii.gz written as three gzip members (split inside the header and inside a volume)
    reads as the one file it is; the hash is of the bytes on disk."""
    data = np.random.default_rng(1).normal(500, 5, SHAPE).astype(np.float32)
    plain = write_image(tmp_path / "bold.nii", data, np.float32).read_bytes()
    path = tmp_path / "bold.nii.gz"
    path.write_bytes(
        b"".join(gzip.compress(part) for part in (plain[:100], plain[100:999], plain[999:]))
    )
    values, firsts, sha = streamed(path, 2 * 60 * 4)
    assert firsts == [0, 2, 4, 6]
    np.testing.assert_array_equal(values, data.reshape(-1, 7, order="F").T)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


def test_scaled_int16_reads_raw_values_and_scaling(tmp_path):
    data = np.random.default_rng(2).integers(-300, 300, SHAPE)
    path = write_image(tmp_path / "bold.nii.gz", data, np.int16, slope=0.5, inter=10.0)
    image = read_nifti(path)
    assert (image.slope, image.inter) == (0.5, 10.0) and image.data.dtype == np.int16
    np.testing.assert_array_equal(image.data, data)
    np.testing.assert_array_equal(image.data * 0.5 + 10.0, nib.load(path).get_fdata())
    assert image.tr_s == 1.0 and image.zooms_mm == (2.0, 2.0, 2.0)


def _damaged(tmp_path, damage):
    data = np.random.default_rng(3).normal(500, 5, SHAPE).astype(np.float32)
    path = write_image(tmp_path / "bold.nii.gz", data, np.float32)
    path.write_bytes(damage(path.read_bytes()))
    return path


def _flip_in_deflate_data(raw: bytes) -> bytes:
    damaged = bytearray(raw)
    damaged[len(raw) // 2] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (lambda raw: raw[: len(raw) // 2], "truncated"),  # cut inside the voxel data
        (lambda raw: raw[:-4], "truncated"),  # every voxel there, the gzip trailer cut
        (_flip_in_deflate_data, "corrupt"),  # a flipped byte: bad deflate data or CRC
        (lambda raw: raw[:-8] + bytes(8), "corrupt"),  # CRC and length zeroed
        (lambda raw: bytes(64) + raw, "corrupt"),  # not a gzip file
    ],
)
def test_damaged_file_raises_naming_it(tmp_path, spoil, words):
    path = _damaged(tmp_path, spoil)
    with pytest.raises(StudyDataError, match=words) as info:
        streamed(path, 60 * 4)
    assert info.value.path == str(path) and str(path) in str(info.value)
    with pytest.raises(StudyDataError, match=words):
        read_nifti(path)


def test_uncompressed_file_ending_early_says_how_many_bytes(tmp_path):
    data = np.zeros(SHAPE, np.float32)
    path = write_image(tmp_path / "bold.nii", data, np.float32)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StudyDataError, match=r"truncated image: file ends after 1580 of 1680"):
        streamed(path, 60 * 4)


def test_voxel_data_is_read_once(tmp_path):
    path = write_image(tmp_path / "bold.nii.gz", np.ones(SHAPE), np.int16)
    with open_nifti(path) as stream:
        with pytest.raises(RuntimeError, match="only after reading"):
            _ = stream.sha256
        for _ in stream.volume_blocks():
            pass
        with pytest.raises(RuntimeError, match="read once"):
            next(iter(stream.volume_blocks()))
