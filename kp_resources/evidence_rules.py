"""The evidence resource: when ``paper_table`` counts a headline finding as supported.

Fields and defaults are the science side's :class:`kp_science.prediction.SupportRules`:
a DCM finding needs the published sign with Pp ≥ ``min_pp`` (0.95); an elastic-net finding
needs its model's permutation p < ``max_permutation_p`` (0.05), its term selected in at
least ``min_selection_frequency`` (0.5) of the bootstrap refits, and the published sign.
Stricter or looser rules are one run-config block::

    resources:
      evidence:
        config: {min_pp: 0.99}
"""

import dagster as dg

from kp_resources.science_config import from_config, science_default
from kp_science.prediction.headline import SupportRules


class EvidenceRules(dg.ConfigurableResource):
    """Rules of ``paper_table.supported`` (module docstring); each a number in [0, 1].

    min_pp: posterior probability a DCM effect must reach. max_permutation_p: the elastic-net
    model's permutation p must be below it. min_selection_frequency: share of bootstrap
    refits that must select the term.
    """

    min_pp: float = science_default(SupportRules, "min_pp")
    max_permutation_p: float = science_default(SupportRules, "max_permutation_p")
    min_selection_frequency: float = science_default(SupportRules, "min_selection_frequency")

    def rules(self) -> SupportRules:
        """These rules as the science side's :class:`SupportRules` (checks the ranges)."""
        return from_config(SupportRules, self)
