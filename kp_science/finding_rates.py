"""How often the analysis finds each headline finding: simulated studies, start to finish.

One simulated study goes through the analysis the assets run, on the region-level path
(:mod:`kp_science.simulator.roi_level`: the study's ROI means, i.e. its planted region
signals plus the residual noise of a cleaned ROI mean measured on the image path): the
per-run measures (:mod:`kp_science.run_measures`), session features and change scores,
every elastic-net variant, the first-level DCM of every faces run and the group DCM, then
``paper_table`` with its ``supported`` rule (:class:`~kp_science.prediction.SupportRules`).

- :func:`study_findings`: the paper table of one study (seed, participants, effect scale);
- :func:`many_findings`: several studies, a process each, at most ``processes`` at a time;
- :func:`finding_rates`: per finding and condition, the share of studies in which it is
  supported — the detection rate when effects were planted (``effect_scale`` > 0), the
  false-positive rate on null studies (``effect_scale`` 0, same run lengths).

``bench/recovery.py`` prints the rates at the planted size and on null studies; ``kp power``
repeats them over participant counts and effect scales.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from kp_science.dcm import invert_many
from kp_science.dcm.findings import dcm_findings
from kp_science.dcm.fit_tables import fit_row, parameter_rows
from kp_science.dcm.group import GroupDCMConfig, for_study, group_dcm
from kp_science.dcm.run_data import prepare_run, run_inputs
from kp_science.prediction.elastic_net import EnetSettings
from kp_science.prediction.fit import fit_all
from kp_science.prediction.headline import SupportRules, paper_table
from kp_science.prediction.variants import DEFAULT_VARIANTS, measures_of
from kp_science.run_measures import RunMeasures, run_measures, stack_measures
from kp_science.session_features import change_table, feature_table
from kp_science.simulator.images import cosine_regressors
from kp_science.simulator.roi_level import RoiRun, RoiStudy, simulate_roi_study
from kp_science.study.clinical import with_improvements
from kp_science.study.protocol import default_vocabulary

VOCABULARY = default_vocabulary()  # the simulator's study is this trial's
SLICE_TIME_REF = 0.5  # the simulator's sidecars: slice-timing corrected to mid-TR

# DCM masks (a (n, n), b (n, n, m), c (n, m)) by model name, in DCMSpec's layout
DCMMasks = Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def simulated_run_measures(run: RoiRun) -> RunMeasures:
    """The measures of one simulated run, as the feature assets compute them: cleaned of the
    high-pass cosines (the simulator's confounds without motion), no volume scrubbed."""
    n_volumes = len(run.raw)
    confounds = pd.DataFrame(cosine_regressors(n_volumes, run.tr))
    return run_measures(
        run.raw,
        confounds,
        np.arange(n_volumes),
        run.tr,
        VOCABULARY.tasks[run.task],
        run.events,
        SLICE_TIME_REF,
    )


def study_change_scores(study: RoiStudy) -> pd.DataFrame:
    """The ``change_scores`` table (participant_id, feature, pre, post, change)."""
    measures = stack_measures(
        (
            {"participant_id": run.participant_id, "session": run.session, "task": run.task},
            simulated_run_measures(run),
        )
        for run in study.runs
    )
    return change_table(feature_table(measures.activation, measures.gppi, measures.rest))


def study_clinical(study: RoiStudy) -> pd.DataFrame:
    """The ``clinical`` table: truth columns plus improvement = pre − post."""
    return with_improvements(study.clinical, [o.name for o in VOCABULARY.outcomes])


def study_dcm_tables(
    study: RoiStudy, masks: DCMMasks, workers: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``dcm_fits`` and ``dcm_parameters`` of every run of the DCM task, every model of
    ``masks``, as the ``dcm_first_level`` asset writes them."""
    design = VOCABULARY.dcm
    inputs = {name: list(types) for name, types in design.inputs.items()}
    runs, datas = [], []
    for run in study.runs:
        if run.task != design.task or run.events is None:
            continue
        n = len(run.raw)
        u = run_inputs(run.events, inputs, n, run.tr)
        confounds = pd.DataFrame(cosine_regressors(n, run.tr)).to_numpy(float)
        runs.append(run)
        datas.append(
            prepare_run(
                run.raw[list(design.regions)], u, list(inputs), run.tr, np.arange(n), confounds
            )
        )
    jobs, keys = [], []
    for model, (a, b, c) in masks.items():
        for run, data in zip(runs, datas, strict=True):
            jobs.append((data.spec(a, b, c), data.y, data.X0))
            keys.append((model, run, data))
    results = invert_many(jobs, workers=workers)
    fits, parameters = [], []
    for (model, run, data), (spec, _, _), result in zip(keys, jobs, results, strict=True):
        scan = pd.Series({"session": run.session, "task": run.task, "run": 1})
        ids = {"participant_id": run.participant_id, "session": run.session, "model": model}
        fits.append(
            fit_row(scan, model, data, result, spec.parameter_names)
            | {"participant_id": run.participant_id}
        )
        parameters.append(parameter_rows(result, spec).assign(**ids))
    return pd.DataFrame(fits), pd.concat(parameters, ignore_index=True)


@dataclass(frozen=True)
class AnalysisSettings:
    """How each simulated study is analysed: the elastic-net ``enet`` settings (the
    paper's variants), the ``group`` DCM design, the ``rules`` of ``supported`` and the DCM
    ``masks`` (model name → a, b, c; the ``DCMModels`` resource's default model)."""

    masks: DCMMasks
    enet: EnetSettings = field(default_factory=lambda: EnetSettings(nested=False, n_jobs=1))
    group: GroupDCMConfig = GroupDCMConfig()
    rules: SupportRules = SupportRules()


def study_findings(
    seed: int,
    settings: AnalysisSettings,
    participants: int = 21,
    effect_scale: float = 1.0,
    volumes: int | dict[str, int] | None = None,
) -> pd.DataFrame:
    """The ``paper_table`` of one simulated study, with columns ``seed``, ``participants``,
    ``effect_scale`` and ``seconds`` (wall time of simulation and analysis) in front.

    ``effect_scale``: the planted effects' strength relative to the simulator's (0 = null
    study, 1 = as planted); ``volumes``: run lengths (default: the simulator's).
    """
    start = time.perf_counter()
    study = simulate_roi_study(
        participants=participants, seed=seed, effect_scale=effect_scale, volumes=volumes
    )
    clinical = study_clinical(study)
    changes = measures_of(study_change_scores(study), VOCABULARY.families)
    enet = fit_all(
        changes, clinical, DEFAULT_VARIANTS, settings.enet, arm_codes=VOCABULARY.arm_codes
    )
    fits, parameters = study_dcm_tables(study, settings.masks)
    group = group_dcm(fits, parameters, clinical, for_study(settings.group, VOCABULARY))
    table = paper_table(enet, dcm_findings(group.effects), settings.rules)
    conditions = {
        "seed": seed,
        "participants": participants,
        "effect_scale": float(effect_scale),
        "seconds": time.perf_counter() - start,
    }
    return pd.concat([pd.DataFrame(conditions, index=table.index), table], axis=1)


def _one_study(job: tuple[int, AnalysisSettings, int, float, object]) -> pd.DataFrame:
    from threadpoolctl import threadpool_limits

    seed, settings, participants, scale, volumes = job
    with threadpool_limits(limits=1, user_api="blas"):  # one core per study
        return study_findings(seed, settings, participants, scale, volumes)  # type: ignore[arg-type]


def many_findings(
    conditions: Iterable[tuple[int, int, float]],
    settings: AnalysisSettings,
    processes: int = 2,
    volumes: int | dict[str, int] | None = None,
    progress=None,
) -> pd.DataFrame:
    """:func:`study_findings` for every (seed, participants, effect_scale) of
    ``conditions``, one process per study, ``processes`` at a time (1: in this process);
    ``progress(done, total, table)`` is called after each study. Rows in the order given."""
    jobs = [(seed, settings, n, scale, volumes) for seed, n, scale in conditions]
    if processes <= 1:
        tables = []
        for i, job in enumerate(jobs, 1):
            tables.append(_one_study(job))
            if progress:
                progress(i, len(jobs), tables[-1])
        return pd.concat(tables, ignore_index=True)
    with ProcessPoolExecutor(processes) as pool:
        futures = [pool.submit(_one_study, job) for job in jobs]
        tables = []
        for i, future in enumerate(futures, 1):
            tables.append(future.result())
            if progress:
                progress(i, len(jobs), tables[-1])
    return pd.concat(tables, ignore_index=True)


def finding_rates(findings: pd.DataFrame) -> pd.DataFrame:
    """Per participants × effect_scale × finding (in the paper table's order): ``studies``,
    ``supported`` (share of studies in which the finding is supported: the detection rate
    for effect_scale > 0, the false-positive rate for 0), ``same_direction`` (share with an
    estimate of the published sign) and ``median_estimate``."""
    order = {key: i for i, key in enumerate(dict.fromkeys(findings["finding"]))}
    rates = (
        findings.assign(same=findings["same_direction"].eq(True))
        .groupby(["participants", "effect_scale", "finding"], sort=False)
        .agg(
            studies=("seed", "nunique"),
            supported=("supported", "mean"),
            same_direction=("same", "mean"),
            median_estimate=("estimate", "median"),
        )
        .reset_index()
    )
    rates["order"] = rates["finding"].map(order)
    return (
        rates.sort_values(["participants", "effect_scale", "order"])
        .drop(columns="order")
        .reset_index(drop=True)
    )


def with_settings(settings: AnalysisSettings, **enet: object) -> AnalysisSettings:
    """``settings`` with some elastic-net fields replaced (e.g. fewer permutations)."""
    return replace(settings, enet=replace(settings.enet, **enet))  # type: ignore[arg-type]


def power_conditions(
    participants: Iterable[int], effect_scales: Iterable[float], studies: int, first_seed: int
) -> list[tuple[int, int, float]]:
    """(seed, participants, effect_scale) of every study of a power analysis: ``studies``
    per participant count × effect scale, each with its own seed from ``first_seed`` on."""
    grid = [(int(n), float(s)) for n in participants for s in effect_scales]
    if studies < 1 or not grid:
        raise ValueError("a power analysis needs participant counts, effect scales and studies")
    return [
        (first_seed + i * studies + k, n, s)
        for i, (n, s) in enumerate(grid)
        for k in range(studies)
    ]


def participants_for_power(
    rates: pd.DataFrame, target: float = 0.8, effect_scale: float = 1.0
) -> pd.Series:
    """Per finding, the smallest participant count of ``rates`` (:func:`finding_rates`)
    whose detection rate at ``effect_scale`` reaches ``target``; NaN when none does (more
    participants than the largest count tried are needed)."""
    rows = rates[np.isclose(rates["effect_scale"], effect_scale)]
    if rows.empty:
        raise ValueError(f"no studies at effect scale {effect_scale:g}")
    order = list(dict.fromkeys(rows["finding"]))
    reached = rows[rows["supported"] >= target].groupby("finding")["participants"].min()
    return reached.reindex(order).rename(f"participants_for_{target:.0%}_power")


def power_figure_png(rates: pd.DataFrame, target: float = 0.8) -> bytes:
    """Detection rate (share of studies in which a finding is supported) against the number
    of participants, one panel per finding, one line per effect scale; the ``target`` rate
    dashed."""
    from matplotlib.figure import Figure

    from kp_science.figures import figure_png

    findings = list(dict.fromkeys(rates["finding"]))
    columns = 4
    fig = Figure(
        figsize=(3.0 * columns, 2.5 * -(-len(findings) // columns) + 0.4), layout="constrained"
    )
    axes = fig.subplots(-(-len(findings) // columns), columns, squeeze=False, sharey=True)
    scales = sorted(rates["effect_scale"].unique())
    for ax, finding in zip(axes.flat, findings, strict=False):
        rows = rates[rates["finding"] == finding]
        for scale in scales:
            line = rows[rows["effect_scale"] == scale].sort_values("participants")
            label = "no effect (false positives)" if scale == 0 else f"effect × {scale:g}"
            ax.plot(line["participants"], line["supported"], marker="o", label=label)
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(finding, fontsize=8)
        ax.set_xticks(sorted(rates["participants"].unique()))
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("participants", fontsize=8)
    for ax in axes.flat[len(findings) :]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("share of studies supported", fontsize=8)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(
        f"Power of each headline finding (dashed: {target:.0%}); effect × 1 = the "
        "simulator's planted sizes",
        fontsize=9,
    )
    return figure_png(fig, dpi=110, tight=True)
