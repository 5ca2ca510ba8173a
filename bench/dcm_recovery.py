"""Benchmark: how often first-level and group DCM recover what the simulator planted.

The tests check one simulated study (seed 11, image path); this measures the same pipeline
over several seeds on the region-level path (the study's ROI signals plus the residual ROI
noise measured on the image path, see ``kp_science.simulator.roi_level``):

1. first level — every faces run inverted with the default model as the ``dcm_fits`` asset
   does; Spearman ρ of estimate vs planted value over the 42 participant-sessions for
   B[emotional][amygdala->vmpfc] and A[vmpfc->amygdala] (issue target ρ ≥ 0.7);
2. group level — ``group_dcm`` with the default design on the first-level tables; the Pp and
   sign of the paper's three DCM findings (target Pp ≥ 0.9 with the planted sign), and on
   ``--null`` studies the largest Pp of any finding (target < 0.95) and how many covariate
   effects reach 0.95.

    .venv/bin/python bench/dcm_recovery.py [--seeds 11-16] [--null-seeds 200-205] [--workers 2]
"""

import argparse
import time

import numpy as np
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from kp_resources.dcm_models import DCMModels
from kp_science.dcm.findings import DCM_FINDINGS, dcm_findings
from kp_science.dcm.group import group_dcm
from kp_science.finding_rates import VOCABULARY, study_clinical, study_dcm_tables
from kp_science.simulator.roi_level import simulate_roi_study

RECOVERED = ("B[emotional][amygdala->vmpfc]", "A[vmpfc->amygdala]")


def seed_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def one_study(seed: int, null: bool, workers: int) -> dict:
    start = time.perf_counter()
    study = simulate_roi_study(seed=seed, effect_scale=0.0 if null else 1.0)
    with threadpool_limits(limits=1, user_api="blas"):
        fits, parameters = study_dcm_tables(study, DCMModels().masks(VOCABULARY.dcm), workers)
    truth = study.planted.parameters.assign(
        parameter=lambda t: t.parameter.str.removeprefix("dcm.")
    )
    both = parameters.merge(truth, on=["participant_id", "session", "parameter"])
    rho = {
        p: spearmanr(
            both.loc[both.parameter == p, "mean"], both.loc[both.parameter == p, "value"]
        ).statistic
        for p in RECOVERED
    }
    result = group_dcm(fits, parameters, study_clinical(study))
    findings = dcm_findings(result.effects).set_index("finding")
    effects = result.effects[result.effects.covariate != "mean"]
    return {
        "seed": seed,
        "rho": rho,
        "findings": findings,
        "n_effects_pp95": int((effects.Pp >= 0.95).sum()),
        "n_effects": len(effects),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="11-16", help="planted studies, e.g. 11-16")
    parser.add_argument("--null-seeds", default="200-205", help="--null studies")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    directions = {f.key: f.direction for f in DCM_FINDINGS}

    print(
        "planted studies: first-level ρ (target ≥ 0.7); findings signed Pp (target ≥ 0.9, "
        "planted sign)"
    )
    hits = {key: 0 for key in directions}
    seeds = seed_range(args.seeds)
    for seed in seeds:
        r = one_study(seed, False, args.workers)
        f = r["findings"]
        for key, direction in directions.items():
            hits[key] += bool(
                f.loc[key, "pp"] >= 0.9 and np.sign(f.loc[key, "estimate"]) == direction
            )
        signed = "  ".join(
            f"{key} {np.sign(f.loc[key, 'estimate']) * f.loc[key, 'pp']:+.3f}" for key in directions
        )
        print(
            f"seed {seed}: ρ B {r['rho'][RECOVERED[0]]:.3f}  A {r['rho'][RECOVERED[1]]:.3f} | "
            f"{signed} | {r['seconds']:.0f} s"
        )
    print(
        "recovered (Pp ≥ 0.9, planted sign): "
        + ", ".join(f"{key} {n}/{len(seeds)}" for key, n in hits.items())
    )

    print("null studies: largest Pp of a finding (target < 0.95); covariate effects with Pp ≥ 0.95")
    for seed in seed_range(args.null_seeds):
        r = one_study(seed, True, args.workers)
        print(
            f"seed {seed}: max finding Pp {r['findings']['pp'].max():.3f} | "
            f"{r['n_effects_pp95']} of {r['n_effects']} effects ≥ 0.95 | "
            f"{r['seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
