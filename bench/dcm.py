"""Benchmark: DCM inversion speed and parity against SPM12.

1. Inverts each SPM12 reference case (../shared/fixtures/spm12_dcm), printing wall time, the
   ratio to SPM12's own time on a 2-core machine, and the largest differences from SPM's
   posterior (means, posterior SDs, free energy).
2. Inverts 42 two-region DCMs (21 participants × 2 sessions, 150 scans, TR 2 s) on
   simulator-like data — the simulator's nonlinear DCM of amygdala↔vmPFC with its baseline
   parameter spread and endogenous neural noise, plus white noise at SNR 2 — serially and in a
   process pool. Targets: ≤ 1 s per 2-region inversion, 42 inversions < 60 s on 2 cores.
3. With ``--warehouse``: the demo-size figure from real data — every faces run in the
   warehouse's ``scans`` + ``roi_timeseries`` (21 × 2 for the demo study) prepared as the
   ``dcm_fits`` asset does and inverted with its default model, serially with one BLAS
   thread (what the asset does) and in a process pool.

    .venv/bin/python bench/dcm.py [--workers 2] [--seed 0] [--warehouse PATH]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from kp_science.balloon import DCMParameters
from kp_science.dcm import DCMSpec, invert_dcm, invert_many, pack
from kp_science.simulator.design import faces_events
from kp_science.simulator.effects import BASELINE
from kp_science.simulator.neural import integrate_dcm
from kp_science.simulator.signals import dcm_parameters, faces_inputs, neural_noise

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "spm12_dcm"
CASES = ["dev_2region_fwdmod", "dev_2region_bothmod", "dev_3region_chain"]


def fixture_parity() -> bool:
    ok = True
    for name in CASES:
        path = FIXTURES / f"{name}.json"
        if not path.exists():
            print(f"{name}: fixture missing ({path})")
            continue
        fx = json.loads(path.read_text())
        spm = fx["spm"]
        n = len(fx["a"])
        spec = DCMSpec(
            tuple(f"r{i}" for i in range(n)),
            ("drive", "mod"),
            np.array(fx["a"]),
            np.array(fx["b"]),
            np.array(fx["c"]),
            fx["TR"],
            np.array(fx["u"], float),
            np.array(fx["delays"], float),
            fx["TE"],
        )
        res = invert_dcm(spec, np.array(fx["y"]), np.array(fx["X0"], float))
        spm_theta = pack(
            DCMParameters(
                np.array(spm["Ep_A"]),
                np.array(spm["Ep_B"], float),
                np.array(spm["Ep_C"]),
                np.array(spm["Ep_transit"]),
                spm["Ep_decay"],
                spm["Ep_epsilon"],
            )
        )
        n_abc = n * n + n * n * 2 + n * 2
        abc = res.free & (np.arange(res.free.size) < n_abc)
        spm_sd = np.sqrt(np.diag(np.array(spm["Cp"])))
        d_ep = np.abs(res.Ep_vector - spm_theta)[:n_abc].max()
        d_sd = np.abs(res.sd[abc] / spm_sd[abc] - 1).max()
        d_f = 100 * abs(res.F - spm["F"]) / abs(spm["F"])
        ok &= bool(d_ep < 0.02 and d_sd < 0.10 and d_f < 0.5)
        print(
            f"{name}: {res.seconds:.2f} s ({res.n_iter} iterations) vs SPM12 "
            f"{spm['seconds']:.1f} s, ratio {res.seconds / spm['seconds']:.3f}; "
            f"max |ΔEp(A,B,C)| {d_ep:.1e}, max SD error {100 * d_sd:.1e} %, "
            f"ΔF {d_f:.1e} %"
        )
    return ok


def simulated_jobs(
    seed: int,
    participants: int = 21,
    sessions: int = 2,
    n_volumes: int = 150,
    tr: float = 2.0,
    snr: float = 2.0,
) -> list[tuple[DCMSpec, np.ndarray]]:
    """Simulator-like faces runs: (spec, y) per participant × session."""
    rng = np.random.default_rng(seed)
    names = [k for k in BASELINE if k.startswith("dcm.")]
    params, inputs, noise = [], [], []
    for _ in range(participants * sessions):
        values = {k: rng.normal(*BASELINE[k]) for k in names}
        values["dcm.A[vmpfc->amygdala]"] = rng.normal(-0.20, 0.06)
        params.append(dcm_parameters(values))
        inputs.append(faces_inputs(faces_events(n_volumes, tr, rng), n_volumes, tr))
        noise.append(neural_noise(n_volumes, rng))
    bold = integrate_dcm(params, np.stack(inputs), tr, np.stack(noise))
    b = np.zeros((2, 2, 2))
    b[1, 0, 1] = b[0, 1, 1] = 1  # emotional faces modulate both directions
    c = np.array([[1, 0], [0, 0]])  # faces drive the amygdala
    jobs = []
    for clean, u in zip(bold, inputs, strict=True):
        y = clean + rng.standard_normal(clean.shape) * clean.std(axis=0) / snr
        spec = DCMSpec(("amygdala", "vmpfc"), ("faces", "emotional"), np.ones((2, 2)), b, c, tr, u)
        jobs.append((spec, y))
    return jobs


def warehouse_jobs(warehouse: Path) -> list[tuple[DCMSpec, np.ndarray, np.ndarray]]:
    """(spec, y, X0) of every faces run of a materialized warehouse, as ``dcm_fits`` builds
    them (default ``dcm_models`` and ``cleaning`` resources)."""
    import pandas as pd

    from kp_assets.dcm import run_data
    from kp_resources.cleaning import ConfoundCleaning
    from kp_resources.dcm_models import DCMModels
    from kp_science.study.protocol import default_vocabulary

    models, cleaning, protocol = DCMModels(), ConfoundCleaning(), default_vocabulary()
    a, b, c = next(iter(models.masks(protocol.dcm).values()))
    jobs = []
    for folder in sorted((warehouse / "scans").glob("participant=*")):
        scans = pd.read_parquet(folder / "part-0.parquet")
        timeseries = pd.read_parquet(warehouse / "roi_timeseries" / folder.name / "part-0.parquet")
        for _, scan in scans[scans["task"] == protocol.dcm.task].iterrows():
            data = run_data(scan, timeseries, protocol, cleaning)
            jobs.append((data.spec(a, b, c), data.y, data.X0))
    return jobs


def warehouse_speed(warehouse: Path, workers: int) -> bool:
    from threadpoolctl import threadpool_limits

    jobs = warehouse_jobs(warehouse)
    if not jobs:
        print(f"{warehouse}: no faces runs in scans/roi_timeseries")
        return False
    with threadpool_limits(limits=1, user_api="blas"):
        start = time.perf_counter()
        serial = [invert_dcm(*job) for job in jobs]
        serial_s = time.perf_counter() - start
    start = time.perf_counter()
    invert_many(jobs, workers=workers)
    pooled_s = time.perf_counter() - start
    per_fit = np.array([r.seconds for r in serial])
    print(
        f"{len(jobs)} DCMs of the warehouse's faces runs ({jobs[0][0].n_scans} scans, X0 with "
        f"{np.mean([j[2].shape[1] for j in jobs]):.0f} columns on average): serial "
        f"{serial_s:.1f} s (per fit mean {per_fit.mean():.2f} s, max {per_fit.max():.2f} s), "
        f"pool of {workers}: {pooled_s:.1f} s; {sum(r.converged for r in serial)}/{len(jobs)} "
        f"converged (target < 60 s)"
    )
    return min(serial_s, pooled_s) < 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warehouse",
        type=Path,
        default=None,
        help="a materialized warehouse: also time its faces-run DCMs",
    )
    args = parser.parse_args()

    parity_ok = fixture_parity()

    jobs = simulated_jobs(args.seed)
    start = time.perf_counter()
    serial = [invert_dcm(spec, y) for spec, y in jobs]
    serial_s = time.perf_counter() - start
    per_fit = np.array([r.seconds for r in serial])
    start = time.perf_counter()
    invert_many(jobs, workers=args.workers)
    pooled_s = time.perf_counter() - start
    converged = sum(r.converged for r in serial)
    print(
        f"{len(jobs)} two-region inversions (150 scans, TR 2 s): serial {serial_s:.1f} s "
        f"(per fit mean {per_fit.mean():.2f} s, max {per_fit.max():.2f} s; target ≤ 1 s), "
        f"{converged}/{len(jobs)} converged, mean iterations "
        f"{np.mean([r.n_iter for r in serial]):.1f}"
    )
    print(
        f"{len(jobs)} inversions in a pool of {args.workers} processes: {pooled_s:.1f} s "
        f"(target < 60 s)"
    )
    ok = parity_ok and per_fit.mean() <= 1.0 and min(serial_s, pooled_s) < 60
    if args.warehouse is not None:
        ok &= warehouse_speed(args.warehouse, args.workers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
