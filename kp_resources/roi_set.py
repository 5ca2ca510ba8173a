"""The ROI set resource: which regions every ROI-based table is built from.

Default: spheres of ``radius_mm`` at the literature MNI coordinates of
:mod:`kp_science.rois`. Optionally a user label atlas instead: a NIfTI label image
(``atlas_path``) and a TSV lookup table (``lookup_path``, columns ``index`` and ``name``) that
maps labels to the six region names (several labels may make one region, e.g. left and
right). The definition (coordinates and radius, or the atlas and lookup checksums; the coverage
rule) goes into the provenance of every table built from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import dagster as dg
import nibabel as nib
import numpy as np
import pandas as pd

from kp_science.roi_plots import roi_positions_png
from kp_science.roi_signals import RoiVoxels, atlas_voxels, sphere_voxels
from kp_science.rois import ROI_CENTRES_MM, ROI_NAMES
from kp_science.study.protocol import StudyProtocol

# Keys of :meth:`RoiSet.definition` that say where a file is, not what it holds: left out of
# the fingerprint so moving the atlas does not invalidate every table built from it.
_LOCATION_KEYS = frozenset({"path"})


class RoiSet(dg.ConfigurableResource):
    """Spherical ROIs at literature coordinates, or a user label atlas.

    radius_mm: sphere radius (mm). allow_overlap: permit spheres that share voxels.
    min_coverage: the fraction of an ROI's voxels that must be usable (inside the image and
    brain mask, finite, not flat) in every run. allow_partial_coverage: record low coverage
    (an asset check reports it) instead of failing the participant.
    atlas_path: a 3-D NIfTI label image (integer labels, 0 = background), any grid; it is
    resampled to each run's grid by nearest neighbour. lookup_path: TSV with columns ``index``
    (label) and ``name`` (one of amygdala, vmpfc, racc, dacc, hippocampus_ant, insula_ant).
    Set both or neither; with an atlas, ``radius_mm`` and ``allow_overlap`` are unused. A
    study declares its atlas in its protocol (``rois:``, :meth:`for_protocol`); these two
    fields are for trying another atlas in a run's configuration.
    """

    radius_mm: float = 6.0
    allow_overlap: bool = False
    min_coverage: float = 0.5
    allow_partial_coverage: bool = False
    atlas_path: str | None = None
    lookup_path: str | None = None

    @property
    def uses_atlas(self) -> bool:
        """Whether the ROIs come from a label atlas (raises ValueError if only one path is
        set)."""
        if (self.atlas_path is None) != (self.lookup_path is None):
            raise ValueError(
                "RoiSet: atlas_path and lookup_path must be set together "
                f"(got atlas_path={self.atlas_path!r}, lookup_path={self.lookup_path!r})"
            )
        return self.atlas_path is not None

    def for_protocol(self, protocol: StudyProtocol) -> RoiSet:
        """This ROI set with the study protocol's atlas (``rois:``) when the protocol declares
        one; raises ValueError when this resource names another atlas (one place per study)."""
        if protocol.roi_atlas is None or protocol.roi_lookup is None:
            return self
        declared = (str(protocol.roi_atlas), str(protocol.roi_lookup))
        if self.uses_atlas and (self.atlas_path, self.lookup_path) != declared:
            raise ValueError(
                f"RoiSet: atlas_path/lookup_path {self.atlas_path}, {self.lookup_path} differ "
                f"from the atlas of {protocol.where()} (rois: {declared[0]}, {declared[1]}): "
                "declare the study's ROI atlas in one place"
            )
        return RoiSet(
            **(self.model_dump() | {"atlas_path": declared[0], "lookup_path": declared[1]})
        )

    def lookup(self) -> dict[int, str]:
        """Atlas label → region name, in the canonical region order (atlas only)."""
        return read_lookup(*file_key(self.lookup_path))

    @property
    def names(self) -> list[str]:
        """Region names, in the canonical order of :data:`ROI_NAMES` (for an atlas: the
        regions its lookup table names)."""
        if not self.uses_atlas:
            return list(ROI_CENTRES_MM)
        return list(dict.fromkeys(self.lookup().values()))

    def voxels(self, affine: np.ndarray, shape: tuple[int, int, int]) -> list[RoiVoxels]:
        """The ROIs' voxels on an image grid (4×4 affine in mm, 3-D shape), in :attr:`names`
        order. Spheres raise ValueError on overlap unless ``allow_overlap``."""
        if not self.uses_atlas:
            return sphere_voxels(affine, shape, ROI_CENTRES_MM, self.radius_mm, self.allow_overlap)
        atlas_key = file_key(self.atlas_path)
        lookup = self.lookup()
        absent = sorted(set(lookup) - atlas_labels(*atlas_key))
        if absent:  # a typo in the lookup would otherwise look like a zero-coverage ROI
            raise ValueError(
                f"{self.atlas_path}: ROI atlas has no voxel with label(s) "
                f"{', '.join(map(str, absent))} named in {self.lookup_path}"
            )
        return atlas_voxels(atlas_on_grid(read_atlas(*atlas_key), affine, shape), lookup)

    def definition(self) -> dict:
        """Everything that defines the ROI set, for provenance."""
        coverage = {
            "min_coverage": self.min_coverage,
            "allow_partial_coverage": self.allow_partial_coverage,
        }
        if not self.uses_atlas:
            return {
                "kind": "spheres",
                "radius_mm": self.radius_mm,
                "centres_mm": {k: [list(c) for c in v] for k, v in ROI_CENTRES_MM.items()},
                "allow_overlap": self.allow_overlap,
                **coverage,
            }
        atlas = read_atlas(*file_key(self.atlas_path))
        labels: dict[str, list[int]] = {}
        for index, name in self.lookup().items():
            labels.setdefault(name, []).append(index)
        return {
            "kind": "atlas",
            "atlas": {
                "path": str(self.atlas_path),
                "sha256": file_sha256(*file_key(self.atlas_path)),
                "shape": list(atlas.shape),
                "affine": np.round(atlas.affine, 6).tolist(),
            },
            "lookup": {
                "path": str(self.lookup_path),
                "sha256": file_sha256(*file_key(self.lookup_path)),
                "labels": labels,
            },
            "resampling": "nearest",
            **coverage,
        }

    def fingerprint(self) -> str:
        """Short hash of :meth:`definition` (used in code versions and metadata); file
        locations are left out, file contents (sha256) are in."""
        blob = json.dumps(without_locations(self.definition()), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def without_locations(value):
    """``value`` with every ``path`` key removed from nested dicts."""
    if isinstance(value, dict):
        return {k: without_locations(v) for k, v in value.items() if k not in _LOCATION_KEYS}
    return value


def file_key(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """(absolute path, size, mtime in ns): the cache key of a file's content, so an edited
    atlas or lookup is read again. Raises ValueError naming the file if it is missing."""
    resolved = Path(path).expanduser().resolve()
    try:
        st = resolved.stat()
    except OSError as e:
        raise ValueError(f"{path}: ROI file cannot be read ({e.strerror})") from e
    return str(resolved), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=16)
def file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=8)
def read_lookup(path: str, size: int, mtime_ns: int) -> dict[int, str]:
    """Parse an atlas lookup TSV (columns ``index``, ``name``) into label → region name,
    ordered by region (canonical order) then label. Raises ValueError naming the file."""
    try:
        table = pd.read_csv(path, sep="\t", dtype={"name": str})
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: ROI lookup table cannot be parsed ({e})") from e
    missing = {"index", "name"} - set(table.columns)
    if missing:
        raise ValueError(
            f"{path}: ROI lookup table lacks column(s) {', '.join(sorted(missing))}"
            f" (has {', '.join(map(str, table.columns))})"
        )
    if table.empty:
        raise ValueError(f"{path}: ROI lookup table has no rows")
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any() or (index != np.round(index)).any():
        bad = table["index"][index.isna() | (index != np.round(index))].iloc[0]
        raise ValueError(f"{path}: ROI lookup index {bad!r} is not an integer label")
    index = index.astype(np.int64)
    if (index <= 0).any():
        raise ValueError(
            f"{path}: ROI lookup index {int(index[index <= 0].iloc[0])} is not a "
            "positive label (0 is the background)"
        )
    duplicated = index[index.duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: ROI lookup index {int(duplicated.iloc[0])} appears twice")
    names = table["name"].str.strip()
    unknown = sorted(set(names) - set(ROI_NAMES))
    if unknown:
        raise ValueError(
            f"{path}: unknown ROI name(s) {', '.join(map(repr, unknown))}; "
            f"names must be among {', '.join(ROI_NAMES)}"
        )
    pairs = sorted(
        zip(index.tolist(), names, strict=True), key=lambda p: (ROI_NAMES.index(p[1]), p[0])
    )
    return dict(pairs)


@lru_cache(maxsize=4)
def read_atlas(path: str, size: int, mtime_ns: int) -> nib.Nifti1Image:
    """The atlas as an in-memory 3-D int32 label image. Raises ValueError naming the file if it
    is not a 3-D image of integer labels."""
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # nibabel raises many types for unreadable images
        raise ValueError(f"{path}: ROI atlas cannot be read ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: ROI atlas must be a 3-D label image, got shape {data.shape}")
    if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
        raise ValueError(f"{path}: ROI atlas values must be integer labels")
    labels = np.asarray(data, dtype=np.int32)
    return nib.Nifti1Image(labels, image.affine)


@lru_cache(maxsize=4)
def atlas_labels(path: str, size: int, mtime_ns: int) -> frozenset[int]:
    """The labels present in the atlas (on its own grid)."""
    return frozenset(int(v) for v in np.unique(read_atlas(path, size, mtime_ns).dataobj))


def atlas_on_grid(
    atlas: nib.Nifti1Image, affine: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Labels (x, y, z) of ``atlas`` on the grid (``affine``, ``shape``): the atlas itself when
    the grids match, otherwise nearest-neighbour resampling (labels must not be blended)."""
    shape = tuple(int(n) for n in shape[:3])
    if atlas.shape == shape and np.allclose(atlas.affine, affine, atol=1e-4):
        return np.asarray(atlas.dataobj)
    from nilearn.image import resample_img

    resampled = resample_img(
        atlas,
        target_affine=np.asarray(affine),
        target_shape=shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    return np.rint(np.asarray(resampled.dataobj)).astype(np.int32)


def roi_positions_figure(roi_set: RoiSet) -> bytes:
    """The ROI set drawn on nilearn's MNI152 template (PNG,
    :func:`kp_science.roi_plots.roi_positions_png`), drawn once per ROI-set definition in a
    process: the ``roi_timeseries`` metadata and the study report show the same figure."""
    return _positions_png(roi_set.fingerprint(), roi_set)


@lru_cache(maxsize=4)
def _positions_png(fingerprint: str, roi_set: RoiSet) -> bytes:
    return roi_positions_png(roi_set)
