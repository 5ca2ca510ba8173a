"""``dcm_fits`` and ``dcm_parameters``: first-level DCM of every run of the DCM's task.

For every run of the protocol's DCM task (this trial: faces) in every session, the run's
region signals (this trial: amygdala and vmPFC; the ``dcm_models`` resource names the model
space) are fitted with every model by the SPM12-equivalent estimator of :mod:`kp_science.dcm`:

- data: every volume's raw ROI mean from ``roi_timeseries`` as percent signal change; a DCM
  needs an unbroken series, so scrubbed volumes are not dropped but each gets a spike column
  in the confounds X0, next to a constant and the run's fMRIPrep confounds (the ``cleaning``
  resource's strategy, the same as ``roi_timeseries``). See
  :mod:`kp_science.dcm.run_data`;
- inputs: boxcars from the events (default: faces = emotional + neutral blocks, emotional =
  emotional blocks); TR from ``scans``; slice delay = the run's slice-timing reference
  (``time_s`` of volume 0) — TR/2 for fMRIPrep's slice-timing-corrected runs, as SPM assumes.

**Several runs of a session** are inverted one by one, each with its own data, confounds and
inputs, and both tables carry ``run``; the group analyses combine a session's runs by
Bayesian fixed effects (SPM's Bayesian parameter averaging of the run posteriors, see
:mod:`kp_science.dcm.group_tables`). SPM's alternative — one model over the concatenated
runs with per-run confounds — was not chosen: it needs a concatenated design (inputs, block-
diagonal confounds, restarting the hemodynamics at each run boundary) that this estimator
does not model, whereas per-run inversion reuses the one-run fit unchanged, so a study with
one run per session gets exactly the numbers it always did.

A flat or NaN ROI signal, a missing ROI or an input that is never on fails the participant
with a :class:`StudyDataError` naming the file and the problem. An inversion that reaches the
iteration limit is stored with ``converged = false`` and flagged by ``dcm_convergence_check``
(a warning), as is a fit explaining less variance than the resource's threshold.
"""

import dagster as dg
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from kp_assets.partitions import participants
from kp_assets.task_runs import run_model_inputs
from kp_resources.asset_metadata import markdown_table
from kp_resources.cleaning import ConfoundCleaning
from kp_resources.dcm_models import DCMModels
from kp_resources.quality import check_result
from kp_resources.study import StudyFolder
from kp_resources.warehouse import Warehouse
from kp_science.dcm import invert_many
from kp_science.dcm.fit_tables import fit_row, parameter_rows
from kp_science.dcm.run_data import DCMRunData, fit_figure_png, prepare_run, run_inputs
from kp_science.figures import markdown_image
from kp_science.study.errors import StudyDataError
from kp_science.study.layout import validate_participant_label
from kp_science.study.protocol import StudyProtocol
from kp_science.study.validate import study_event_requirements

FIT_COLUMNS = [
    "participant_id",
    "session",
    "task",
    "run",
    "model",
    "free_energy",
    "explained_variance",
    "n_iter",
    "converged",
    "seconds",
    "message",
    "n_scans",
    "n_scrubbed",
    "n_confounds",
    "scale",
    "free_parameters",
    "covariance",
]
PARAMETER_COLUMNS = [
    "participant_id",
    "session",
    "task",
    "run",
    "model",
    "parameter",
    "mean",
    "variance",
    "pp",
    "prior_mean",
    "prior_variance",
]


def _run_label(scan: pd.Series) -> str:
    return f"ses-{scan['session']} task-{scan['task']} run-{scan['run']}"


def _figure_label(scan: pd.Series, several: bool) -> str:
    """A fit's row label in the fit figure: the session, and the run when a session has
    several."""
    return f"ses-{scan['session']}" + (f" run-{scan['run']}" if several else "")


