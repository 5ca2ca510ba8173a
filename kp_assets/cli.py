"""The kp command: simulate, demo, validate, run, power, sql, report and export.

kp run (a real study) and kp demo (the simulated one) materialize every asset through the same
Definitions, jobs and discovery code that dagster dev and the sensor use, on the instance in
DAGSTER_HOME (the repository folder by default, storage in .dagster/). kp validate checks a study
against its protocol and writes nothing (kp_science.study.study_check). Help texts are plain
text, each command's with examples (tests/assets/test_cli.py asserts both).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kp_resources.locations import (
    PROTOCOL_ENV,
    REPO_ROOT,
    REPORT_FILE,
    STUDY_ENV,
    WAREHOUSE_ENV,
    is_inside,
    study_dir,
    warehouse_dir,
)

if TYPE_CHECKING:  # kp validate imports the science only when it runs
    from kp_science.study.study_check import Finding, StudyReport

CLI_DESCRIPTION = (
    "kp: the imaging analysis of a clinical trial as Dagster assets.\n"
    "Simulate a study or point kp at your own fMRIPrep output, validate it against its study "
    "protocol,\nmaterialize every stage into a Parquet warehouse, query it with SQL, read the "
    "study report and export\nBIDS derivatives."
)
STORAGE_ENV = "KP_DAGSTER_STORAGE"  # where dagster.yaml puts the instance's storage
# Dagster's console logger prints every event at DEBUG; the demo prints its own progress
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
EXAMPLE_SQL = (
    "SELECT participant_id, session, task, round(mean_fd, 3) AS mean_fd, round(tsnr, 1) AS tsnr "
    "FROM scans ORDER BY mean_fd DESC LIMIT 5"
)


def version_text() -> str:
    """``kp --version``: kp's version and the versions of what shapes its results."""
    from kp_resources.provenance import package_versions

    versions = package_versions()
    others = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "kp")
    return f"kp {versions['kp']} (Python {sys.version.split()[0]}; {others})"


def _use_repo_instance() -> None:
    # dagster.yaml lives at the repo root and reads its storage folder from the environment
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT))
    os.environ.setdefault(STORAGE_ENV, str(REPO_ROOT / ".dagster"))


def cmd_simulate(args: argparse.Namespace) -> int:
    from kp_science.simulator import simulate_study

    start = time.perf_counter()
    if not 0.0 <= args.effect_scale <= 1.0:
        print(
            f"kp simulate: --effect-scale must be in [0, 1], got {args.effect_scale}",
            file=sys.stderr,
        )
        return 2
    if args.null and args.effect_scale not in (0.0, 1.0):
        print("kp simulate: --null is --effect-scale 0; give one of them", file=sys.stderr)
        return 2
    try:
        out = simulate_study(
            args.out,
            participants=args.participants,
            seed=args.seed,
            voxel_size=args.voxel_size,
            volumes=args.volumes,
            tr=args.tr,
            effect_scale=0.0 if args.null else args.effect_scale,
            progress=not args.quiet,
            jobs=args.jobs,
            overwrite=args.overwrite,
        )
    except FileExistsError as e:  # a folder kp may not replace: the message names it
        print(f"kp simulate: {e}", file=sys.stderr)
        return 2
    print(
        f"simulated {args.participants} participants into {out} "
        f"in {time.perf_counter() - start:.1f} s (truth: {out}/derivatives/simulation-truth)"
    )
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from kp_resources.warehouse import currency_notes, format_result, list_tables, query

    root = Path(args.warehouse) if args.warehouse else warehouse_dir()
    if not list_tables(root):
        print(f"kp sql: no tables in warehouse {root} (run `make demo` first)", file=sys.stderr)
        return 2
    try:
        result = query(root, args.query, status=True)
    except Exception as e:  # DuckDB's own message says what is wrong with the SQL
        print(f"kp sql: {e}", file=sys.stderr)
        return 1
    print(format_result(result, args.format))
    for note in currency_notes(root):  # on stderr: csv/json output stays machine-readable
        print(f"kp sql: note: {note}", file=sys.stderr)
    return 0


def demo_study_problem(study: Path) -> str | None:
    """Why ``kp demo`` must not simulate its study into ``study``, or None.

    A folder with a ``dataset_description.json`` is a study to use as it is. Otherwise the demo
    simulates one, which it may do only where nothing of a user's can be lost: a folder that
    does not exist, an empty one, or one holding a study kp simulated before (replaced).
    """
    if (study / "dataset_description.json").exists():
        return None
    from kp_science.simulator import simulation_target_problem

    problem = simulation_target_problem(study, overwrite=True)
    if problem is None:
        return None
    return (
        f"{study}: neither a BIDS study (no dataset_description.json) nor a folder kp may "
        f"simulate the demo study into: it {problem}. Nothing was changed. Point "
        "KP_STUDY_DIR at a BIDS study folder (with dataset_description.json), or at a new or "
        "empty folder for the simulated demo study"
    )


# the demo's voxel sizes, mm: 2 is fMRIPrep's MNI152NLin2009cAsym res-2 grid; 8 is the coarsest
# the pipeline is tested on (a planted sphere of 7 mm radius still holds voxels)
DEMO_VOXEL_SIZES_MM = (2.0, 8.0)
DEFAULT_VOXEL_SIZE_MM = 4.0  # the simulator's default, the demo study in data/study


