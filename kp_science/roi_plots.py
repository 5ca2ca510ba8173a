"""Small PNG figures of the ROIs and of ROI-by-ROI matrices, for asset metadata and reports.

Every function returns PNG bytes (:func:`kp_science.figures.figure_png`). Figures are drawn
on a bare ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so nothing
here changes the process's matplotlib backend or leaks open figures. Dagster shows a figure
as markdown metadata::

    dg.MetadataValue.md(markdown_image(connectivity_matrix_png(r, "rest FC"), "rest FC"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from kp_science.figures import figure_png
from kp_science.roi_signals import RoiVoxels, sphere_voxels
from kp_science.rois import ROI_CENTRES_MM

ROI_COLOURS = (
    "#e41a1c",
    "#377eb8",
    "#4daf4a",
    "#984ea3",
    "#ff7f00",
    "#a65628",
    "#f781bf",
    "#999999",
)

Centres = Mapping[str, Sequence[Sequence[float]]]


class VoxelSource(Protocol):
    """Anything that places ROIs on an image grid, such as the ``RoiSet`` resource."""

    def voxels(self, affine: np.ndarray, shape: tuple[int, int, int]) -> list[RoiVoxels]: ...


def roi_label_image(rois: VoxelSource | Centres = ROI_CENTRES_MM, radius_mm: float = 6.0):
    """The ROIs as a label image on the 2 mm MNI grid (97×115×97): label i+1 = i-th ROI.

    ``rois``: an object with ``voxels(affine, shape)`` (e.g. ``RoiSet``; an atlas is resampled
    to the grid) or region name → sphere centres (mm), drawn with ``radius_mm``. Returns
    (``nibabel.Nifti1Image``, ROI names). Overlapping spheres are allowed here: the later ROI
    wins the shared voxels.
    """
    import nibabel as nib

    from kp_science.simulator.images import mni_grid

    grid = mni_grid(2.0)
    if isinstance(rois, Mapping):
        placed = sphere_voxels(grid.affine, grid.shape, rois, radius_mm, allow_overlap=True)
    else:
        placed = rois.voxels(grid.affine, grid.shape)
    labels = np.zeros(int(np.prod(grid.shape)), np.int16)
    for i, roi in enumerate(placed):
        labels[roi.flat] = i + 1
    image = nib.Nifti1Image(labels.reshape(grid.shape, order="F"), grid.affine)
    return image, [roi.name for roi in placed]


def roi_positions_png(
    rois: VoxelSource | Centres = ROI_CENTRES_MM,
    radius_mm: float = 6.0,
    title: str = "ROIs on the MNI152 template",
) -> bytes:
    """Axial slices of the ROIs over nilearn's MNI152 template (shipped, no download), one
    colour per ROI with a legend. ``rois`` as in :func:`roi_label_image`."""
    from nilearn.datasets import load_mni152_template
    from nilearn.plotting import plot_roi

    image, names = roi_label_image(rois, radius_mm)
    labels = np.asarray(image.dataobj)
    # one axial slice through the centre of each distinct ROI height, at most six
    affine = np.asarray(image.affine)
    heights = []
    for i in range(len(names)):
        k = np.argwhere(labels == i + 1)
        if len(k):
            heights.append(float((affine[:3, :3] @ k.mean(0) + affine[:3, 3])[2]))
    cuts = sorted({round(z / 2) * 2 for z in heights}) or [0]
    if len(cuts) > 6:
        cuts = [cuts[int(round(j))] for j in np.linspace(0, len(cuts) - 1, 6)]
    colours = [ROI_COLOURS[i % len(ROI_COLOURS)] for i in range(len(names))]
    figure = Figure(figsize=(1.6 * len(cuts) + 0.4, 2.6))
    FigureCanvasAgg(figure)
    plot_roi(
        image,
        bg_img=load_mni152_template(resolution=2),
        display_mode="z",
        cut_coords=cuts,
        figure=figure,
        cmap=ListedColormap(colours or ["#e41a1c"]),
        vmin=0.5,
        vmax=max(len(names), 1) + 0.5,
        colorbar=False,
        alpha=0.9,
        black_bg=True,
        annotate=True,
        draw_cross=False,
    )
    figure.legend(
        handles=[Patch(color=c, label=n) for c, n in zip(colours, names, strict=True)],
        loc="lower center",
        ncol=min(len(names), 6) or 1,
        fontsize=7,
        frameon=False,
        labelcolor="white",
    )
    figure.suptitle(title, color="white", fontsize=9)
    figure.set_facecolor("black")
    return figure_png(figure)


def connectivity_matrix_png(
    matrix: pd.DataFrame, title: str, vmax: float | None = None, value_format: str = "{:.2f}"
) -> bytes:
    """A labelled heat map of an ROI × ROI matrix (e.g. Pearson r or Fisher z), diverging
    colours symmetric around 0 (limit ``vmax``, default the largest off-diagonal magnitude),
    each cell annotated with its value; NaN cells are grey."""
    values = matrix.to_numpy(float)
    n_rows, n_cols = values.shape
    if vmax is None:
        off_diagonal = values.copy()
        if n_rows == n_cols:
            np.fill_diagonal(off_diagonal, np.nan)
        finite = np.abs(off_diagonal[np.isfinite(off_diagonal)])
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    size = 1.6 + 0.5 * max(n_rows, n_cols)
    figure = Figure(figsize=(size + 0.8, size))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    cmap = colormaps["RdBu_r"].with_extremes(bad="#cccccc")
    shown = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-vmax, vmax=vmax)
    axes.set_xticks(
        range(n_cols), [str(c) for c in matrix.columns], rotation=45, ha="right", fontsize=8
    )
    axes.set_yticks(range(n_rows), [str(i) for i in matrix.index], fontsize=8)
    if max(n_rows, n_cols) <= 12:  # numbers stay legible up to about a dozen ROIs
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                axes.text(
                    j,
                    i,
                    value_format.format(v),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(v) > 0.6 * vmax else "black",
                    # inside the axes: measuring each for tight_layout only costs time
                    in_layout=False,
                )
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure_png(figure)
