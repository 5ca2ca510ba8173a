"""The ``kp`` command: ``kp simulate``, ``kp demo``, ``kp sql``.

``kp demo`` materializes every asset through the same Definitions, jobs and discovery code that
``dagster dev`` and the sensor use, on the instance in ``DAGSTER_HOME`` (the repository
folder by default, storage in ``.dagster/``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kp_resources.locations import REPO_ROOT, study_dir, warehouse_dir

# Dagster's console logger prints every event at DEBUG; the demo prints its own progress
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
EXAMPLE_SQL = (
    "SELECT participant_id, session, task, round(mean_fd, 3) AS mean_fd, round(tsnr, 1) AS tsnr "
    "FROM scans ORDER BY mean_fd DESC LIMIT 5"
)


def _use_repo_instance() -> None:
    # dagster.yaml lives at the repo root and reads its storage folder from the environment
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT))
    os.environ.setdefault("KP_DAGSTER_STORAGE", str(REPO_ROOT / ".dagster"))


def cmd_simulate(args: argparse.Namespace) -> int:
    from kp_science.simulator import simulate_study

    start = time.perf_counter()
    try:
        out = simulate_study(
            args.out,
            participants=args.participants,
            seed=args.seed,
            voxel_size=args.voxel_size,
            volumes=args.volumes,
            tr=args.tr,
            null=args.null,
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


def cmd_demo(args: argparse.Namespace) -> int:
    study, warehouse = study_dir(), warehouse_dir()
    # before anything else: a folder that is not kp's to fill stops the demo untouched
    problem = demo_study_problem(study)
    if problem:
        print(f"kp demo: {problem}", file=sys.stderr)
        return 2

    _use_repo_instance()
    from kp_resources.instance import InstanceConfigError, load_instance

    try:  # a mistake in dagster.yaml stops the demo here, naming the file and the key
        instance = load_instance()
    except InstanceConfigError as e:
        print(f"kp demo: Dagster instance configuration error: {e}", file=sys.stderr)
        return 2

    from kp_assets.materialize import materialize_study
    from kp_resources.warehouse import format_result, list_tables, query

    if not (study / "dataset_description.json").exists():
        print(f"simulating the default study ({args.participants} participants) into {study}")
        from kp_science.simulator import simulate_study

        try:  # replaces only a study kp simulated (see demo_study_problem)
            simulate_study(study, participants=args.participants, progress=True, overwrite=True)
        except FileExistsError as e:  # the folder changed since the check above
            print(f"kp demo: {e}", file=sys.stderr)
            return 2
    else:
        print(f"using the study in {study}")
    print(f"materializing assets into {warehouse}")
    failed = materialize_study(study, warehouse, instance, run_config=QUIET_RUN_CONFIG)

    summary = query(
        warehouse,
        """
        SELECT count(DISTINCT participant_id) AS participants, count(*) AS runs,
               round(median(mean_fd), 3) AS median_mean_fd_mm,
               round(max(mean_fd), 3) AS worst_mean_fd_mm,
               CAST(sum(n_fd_spikes) AS INTEGER) AS fd_spikes,
               round(median(tsnr), 1) AS median_tsnr,
               round(min(tsnr), 1) AS min_tsnr
        FROM scans""",
    )
    arms = query(
        warehouse,
        "SELECT arm, count(*) AS participants, "
        "round(avg(caps5_improvement), 1) AS mean_caps5_improvement "
        "FROM clinical GROUP BY arm ORDER BY arm",
    )
    print("\nscans (QC over all runs):")
    print(format_result(summary))
    print("\nclinical:")
    print(format_result(arms))
    features = query(
        warehouse,
        """
        SELECT family, count(DISTINCT feature) AS features,
               count(DISTINCT participant_id) AS participants_with_change
        FROM change_scores JOIN (SELECT DISTINCT feature, family FROM session_features)
             USING (feature)
        GROUP BY family ORDER BY family""",
    )
    print("\nimaging features (change scores = post − pre):")
    print(format_result(features))
    dcm = query(
        warehouse,
        """
        SELECT model, count(*) AS fits, CAST(sum(CAST(converged AS INTEGER)) AS INTEGER)
               AS converged, round(median(explained_variance), 3) AS median_explained_variance
        FROM dcm_fits GROUP BY model ORDER BY model""",
    )
    print("\nDCM (amygdala–vmPFC, faces):")
    print(format_result(dcm))
    if "enet_summary" in list_tables(warehouse):
        models = query(
            warehouse,
            """
            SELECT model, status, n_participants AS n, n_selected AS selected,
                   round(loo_r, 2) AS loo_r, round(nested_r, 2) AS nested_r,
                   round(permutation_p, 3) AS permutation_p
            FROM enet_summary ORDER BY model""",
        )
        print("\nelastic net (CAPS-5 improvement):")
        print(format_result(models))
    if "paper_table" in list_tables(warehouse):
        paper = query(
            warehouse,
            """
            SELECT finding, published, round(estimate, 2) AS estimate,
                   round(selection_frequency, 2) AS selection_frequency, note
            FROM paper_table""",
        )
        print("\nthe paper's findings beside ours:")
        print(format_result(paper))
    print(f"\nwarehouse: {warehouse}  (catalog: {warehouse / 'kp.duckdb'})")
    print(f'try:  .venv/bin/kp sql "{EXAMPLE_SQL}"')
    print("UI:   make ui   (then open http://127.0.0.1:3000)")
    if failed:
        print(f"\n{len(failed)} failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="write a simulated study with planted ground truth")
    sim.add_argument("out", help="study folder to create")
    sim.add_argument("--participants", type=int, default=21, help="number (default 21)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--voxel-size", type=float, default=4.0, help="mm, isotropic (default 4)")
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
        help="plant no relation between imaging change and improvement",
    )
    sim.add_argument("--jobs", type=int, default=None, help="worker processes (default ≤ 2)")
    sim.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a study kp simulated before (never any other folder)",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=cmd_simulate)

    demo = sub.add_parser(
        "demo",
        help="simulate the default study if needed, materialize every asset, print a summary",
    )
    demo.add_argument(
        "--participants",
        type=int,
        default=21,
        help="participants to simulate when there is no study yet (default 21)",
    )
    demo.set_defaults(func=cmd_demo)

    sql = sub.add_parser(
        "sql",
        help="run SQL on the warehouse (one view per table, plus "
        "'provenance', 'table_status' and, unfiltered, "
        "'all_rows.<participant table>')",
    )
    sql.add_argument("query", help='e.g. "SELECT * FROM scans LIMIT 5"')
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument(
        "--warehouse",
        default=None,
        help="warehouse folder (default: $KP_WAREHOUSE_DIR or data/warehouse)",
    )
    sql.set_defaults(func=cmd_sql)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
