"""What a warm run worker (:mod:`kp_resources.run_workers`) loads before its first run.

Participant steps import nilearn's GLM and plotting, scikit-learn and SciPy's signal module
lazily, and the first ``roi_timeseries`` of a process draws the ROI set on the MNI template
(about a second, then cached in the process). Importing this module does all of that once,
for the ROI set the definitions use by default, so that a worker's first run costs what its
later runs cost.
"""

import nilearn.datasets  # noqa: F401  (the MNI template and masks)
import nilearn.glm.first_level  # noqa: F401
import nilearn.plotting  # noqa: F401
import scipy.signal  # noqa: F401
import sklearn.linear_model  # noqa: F401

from kp_assets.definitions import defs
from kp_assets.roi_timeseries import roi_positions_markdown
from kp_resources.roi_set import RoiSet

_roi_set = (defs.resources or {}).get("roi_set")
if isinstance(_roi_set, RoiSet):
    roi_positions_markdown(_roi_set)
