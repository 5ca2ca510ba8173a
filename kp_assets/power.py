"""``power``: how often this design finds each headline finding, by participants and effect size.

A simulation-based power analysis with the real pipeline (:mod:`kp_science.finding_rates`):
for every participant count × effect scale of its configuration, ``studies`` simulated studies
(region-level path) go through the per-run measures, change scores, the paper's four
elastic-net variants, first-level and group DCM and ``paper_table``; the table holds, per
condition and finding, the share of studies in which the finding is ``supported`` (the
``evidence`` resource's rules): its power at effect scale > 0 (1 = the simulator's planted
sizes), its false-positive rate at 0. The metadata carry the plot of detection rate against
participants per finding and, per finding, the smallest count reaching the target power.

Run on demand only (``kp power``, or Materialize in the UI): it is not part of the group
refresh, the group job or the nightly catch-up. Its run time grows with the participant
counts (the exact leave-one-out elastic net) — README gives the default grid's.
"""

import time
from dataclasses import replace

import dagster as dg
import pandas as pd

from kp_resources.asset_metadata import markdown_table
from kp_resources.dcm_models import DCMGroupDesign, DCMModels
from kp_resources.evidence_rules import EvidenceRules
from kp_resources.prediction_models import PredictionModels
from kp_science.figures import markdown_image
from kp_science.finding_rates import (
    VOCABULARY,
    AnalysisSettings,
    finding_rates,
    many_findings,
    participants_for_power,
    power_conditions,
    power_figure_png,
)


class PowerSettings(dg.Config):
    """The grid of a power analysis.

    participants: participant counts to simulate (the paper's 21 and larger).
    effect_scales: planted effect sizes relative to the simulator's (0 = none, 1 = planted).
    studies: simulated studies per participant count × effect scale.
    n_permutations, n_bootstraps: of each elastic-net fit (the permutation p and selection
    frequency of ``supported``). processes: studies analysed at a time (one core each).
    first_seed: seed of the first study (each study has its own). target: the power whose
    participant count the metadata report.
    """

    participants: list[int] = [21, 42, 63]
    effect_scales: list[float] = [0.0, 0.5, 1.0]
    studies: int = 10
    n_permutations: int = 200
    n_bootstraps: int = 100
    processes: int = 2
    first_seed: int = 5000
    target: float = 0.8


@dg.asset(
    group_name="evidence",
    kinds={"pandas", "parquet"},
    code_version="power-1",
    description="Simulation-based power of each headline finding: share of simulated "
    "studies in which it is supported, per participant count × effect scale (0 = false "
    "positives), with the real pipeline; on demand (`kp power`).",
)
def power(
    context: dg.AssetExecutionContext,
    config: PowerSettings,
    dcm_models: DCMModels,
    dcm_group: DCMGroupDesign,
    prediction: PredictionModels,
    evidence: EvidenceRules,
) -> pd.DataFrame:
    start = time.perf_counter()
    enet = replace(
        prediction.settings(),
        nested=False,  # supported uses the permutation p and selection frequency only
        n_permutations=config.n_permutations,
        n_bootstraps=config.n_bootstraps,
        n_jobs=1,
    )
    settings = AnalysisSettings(
        masks=dcm_models.masks(VOCABULARY.dcm),  # the simulated studies are this trial's
        enet=enet,
        group=dcm_group.config(),
        rules=evidence.rules(),
    )
    conditions = power_conditions(
        config.participants, config.effect_scales, config.studies, config.first_seed
    )

    def progress(done: int, total: int, table: pd.DataFrame) -> None:
        row = table.iloc[0]
        context.log.info(
            f"[{done}/{total}] {row.participants} participants, effect × {row.effect_scale:g} "
            f"(seed {row.seed}): {int(table['supported'].sum())} of {len(table)} supported, "
            f"{row.seconds:.0f} s"
        )

    rates = finding_rates(
        many_findings(conditions, settings, processes=config.processes, progress=progress)
    )
    needed = participants_for_power(rates, config.target, max(config.effect_scales))
    context.add_output_metadata(
        {
            "power_plot": dg.MetadataValue.md(
                markdown_image(power_figure_png(rates, config.target), "power by participants")
            ),
            f"participants_for_{config.target:.0%}_power": dg.MetadataValue.md(
                markdown_table(
                    needed.astype(object)
                    .rename("participants")
                    .reset_index()
                    .fillna("more than tried")
                )
            ),
            "studies": len(conditions),
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    return rates