def run_data(
    scan: pd.Series,
    roi_timeseries: pd.DataFrame,
    protocol: StudyProtocol,
    cleaning: ConfoundCleaning,
) -> DCMRunData:
    """The DCM data of one run of the ``scans`` inventory (see the module docstring), for
    the protocol's DCM regions and inputs."""
    design = protocol.dcm
    label = _run_label(scan)
    rows = roi_timeseries[
        (roi_timeseries["session"] == scan["session"])
        & (roi_timeseries["task"] == scan["task"])
        & (roi_timeseries["run"] == scan["run"])
    ]
    missing = [r for r in design.regions if r not in set(rows["roi"])]
    if missing:
        raise StudyDataError(
            scan["bold_path"],
            f"DCM of {label}: no usable signal for ROI(s) {', '.join(missing)} in roi_timeseries",
        )
    raw = rows.pivot(index="volume", columns="roi", values="raw")[list(design.regions)]
    n_volumes, tr = int(scan["n_volumes"]), float(scan["tr"])
    if not np.array_equal(raw.index.to_numpy(), np.arange(n_volumes)):
        raise StudyDataError(
            scan["bold_path"],
            f"DCM of {label}: roi_timeseries has {len(raw)} of {n_volumes} volumes",
        )
    # the events are checked as scans checked them, the DCM inputs' trial types included
    shared = run_model_inputs(scan, roi_timeseries, cleaning, study_event_requirements(protocol))
    inputs = {name: list(types) for name, types in design.inputs.items()}
    # ``from None``: the run reports the innermost cause, which must be the error with the file
    try:
        u = run_inputs(shared.events, inputs, n_volumes, tr)
    except ValueError as e:
        raise StudyDataError(scan["events_path"], f"DCM of {label}: {e}") from None
    try:
        return prepare_run(
            raw,
            u,
            list(inputs),
            tr,
            shared.kept,
            shared.confounds.to_numpy(float),
            shared.slice_time_ref,
        )
    except ValueError as e:
        raise StudyDataError(scan["bold_path"], f"DCM of {label}: {e}") from None