def _positive_mm(text: str) -> float:
    """``kp simulate --voxel-size``: a positive number of mm."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of mm")
    return value


def demo_voxel_size(text: str) -> float:
    """``kp demo --voxel-size``: a number of mm within :data:`DEMO_VOXEL_SIZES_MM`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    low, high = DEMO_VOXEL_SIZES_MM
    if not low <= value <= high:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a voxel size in mm from {low:g} to {high:g} (2 is fMRIPrep's "
            f"MNI grid, {DEFAULT_VOXEL_SIZE_MM:g} the default)"
        )
    return value


def default_demo_study(voxel_size: float | None) -> Path:
    """The demo's study folder when ``$KP_STUDY_DIR`` is not set: data/study for the default
    voxel size, data/<size>mm/study for another (its warehouse beside it, data/<size>mm/
    warehouse), so that a study or warehouse of one voxel size is never taken for another's."""
    if voxel_size in (None, DEFAULT_VOXEL_SIZE_MM):
        return (REPO_ROOT / "data" / "study").resolve()
    return (REPO_ROOT / "data" / f"{voxel_size:g}mm" / "study").resolve()


def demo_voxel_problem(study: Path, voxel_size: float | None) -> str | None:
    """Why the study in ``study`` is not the demo that ``--voxel-size`` asked for, or None: a
    study kp simulated at another voxel size (its simulation.json) is neither used nor replaced.
    Without ``--voxel-size``, and for a study kp did not simulate, any study is used as it is."""
    if voxel_size is None or not (study / "dataset_description.json").exists():
        return None
    from kp_science.simulator import is_simulated_study, simulated_voxel_size

    if not is_simulated_study(study):
        return None
    found = simulated_voxel_size(study)
    if found == voxel_size:
        return None
    what = "at an unknown voxel size" if found is None else f"at {found:g} mm"
    return (
        f"{study}: holds a study kp simulated {what}, not the {voxel_size:g} mm asked for. "
        f"Nothing was changed. Leave {STUDY_ENV} unset (the {voxel_size:g} mm demo's own folder "
        f"is {default_demo_study(voxel_size)}), point it at a new or empty folder, or replace "
        f"this study with `kp simulate {study} --voxel-size {voxel_size:g} --overwrite`"
    )


def _open_instance(command: str):
    """The Dagster instance of ``DAGSTER_HOME`` (the repository's by default), or None after
    saying on stderr what is wrong with its configuration (file and key)."""
    _use_repo_instance()
    from kp_resources.instance import InstanceConfigError, load_instance

    try:
        return load_instance()
    except InstanceConfigError as e:
        print(f"kp {command}: Dagster instance configuration error: {e}", file=sys.stderr)
        return None


def write_target_problem(study_folders: list[Path], targets: dict[str, Path]) -> str | None:
    """Why kp must not write to one of ``targets`` (what → folder), or None: kp never writes
    into a study, so no target may lie inside one of ``study_folders`` (the study folder and
    its protocol's derivatives and raw roots)."""
    for what, target in targets.items():
        for folder in study_folders:
            if is_inside(target, folder):
                return (
                    f"the {what} {target} is inside the study folder {folder}, and kp never "
                    "writes into a study: choose a folder outside it"
                )
    return None


