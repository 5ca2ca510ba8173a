"""Benchmark: detection and false-positive rate of each of the paper's eight findings.

Simulated 21-participant studies go through the whole analysis (per-run measures, change
scores, the four elastic-net variants, first-level and group DCM, ``paper_table``) and each
finding counts as found when ``paper_table.supported`` is true (default evidence rules: DCM
Pp ≥ 0.95; elastic net permutation p < 0.05, bootstrap selection frequency ≥ 0.5, published
sign):

- region-level studies (``kp_science.finding_rates``): ``--planted`` seeds with the
  simulator's planted effects (detection rate at the planted size) and ``--null`` seeds with
  none (false-positive rate), both with the simulator's default run lengths;
- ``--image-studies`` studies on the image path: simulated NIfTI files materialized by the
  assets (``materialize_study``), their ``paper_table`` read from the warehouse.

Elastic-net settings are the defaults (1000 permutations, 500 bootstraps) without nested
LOO, which ``supported`` does not use; ``--permutations``/``--bootstraps`` change them.

    .venv/bin/python bench/recovery.py [--planted 20] [--null 20] [--image-studies 3]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd

from kp_resources.dcm_models import DCMModels
from kp_science.finding_rates import (
    VOCABULARY,
    AnalysisSettings,
    finding_rates,
    many_findings,
    with_settings,
)

ROOT = Path(__file__).resolve().parents[1]
PLANTED_SEEDS = 1000  # first planted seed; null seeds start at 2000, image studies at 3000
NULL_SEEDS = 2000
IMAGE_SEEDS = 3000


def region_level(args: argparse.Namespace, settings: AnalysisSettings) -> pd.DataFrame:
    conditions = [(PLANTED_SEEDS + i, 21, 1.0) for i in range(args.planted)] + [
        (NULL_SEEDS + i, 21, 0.0) for i in range(args.null)
    ]

    def progress(done: int, total: int, table: pd.DataFrame) -> None:
        row = table.iloc[0]
        found = int(table["supported"].sum())
        print(
            f"  [{done}/{total}] seed {row.seed} (effect scale {row.effect_scale:g}): "
            f"{found} of 8 supported, {row.seconds:.0f} s",
            flush=True,
        )

    return many_findings(conditions, settings, processes=args.processes, progress=progress)


def image_path(args: argparse.Namespace, out: Path) -> pd.DataFrame:
    """paper_table of ``--image-studies`` simulated studies materialized by the assets."""
    import dagster as dg

    from kp_assets.materialize import materialize_study
    from kp_resources.prediction_models import PredictionModels
    from kp_resources.warehouse import query
    from kp_science.simulator.study import simulate_study

    tables = []
    for i in range(args.image_studies):
        seed = IMAGE_SEEDS + i
        start = time.perf_counter()
        folder = out / f"image-{seed}"
        shutil.rmtree(folder, ignore_errors=True)
        study = simulate_study(folder / "study", seed=seed, jobs=args.processes)
        with dg.DagsterInstance.ephemeral() as instance:
            failures = materialize_study(
                study,
                folder / "warehouse",
                instance,
                log=lambda _: None,
                jobs=args.processes,
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
                prediction=PredictionModels(
                    nested=False,
                    n_permutations=args.permutations,
                    n_bootstraps=args.bootstraps,
                ),
            )
        if failures:
            raise RuntimeError(f"image-path study {seed}: {failures}")
        table = query(folder / "warehouse", "SELECT * FROM paper_table")
        seconds = time.perf_counter() - start
        print(
            f"  image-path seed {seed}: {int(table['supported'].sum())} of 8 supported, "
            f"{seconds:.0f} s",
            flush=True,
        )
        tables.append(table.assign(seed=seed, participants=21, effect_scale=1.0))
        shutil.rmtree(folder)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def rate_table(findings: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """One row per finding: detection rate (planted), false-positive rate (null), and the
    image-path studies' count."""
    rates = finding_rates(findings)
    planted = rates[rates.effect_scale > 0].set_index("finding")
    null = rates[rates.effect_scale == 0].set_index("finding")
    table = pd.DataFrame(
        {
            "detection": planted["supported"],
            "planted_studies": planted["studies"],
            "same_direction": planted["same_direction"],
            "false_positive": null["supported"],
            "null_studies": null["studies"],
        }
    )
    if not images.empty:
        found = images.groupby("finding", sort=False)["supported"].agg(["sum", "count"])
        table["image_path"] = [
            f"{int(found.loc[f, 'sum'])}/{int(found.loc[f, 'count'])}" for f in table.index
        ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--planted", type=int, default=20, help="planted region-level studies")
    parser.add_argument("--null", type=int, default=20, help="null region-level studies")
    parser.add_argument("--image-studies", type=int, default=3, help="image-path studies")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--bootstraps", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2, help="studies at a time")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "recovery")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    settings = with_settings(
        AnalysisSettings(masks=DCMModels().masks(VOCABULARY.dcm)),
        n_permutations=args.permutations,
        n_bootstraps=args.bootstraps,
    )
    print(f"region-level studies: {args.planted} planted, {args.null} null")
    findings = region_level(args, settings)
    findings.to_csv(args.out / "findings.csv", index=False)
    print(f"image-path studies: {args.image_studies}")
    images = image_path(args, args.out)
    if not images.empty:
        images.to_csv(args.out / "image_findings.csv", index=False)
    table = rate_table(findings, images)
    print(
        f"\nsupported in planted studies (detection) and in null studies (false positives); "
        f"{args.permutations} permutations, {args.bootstraps} bootstraps; "
        f"{time.perf_counter() - start:.0f} s in all\n"
    )
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