@dg.multi_asset(
    outs={
        "dcm_fits": dg.AssetOut(
            kinds={"pandas", "parquet"},
            code_version="dcm_fits-2",
            description="One row per run × model of the first-level DCM of the protocol's DCM "
            "task (this trial: faces): free energy, explained variance, iterations, "
            "converged, seconds, and the posterior covariance of the free parameters.",
        ),
        "dcm_parameters": dg.AssetOut(
            kinds={"pandas", "parquet"},
            code_version="dcm_parameters-2",
            description="Posterior of every estimated DCM parameter (long): mean, variance, "
            "Pp, prior mean and variance; names like A[amygdala->vmpfc], "
            "B[emotional][amygdala->vmpfc], C[faces][amygdala], transit[vmpfc].",
        ),
    },
    ins={"scans": dg.AssetIn(), "roi_timeseries": dg.AssetIn()},
    partitions_def=participants,
    group_name="dcm",
    check_specs=[
        dg.AssetCheckSpec(
            "dcm_convergence_check",
            asset="dcm_fits",
            description="Every DCM inversion converged within the iteration limit and explains at "
            "least the model space's min_explained_variance of the data.",
        )
    ],
)
def dcm_first_level(
    context: dg.AssetExecutionContext,
    scans: pd.DataFrame,
    roi_timeseries: pd.DataFrame,
    dcm_models: DCMModels,
    cleaning: ConfoundCleaning,
    warehouse: Warehouse,
    study: StudyFolder,
):
    pid = validate_participant_label(context.partition_key)
    protocol = study.protocol()
    design = protocol.dcm
    masks = dcm_models.masks(design)
    runs = [scan for _, scan in scans[scans["task"] == design.task].iterrows()]
    if not runs:
        context.log.warning(f"{pid}: no {design.task} runs: nothing to fit")
    datas = [run_data(scan, roi_timeseries, protocol, cleaning) for scan in runs]
    jobs, keys = [], []
    for scan, data in zip(runs, datas, strict=True):
        for model, (a, b, c) in masks.items():
            jobs.append((data.spec(a, b, c), data.y, data.X0))
            keys.append((scan, model, data))
    # one BLAS thread: DCM's matrices are tiny, and threaded BLAS made fits ~6x slower on 2
    # busy cores (worker processes of invert_many limit themselves the same way)
    with threadpool_limits(limits=1, user_api="blas"):
        results = invert_many(jobs, max_iter=dcm_models.max_iter, workers=dcm_models.workers)

    fits, parameters, figure_fits = [], [], []
    several = len(runs) > len({scan["session"] for scan in runs})
    for (scan, model, data), (spec, _, _), result in zip(keys, jobs, results, strict=True):
        fits.append(fit_row(scan, model, data, result, spec.parameter_names))
        parameters.append(
            parameter_rows(result, spec).assign(
                session=scan["session"], task=scan["task"], run=int(scan["run"]), model=model
            )
        )
        if model == next(iter(masks)):
            figure_fits.append((_figure_label(scan, several), data, result))
        context.log.info(
            f"{pid} {_run_label(scan)} model {model}: {result.message}, "
            f"F = {result.F:.1f}, EV = {result.explained_variance_total:.0%}, "
            f"{result.seconds:.2f} s"
        )

    fit_table = pd.DataFrame(fits, columns=FIT_COLUMNS[1:]).assign(participant_id=pid)
    fit_table = fit_table[FIT_COLUMNS]
    parameter_frame = (
        pd.concat(parameters, ignore_index=True)
        if parameters
        else pd.DataFrame(columns=PARAMETER_COLUMNS[1:])
    )
    parameter_frame = parameter_frame.assign(participant_id=pid)[PARAMETER_COLUMNS]
    provenance = {
        "source_sha256": {str(s["bold_path"]): str(s["sha256"]) for s in runs}
        | {str(s["events_path"]): str(s["events_sha256"]) for s in runs}
    }
    fit_table.attrs.update(provenance)
    parameter_frame.attrs.update(provenance)

    summary = fit_table[
        [
            "session",
            "run",
            "model",
            "free_energy",
            "explained_variance",
            "n_iter",
            "converged",
            "seconds",
        ]
    ]
    fit_metadata = {
        "model_space": dg.MetadataValue.json(dcm_models.describe(design)),
        "fits": dg.MetadataValue.md(markdown_table(summary) if len(summary) else "none"),
        "n_not_converged": int((~fit_table["converged"]).sum()),
        "seconds": float(fit_table["seconds"].sum()),
    }
    if figure_fits:
        png = fit_figure_png(figure_fits)
        fit_metadata["fit_plot"] = dg.MetadataValue.md(
            markdown_image(png, f"{pid} DCM {next(iter(masks))}: observed vs predicted BOLD")
        )
    yield dg.Output(fit_table, "dcm_fits", metadata=fit_metadata)
    key = parameter_frame[parameter_frame["parameter"].str.match(r"^[AB]\[")]
    yield dg.Output(
        parameter_frame,
        "dcm_parameters",
        metadata={
            "connections": dg.MetadataValue.md(
                markdown_table(
                    key.pivot_table(
                        index="parameter", columns=["model", "session", "run"], values="mean"
                    )
                )
                if len(key)
                else "none"
            ),
        },
    )

    threshold = dcm_models.min_explained_variance
    flagged = fit_table[~fit_table["converged"] | (fit_table["explained_variance"] < threshold)]
    check_metadata = {
        "n_fits": len(fit_table),
        "n_not_converged": int((~fit_table["converged"]).sum()),
        "threshold": threshold,
        "flagged": dg.MetadataValue.md(
            markdown_table(
                flagged[
                    [
                        "session",
                        "run",
                        "model",
                        "converged",
                        "n_iter",
                        "explained_variance",
                        "message",
                    ]
                ]
            )
            if len(flagged)
            else "none"
        ),
    }
    if len(fit_table):
        check_metadata["min_explained_variance"] = float(fit_table["explained_variance"].min())
    summary = (
        f"{len(flagged)} of {len(fit_table)} fits not converged or explaining less "
        f"than {threshold:.0%}: "
        + ", ".join(f"ses-{r.session} run-{r.run} {r.model}" for r in flagged.itertuples())
        if len(flagged)
        else f"all {len(fit_table)} fits converged, explained variance ≥ {threshold:.0%}"
    )
    yield check_result(
        context,
        warehouse.root,
        "dcm_fits",
        "dcm_convergence_check",
        flagged.empty,
        summary,
        check_metadata,
        partition=pid,
    )
