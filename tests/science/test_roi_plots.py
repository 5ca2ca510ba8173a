"""The ROI figures (kp_science.roi_plots)."""

import numpy as np
import pandas as pd

from kp_resources.roi_set import RoiSet

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