def _summary_sections(primary: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(title, SQL, tables it reads) of each part of the run summary; ``primary``: the
    protocol's primary outcome (clinical column ``<primary>_improvement``)."""
    return [
        (
            "scans (QC over all runs)",
            """
            SELECT count(DISTINCT participant_id) AS participants, count(*) AS runs,
                   round(median(mean_fd), 3) AS median_mean_fd_mm,
                   round(max(mean_fd), 3) AS worst_mean_fd_mm,
                   CAST(sum(n_fd_spikes) AS INTEGER) AS fd_spikes,
                   round(median(tsnr), 1) AS median_tsnr,
                   round(min(tsnr), 1) AS min_tsnr
            FROM scans""",
            ("scans",),
        ),
        (
            "clinical",
            f"SELECT arm, count(*) AS participants, "
            f"round(avg({primary}_improvement), 1) AS mean_{primary}_improvement "
            "FROM clinical GROUP BY arm ORDER BY arm",
            ("clinical",),
        ),
        (
            "imaging features (change scores = post − pre)",
            """
            SELECT family, count(DISTINCT feature) AS features,
                   count(DISTINCT participant_id) AS participants_with_change
            FROM change_scores JOIN (SELECT DISTINCT feature, family FROM session_features)
                 USING (feature)
            GROUP BY family ORDER BY family""",
            ("change_scores", "session_features"),
        ),
        (
            "DCM (first level)",
            """
            SELECT model, count(*) AS fits, CAST(sum(CAST(converged AS INTEGER)) AS INTEGER)
                   AS converged, round(median(explained_variance), 3) AS median_explained_variance
            FROM dcm_fits GROUP BY model ORDER BY model""",
            ("dcm_fits",),
        ),
        (
            f"elastic net ({primary} improvement)",
            """
            SELECT model, status, n_participants AS n, n_selected AS selected,
                   round(loo_r, 2) AS loo_r, round(nested_r, 2) AS nested_r,
                   round(permutation_p, 3) AS permutation_p
            FROM enet_summary ORDER BY model""",
            ("enet_summary",),
        ),
        (
            "the paper's findings beside ours",
            """
            SELECT finding, published, round(estimate, 2) AS estimate,
                   round(selection_frequency, 2) AS selection_frequency,
                   round(permutation_p, 3) AS permutation_p, round(pp, 3) AS pp,
                   supported, note
            FROM paper_table""",
            ("paper_table",),
        ),
    ]


def print_summary(warehouse: Path, primary: str) -> None:
    """The warehouse at a glance: each summary table whose inputs exist (a run where every
    participant failed still gets the parts it has). ``primary``: the primary outcome."""
    from kp_resources.warehouse import format_result, list_tables, query

    tables = list_tables(warehouse)
    for title, sql, needs in _summary_sections(primary):
        if set(needs) <= set(tables):
            print(f"\n{title}:")
            try:
                print(format_result(query(warehouse, sql)))
            except Exception as e:  # a summary must not hide the run's own outcome
                print(f"  (cannot summarize: {e})")


def _folders_prefix(study: Path, warehouse: Path) -> str:
    """The variables to put before ``kp sql`` or ``make ui`` for them to find ``study`` and
    ``warehouse`` ("" when those are the folders they find anyway)."""
    settings = []
    if study != study_dir():
        settings.append(f"{STUDY_ENV}={shlex.quote(str(study))}")
    if warehouse != warehouse_dir(study):
        settings.append(f"{WAREHOUSE_ENV}={shlex.quote(str(warehouse))}")
    return "".join(f"{s} " for s in settings)


def materialize_and_report(
    command: str,
    study: Path,
    warehouse: Path,
    protocol: str | None,
    instance,
    resources: dict | None = None,
) -> int:
    """What ``kp run`` and ``kp demo`` share once the study is there: materialize every
    asset (:func:`kp_assets.materialize.materialize_study`, with a progress bar; ``resources``
    replace the default resources by key), print the summary and the failures; 0 when
    nothing failed, else 1."""
    from tqdm import tqdm

    from kp_assets.materialize import materialize_study

    print(f"materializing assets into {warehouse}")
    failed = materialize_study(
        study,
        warehouse,
        instance,
        run_config=QUIET_RUN_CONFIG,
        log=tqdm.write,
        protocol=protocol,
        progress=True,
        **(resources or {}),
    )
    from kp_science.study.protocol import study_protocol

    print_summary(warehouse, study_protocol(study, protocol).primary.name)
    print(f"\nwarehouse: {warehouse}  (catalog: {warehouse / 'kp.duckdb'})")
    if (warehouse / REPORT_FILE).exists():
        print(f"report:    {warehouse / REPORT_FILE}  (open it in a browser)")
    where = _folders_prefix(study, warehouse)
    print(f'try:  {where}.venv/bin/kp sql "{EXAMPLE_SQL}"')
    print(f"UI:   {where}make ui   (then open http://127.0.0.1:3000)")
    if failed:
        print(f"\n{len(failed)} failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        print(f"kp {command}: {len(failed)} failed (see above)", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    voxel_size = args.voxel_size  # None: not asked for (4 mm when simulating)
    study = study_dir() if os.environ.get(STUDY_ENV) else default_demo_study(voxel_size)
    warehouse = warehouse_dir(study)
    # before anything else: a folder that is not kp's to fill, or a simulation at another
    # voxel size, stops the demo untouched
    problem = demo_study_problem(study) or demo_voxel_problem(study, voxel_size)
    if problem:
        print(f"kp demo: {problem}", file=sys.stderr)
        return 2
    # a mistake in dagster.yaml stops the demo here, naming the file and the key
    instance = _open_instance("demo")
    if instance is None:
        return 2

    protocol = None  # a simulated study carries its own kp-protocol.yaml
    if not (study / "dataset_description.json").exists():
        size = DEFAULT_VOXEL_SIZE_MM if voxel_size is None else voxel_size
        print(
            f"simulating the default study ({args.participants} participants, {size:g} mm "
            f"voxels) into {study}"
        )
        from kp_science.simulator import simulate_study

        # the simulator's own default voxel size unless one was asked for
        chosen = {} if voxel_size is None else {"voxel_size": voxel_size}
        try:  # replaces only a study kp simulated (see demo_study_problem)
            simulate_study(
                study, participants=args.participants, progress=True, overwrite=True, **chosen
            )
        except FileExistsError as e:  # the folder changed since the check above
            print(f"kp demo: {e}", file=sys.stderr)
            return 2
    else:
        print(f"using the study in {study}")
        protocol = os.environ.get(PROTOCOL_ENV) or None
    return materialize_and_report("demo", study, warehouse, protocol, instance)


def _warehouse_arg(args: argparse.Namespace, study: Path | None = None) -> Path:
    """``--warehouse`` (absolute), else ``$KP_WAREHOUSE_DIR`` or warehouse/ beside ``study``
    (default: the default study)."""
    if args.warehouse:
        return Path(args.warehouse).expanduser().resolve()
    return warehouse_dir(study)


def _study_folders(study: Path, protocol) -> list[Path]:
    """The folders kp never writes into: the study and its protocol's derivatives and raw
    roots (:func:`write_target_problem`)."""
    return list(dict.fromkeys([study, protocol.derivatives, protocol.raw]))


def _study_and_protocol(args: argparse.Namespace) -> tuple[Path, str | None]:
    """``--study`` (default: ``$KP_STUDY_DIR`` or data/study) and ``--protocol`` (default:
    ``$KP_PROTOCOL``, else None: the study's kp-protocol.yaml or the default protocol)."""
    study = Path(args.study).expanduser().resolve() if args.study else study_dir()
    protocol = args.protocol or os.environ.get(PROTOCOL_ENV)
    # absolute: worker processes and the messages name the same file
    return study, str(Path(protocol).expanduser().resolve()) if protocol else None


def cmd_validate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kp_science.study.study_check import check_study_folder

    study, protocol = _study_and_protocol(args)
    if not study.is_dir():
        print(
            f"kp validate: no study folder at {study} (pass --study DIR or set {STUDY_ENV})",
            file=sys.stderr,
        )
        return 1

    def bar(runs):
        return tqdm(runs, desc="validating runs", unit="run", disable=args.quiet, file=sys.stderr)

    report = check_study_folder(study, protocol, progress=bar)
    print("\n".join(report_lines(report, study, verbose=args.verbose)))
    return 0 if report.passed else 1


def report_lines(report: StudyReport, study: Path, verbose: bool = False) -> list[str]:
    """``kp validate``'s output for a :class:`~kp_science.study.study_check.StudyReport`:
    the protocol, study-level findings, then per participant and session what is complete,
    missing or a fault (each with its file and reason; ok findings only when ``verbose``), a
    summary line and what missing and fault mean."""
    protocol = report.protocol
    lines = [f"study: {study}"]
    if protocol is not None:
        tasks = ", ".join(f"{t} ({spec.kind})" for t, spec in protocol.tasks.items())
        lines += [
            f"protocol: {protocol.where()}",
            f"  derivatives {protocol.derivatives}, raw {protocol.raw}, space {protocol.space}"
            + (f", res {protocol.res}" if protocol.res else ""),
            f"  sessions: baseline ses-{protocol.baseline}, follow-up ses-{protocol.follow_up}; "
            f"tasks: {tasks}",
        ]
    study_level = [f for f in report.of(None) if verbose or f.status != "ok"]
    if study_level:
        lines += ["", "study:", *(_finding_line(f, "  ") for f in study_level)]
    for pid in report.participants:
        lines += ["", f"{pid}: {report.state(pid)}", *_participant_lines(report.of(pid), verbose)]
    for pid in report.others:
        lines += ["", f"{pid} (no participant folder): {report.state(pid)}"]
        lines += _participant_lines(report.of(pid), verbose)
    lines += ["", _summary_line(report), *_LEGEND]
    return lines


_LEGEND = (
    "legend: missing = not there (yet): the study is incomplete, which is not a fault (kp run "
    "processes what is there; a missing follow-up session only delays that participant's "
    "change scores, a missing task run leaves out that task's features).",
    "        FAULT = must be fixed: the pipeline would fail on it or leave data out. "
    "Exit status 1 when there is any fault, else 0.",
)


def _finding_line(f: Finding, indent: str) -> str:
    label = {"ok": "ok", "missing": "missing", "fault": "FAULT"}[f.status]
    run = f"task-{f.task} run-{f.run}: " if f.task is not None else ""
    where = f"{f.path}: " if f.path is not None else ""
    return f"{indent}{label:<8} {run}{where}{f.reason}"


def _participant_lines(findings: list[Finding], verbose: bool) -> list[str]:
    """Participant-wide findings (clinical, folder-level), then one line per session with its
    state and runs, each non-ok finding (every finding when ``verbose``) beneath it."""
    lines = []
    overall = [f for f in findings if f.session is None]
    lines += [_finding_line(f, "  ") for f in overall if verbose or f.status != "ok"]
    sessions = list(dict.fromkeys(f.session for f in findings if f.session is not None))
    for session in sessions:
        found = [f for f in findings if f.session == session]
        statuses = {f.status for f in found}
        state = (
            "FAULT"
            if "fault" in statuses
            else "incomplete"
            if "missing" in statuses
            else "complete"
        )
        runs = [f for f in found if f.task is not None]
        ok = [f for f in runs if f.status == "ok"]
        tasks = ", ".join(dict.fromkeys(f.task for f in ok))
        detail = f" ({len(ok)} of {len(runs)} runs ok" + (f": {tasks})" if tasks else ")")
        lines.append(f"  ses-{session}: {state}" + (detail if runs else ""))
        lines += [_finding_line(f, "    ") for f in found if verbose or f.status != "ok"]
    return lines


def _summary_line(report: StudyReport) -> str:
    states = [report.state(pid) for pid in report.participants]
    runs = [f for f in report.findings if f.task is not None]
    bad_runs = sum(f.status == "fault" for f in runs)
    verdict = "no faults" if report.passed else "FAULTS FOUND"
    return (
        f"summary: {verdict}: {len(report.participants)} participant(s): "
        f"{states.count('complete')} complete, {states.count('incomplete')} incomplete, "
        f"{states.count('fault')} with faults; {len(runs)} run(s) validated "
        f"({len(runs) - bad_runs} ok, {bad_runs} with faults); "
        f"{len(report.faults)} fault(s), {len(report.missing)} missing"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from kp_science.study.errors import StudyDataError
    from kp_science.study.layout import discover_study
    from kp_science.study.protocol import ProtocolError, study_protocol

    study, protocol_file = _study_and_protocol(args)
    try:
        settings = resource_settings(Path(args.settings)) if args.settings else {}
    except ValueError as e:
        print(f"kp run: {e}", file=sys.stderr)
        return 1
    if not study.is_dir():
        print(
            f"kp run: no study folder at {study} (pass --study DIR or set {STUDY_ENV}; "
            "`kp demo` simulates a study to try kp on)",
            file=sys.stderr,
        )
        return 1
    try:
        protocol = study_protocol(study, protocol_file)
        found = discover_study(protocol)
    except ProtocolError as e:
        print(f"kp run: study protocol error: {e}", file=sys.stderr)
        return 1
    except StudyDataError as e:  # the derivatives root cannot be listed
        print(f"kp run: {e}", file=sys.stderr)
        return 1
    if not found.participants:
        print(
            f"kp run: no participant folders (sub-*) in {protocol.derivatives} "
            f"(protocol: {protocol.where()})",
            file=sys.stderr,
        )
        return 1
    warehouse = _warehouse_arg(args, study)
    _use_repo_instance()
    folders = _study_folders(study, protocol)
    targets = {"warehouse": warehouse, "Dagster storage": Path(os.environ[STORAGE_ENV])}
    problem = write_target_problem(folders, targets)
    if problem:
        print(f"kp run: {problem}", file=sys.stderr)
        return 1
    instance = _open_instance("run")
    if instance is None:
        return 1
    print(
        f"running the study in {study} ({len(found.participants)} participant(s); "
        f"protocol: {protocol.where()})"
    )
    return materialize_and_report("run", study, warehouse, protocol_file, instance, settings)


def _report_setup(command: str, args: argparse.Namespace):
    """(study folders, warehouse, protocol, resource settings) of ``kp report`` and ``kp
    export``, or None after saying on stderr what is wrong. The study folders: the study and
    its protocol's derivatives and raw roots, where kp never writes."""
    from kp_science.study.protocol import ProtocolError, study_protocol

    study, protocol_file = _study_and_protocol(args)
    warehouse = _warehouse_arg(args, study)
    try:
        settings = resource_settings(Path(args.settings)) if getattr(args, "settings", None) else {}
        protocol = study_protocol(study, protocol_file)
    except (ValueError, ProtocolError) as e:
        print(f"kp {command}: {e}", file=sys.stderr)
        return None
    from kp_resources.warehouse import list_tables

    if not list_tables(warehouse):
        print(
            f"kp {command}: no tables in warehouse {warehouse} (run `kp run` or `make demo` "
            "first, or pass --warehouse)",
            file=sys.stderr,
        )
        return None
    return _study_folders(study, protocol), warehouse, protocol, settings


def cmd_report(args: argparse.Namespace) -> int:
    from kp_resources.evidence_rules import EvidenceRules
    from kp_resources.quality import QualityThresholds
    from kp_resources.roi_set import RoiSet
    from kp_resources.study_report import build_study_report

    setup = _report_setup("report", args)
    if setup is None:
        return 1
    folders, warehouse, protocol, settings = setup
    out = Path(args.out).expanduser().resolve() if args.out else warehouse / REPORT_FILE
    problem = write_target_problem(folders, {"report": out})
    if problem:
        print(f"kp report: {problem}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    print(f"kp report: drawing the report of {warehouse}", file=sys.stderr, flush=True)
    try:
        path = build_study_report(
            warehouse,
            protocol,
            settings.get("quality", QualityThresholds()),
            settings.get("roi_set", RoiSet()),
            settings.get("evidence", EvidenceRules()),
            folders[0],
            out,
        )
    except FileExistsError as e:
        print(f"kp report: {e}", file=sys.stderr)
        return 1
    size = path.stat().st_size / 1e6
    print(f"report: {path} ({size:.1f} MB, {time.perf_counter() - start:.1f} s)")
    return 0


def cmd_export_bids(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kp_resources.bids_export import export_bids

    setup = _report_setup("export bids", args)
    if setup is None:
        return 1
    folders, warehouse, protocol, _ = setup
    out = Path(args.out).expanduser().resolve()
    problem = write_target_problem(folders, {"export folder": out})
    if problem:
        print(f"kp export bids: {problem}", file=sys.stderr)
        return 1
    with tqdm(desc="exporting", unit="participant", disable=args.quiet, file=sys.stderr) as bar:

        def progress(participant: str, _summary) -> None:
            bar.set_postfix_str(participant)
            bar.update()

        try:  # a foreign folder, or one inside the warehouse: the message names it
            s = export_bids(warehouse, out, protocol, progress=progress)
        except ValueError as e:
            bar.close()
            print(f"kp export bids: {e}", file=sys.stderr)
            return 1
    print(
        f"BIDS derivatives: {s.out}: {s.participants} participants, {s.runs} runs: "
        f"{s.written} files written, {s.unchanged} unchanged, {s.removed} removed"
    )
    return 0


def _numbers(text: str, kind: type) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


def cmd_power(args: argparse.Namespace) -> int:
    import dagster as dg

    from kp_assets.definitions import build_definitions
    from kp_assets.power import power
    from kp_science.finding_rates import participants_for_power, power_figure_png

    try:
        settings = resource_settings(Path(args.settings)) if args.settings else {}
    except ValueError as e:
        print(f"kp power: {e}", file=sys.stderr)
        return 1
    bad = [n for n in args.participants if n < 12] + [
        s for s in args.effect_scales if not 0.0 <= s <= 1.0
    ]
    if bad or not args.participants or not args.effect_scales or args.studies < 1:
        print(
            "kp power: participants must be ≥ 12 (the fewest the elastic net and the group "
            "DCM designs accept), effect scales within [0, 1], studies ≥ 1"
            + (f"; got {bad}" if bad else ""),
            file=sys.stderr,
        )
        return 1
    warehouse = _warehouse_arg(args)
    instance = _open_instance("power")
    if instance is None:
        return 1
    defs = build_definitions(study_dir(), warehouse)
    config = {
        "participants": args.participants,
        "effect_scales": args.effect_scales,
        "studies": args.studies,
        "n_permutations": args.permutations,
        "n_bootstraps": args.bootstraps,
        "processes": args.processes,
        "target": args.target,
    }
    n_studies = len(args.participants) * len(args.effect_scales) * args.studies
    print(
        f"kp power: {n_studies} simulated studies ({args.studies} per participant count × "
        f"effect scale), {args.processes} at a time; table 'power' in {warehouse}",
        flush=True,
    )
    start = time.perf_counter()
    result = dg.materialize(
        [power],
        instance=instance,
        resources={**defs.resources, **settings},
        run_config={
            "ops": {"power": {"config": config}},
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
        },
        raise_on_error=False,
    )
    if not result.success:
        print("kp power: the power analysis failed (see the log above)", file=sys.stderr)
        return 1
    rates = result.output_for_node("power")
    shown = rates.pivot_table(
        index="finding", columns=["effect_scale", "participants"], values="supported", sort=False
    )
    seconds = time.perf_counter() - start
    print(f"\nshare of studies in which each finding is supported ({seconds:.0f} s):")
    print(shown.to_string(float_format=lambda v: f"{v:.2f}"))
    needed = participants_for_power(rates, args.target, max(args.effect_scales))
    print(f"\nparticipants for {args.target:.0%} power at effect × {max(args.effect_scales):g}:")
    for finding, n in needed.items():
        print(f"  {finding}: {int(n) if n == n else f'more than {max(args.participants)}'}")
    plot = Path(args.plot).expanduser()
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_bytes(power_figure_png(rates, args.target))
    print(f"\nplot: {plot}")
    return 0


# the resources a settings file may configure (study, warehouse and IO manager are the
# command line's)
SETTABLE_RESOURCES = (
    "roi_set",
    "cleaning",
    "dcm_models",
    "dcm_group",
    "prediction",
    "quality",
    "evidence",
)


def resource_settings(path: Path) -> dict:
    """Resources configured by the YAML file ``path``: ``{resource key: {field: value}}``,
    each built as the definitions' resource of that key with those fields (the others keep
    their defaults). Raises ValueError naming the file, the key and the problem."""
    import pydantic
    import yaml

    from kp_assets.definitions import defs

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the settings ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: settings must be a mapping of resource → fields")
    resources = {}
    for key, fields in data.items():
        if key not in SETTABLE_RESOURCES:
            raise ValueError(
                f"{path}: {key}: not a resource to set; allowed: {', '.join(SETTABLE_RESOURCES)}"
            )
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: {key}: must be a mapping of field → value")
        kind = type(defs.resources[key])
        unknown = sorted(set(fields) - set(kind.model_fields))
        if unknown:
            raise ValueError(
                f"{path}: {key}.{unknown[0]}: not a field of {kind.__name__}; allowed: "
                f"{', '.join(kind.model_fields)}"
            )
        try:
            resources[key] = kind(**fields)
        except pydantic.ValidationError as e:
            raise ValueError(f"{path}: {key}: {e}") from None
    return resources


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks (examples, lists); option help is
    wrapped as usual."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


ENVIRONMENT = f"""\
environment:
  {STUDY_ENV}       the study folder (default: data/study in the repository)
  {WAREHOUSE_ENV}   the warehouse folder (default: warehouse/ beside the study; data/warehouse
                     for the default study)
  {PROTOCOL_ENV}        the study protocol file (default: <study>/kp-protocol.yaml, else the
                     default protocol, this trial's)
  DAGSTER_HOME       the Dagster instance folder holding dagster.yaml (default: the repository)
  {STORAGE_ENV} Dagster's run and event storage (default: .dagster/ in the repository)"""


def _command(
    sub,
    name: str,
    summary: str,
    description: str,
    examples: list[str],
    extra: str = "",
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows ``description``, ``extra`` (e.g. what it writes) and
    its examples, as plain text."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    if extra:
        epilog = f"{extra}\n\n{epilog}"
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=_HelpFormatter,
    )


class _VersionAction(argparse.Action):
    """``--version``: the package versions are looked up only when asked for."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kp",
        description=CLI_DESCRIPTION,
        epilog="examples:\n  make demo                      (= kp demo, after installing)\n"
        "  kp validate --study /data/mytrial\n  kp run --study /data/mytrial\n"
        "  kp report\n  kp <command> --help           (each command's options and examples)",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print kp's version (and its packages') and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    sim = _command(
        sub,
        "simulate",
        "write a simulated study with planted ground truth",
        "Write a complete simulated study (fMRIPrep-style derivatives, events, confounds, "
        "participants, phenotype,\nits protocol) with the paper's effects planted at known "
        "sizes; the truth is written to\n<out>/derivatives/simulation-truth, which the "
        "pipeline never reads.",
        ["kp simulate /tmp/study --participants 12 --seed 3", "kp simulate /tmp/null --null"],
    )
    sim.add_argument("out", help="study folder to create (new, empty, or a kp simulation)")
    sim.add_argument("--participants", type=int, default=21, help="number (default 21)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument(
        "--voxel-size", type=_positive_mm, default=4.0, help="mm, isotropic (default 4)"
    )
    sim.add_argument(
        "--volumes",
        type=int,
        default=None,
        help="volumes per run for every task (default: faces 200, conflict 150, rest 140)",
    )
    sim.add_argument("--tr", type=float, default=2.0, help="repetition time in s (default 2)")
    sim.add_argument(
        "--null",
        action="store_true",
        help="plant no relation between imaging change and improvement (= --effect-scale 0)",
    )
    sim.add_argument(
        "--effect-scale",
        type=float,
        default=1.0,
        help="scale of the planted relations, 0–1: improvement explains scale² of each "
        "headline effect's planted R² (1 = the headline effects, default; 0 = none)",
    )
    sim.add_argument("--jobs", type=int, default=None, help="worker processes (default ≤ 2)")
    sim.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a study kp simulated before (never any other folder)",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=cmd_simulate)

    demo = _command(
        sub,
        "demo",
        "simulate the default study if needed, materialize every asset, print a summary",
        "The whole pipeline on a study: simulate the default study into the study folder when "
        "it is new or empty\n(a folder with a dataset_description.json is used as it is), "
        "materialize every asset with a\nprogress bar, print a summary of the results.",
        [
            "make demo",
            "kp demo --voxel-size 2         (fMRIPrep's 2 mm grid: data/2mm/study, data/2mm/"
            "warehouse)",
            "KP_STUDY_DIR=/tmp/kp-demo KP_WAREHOUSE_DIR=/tmp/kp-wh kp demo --participants 12",
        ],
        extra=f"""{ENVIRONMENT}

writes:
  <study>                        the simulated study, only into a new or empty folder or one kp
                                 simulated before (never into any other folder); data/study,
                                 or data/<size>mm/study for --voxel-size other than 4
  <warehouse>/<table>/           one folder of Parquet files per table (participant tables:
                                 participant=<id>/part-0.parquet)
  <warehouse>/kp.duckdb          the DuckDB catalog: one view per table
  <warehouse>/{REPORT_FILE}  the study report (open it in a browser)
  ${STORAGE_ENV}            Dagster's record of the runs (what the UI shows)""",
    )
    demo.add_argument(
        "--participants",
        type=int,
        default=21,
        help="participants to simulate when there is no study yet (default 21)",
    )
    demo.add_argument(
        "--voxel-size",
        type=demo_voxel_size,
        default=None,
        metavar="MM",
        help="voxel size of the simulated study in mm, 2–8 (default 4, in data/study): 2 is "
        "fMRIPrep's MNI grid, 7.4 GB, in data/2mm/study (unless KP_STUDY_DIR is set); a "
        "study kp simulated at another size is refused, never replaced",
    )
    demo.set_defaults(func=cmd_demo)

    study_help = f"study folder (default: ${STUDY_ENV} or data/study)"
    protocol_help = (
        f"study protocol file (default: ${PROTOCOL_ENV}, else <study>/kp-protocol.yaml, else "
        "the default protocol)"
    )
    warehouse_help = f"warehouse folder (default: ${WAREHOUSE_ENV} or warehouse/ beside the study)"
    validate = _command(
        sub,
        "validate",
        "check a study against its protocol, writing nothing; exit 1 on any fault",
        "Check every participant, session and run of a study as the pipeline would, writing "
        "nothing.\n'missing' means not there yet (incomplete, not a fault); FAULT means "
        "something to fix.\nExit status 0 without faults, 1 with.",
        [
            "kp validate --study /data/mytrial",
            "kp validate --study /data/mytrial --protocol /data/mytrial-protocol.yaml --verbose",
        ],
    )
    validate.add_argument("--study", default=None, help=study_help)
    validate.add_argument("--protocol", default=None, help=protocol_help)
    validate.add_argument("--verbose", action="store_true", help="list what is ok, too")
    validate.add_argument("--quiet", action="store_true", help="no progress bar")
    validate.set_defaults(func=cmd_validate)

    run = _command(
        sub,
        "run",
        "materialize every asset of a real study (never simulates, never writes into it)",
        "Materialize every asset of a study with the same definitions, jobs and discovery as "
        "the UI and the\nsensor; a failing participant is reported and the others go on. Exit "
        "status 1 when anything failed.",
        [
            "kp run --study /data/mytrial --warehouse /data/mytrial-kp",
            "kp run --study /data/mytrial --settings settings.yaml",
        ],
        extra=f"{ENVIRONMENT}\n\nwrites: the warehouse (tables, kp.duckdb, {REPORT_FILE}) "
        "and Dagster's storage; both must lie outside the study.",
    )
    run.add_argument("--study", default=None, help=study_help)
    run.add_argument("--protocol", default=None, help=protocol_help)
    run.add_argument("--warehouse", default=None, help=warehouse_help)
    run.add_argument(
        "--settings",
        default=None,
        help="YAML file of resource settings, {resource: {field: value}}, e.g. "
        "{prediction: {n_permutations: 200}, roi_set: {radius_mm: 8}} "
        f"(resources: {', '.join(SETTABLE_RESOURCES)})",
    )
    run.set_defaults(func=cmd_run)

    power = _command(
        sub,
        "power",
        "simulation-based power analysis of the paper's design with the real pipeline",
        "How often each headline finding is supported, by participants and effect size: "
        "simulated studies run\nthrough the whole analysis (the on-demand 'power' asset). "
        "Prints the table and the participants\nneeded for the target power; writes the "
        "'power' table and a PNG plot.",
        [
            "kp power --participants 21,42 --effect-scales 0,1 --studies 5",
            "kp power --plot /tmp/power.png --processes 2",
        ],
    )
    power.add_argument(
        "--participants",
        type=lambda t: _numbers(t, int),
        default=[21, 42, 63],
        help="comma-separated participant counts (default 21,42,63)",
    )
    power.add_argument(
        "--effect-scales",
        type=lambda t: _numbers(t, float),
        default=[0.0, 0.5, 1.0],
        help="comma-separated effect sizes relative to the simulator's planted ones, "
        "0 = none (false positives), 1 = planted (default 0,0.5,1)",
    )
    power.add_argument("--studies", type=int, default=10, help="studies per condition (10)")
    power.add_argument(
        "--permutations", type=int, default=200, help="elastic-net permutations (200)"
    )
    power.add_argument("--bootstraps", type=int, default=100, help="bootstrap refits (100)")
    power.add_argument("--processes", type=int, default=2, help="studies at a time (2)")
    power.add_argument("--target", type=float, default=0.8, help="power to report N for (0.8)")
    power.add_argument("--plot", default="kp-power.png", help="PNG to write (kp-power.png)")
    power.add_argument(
        "--warehouse",
        default=None,
        help=f"warehouse folder for the 'power' table (default: ${WAREHOUSE_ENV} or "
        "data/warehouse)",
    )
    power.add_argument(
        "--settings",
        default=None,
        help="YAML file of resource settings (dcm_models, dcm_group, prediction, evidence)",
    )
    power.set_defaults(func=cmd_power)

    sql = _command(
        sub,
        "sql",
        "run SQL on the warehouse (one view per table, plus provenance and table_status)",
        "Run one SQL query with DuckDB over the warehouse, read-only: one view per table "
        "(participant tables show\ncurrent participants; all_rows.<table> shows every row), "
        "'provenance' (every file's footer keys)\nand 'table_status' (whether each table is "
        "current). Notes about hidden or out-of-date data go to stderr.",
        [
            f'kp sql "{EXAMPLE_SQL}"',
            'kp sql "SELECT * FROM paper_table" --format csv > findings.csv',
            'kp sql "SELECT * FROM checks WHERE NOT passed" --format json',
        ],
    )
    sql.add_argument("query", help='the SQL, e.g. "SELECT * FROM scans LIMIT 5"')
    sql.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="table: aligned text (default); csv: with a header row; json: a list of records",
    )
    sql.add_argument(
        "--warehouse",
        default=None,
        help=f"warehouse folder (default: ${WAREHOUSE_ENV} or data/warehouse)",
    )
    sql.set_defaults(func=cmd_sql)

    report = _command(
        sub,
        "report",
        "write the study report: one self-contained HTML page to open in a browser",
        "Write the study report from the warehouse: the study, quality (flagged runs, failed "
        "checks), the ROIs,\nchange scores by arm, each elastic-net model, the DCM, the "
        "paper's findings beside kp's and the\nprovenance. One HTML file with its figures "
        "inside: no network needed to view it. The study_report\nasset writes the same page "
        f"to <warehouse>/{REPORT_FILE} after every group refresh.",
        ["kp report", "kp report /tmp/mytrial-report.html --study /data/mytrial"],
    )
    report.add_argument(
        "out",
        nargs="?",
        default=None,
        help=f"HTML file to write (default: <warehouse>/{REPORT_FILE}); an existing file is "
        "replaced only when it is a kp report",
    )
    report.add_argument("--study", default=None, help=study_help + " — for its protocol")
    report.add_argument("--protocol", default=None, help=protocol_help)
    report.add_argument("--warehouse", default=None, help=warehouse_help)
    report.add_argument(
        "--settings",
        default=None,
        help="YAML file of resource settings the run used (quality, roi_set, evidence), as "
        "for kp run",
    )
    report.set_defaults(func=cmd_report)

    export = _command(
        sub,
        "export",
        "export warehouse tables in other tools' formats (BIDS derivatives)",
        "Export warehouse tables as files other tools read. 'bids': BIDS derivatives named as "
        "XCP-D names them.",
        ["kp export bids /data/mytrial-kp-bids"],
    )
    formats = export.add_subparsers(dest="format", required=True, metavar="<format>")
    bids = _command(
        formats,
        "bids",
        "ROI time series and resting connectivity matrices as BIDS derivatives",
        "Write a BIDS-derivatives dataset: dataset_description.json (DatasetType derivative, "
        "GeneratedBy kp),\nper run sub-X/[ses-Y/]func/<source entities>_space-<space>_seg-kp_"
        "stat-mean_timeseries.tsv and\nper resting run ..._stat-pearsoncorrelation_relmat.tsv, "
        "each with a JSON sidecar. Every file is\nwritten atomically; exporting again rewrites "
        "only what changed. OUT must be new, empty or an earlier\nkp export, and outside the "
        "study.",
        ["kp export bids /data/mytrial-kp-bids", "kp export bids out/ --warehouse /data/wh"],
    )
    bids.add_argument("out", help="folder of the derivatives dataset to write")
    bids.add_argument("--study", default=None, help=study_help + " — for its protocol")
    bids.add_argument("--protocol", default=None, help=protocol_help)
    bids.add_argument("--warehouse", default=None, help=warehouse_help)
    bids.add_argument("--quiet", action="store_true", help="no progress bar")
    bids.set_defaults(func=cmd_export_bids)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
