"""Benchmark: DCM inversion speed and parity against SPM12.

1. Inverts each SPM12 reference case (../shared/fixtures/spm12_dcm), printing wall time, the
   ratio to SPM12's own time on a 2-core machine, and the largest differences from SPM's
   posterior (means, posterior SDs, free energy).
2. Inverts 42 two-region DCMs (21 participants × 2 sessions, 150 scans, TR 2 s) on
   simulator-like data — the simulator's nonlinear DCM of amygdala↔vmPFC with its baseline
   and hemodynamic parameter spread and endogenous neural noise, plus white noise at SNR 2 —
   serially and in a process pool. Targets: ≤ 1 s per 2-region inversion, 42 inversions
   < 60 s on 2 cores. Baseline in the same run: the same 42 inversions with the compiled
   kernels of ``kp_science.dcm`` (forward model, noise M-step, ascent step) swapped for the
   plain-numpy reference below (the batched numpy forward pass and augmented-exponential
   ascent step they replaced; the M-step already on per-region Gram matrices), printing the
   ratio of CPU seconds per fit and the largest differences between the two posteriors.
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
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import kp_science.dcm.invert as invert_module
from kp_science.balloon import E0, NU0, R0, V0, DCMParameters
from kp_science.dcm import DCMSpec, invert_dcm, invert_many, pack
from kp_science.dcm.integrate import DIVERGED, _schedule, bilinear_operators
from kp_science.dcm.invert import LOGDET_TOL, NOISE_FLOOR
from kp_science.simulator.design import faces_events
from kp_science.simulator.effects import BASELINE
from kp_science.simulator.hemodynamics import draw_hemodynamics
from kp_science.simulator.neural import integrate_dcm
from kp_science.simulator.signals import (
    dcm_hemodynamics,
    dcm_parameters,
    faces_inputs,
    neural_noise,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "spm12_dcm"
CASES = ["dev_2region_fwdmod", "dev_2region_bothmod", "dev_3region_chain"]


# --- plain-numpy reference of the compiled kernels (the baseline of the speed ratio) ----------


def _reference_expm(X: np.ndarray) -> np.ndarray:
    """expm of a stack (N, d, d): Padé 13 with per-matrix scaling and squaring (Higham 2005),
    vectorised over the stack in numpy."""
    b = (
        64764752532480000.0, 32382376266240000.0, 7771770303897600.0, 1187353796428800.0,
        129060195264000.0, 10559470521600.0, 670442572800.0, 33522128640.0, 1323241920.0,
        40840800.0, 960960.0, 16380.0, 182.0, 1.0,
    )  # fmt: skip
    norm = np.abs(X).sum(axis=1).max(axis=1)
    s = np.maximum(0, np.ceil(np.log2(np.maximum(norm, 1e-300) / 5.371920351148152)))
    X = X * np.ldexp(1.0, -s.astype(int))[:, None, None]
    eye = np.eye(X.shape[-1])
    X2 = X @ X
    X4 = X2 @ X2
    X6 = X4 @ X2
    U = X @ (
        X6 @ (b[13] * X6 + b[11] * X4 + b[9] * X2) + b[7] * X6 + b[5] * X4 + b[3] * X2 + b[1] * eye
    )
    V = X6 @ (b[12] * X6 + b[10] * X4 + b[8] * X2) + b[6] * X6 + b[4] * X4 + b[2] * X2 + b[0] * eye
    R = np.linalg.solve(V - U, V + U)
    for k in range(int(s.max(initial=0))):
        R = np.where((k < s)[:, None, None], R @ R, R)
    return R


def reference_predict(theta: np.ndarray, spec: DCMSpec) -> np.ndarray:
    """``predict_bold_batch`` in numpy: batched over the parameter vectors, one Python step
    per event."""
    theta = np.atleast_2d(theta)
    n, P = spec.n, theta.shape[0]
    sched = _schedule(spec)
    M0, M1 = bilinear_operators(theta, n, spec.m)
    J = M0[:, None] + np.einsum("pjab,kj->pkab", M1, sched.inputs)
    E1 = _reference_expm((J * spec.dt).reshape((-1,) + J.shape[2:])).reshape(J.shape)
    powers: list[np.ndarray] = []
    for k, left, right, _ in sched.power_plan:
        powers.append(E1[:, k] if left < 0 else powers[left] @ powers[right])
    d = M0.shape[1]
    z = np.zeros((P, d, 1))
    z[:, 0, 0] = 1.0
    states = [z[..., 0]]
    with np.errstate(over="ignore", invalid="ignore"):
        for s in sched.step_pair:
            z = powers[sched.pair_slot[s]] @ z
            states.append(z[..., 0])
    stacked = np.stack(states)  # (n_events, P, d)
    bad = ~(np.abs(stacked).sum(axis=2) <= DIVERGED)
    first = np.where(bad.any(0), bad.argmax(0), len(stacked))
    ev, r = sched.sample_event, np.arange(n)[None, :]
    lnv, lnq = stacked[ev, :, 1 + 3 * n + r], stacked[ev, :, 1 + 4 * n + r]  # (ns, n, P)
    v, q, eps = np.exp(lnv), np.exp(lnq), np.exp(theta[:, -1])
    te = spec.te
    y = V0 * (
        4.3 * NU0 * E0 * te * (1 - q) + eps * R0 * E0 * te * (1 - q / v) + (1 - eps) * (1 - v)
    )
    y = np.where(ev[:, :, None] >= first[None, None, :], 0.0, y)
    return np.moveaxis(y, 2, 0)


def reference_noise_scoring(gram, ee, ns, h, h_mean, h_var, prior_precision):
    """``_noise_scoring`` in numpy."""
    for _ in range(8):
        eh = np.exp(h)
        precision = NOISE_FLOOR + eh
        Pp = np.tensordot(precision, gram, axes=1)
        Cp = np.linalg.inv(Pp + prior_precision)
        share = eh / precision
        d = h - h_mean
        trace = np.einsum("pq,rpq->r", Cp, gram)
        dFdh = (ns * share - eh * ee - eh * trace) / 2.0 - d / h_var
        dFdhh = -ns * share**2 / 2.0 - 1.0 / h_var
        dh = np.clip(np.expm1(np.exp(4.0) * dFdhh) / dFdhh * dFdh, -1.0, 1.0)
        h = h + dh
        if dFdh @ dh < 1e-2:
            break
    return h, precision, Pp, Cp, d, dFdhh  # pyright: ignore[reportPossiblyUnbound]


def reference_ascent_step(H: np.ndarray, g: np.ndarray, log_rate: float) -> np.ndarray:
    """``_ascent_step`` through the augmented matrix exponential (SVD for ln|H|)."""
    s = np.linalg.svd(H, compute_uv=False)
    s = s[(s > LOGDET_TOL) & (s < 1.0 / LOGDET_TOL)]
    k = g.size
    t = np.exp(log_rate - np.sum(np.log(s)) / k)
    if t > np.exp(16.0):
        return -np.linalg.pinv(H) @ g
    aug = np.zeros((1, k + 1, k + 1))
    aug[0, 1:, 0] = t * g
    aug[0, 1:, 1:] = t * H
    return _reference_expm(aug)[0, 1:, 0]


@contextmanager
def numpy_reference():
    """``invert_dcm`` with its compiled kernels swapped for the numpy reference."""
    names = {
        "predict_bold_batch": reference_predict,
        "_noise_scoring": reference_noise_scoring,
        "_ascent_step": reference_ascent_step,
    }
    saved = {name: getattr(invert_module, name) for name in names}
    for name, function in names.items():
        setattr(invert_module, name, function)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(invert_module, name, function)


def timed_fits(jobs: list) -> tuple[list, float]:
    """Serial inversions with one BLAS thread; (results, CPU seconds)."""
    with threadpool_limits(limits=1, user_api="blas"):
        start = time.process_time()
        results = [invert_dcm(*job) for job in jobs]
        return results, time.process_time() - start


def reference_ratio(jobs: list) -> None:
    """Per-fit CPU time of the compiled kernels vs the numpy reference on the same fits, and
    the largest differences between their posteriors."""
    invert_dcm(*jobs[0])  # load (or compile) the kernels outside the timing
    fast, fast_s = timed_fits(jobs)
    with numpy_reference():
        slow, slow_s = timed_fits(jobs)
    d_ep = [np.abs(a.Ep_vector - b.Ep_vector).max() for a, b in zip(fast, slow, strict=True)]
    d_f = [abs(a.F - b.F) / abs(b.F) for a, b in zip(fast, slow, strict=True)]
    print(
        f"{len(jobs)} inversions, CPU per fit: compiled {fast_s / len(jobs):.3f} s, numpy "
        f"reference {slow_s / len(jobs):.3f} s, ratio {slow_s / fast_s:.1f}×; "
        f"{sum(e < 1e-8 for e in d_ep)}/{len(jobs)} with max |ΔEp| < 1e-8 (median "
        f"{np.median(d_ep):.0e}, worst {max(d_ep):.0e}), median |ΔF|/|F| {np.median(d_f):.0e}"
    )


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
    params, inputs, noise, hemodynamics = [], [], [], []
    for _ in range(participants * sessions):
        values = {k: rng.normal(*BASELINE[k]) for k in names}
        values["dcm.A[vmpfc->amygdala]"] = rng.normal(-0.20, 0.06)
        values |= {k: float(v[0]) for k, v in draw_hemodynamics(1, rng).items()}
        params.append(dcm_parameters(values))
        hemodynamics.append(dcm_hemodynamics(values))
        inputs.append(faces_inputs(faces_events(n_volumes, tr, rng), n_volumes, tr))
        noise.append(neural_noise(n_volumes, rng))
    bold = integrate_dcm(
        params, np.stack(inputs), tr, np.stack(noise), hemodynamics=np.stack(hemodynamics)
    )
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
    reference_ratio(jobs)
    ok = parity_ok and per_fit.mean() <= 1.0 and min(serial_s, pooled_s) < 60
    if args.warehouse is not None:
        ok &= warehouse_speed(args.warehouse, args.workers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
