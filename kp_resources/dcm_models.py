"""The DCM model-space resource: which models the first-level DCM fits, and how.

The DCM's task, regions and inputs are the study protocol's (``dcm:``,
:class:`kp_science.study.protocol.DCMDesign`); every run of that task is fitted with every
model of the space. Masks are nested lists (JSON-friendly), over the protocol's regions and
inputs in their order, 1 = estimated, 0 = fixed at zero:

- ``a`` (n × n): ``a[i][j]`` = the connection from region j to region i (self-connections
  are always estimated, as in SPM);
- ``b`` (m × n × n): ``b[k]`` is the n × n mask of connections that input k modulates
  (SPM's ``b(:,:,k)``);
- ``c`` (n × m): ``c[i][k]`` = input k drives region i.

Default (the paper's model, over the default protocol's regions amygdala, vmPFC and inputs
faces (every face block) and emotional (emotional face blocks)): one model ``full`` with both
connections, emotional faces modulating both, faces driving the amygdala.
"""

from typing import get_args

import dagster as dg
import numpy as np

from kp_resources.science_config import choice_enum, from_config, science_default
from kp_science.dcm.group import Analysis, ChangeMethod, GroupDCMConfig
from kp_science.dcm.peb import ComponentName
from kp_science.study.protocol import DCMDesign

AnalysisChoice = choice_enum(get_args(Analysis))


class DCMModel(dg.Config):
    """One model of the space: ``name`` and its a (n×n), b (m×n×n) and c (n×m) masks."""

    name: str
    a: list[list[int]]
    b: list[list[list[int]]]
    c: list[list[int]]


# Defaults are plain dicts (Dagster's config schema needs them so); explicitly constructed
# values are DCMInput/DCMModel objects. The accessors below read either.
FULL_MODEL = {
    "name": "full",
    "a": [[1, 1], [1, 1]],
    "b": [
        [[0, 0], [0, 0]],  # faces modulate nothing
        [[0, 1], [1, 0]],
    ],  # emotional faces modulate amygdala->vmpfc and vmpfc->amygdala
    "c": [[1, 0], [0, 0]],  # faces drive the amygdala
}


def _fields(item: dg.Config | dict) -> dict:
    return dict(item) if isinstance(item, dict) else item.model_dump()


class DCMModels(dg.ConfigurableResource):
    """Model space of the first-level DCM (see the module docstring for the masks).

    models: the models to fit, each to every run of the protocol's DCM task. max_iter: the
    variational Laplace iteration limit (SPM: 128); a fit that reaches it is stored with
    ``converged = false``. min_explained_variance: below this share of variance explained
    (over both regions) the convergence check flags a fit (SPM's ``spm_dcm_fmri_check`` uses
    10 %). workers: processes that invert one participant's DCMs in parallel (1 = in the
    asset's own process).
    """

    models: list[DCMModel] = [FULL_MODEL]
    max_iter: int = 128
    min_explained_variance: float = 0.05
    workers: int = 1

    def model_masks(self) -> dict[str, dict[str, list]]:
        """Model name → {"a", "b", "c"} nested-list masks, as configured."""
        return {f["name"]: {k: f[k] for k in "abc"} for f in map(_fields, self.models)}

    def masks(self, design: DCMDesign) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Model name → (a (n, n), b (n, n, m), c (n, m)) as float arrays in DCMSpec's layout,
        over the protocol's ``design`` (its regions and inputs).

        Raises ValueError if a name repeats or a mask has the wrong shape.
        """
        inputs = list(design.inputs)
        regions = list(design.regions)
        models = [_fields(x)["name"] for x in self.models]
        n, m = len(regions), len(inputs)
        if n == 0 or m == 0 or not models:
            raise ValueError("DCMModels: at least one region, one input and one model are needed")
        for label, names in (("region", regions), ("input", inputs), ("model", models)):
            if len(set(names)) != len(names):
                raise ValueError(f"DCMModels: {label} names must be unique, got {names}")
        out = {}
        for name, mask in self.model_masks().items():
            a, b, c = (np.asarray(mask[k], dtype=float) for k in "abc")
            for label, arr, shape in (("a", a, (n, n)), ("b", b, (m, n, n)), ("c", c, (n, m))):
                if arr.shape != shape:
                    raise ValueError(
                        f"DCMModels: model {name!r} mask {label} has shape {arr.shape}, "
                        f"expected {shape} for regions {regions} and inputs {inputs}"
                    )
            out[name] = (a, np.moveaxis(b, 0, -1), c)
        return out

    def describe(self, design: DCMDesign) -> dict:
        """The whole configuration, with the protocol's ``design``, as plain JSON-able data
        (for metadata)."""
        return {
            "task": design.task,
            "regions": list(design.regions),
            "inputs": {name: list(types) for name, types in design.inputs.items()},
            "models": self.model_masks(),
            "max_iter": self.max_iter,
            "min_explained_variance": self.min_explained_variance,
            "workers": self.workers,
        }


class DCMGroupDesign(dg.ConfigurableResource):
    """The group DCM analyses (``dcm_group_effects``): the fields and defaults of
    :class:`kp_science.dcm.group.GroupDCMConfig` (see :mod:`kp_science.dcm.group` for the
    designs), except the session labels, which are the study's.

    analyses: which of "longitudinal" (change post − pre, covariates mean, CAPS-5
    improvement, arm, improvement × arm) and "baseline" (pre-treatment parameters, same
    covariates) to run. model: the first-level model to take (default: the only one fitted).
    parameters: first-level parameters taken to the second level (default: every free A
    connection between regions and every free B parameter; self-connections are left out).
    max_exhaustive: model reduction scores every subset of at most this many group effects,
    and searches greedily beyond. change: how a participant's change is formed —
    "difference" (post − pre posterior, exact; default) or "within_peb" (a PEB over the two
    sessions, for designs with more sessions). components: the random-effects precision
    components — "fields" (one for A, one for B; default), "single" (one for all
    parameters, SPM's default) or "all" (one per parameter). hyperprior_variance: prior
    variance of the random-effects log-precisions (SPM's M.hC; 1/16 there, which holds the
    between-participant variance near 1/16 of the first-level prior variance and overstates
    group effects when participants differ more; 1 by default here). A choice outside the
    allowed values fails when the configuration loads, naming the field and the values.
    """

    analyses: list[AnalysisChoice] = science_default(GroupDCMConfig, "analyses")
    model: str | None = science_default(GroupDCMConfig, "model")
    parameters: list[str] | None = science_default(GroupDCMConfig, "parameters")
    max_exhaustive: int = science_default(GroupDCMConfig, "max_exhaustive")
    change: ChangeMethod = science_default(GroupDCMConfig, "change")
    components: ComponentName = science_default(GroupDCMConfig, "components")
    hyperprior_variance: float = science_default(GroupDCMConfig, "hyperprior_variance")

    def config(self) -> GroupDCMConfig:
        """The design as the science code's :class:`GroupDCMConfig` (lists → tuples)."""
        return from_config(GroupDCMConfig, self)
